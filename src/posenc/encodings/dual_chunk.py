"""Dual Chunk Attention, DCA (An et al. 2024, arXiv 2402.17463; ChunkLlama, Qwen2.5-1M): training-free long context.

Positions are cut into chunks of ``c = chunk_size - local_window``; keys sit at ``j mod c``. A query at ``i``
attends with a position that depends on how far the key's chunk is:

- *intra-chunk* (same chunk): the query at ``i mod c`` — plain RoPE, relative position ``i - j``;
- *successive-chunk* (the previous chunk): at ``min(i mod c + c, chunk_size)``, so the nearest ``local_window``
  keys keep a correct distance;
- *inter-chunk* (any earlier chunk): at ``min(2c - 1, chunk_size)``, one constant for every query.

So no relative position exceeds ``chunk_size`` (ChunkLlama: ``3/4`` of the training length, ``local_window`` a
sixteenth of it) however long the sequence, which is how a model runs far past its training length without tuning.
This follows the reference code (HKUNLP/ChunkLlama), where pairs are grouped by chunk of their positions.

DCA is defined for decoders. For keys *after* the query (``causal=False``) posenc mirrors it (the key takes the
query's role: ``-(min(j mod c + c, chunk_size) - i mod c)`` for the next chunk, and so on) — our extension.

A key needs a different rotation per case, so the encoding rotates inside attention: :meth:`rotate` is the
identity (a KV cache keeps unrotated keys and their positions), :meth:`DualChunkAttention.terms` rotates queries and
keys at each position the rule uses once per call, and its attention term picks, per pair of each block of query
rows, the score of the pair's case (a ``replaces_scores`` logit term, :mod:`posenc.terms`), so ``chunked`` runs it
in ``O(rows * Tk)`` memory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from posenc._checks import check_int, reads_values
from posenc.base import PositionalEncoding, register
from posenc.encodings.rope import RoPE
from posenc.terms import AttentionCall, AttentionTerms, ScoreBlock, compute_dtype, positions_2d

__all__ = ["DualChunkAttention", "dual_chunk_relative_positions"]


def _floor(x: Tensor, n: int) -> Tensor:
    return torch.div(x, n, rounding_mode="floor")


def dual_chunk_relative_positions(q_pos: Tensor, k_pos: Tensor, *, chunk_size: int, local_window: int) -> Tensor:
    """The relative position DCA gives each pair: ``(..., Tq, Tk)`` int64 for broadcastable ``(..., Tq, 1)`` query and
    ``(..., 1, Tk)`` key positions (the definition the encoding is tested against)."""
    c = chunk_size - local_window
    qm, km = q_pos % c, k_pos % c
    gap = _floor(q_pos, c) - _floor(k_pos, c)
    succ_q, inter = torch.clamp(qm + c, max=chunk_size), min(2 * c - 1, chunk_size)
    succ_k = torch.clamp(km + c, max=chunk_size)
    return torch.where(gap == 0, q_pos - k_pos,
                       torch.where(gap == 1, succ_q - km,
                                   torch.where(gap >= 2, inter - km,
                                               torch.where(gap == -1, qm - succ_k, qm - inter))))


@register("dual_chunk")
class DualChunkAttention(PositionalEncoding):
    """Dual Chunk Attention (An et al. 2024, arXiv 2402.17463): chunked RoPE positions, none relative past chunk_size.

    Args:
        chunk_size: the largest relative position used (ChunkLlama: ``3/4`` of the training length; default
            ``3 * max_seq_len // 4``).
        local_window: keys of the previous chunk within this distance keep their true relative position (default
            ``max_seq_len // 16``); ``0 <= local_window < chunk_size``.
        (and every ``rope`` option: ``base``, ``layout``, ``rotary_dim``, ``scaling``, ...)

    Within the first ``chunk_size - local_window`` positions it is exactly ``rope``.
    """

    family = "rotary"
    paper = "2402.17463"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 chunk_size: int | None = None, local_window: int | None = None, **rope_options: Any) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        chunk_size = 3 * max_seq_len // 4 if chunk_size is None else chunk_size
        local_window = max_seq_len // 16 if local_window is None else local_window
        self.chunk_size = check_int(chunk_size, "dual_chunk: chunk_size", minimum=2,
                                    hint=" ChunkLlama uses 3/4 of the training length.")
        self.local_window = check_int(local_window, "dual_chunk: local_window", minimum=0,
                                      hint=" ChunkLlama uses 1/16 of the training length.")
        if self.local_window >= self.chunk_size:
            raise ValueError(f"dual_chunk: local_window must be smaller than chunk_size (chunks have chunk_size - "
                             f"local_window positions); got local_window={local_window}, chunk_size={chunk_size}.")
        self.rope = RoPE(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, **rope_options)

    def terms(self, call: AttentionCall) -> DualChunkTerms:
        """DCA's scores: q and k rotated once per call at every position the rule gives them.

        Args:
            q: ``(B, H, Tq, D)``; k, v: ``(B, Hkv, Tk, D)`` unrotated; positions ``(T,)`` or ``(B, T)``.
        """
        q, k, q_pos, k_pos, causal = call.q, call.k, call.q_pos, call.k_pos, call.causal
        ct = compute_dtype(q)
        qc, kc = q.to(ct), k.to(ct)
        c, size = self.chunk_size - self.local_window, self.chunk_size
        inter = min(2 * c - 1, size)
        qm, km = q_pos % c, k_pos % c
        rotate = self.rope.rotate_one
        rotated = {  # (B, H, Tq, D) queries and (B, Hkv, Tk, D) keys, each at the positions named
            "q": rotate(qc, q_pos, "q"), "q_inter": rotate(qc, torch.full_like(qm, inter), "q"),
            "q_succ": rotate(qc, torch.clamp(qm + c, max=size), "q"),
            "k": rotate(kc, k_pos, "k"), "k_mod": rotate(kc, km, "k"),
        }
        # Keys in a later chunk than a query that sees them need the mirrored rule. Eager code rotates for it only
        # when some pair needs it (an O(T) check: under the causal mask a query sees the keys up to its index, whose
        # latest chunk is a running maximum); compiled code always does (the same numbers), since a data-dependent
        # branch would break the graph.
        q_chunk, k_chunk = _floor(positions_2d(q_pos), c), _floor(positions_2d(k_pos), c)  # (B|1, Tq), (B|1, Tk)
        mirrored = not reads_values(q_chunk)  # compiled (or on meta: no values to check)
        if not mirrored and q_chunk.numel() > 0 and k_chunk.numel() > 0:
            if causal:  # the latest key chunk each query sees (it sits at key index Tk - Tq + row)
                seen = k_chunk.cummax(-1).values[..., k_chunk.shape[-1] - q_chunk.shape[-1]:]  # (B|1, Tq)
            else:
                seen = k_chunk.amax(-1, keepdim=True)  # (B|1, 1)
            mirrored = bool((q_chunk < seen).any())
        if mirrored:
            rotated.update(q_mod=rotate(qc, qm, "q"), k_succ=rotate(kc, torch.clamp(km + c, max=size), "k"),
                           k_inter=rotate(kc, torch.full_like(km, inter), "k"))
        return DualChunkTerms(rotated, c, mirrored)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, chunk_size={self.chunk_size}, local_window={self.local_window}, "
                f"base={self.rope.base:g}, layout={self.rope.layout!r}")


class DualChunkTerms(AttentionTerms):
    """DCA's per-pair choice among the intra-, successive- and inter-chunk scores for one call."""

    replaces_scores = True
    pair_tensors = 10  # estimated: up to four candidate scores, the chunk gap (int64), the choices, the result

    def __init__(self, rotated: dict[str, Tensor], chunk: int, mirrored: bool) -> None:
        # One attribute per rotation, named as in ``rotated`` (``q``, ``q_inter``, ``q_succ``, ``k``, ``k_mod``, and
        # when mirrored ``q_mod``, ``k_succ``, ``k_inter``): per-call tensors of q and k, so ``call_tensors`` lists
        # them (this call's, hence set per object), and chunked differentiates them.
        vars(self).update(rotated)
        self.call_tensors = tuple(rotated)
        self.chunk = chunk  # c = chunk_size - local_window
        self.mirrored = mirrored  # some key sits in a later chunk than some query

    def _dots(self, blk: ScoreBlock, q_name: str, k_name: str) -> Tensor:
        q = blk.query_rows(getattr(self, q_name))
        return q @ blk.key_rows(getattr(self, k_name)).transpose(-2, -1)  # (B, H, rows, keys)

    def logits(self, scores: None, blk: ScoreBlock) -> Tensor:
        c = self.chunk
        gap = _floor(positions_2d(blk.q_pos), c)[:, :, None] - _floor(positions_2d(blk.k_pos), c)[:, None, :]
        gap = gap[:, None]  # (B|1, 1, rows, keys)
        out = torch.where(gap == 0, self._dots(blk, "q", "k"), self._dots(blk, "q_inter", "k_mod"))
        out = torch.where(gap == 1, self._dots(blk, "q_succ", "k_mod"), out)
        if self.mirrored:
            out = torch.where(gap == -1, self._dots(blk, "q_mod", "k_succ"), out)
            out = torch.where(gap <= -2, self._dots(blk, "q_mod", "k_inter"), out)
        return out * blk.scale
