"""Context extension: a ``rope`` LM trained at length L, evaluated at ``factor * L`` zero-shot, then with each RoPE
scaling (:mod:`posenc.rope_scaling`), with and without a short fine-tune at the new length.

The published counterparts: position interpolation (Chen et al. 2023, arXiv 2306.15595) recovers perplexity after
~200 fine-tune steps where plain RoPE fails; YaRN (Peng et al. 2023, arXiv 2309.00071) does best zero-shot.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from posenc._checks import check_int
from posenc.lab.config import Experiment, ModelConfig, RunConfig, TaskConfig
from posenc.lab.tasks import IGNORE, get_task
from posenc.lab.train import atomic_write_bytes, evaluate, train_run, train_steps
from posenc.model import Transformer

__all__ = ["SCALINGS", "TRAINING_FREE", "context_extension", "extension_table", "training_free_options"]

SCALINGS = ("linear", "ntk", "dynamic", "yarn", "llama3")  # rope_type values that need only a factor
# Training-free extensions that keep RoPE's frequencies and change which positions attention sees (zero-shot rows)
TRAINING_FREE = ("self_extend", "dual_chunk")


def training_free_options(variant: str, *, train_length: int, factor: int) -> dict:
    """The options of a training-free extension for a model trained at ``train_length``, run at ``factor`` times it.

    Self-Extend (arXiv 2401.01325): neighbours within half the training window keep their positions, farther keys
    are grouped by ``factor`` (so ``window + (factor * L - window) / factor <= L``). Dual Chunk Attention (arXiv
    2402.17463): chunks of 3/4 of the training length, as ChunkLlama uses, with a local window of 1/16 of it.
    """
    if variant == "self_extend":
        return {"group_size": factor, "neighbor_window": max(1, train_length // 2)}
    if variant == "dual_chunk":
        return {"chunk_size": max(2, 3 * train_length // 4), "local_window": max(1, train_length // 16)}
    raise ValueError(f"unknown training-free extension {variant!r}; choose one of {TRAINING_FREE}.")


def _finetune(model: Transformer, task, *, length: int, steps: int, lr: float, batch_size: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed + 7)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def next_loss():
        batch = task.sample_batch(gen, batch_size, length)
        logits = model(batch["inputs"])  # (B, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE)
        return loss, lambda: float(loss.detach())

    train_steps(model, opt, None, next_loss, steps=steps)  # the lab's loop at a constant rate, without clipping


def context_extension(*, train_length: int = 32, factor: int = 4, steps: int = 400, finetune_steps: int = 50,
                      finetune_lr: float = 3e-4, model: ModelConfig | None = None, batch_size: int = 16,
                      eval_tokens: int = 8192, text: str | None = None, seed: int = 0,
                      scalings: tuple[str, ...] = SCALINGS,
                      training_free: tuple[str, ...] = TRAINING_FREE) -> list[dict]:
    """Rows ``{"variant", "finetuned", "perplexity": {length: ppl}}`` for plain RoPE, every scaling and every
    training-free extension (Self-Extend, Dual Chunk Attention: zero-shot rows only, on the same weights).

    Args:
        train_length: L, the training window in bytes.
        factor: the evaluation (and fine-tune) window is ``factor * L``; also every scaling's factor.
        steps: training steps of the base model at L.
        finetune_steps: steps at ``factor * L`` for the fine-tuned rows (0: zero-shot rows only).
    """
    check_int(factor, "context_extension: factor", minimum=2)
    long = factor * train_length
    task_options = {"eval_tokens": eval_tokens, **({"text": text} if text else {})}
    exp = Experiment(TaskConfig("lm", train_length, train_length, (train_length, long), task_options),
                     model or ModelConfig(), RunConfig(steps=steps, batch_size=batch_size, lr=3e-3))
    task = get_task("lm", **task_options)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "base.pt"
        train_run(exp, encoding="rope", seed=seed, model_out=path)
        base = Transformer.load(path)

    def measure(m: Transformer) -> dict[str, float]:
        out = {}
        for length in (train_length, long):
            metrics = evaluate(m, task, length, seed=seed, batch_size=8, n_batches=1, device=torch.device("cpu"))
            out[str(length)] = metrics.get("perplexity", float("nan"))
        return out

    rows = []
    for variant in ("none", *scalings):
        cfg = copy.deepcopy(base.cfg)
        if variant != "none":
            cfg.encoding_options = {"scaling": {"rope_type": variant, "factor": float(factor),
                                                "original_max_position_embeddings": train_length}}
        cfg.max_seq_len = long
        model = Transformer(dataclasses.replace(cfg))
        model.load_state_dict(base.state_dict())  # same weights: only the rotary frequencies change
        rows.append({"variant": variant, "finetuned": False, "perplexity": measure(model)})
        if finetune_steps:
            _finetune(model, task, length=long, steps=finetune_steps, lr=finetune_lr, batch_size=max(1, batch_size
                      // factor), seed=seed)
            rows.append({"variant": variant, "finetuned": True, "perplexity": measure(model)})
    for variant in training_free:
        cfg = dataclasses.replace(copy.deepcopy(base.cfg), encoding=variant, max_seq_len=long,
                                  encoding_options=training_free_options(variant, train_length=train_length,
                                                                         factor=factor))
        model = Transformer(cfg)
        model.load_state_dict(base.state_dict())  # same weights: only the positions attention sees change
        rows.append({"variant": variant, "finetuned": False, "perplexity": measure(model)})
    return rows


def extension_table(rows: list[dict]) -> str:
    """Markdown table: one row per variant, zero-shot and fine-tuned perplexity at L and factor * L."""
    from posenc.lab.markdown import table

    lengths = list(rows[0]["perplexity"])
    header = ["scaling", *(f"zero-shot {n}" for n in lengths), *(f"fine-tuned {n}" for n in lengths)]
    body = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        cells = [variant if variant != "none" else "rope (no scaling)"]
        for finetuned in (False, True):
            match = [r for r in rows if r["variant"] == variant and r["finetuned"] is finetuned]
            cells += [f"{match[0]['perplexity'][n]:.2f}" if match else "-" for n in lengths]
        body.append(cells)
    return table(header, body)


def write_extension(rows: list[dict], out: str | os.PathLike) -> Path:
    """``OUT/extension.json`` (atomically); :func:`posenc.lab.report.write_report` adds its table."""
    path = Path(out) / "extension.json"
    atomic_write_bytes(path, json.dumps(rows, indent=1).encode())
    return path
