"""Training throughput: :class:`posenc.Transformer` against x-transformers and a bare-PyTorch ceiling, in one process.

Both sides are the same decoder (pre-norm, ``dim`` wide, ``n_layers`` blocks, ``n_heads`` heads of ``dim //
n_heads``, a ``4 * dim`` feed-forward, an untied head) trained with AdamW on the same random byte batches
``(batch, length)``; one sample is one full training step (forward, cross-entropy, backward, optimizer step). The
samples are taken round-robin over all rows (sample ``i`` of every row before sample ``i + 1`` of any), so load drift
on a shared machine hits every row alike; the median is the figure and ``vs_peer`` is posenc's tokens/s divided by
the peer's. ``vs_bare`` is posenc's tokens/s divided by those of :class:`posenc.bench.bare.BareDecoder`, the same
architecture in bare PyTorch with posenc's weights (rows ``nope``, ``rope``, ``alibi``, ``sinusoidal``: what bare
SDPA can express); 1.0 means no overhead, and the target is >= 0.95.

The peer's encoding per row (x-transformers 2.x flags; every row also passes ``ff_no_bias=True``, as posenc's
feed-forward has no biases):

- ``nope``: no encoding (``use_abs_pos_emb=False``);
- ``rope``: ``rotary_pos_emb=True`` with ``rotary_emb_dim`` the full head width (x-transformers rotates half the head
  by default: a cheaper and different model);
- ``alibi``: ``alibi_pos_bias=True``; ``t5``: ``rel_pos_bias=True`` (T5 buckets);
- ``sinusoidal``: ``scaled_sinu_pos_emb=True`` (x-transformers' sinusoidal absolute embedding);
- ``kerple``: x-transformers has no KERPLE; its nearest kind, a learned bias of the distance computed per step, is
  ``dynamic_pos_bias=True`` (an MLP of the distance), which is the row's peer.

The differences that remain are the libraries' own: x-transformers' layer layout and attention code against
posenc's, which is what the figure compares.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["PEER_FLAGS", "run_train_bench"]

# posenc encoding -> (x-transformers AttentionLayers flags, TransformerWrapper flags)
PEER_FLAGS: dict[str, tuple[dict, dict]] = {
    "nope": ({}, {"use_abs_pos_emb": False}),
    "rope": ({"rotary_pos_emb": True}, {"use_abs_pos_emb": False}),
    "alibi": ({"alibi_pos_bias": True}, {"use_abs_pos_emb": False}),
    "t5": ({"rel_pos_bias": True}, {"use_abs_pos_emb": False}),
    "sinusoidal": ({}, {"scaled_sinu_pos_emb": True}),
    "kerple": ({"dynamic_pos_bias": True}, {"use_abs_pos_emb": False}),
}


def _posenc_model(encoding: str, *, vocab: int, dim: int, n_layers: int, n_heads: int, length: int) -> nn.Module:
    from posenc.model import Transformer, TransformerConfig

    return Transformer(TransformerConfig(kind="decoder", vocab_size=vocab, dim=dim, n_layers=n_layers,
                                         n_heads=n_heads, ffn_mult=4.0, max_seq_len=length, encoding=encoding))


def _peer_model(encoding: str, *, vocab: int, dim: int, n_layers: int, n_heads: int, length: int) -> nn.Module:
    from x_transformers import Decoder, TransformerWrapper

    layer_flags, wrapper_flags = PEER_FLAGS[encoding]
    if encoding == "rope":
        layer_flags = {**layer_flags, "rotary_emb_dim": dim // n_heads}  # the full head, as posenc rotates
    layers = Decoder(dim=dim, depth=n_layers, heads=n_heads, attn_dim_head=dim // n_heads, ff_mult=4,
                     ff_no_bias=True, **layer_flags)
    return TransformerWrapper(num_tokens=vocab, max_seq_len=length, attn_layers=layers, **wrapper_flags)


def _bare_model(encoding: str, *, vocab: int, dim: int, n_layers: int, n_heads: int, length: int) -> nn.Module:
    from posenc.bench.bare import BareDecoder

    return BareDecoder(encoding, vocab=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads, max_len=length)


def _step_fn(model: nn.Module, batch: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    vocab = None

    def step() -> float:
        nonlocal vocab
        logits = model(inputs)
        vocab = logits.shape[-1]
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab).float(), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()  # a host sync: the step is over when this returns

    return step


def run_train_bench(*, encodings: Sequence[str] = tuple(PEER_FLAGS), quick: bool = False, repeats: int | None = None,
                    dim: int = 128, n_layers: int = 3, n_heads: int = 4, length: int = 64, batch: int = 32,
                    vocab: int = 256, seed: int = 0, device: str = "cpu") -> list[dict]:
    """One row per encoding: posenc's, x-transformers' and the bare ceiling's median step time and tokens/s.

    ``quick``: a smaller model (dim 64, 2 layers, length 32, batch 8) and 5 samples, for tests. A missing
    x-transformers gives rows with ``skipped`` naming the extra to install, not an error. ``device``: where the
    models and batches live (each step ends with ``loss.item()``, a host sync, so CUDA steps are timed whole).
    """
    unknown = [e for e in encodings if e not in PEER_FLAGS]
    if unknown:
        raise ValueError(f"train bench: no x-transformers counterpart for {unknown}; choose from {list(PEER_FLAGS)}.")
    if quick:
        dim, n_layers, length, batch = 64, 2, 32, 8
    repeats = repeats or (5 if quick else 20)
    config = f"d{dim} L{n_layers} H{n_heads}, length {length}, batch {batch}, AdamW"
    try:
        import x_transformers  # noqa: F401
    except ImportError as exc:
        return [{"suite": "train", "name": e, "skipped": f"x-transformers not importable ({exc}); "
                 "pip install 'posenc[peers]'"} for e in encodings]
    gen = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab, (batch, length + 1), generator=gen).to(device)
    steps: dict[tuple[str, str], object] = {}
    params: dict[tuple[str, str], int] = {}
    from posenc.bench.bare import BARE_ENCODINGS

    for e in encodings:
        ours = None
        for side, build in (("posenc", _posenc_model), ("x-transformers", _peer_model), ("bare", _bare_model)):
            if side == "bare" and e not in BARE_ENCODINGS:
                continue
            torch.manual_seed(seed)
            model = build(e, vocab=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads, length=length + 1).to(device)
            if side == "posenc":
                ours = model
            elif side == "bare":
                model.load_posenc(ours)  # the same weights: the same numbers, so only the overhead differs
            params[(e, side)] = sum(p.numel() for p in model.parameters())
            steps[(e, side)] = _step_fn(model.train(), data)
    for step in steps.values():  # warm-up: first-call allocations, kernel builds, optimizer state
        step()
        step()
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            samples[key].append(time.perf_counter() - start)
    rows = []
    tokens = batch * length
    for e in encodings:
        ours, peer = statistics.median(samples[(e, "posenc")]), statistics.median(samples[(e, "x-transformers")])
        row = {"suite": "train", "name": e, "device": device, "config": config, "peer": "x-transformers " +
               " ".join(f"{k}={v}" for k, v in (*PEER_FLAGS[e][0].items(), *PEER_FLAGS[e][1].items())),
               "posenc_ms": 1e3 * ours, "peer_ms": 1e3 * peer, "posenc_tok_s": tokens / ours,
               "peer_tok_s": tokens / peer, "vs_peer": peer / ours, "repeats": repeats,
               "posenc_params": params[(e, "posenc")], "peer_params": params[(e, "x-transformers")],
               "bare_ms": None, "bare_tok_s": None, "vs_bare": None}
        if (e, "bare") in samples:
            bare = statistics.median(samples[(e, "bare")])
            row.update(bare_ms=1e3 * bare, bare_tok_s=tokens / bare, vs_bare=bare / ours,
                       bare_params=params[(e, "bare")])
        rows.append(row)
    return rows


def format_rows(rows: Sequence[dict]) -> list[str]:
    """Table lines for :func:`run_train_bench` rows."""
    lines = []
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['name']:12s} skipped: {r['skipped']}")
            continue
        lines.append(f"{r['name']:12s} posenc {r['posenc_tok_s']:9.0f} tok/s ({r['posenc_ms']:.1f} ms)  "
                     f"peer {r['peer_tok_s']:9.0f} tok/s ({r['peer_ms']:.1f} ms)  x peer {r['vs_peer']:.2f}  "
                     + (f"x bare {r['vs_bare']:.2f}  " if r.get("vs_bare") is not None else "x bare -  ")
                     + f"[{r['peer']}; {r['config']}]")
    return lines
