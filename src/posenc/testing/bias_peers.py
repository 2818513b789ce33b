"""The conformance kit on other libraries' attention biases: adapters that present each peer's bias as the candidate
:func:`~posenc.testing.bias.check_bias` expects, and the table docs/conformance.md shows.

Regenerate the table: ``python -m posenc.testing.bias_peers --markdown`` (a few seconds on 2 CPU cores).

Each adapter calls the peer's public code only:

- Hugging Face Bloom and Falcon ``build_alibi_tensor(mask, n_heads, dtype)`` and MPT ``build_mpt_alibi_tensor(n_heads,
  T)`` return one row per head, ``m_h * j`` (Bloom, Falcon) or ``m_h * (j - T + 1)`` (MPT), relying on the softmax
  ignoring a per-row constant. The adapter reads the peer's row at the keys and subtracts the peer's own value at the
  query (``bias[h, i, j] = row[h, j] - row[h, i]`` = ``-m_h (i - j)``): the softmax sees the same thing, and the slopes,
  the sign and the rounding are the peer's.
- Hugging Face T5 ``T5Attention.compute_bias`` with bias table row ``b`` holding ``b``: the bias of one query against
  keys on both sides is the bucket of each relative position (``is_decoder`` for the unidirectional buckets).
- x-transformers ``AlibiPositionalBias.forward_custom_pos(pos_i, pos_j)`` (symmetric ``-m |i - j|``) and
  ``RelativePositionBias(i, j)`` with the embedding holding the bucket index.
- attention-gym ``attn_gym/mods/alibi.py`` ``generate_alibi_bias(H)`` (pytorch-labs/attention-gym, read with the
  kit's source search; attention-gym is not installed here, so its score_mod is reproduced below, attributed) and the
  ALiBi ``score_mod`` of the PyTorch FlexAttention blog post ("FlexAttention: The Flexibility of PyTorch with the
  Performance of FlashAttention", pytorch.org, 2024: ``bias = alibi_bias[h] * (q_idx - kv_idx)`` with
  ``alibi_bias = generate_alibi_bias()``, a function the post does not show; the adapter fills in the paper's
  positive slopes). A score_mod is elementwise, so the adapters call it on broadcast index tensors (what
  ``flex_attention`` does per element) with a zero score.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["BIAS_PEERS", "run_bias_peers"]


def _paper_slopes(n: int) -> Tensor:
    """The ALiBi paper's slopes for ``n`` heads (its reference code), float64 -- what the blog's ``alibi_bias`` is
    taken to hold."""
    def pow2(m: int) -> list[float]:
        start = 2.0 ** (-8.0 / m)
        return [start ** (i + 1) for i in range(m)]
    p = 2 ** math.floor(math.log2(n))
    return torch.tensor(pow2(p) + pow2(2 * p)[0::2][: n - p], dtype=torch.float64)


def _rows_to_bias(row: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """``(H, T)`` per-key rows -> ``(H, Tq, Tk)`` bias ``row[h, j] - row[h, i]``."""
    return row[:, k_pos][:, None, :] - row[:, q_pos][:, :, None]


def hf_bloom(n_heads: int) -> Callable:
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    def fn(q_pos: Tensor, k_pos: Tensor) -> Tensor:
        T = int(max(q_pos.max(), k_pos.max())) + 1
        row = build_alibi_tensor(torch.ones(1, T, dtype=torch.long), n_heads, torch.float32).view(n_heads, T)
        return _rows_to_bias(row, q_pos, k_pos)
    return fn


def hf_falcon(n_heads: int) -> Callable:
    from transformers.models.falcon.modeling_falcon import build_alibi_tensor

    def fn(q_pos: Tensor, k_pos: Tensor) -> Tensor:
        T = int(max(q_pos.max(), k_pos.max())) + 1
        row = build_alibi_tensor(torch.ones(1, T, dtype=torch.long), n_heads, torch.float32).view(n_heads, T)
        return _rows_to_bias(row, q_pos, k_pos)
    return fn


def hf_mpt(n_heads: int) -> Callable:
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    def fn(q_pos: Tensor, k_pos: Tensor) -> Tensor:
        T = int(max(q_pos.max(), k_pos.max())) + 1
        row = build_mpt_alibi_tensor(n_heads, T).view(n_heads, T)  # m * (j - T + 1)
        return _rows_to_bias(row, q_pos, k_pos)
    return fn


def x_transformers_alibi(n_heads: int) -> Callable:
    from x_transformers.x_transformers import AlibiPositionalBias
    module = AlibiPositionalBias(heads=n_heads, total_heads=n_heads)

    def fn(q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return module.forward_custom_pos(q_pos, k_pos)  # (H, Tq, Tk)
    return fn


def attention_gym_alibi(n_heads: int) -> Callable:
    # attention-gym attn_gym/mods/alibi.py (pytorch-labs/attention-gym), generate_alibi_bias(H), in substance:
    def alibi_mod(score, b, h, q_idx, kv_idx):
        scale = torch.exp2(-((h + 1) * 8.0 / n_heads))
        bias = (kv_idx - q_idx) * scale
        return score + bias
    return _score_mod_bias(alibi_mod, n_heads)


def flex_blog_alibi(n_heads: int) -> Callable:
    alibi_bias = _paper_slopes(n_heads).float()  # generate_alibi_bias() is not shown in the post: the paper's slopes

    # the PyTorch FlexAttention blog post's ALiBi score_mod, as written there:
    def alibi(score, b, h, q_idx, kv_idx):
        bias = alibi_bias[h] * (q_idx - kv_idx)
        return score + bias
    return _score_mod_bias(alibi, n_heads)


def _score_mod_bias(score_mod: Callable, n_heads: int) -> Callable:
    def fn(q_pos: Tensor, k_pos: Tensor) -> Tensor:
        h = torch.arange(n_heads)[:, None, None]
        score = torch.zeros(n_heads, q_pos.numel(), k_pos.numel())
        return score_mod(score, 0, h, q_pos[None, :, None], k_pos[None, None, :]).float()  # (H, Tq, Tk)
    return fn


def hf_t5(bidirectional: bool, num_buckets: int = 32, max_distance: int = 128) -> Callable:
    from transformers.models.t5.modeling_t5 import T5Attention, T5Config
    config = T5Config(d_model=16, d_kv=8, num_heads=1, relative_attention_num_buckets=num_buckets,
                      relative_attention_max_distance=max_distance, is_decoder=not bidirectional)
    attn = T5Attention(config, has_relative_attention_bias=True)
    with torch.no_grad():
        attn.relative_attention_bias.weight.copy_(torch.arange(num_buckets, dtype=torch.float32)[:, None])

    def fn(rel: Tensor) -> Tensor:
        L = int(rel.abs().max())
        with torch.no_grad():  # one query at position L against keys 0..2L: key j sits at relative position j - L
            row = attn.compute_bias(1, 2 * L + 1, past_seen_tokens=L)[0, 0, 0].round().long()  # (2L + 1,)
        return row[rel + L]
    return fn


def x_transformers_t5(bidirectional: bool, num_buckets: int = 32, max_distance: int = 128) -> Callable:
    from x_transformers.x_transformers import RelativePositionBias
    module = RelativePositionBias(scale=1.0, causal=not bidirectional, num_buckets=num_buckets,
                                  max_distance=max_distance, heads=1)
    with torch.no_grad():
        module.relative_attention_bias.weight.copy_(torch.arange(num_buckets, dtype=torch.float32)[:, None])

    def fn(rel: Tensor) -> Tensor:
        L = int(rel.abs().max())
        with torch.no_grad():  # forward(i, j) with i = j = L + 1: queries and keys 0..L, rel = key - query
            grid = module(L + 1, L + 1)[0].round().long()  # (L + 1, L + 1)
        q = torch.where(rel < 0, -rel, torch.zeros_like(rel))
        k = torch.where(rel > 0, rel, torch.zeros_like(rel))
        return grid[q, k]
    return fn


T5_BI = {"type": "t5", "bidirectional": True, "num_buckets": 32, "max_distance": 128}
T5_UNI = {**T5_BI, "bidirectional": False}


def _alibi(n: int) -> dict:
    return {"type": "alibi", "n_heads": n, "causal": True}


# (peer, what, build -> (candidate, kit config, check options))
BIAS_PEERS: list[tuple[str, str, Callable[[], tuple[Callable, dict, dict]]]] = [
    ("transformers", "Bloom build_alibi_tensor, 8 heads", lambda: (hf_bloom(8), _alibi(8), {})),
    ("transformers", "Bloom build_alibi_tensor, 12 heads", lambda: (hf_bloom(12), _alibi(12), {})),
    ("transformers", "Falcon build_alibi_tensor, 12 heads", lambda: (hf_falcon(12), _alibi(12), {})),
    ("transformers", "MPT build_mpt_alibi_tensor, 12 heads", lambda: (hf_mpt(12), _alibi(12), {})),
    ("transformers", "T5 compute_bias, bidirectional", lambda: (hf_t5(True), T5_BI, {})),
    ("transformers", "T5 compute_bias, unidirectional (decoder)", lambda: (hf_t5(False), T5_UNI, {})),
    ("x-transformers", "AlibiPositionalBias, 12 heads (causal)", lambda: (x_transformers_alibi(12), _alibi(12), {})),
    ("x-transformers", "AlibiPositionalBias, 12 heads (bidirectional)", lambda: (
        x_transformers_alibi(12), {**_alibi(12), "causal": False}, {})),
    ("x-transformers", "RelativePositionBias (T5), bidirectional", lambda: (
        x_transformers_t5(True), T5_BI, {"max_position": 2048})),
    ("x-transformers", "RelativePositionBias (T5), causal", lambda: (
        x_transformers_t5(False), T5_UNI, {"max_position": 2048})),
    ("attention-gym", "generate_alibi_bias score_mod, 8 heads", lambda: (attention_gym_alibi(8), _alibi(8), {})),
    ("attention-gym", "generate_alibi_bias score_mod, 12 heads", lambda: (attention_gym_alibi(12), _alibi(12), {})),
    ("pytorch blog", "FlexAttention ALiBi score_mod, 8 heads", lambda: (flex_blog_alibi(8), _alibi(8), {})),
]
NOT_CHECKED = [("x-transformers", "DynamicPositionBias", "a learned MLP of the distance: no fixed reference; "
                "tests/test_peers_bias.py matches it to posenc's dynamic bias with copied weights")]


def run_bias_peers(names: tuple[str, ...] | None = None) -> list[dict]:
    """Check every row of :data:`BIAS_PEERS` (or those whose peer is in ``names``); one summary dict per row."""
    from posenc.testing.bias import check_bias
    rows = []
    for peer, what, build in BIAS_PEERS:
        if names and peer not in names:
            continue
        row: dict[str, Any] = {"peer": peer, "what": what}
        try:
            candidate, config, options = build()
            result = check_bias(candidate, config, target=f"{peer} {what}", **options)
        except (ImportError, ValueError, TypeError) as exc:
            row.update(verdict="not run", diagnosis=f"{type(exc).__name__}: {exc}".splitlines()[0])
            rows.append(row)
            continue
        short = [c.error for c in result.cases if c.error is not None and c.max_position < 4096]
        long = [c.error for c in result.cases if c.error is not None and c.max_position >= 4096]
        row.update(config=", ".join(f"{k} {v}" for k, v in config.items() if k != "type"), kind=config["type"],
                   verdict=result.verdict, short=max(short) if short else None, long=max(long) if long else None,
                   finding=None if result.finding is None else result.finding.hypothesis, diagnosis=result.diagnosis)
        rows.append(row)
    for peer, what, why in NOT_CHECKED:
        if not names or peer in names:
            rows.append({"peer": peer, "what": what, "verdict": "not checked", "diagnosis": why})
    return rows


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}"


def markdown(rows: list[dict]) -> str:
    lines = ["| peer | what | kind, configuration | verdict | max error, positions < 4096 | beyond 4096 | finding |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['peer']} | {r['what']} | {r.get('kind', '-')}: {r.get('config', '-')} | {r['verdict']} | "
                     f"{_fmt(r.get('short'))} | {_fmt(r.get('long'))} | {r.get('finding') or '-'} |")
    lines.append("")
    lines += [f"- **{r['peer']} {r['what']}**: {r['diagnosis']}" for r in rows if r.get("diagnosis")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run posenc's conformance kit on the peer libraries' biases")
    parser.add_argument("--peers", nargs="*", default=None, help="only these peers")
    parser.add_argument("--markdown", action="store_true", help="print the table docs/conformance.md shows")
    args = parser.parse_args(argv)
    rows = run_bias_peers(tuple(args.peers) if args.peers else None)
    if args.markdown:
        print(markdown(rows))
    else:
        for r in rows:
            print(f"{r['peer']:16} {r['what']:46} {r['verdict']:12} short {_fmt(r.get('short')):8} long "
                  f"{_fmt(r.get('long')):8} {r.get('finding') or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
