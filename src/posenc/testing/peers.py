"""The peers under ``posenc conform``: adapters that give each peer library's RoPE the kit's signature, and a runner
that checks them all and prints the table ``docs/conformance.md`` publishes.

Each adapter is a *factory*: ``adapter(config) -> fn(q, k, positions)``, built from the same HF-style config the kit
checks against (``posenc conform posenc.testing.peers:x_transformers --factory --config '{"head_dim": 64}'
--layout interleaved``). An adapter only translates shapes and arguments; the numbers are the peer's own. A peer that
cannot express a config raises ``ValueError`` (the runner reports it as not supported).

Run everything: ``python -m posenc.testing.peers`` (``--markdown`` for the doc's table).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from posenc.testing.rope import rope_spec

__all__ = ["PEERS", "liger", "rotary_embedding_torch", "run_peers", "torchtune", "x_transformers"]


def _plain_scaling(config: dict, peer: str, supported: tuple[str, ...]) -> tuple[str, float]:
    spec = rope_spec(config)
    if spec.rope_type not in supported:
        raise ValueError(f"{peer} has no {spec.rope_type!r} RoPE scaling (it has {', '.join(supported)})")
    return spec.rope_type, float((spec.scaling or {}).get("factor") or 1.0)


def x_transformers(config: dict) -> Callable:
    """x-transformers' ``RotaryEmbedding`` + ``apply_rotary_pos_emb`` (interleaved pairs; ``interpolation_factor``
    is linear scaling, ``base_rescale_factor`` NTK)."""
    from x_transformers.x_transformers import RotaryEmbedding, apply_rotary_pos_emb
    spec = rope_spec(config)
    kind, factor = _plain_scaling(config, "x-transformers", ("default", "linear", "ntk"))
    rot = RotaryEmbedding(spec.rotary_dim, base=spec.base, interpolation_factor=factor if kind == "linear" else 1.0,
                          base_rescale_factor=factor if kind == "ntk" else 1.0)

    def fn(q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        freqs, scale = rot(positions)  # (1 or B, T, rotary_dim)
        return apply_rotary_pos_emb(q, freqs, scale), apply_rotary_pos_emb(k, freqs, scale)
    return fn


def rotary_embedding_torch(config: dict) -> Callable:
    """lucidrains' rotary-embedding-torch ``RotaryEmbedding`` (interleaved pairs; ``interpolate_factor`` linear,
    ``theta_rescale_factor`` NTK). Arbitrary positions go through ``forward(t)`` as its ``rotate_queries_or_keys``
    does: ``t = position / interpolate_factor``."""
    from rotary_embedding_torch import RotaryEmbedding, apply_rotary_emb
    spec = rope_spec(config)
    kind, factor = _plain_scaling(config, "rotary-embedding-torch", ("default", "linear", "ntk"))
    rot = RotaryEmbedding(dim=spec.rotary_dim, theta=spec.base, interpolate_factor=factor if kind == "linear" else 1.0,
                          theta_rescale_factor=factor if kind == "ntk" else 1.0, cache_if_possible=False)

    def fn(q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        freqs = rot(positions.float() / rot.interpolate_factor)  # (T, r) or (B, T, r)
        if freqs.dim() == 3:
            freqs = freqs[:, None]  # (B, 1, T, r)
        return apply_rotary_emb(freqs, q), apply_rotary_emb(freqs, k)
    return fn


def _torchtune_module() -> Any:
    """torchtune's ``modules/position_embeddings.py``, loaded by path: ``import torchtune`` requires torchao, which
    is not installed here, but this file needs torch alone."""
    spec = importlib.util.find_spec("torchtune")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("torchtune is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "modules" / "position_embeddings.py"
    loader = importlib.util.spec_from_file_location("_posenc_torchtune_position_embeddings", path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def torchtune(config: dict, *, max_seq_len: int = 1_000_001) -> Callable:
    """torchtune's ``RotaryPositionalEmbeddings`` (interleaved pairs, x as ``(B, S, H, D)``, a float32 cache of
    ``max_seq_len`` positions; plain RoPE only). Partial rotary: torchtune has none, the adapter rotates the first
    ``rotary_dim`` channels."""
    spec = rope_spec(config)
    _plain_scaling(config, "torchtune's RotaryPositionalEmbeddings", ("default",))
    rot = _torchtune_module().RotaryPositionalEmbeddings(dim=spec.rotary_dim, max_seq_len=max_seq_len, base=spec.base)
    r = spec.rotary_dim

    def one(x: Tensor, positions: Tensor) -> Tensor:
        pos = positions if positions.dim() == 2 else positions[None].expand(x.shape[0], -1)  # (B, T)
        out = rot(x[..., :r].transpose(1, 2), input_pos=pos).transpose(1, 2)  # (B, H, T, D) <-> (B, T, H, D)
        return torch.cat((out, x[..., r:]), dim=-1)

    return lambda q, k, positions: (one(q, positions), one(k, positions))


def liger(config: dict) -> Callable:
    """Liger-Kernel's ``liger_rotary_pos_emb`` (a Triton kernel; on CPU it runs in Triton's interpreter, which needs
    ``TRITON_INTERPRET=1`` before triton is imported). Liger takes cos/sin from the caller: the adapter gives it
    exact ones (angles in float64, cast to the input dtype as Hugging Face does), so only Liger's pairing, partial
    rotary and arithmetic are under test."""
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    spec = rope_spec(config)

    def fn(q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        pos = positions if positions.dim() == 2 else positions[None]
        seq_len = int(positions.max()) + 1 if positions.numel() else 1  # the adapter's own need, not Liger's
        inv, scale = spec.inv_freq(seq_len)
        ang = pos.to(torch.float64)[..., None] * inv  # (1 or B, T, r/2)
        emb = torch.cat((ang, ang), dim=-1)
        cos, sin = (emb.cos() * scale).to(q.dtype), (emb.sin() * scale).to(q.dtype)
        q_out, k_out = liger_rotary_pos_emb(q.contiguous(), k.contiguous(), cos, sin)
        return q_out, k_out
    return fn


# name -> (peer, adapter or an HF config builder, configs); layouts are the ones each peer documents
HF_SMALL = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1,
                intermediate_size=64, vocab_size=100, max_position_embeddings=4096)


def _hf(model_type: str, **kwargs: Any) -> Any:
    from transformers import AutoConfig
    return AutoConfig.for_model(model_type, **{**HF_SMALL, **kwargs})


def _hf_vl(model_type: str, **text: Any) -> Any:
    from transformers import AutoConfig
    return AutoConfig.for_model(model_type, text_config={**HF_SMALL, **text})


YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 1024}
PHI3_FACTORS = {"short_factor": [1.0 + 0.05 * i for i in range(32)], "long_factor": [1.5 + 0.25 * i for i in range(32)]}
PEERS: list[tuple[str, str, Callable[[], tuple[Any, dict, str]]]] = [
    # (peer, what, build -> (candidate or HF config, kit config, layout))
    ("transformers", "llama default (theta 5e5)", lambda: (_hf("llama", rope_parameters={
        "rope_type": "default", "rope_theta": 500000.0}), {}, "half")),
    ("transformers", "llama linear x4", lambda: (_hf("llama", rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}), {}, "half")),
    ("transformers", "llama dynamic x4", lambda: (_hf("llama", rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}), {}, "half")),
    ("transformers", "llama yarn x4", lambda: (_hf("llama", rope_parameters=YARN), {}, "half")),
    ("transformers", "llama llama3 x8", lambda: (_hf("llama", rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "original_max_position_embeddings": 1024,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0}), {}, "half")),
    ("transformers", "phi3 longrope", lambda: (_hf("phi3", original_max_position_embeddings=1024, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, **PHI3_FACTORS}), {}, "half")),
    ("transformers", "gpt_neox partial 0.25", lambda: (_hf("gpt_neox", rotary_pct=0.25, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}), {}, "half")),
    ("transformers", "qwen3_next partial 0.25", lambda: (_hf("qwen3_next", head_dim=64, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}), {}, "half")),
    ("transformers", "glm partial 0.5", lambda: (_hf("glm", head_dim=64, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}), {}, "interleaved")),
    ("transformers", "qwen2_vl M-RoPE (blocked)", lambda: (_hf_vl("qwen2_vl", rope_parameters={
        "rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}), {}, "half")),
    ("transformers", "qwen3_vl M-RoPE (interleaved)", lambda: (_hf_vl("qwen3_vl", head_dim=64, rope_parameters={
        "rope_type": "default", "rope_theta": 5e6, "mrope_section": [12, 10, 10], "mrope_interleaved": True}), {},
        "half")),
    ("x-transformers", "RotaryEmbedding default", lambda: (x_transformers, {"head_dim": 64}, "interleaved")),
    ("x-transformers", "partial 0.5", lambda: (x_transformers, {"head_dim": 64, "partial_rotary_factor": 0.5},
                                               "interleaved")),
    ("x-transformers", "interpolation_factor 4 (linear)", lambda: (x_transformers, {
        "rope_type": "linear", "factor": 4.0, "head_dim": 64}, "interleaved")),
    ("x-transformers", "base_rescale_factor 4 (ntk)", lambda: (x_transformers, {
        "rope_type": "ntk", "factor": 4.0, "head_dim": 64}, "interleaved")),
    ("rotary-embedding-torch", "RotaryEmbedding default", lambda: (rotary_embedding_torch, {"head_dim": 64},
                                                                   "interleaved")),
    ("rotary-embedding-torch", "partial 0.5", lambda: (rotary_embedding_torch, {
        "head_dim": 64, "partial_rotary_factor": 0.5}, "interleaved")),
    ("rotary-embedding-torch", "interpolate_factor 4 (linear)", lambda: (rotary_embedding_torch, {
        "rope_type": "linear", "factor": 4.0, "head_dim": 64}, "interleaved")),
    ("rotary-embedding-torch", "theta_rescale_factor 4 (ntk)", lambda: (rotary_embedding_torch, {
        "rope_type": "ntk", "factor": 4.0, "head_dim": 64}, "interleaved")),
    ("torchtune", "RotaryPositionalEmbeddings", lambda: (torchtune, {"head_dim": 32}, "interleaved")),
    ("liger-kernel", "liger_rotary_pos_emb", lambda: (liger, {"head_dim": 64}, "half", _liger_options())),
    ("liger-kernel", "liger_rotary_pos_emb, no decode case", lambda: (liger, {"head_dim": 64}, "half", {
        **_liger_options(), "cases": _no_decode()})),
    ("liger-kernel", "liger_rotary_pos_emb partial 0.25", lambda: (liger, {
        "head_dim": 64, "partial_rotary_factor": 0.25}, "half", {**_liger_options(), "cases": _no_decode()})),
    ("liger-kernel", "liger_rotary_pos_emb yarn x4", lambda: (liger, {**YARN, "head_dim": 64}, "half", {
        **_liger_options(), "cases": _no_decode()})),
]


def _liger_options() -> dict:
    # Triton's CPU interpreter computes bfloat16 as NaN (numpy has no bfloat16): not Liger's numbers, so skip it there
    return {"dtypes": ("float32", "float16")} if os.environ.get("TRITON_INTERPRET") == "1" else {}


def _no_decode() -> list:
    from posenc.testing.rope import rope_cases
    return [c for c in rope_cases(**_liger_options()) if c.name != "decode"]


def _summary(result: Any) -> dict:
    by = {c.name: c for c in result.cases}
    f32 = [c for c in result.cases if c.dtype == "float32" and c.error is not None]
    short = [c.error for c in f32 if c.max_position < 4096]
    at_1e5 = by["long-100007"].error if "long-100007" in by else None
    at_1e6 = by["long-999999"].error if "long-999999" in by else None
    finding = None if result.finding is None else result.finding.hypothesis
    errors = [c.name for c in result.cases if c.status == "error"]
    if finding is not None and errors and finding != "raised":  # e.g. a precision limit and a raise on T = 0
        finding = f"{finding}; raises on {', '.join(errors)}"
    return {"verdict": result.verdict, "short": max(short) if short else None, "at_1e5": at_1e5, "at_1e6": at_1e6,
            "diagnosis": result.diagnosis, "finding": finding}


def run_peers(names: tuple[str, ...] | None = None) -> list[dict]:
    """Check every peer in :data:`PEERS` (or those whose name is in ``names``); one summary dict per row."""
    from posenc.testing.hf import check_hf_model
    from posenc.testing.rope import check_rope
    rows = []
    for peer, what, build in PEERS:
        if names and peer not in names:
            continue
        row = {"peer": peer, "what": what}
        if peer == "liger-kernel" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            row.update(verdict="not run", diagnosis="needs CUDA, or TRITON_INTERPRET=1 set before triton is imported "
                       "(python -m posenc.testing.peers sets it)")
            rows.append(row)
            continue
        try:
            candidate, config, layout, *more = build()
            options = more[0] if more else {}
            row["layout"] = layout
            if config:
                result = check_rope(candidate(config), config, layout=layout, target=f"{peer} {what}", **options)
            else:
                result = check_hf_model(candidate, layout=layout, target=f"{peer} {what}", **options)
            row.update(_summary(result))
        except (ImportError, ValueError, TypeError) as exc:
            row.update(verdict="not run", diagnosis=f"{type(exc).__name__}: {exc}".splitlines()[0])
        rows.append(row)
    return rows


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run posenc's conformance kit on the peer libraries")
    parser.add_argument("--peers", nargs="*", default=None, help="only these peers")
    parser.add_argument("--markdown", action="store_true", help="print the table docs/conformance.md shows")
    args = parser.parse_args(argv)
    rows = run_peers(tuple(args.peers) if args.peers else None)
    if args.markdown:
        print("| peer | what | layout | verdict | float32 error, positions < 4096 | at 10^5 | at 10^6 | finding |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['peer']} | {r['what']} | {r.get('layout', '-')} | {r['verdict']} | {_fmt(r.get('short'))} | "
                  f"{_fmt(r.get('at_1e5'))} | {_fmt(r.get('at_1e6'))} | {r.get('finding') or '-'} |")
        print()
        for r in rows:
            if r.get("diagnosis"):
                print(f"- **{r['peer']} {r['what']}**: {r['diagnosis']}")
    else:
        for r in rows:
            print(f"{r['peer']:24} {r['what']:34} {r.get('layout', '-'):12} {r['verdict']:10} short "
                  f"{_fmt(r.get('short')):8} 1e5 {_fmt(r.get('at_1e5')):8} 1e6 {_fmt(r.get('at_1e6')):8} "
                  f"{r.get('finding') or ''}")
    return 0


if __name__ == "__main__":
    if not os.environ.get("TRITON_INTERPRET") and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"  # Liger's Triton kernel on CPU; must be set before triton is imported
    sys.exit(main())
