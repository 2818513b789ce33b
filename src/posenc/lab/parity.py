"""Peer parity: train posenc's Transformer and a peer library's model on *the same batches* and compare them.

A lab result counts only if the model can learn what a well-tuned peer learns. :func:`train_side_by_side` draws each
training batch once from the task's generator and gives it to every contender, with the same optimizer (AdamW), the
same warmup + cosine schedule, the same gradient clipping, the same loss masking and the same evaluation batches, so
the only difference left is the model. The peer is x-transformers (``pip install 'posenc[peers]'``) with rotary
positions, the configuration its README recommends; posenc runs ``rope``.

Example::

    from posenc.lab.parity import train_side_by_side
    result = train_side_by_side("decoder_copy", steps=2000, dim=128, n_layers=2, n_heads=4, lr=1e-3,
                                train_lengths=(1, 20))
    result["posenc"]["accuracy"], result["x-transformers"]["accuracy"]
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.lab.config import RunConfig
from posenc.lab.tasks import IGNORE, get_task
from posenc.lab.tasks.base import Task, uniform_int
from posenc.lab.train import EVAL_SEED_OFFSET, Tally, schedule_factor
from posenc.model import Transformer, TransformerConfig

__all__ = ["build_contenders", "train_side_by_side"]


def _x_transformers(task: Task, *, dim: int, n_layers: int, n_heads: int, ffn_mult: float,
                    max_seq_len: int) -> nn.Module:
    try:
        from x_transformers import Decoder, Encoder, TransformerWrapper
    except ImportError as exc:  # pragma: no cover - the peers extra is installed by `make`
        raise ImportError("peer parity needs x-transformers: pip install 'posenc[peers]'") from exc
    if task.kind == "encoder_decoder":
        raise ValueError(f"task {task.name!r} is encoder-decoder; peer parity compares encoder or decoder tasks.")
    layers = (Decoder if task.kind == "decoder" else Encoder)(
        dim=dim, depth=n_layers, heads=n_heads, attn_dim_head=dim // n_heads, ff_mult=ffn_mult, rotary_pos_emb=True)
    return TransformerWrapper(num_tokens=task.vocab_size, max_seq_len=max_seq_len, attn_layers=layers)


def build_contenders(task: Task, *, dim: int, n_layers: int, n_heads: int, ffn_mult: float, max_seq_len: int,
                     seed: int, posenc_options: dict | None = None) -> dict[str, nn.Module]:
    """``{"posenc": Transformer(rope), "x-transformers": TransformerWrapper(rotary)}``, each seeded with ``seed``."""
    torch.manual_seed(seed)
    ours = Transformer(TransformerConfig(kind=task.kind, vocab_size=task.vocab_size, dim=dim, n_layers=n_layers,
                                         n_heads=n_heads, ffn_mult=ffn_mult, max_seq_len=max_seq_len, encoding="rope",
                                         **(posenc_options or {})))
    torch.manual_seed(seed)
    peer = _x_transformers(task, dim=dim, n_layers=n_layers, n_heads=n_heads, ffn_mult=ffn_mult,
                           max_seq_len=max_seq_len)
    return {"posenc": ours, "x-transformers": peer}


def _loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    logits = model(batch["inputs"]).float()  # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE)


@torch.no_grad()
def _evaluate(model: nn.Module, batches: list[dict[str, Tensor]]) -> dict[str, float]:
    model.eval()
    tally = Tally()
    for batch in batches:
        tally.add(model(batch["inputs"]), batch["targets"])
    model.train()
    return tally.metrics()


def train_side_by_side(task_name: str, *, steps: int, dim: int, n_layers: int, n_heads: int, lr: float,
                       train_lengths: tuple[int, int], ffn_mult: float = 2.0, batch_size: int = 32,
                       weight_decay: float = 0.01, warmup: float = 0.1, grad_clip: float = 1.0, seed: int = 0,
                       eval_batches: int = 4, eval_batch_size: int = 64, posenc_options: dict | None = None,
                       contenders: dict[str, nn.Module] | None = None) -> dict[str, dict]:
    """Train posenc and the peer on identical batches; per contender its initial and final training loss and
    in-distribution metrics (exact match ``accuracy``, ``token_accuracy``, ``loss``) at the longest training length.

    Args:
        task_name: a registered encoder or decoder task.
        steps: optimiser steps (the optimisation below is shared by every contender).
        dim: model width (the size is shared by every contender).
        n_layers: layers.
        n_heads: attention heads.
        lr: AdamW's peak learning rate.
        train_lengths: ``(min, max)`` task lengths; each step's length is drawn uniformly, once for all.
        ffn_mult: feed-forward width as a multiple of ``dim``.
        batch_size: sequences per step.
        weight_decay: AdamW's weight decay.
        warmup: the share of ``steps`` spent warming the learning rate up.
        grad_clip: the gradient norm clipped to.
        seed: seeds both initialisations and the data.
        eval_batches: batches of the final in-distribution evaluation.
        eval_batch_size: sequences per evaluation batch.
        posenc_options: extra :class:`posenc.TransformerConfig` fields for posenc's model (e.g. the old recipe's
            ``{"tie_embeddings": True}``).
        contenders: models to compare instead of :func:`build_contenders`'s pair.
    """
    task = get_task(task_name)
    lo, hi = train_lengths
    max_seq_len = task.sequence_length(hi)
    models = contenders or build_contenders(task, dim=dim, n_layers=n_layers, n_heads=n_heads, ffn_mult=ffn_mult,
                                            max_seq_len=max_seq_len, seed=seed, posenc_options=posenc_options)
    run = RunConfig(steps=steps, warmup=warmup)
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
                  for name, m in models.items()}
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, schedule_factor(run))
                  for name, opt in optimizers.items()}
    out = {name: {"initial_loss": None, "final_loss": None, "wall_time_s": 0.0} for name in models}
    gen = torch.Generator().manual_seed(seed)
    for model in models.values():
        model.train()
    for _ in range(steps):
        batch = task.sample_batch(gen, batch_size, int(uniform_int(gen, lo, hi)))  # drawn once, given to everyone
        for name, model in models.items():
            start = time.perf_counter()
            loss = _loss(model, batch)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizers[name].step()
            schedulers[name].step()
            out[name]["wall_time_s"] += time.perf_counter() - start
            value = float(loss.detach())
            if out[name]["initial_loss"] is None:
                out[name]["initial_loss"] = value
            out[name]["final_loss"] = value
    eval_gen = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)  # held out: never the training stream
    held_out = [task.sample_batch(eval_gen, eval_batch_size, hi) for _ in range(eval_batches)]
    for name, model in models.items():
        out[name].update(_evaluate(model, held_out))
    return out
