"""Self-Extend (Jin et al. 2024, arXiv 2401.01325): RoPE past its training length with no fine-tuning.

Two attentions merged per query/key pair: *neighbour* attention, plain RoPE, for keys closer than
``neighbor_window`` (``W``); and *grouped* attention for the rest, where positions are floor-divided by
``group_size`` (``G``) — queries at ``floor(i / G) + W - floor(W / G)``, keys at ``floor(j / G)`` — so that the
relative position a far pair sees is ``floor(i / G) - floor(j / G) + W - floor(W / G)``, continuous with the window
at its edge and at most ``W + (L - W) / G`` for a sequence of length ``L``: a model trained at ``L_train`` runs to
about ``(L_train - W) * G + W`` tokens with every relative position inside what it was trained on.

Because a key needs two rotations, the encoding rotates inside attention and nothing before it (:meth:`rotate` is
the identity, so a KV cache keeps unrotated keys and their positions): :meth:`SelfExtend.terms` rotates queries and
keys both ways once per call, and its attention term picks, per pair of each block of query rows, the neighbour or
the grouped score (a ``replaces_scores`` logit term, :mod:`posenc.terms`), so ``chunked`` runs it in
``O(rows * Tk)`` memory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from posenc._checks import check_int
from posenc.base import PositionalEncoding, register
from posenc.encodings.rope import RoPE
from posenc.terms import AttentionCall, AttentionTerms, ScoreBlock, compute_dtype, positions_2d

__all__ = ["SelfExtend", "self_extend_positions"]


def self_extend_positions(q_pos: Tensor, k_pos: Tensor, *, group_size: int,
                          neighbor_window: int) -> tuple[Tensor, Tensor]:
    """The grouped positions ``(floor(q / G) + W - floor(W / G), floor(k / G))`` of Self-Extend's far pairs."""
    shift = neighbor_window - neighbor_window // group_size
    return torch.div(q_pos, group_size, rounding_mode="floor") + shift, torch.div(k_pos, group_size,
                                                                                  rounding_mode="floor")


@register("self_extend")
class SelfExtend(PositionalEncoding):
    """Self-Extend (Jin et al. 2024, arXiv 2401.01325): RoPE in a neighbour window, grouped positions beyond it.

    Args:
        group_size: ``G``, positions per group for far pairs (the paper: 2 to 16).
        neighbor_window: ``W``, keys with ``i - j < W`` use plain RoPE (the paper: 512 to 2048 for Llama-2's 4096).
        (and every ``rope`` option: ``base``, ``layout``, ``rotary_dim``, ``scaling``, ...)

    With ``group_size=1`` (or all keys within the window) it is exactly ``rope``.
    """

    family = "rotary"
    paper = "2401.01325"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 group_size: int = 8, neighbor_window: int = 512, **rope_options: Any) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        self.group_size = check_int(group_size, "self_extend: group_size", minimum=1, hint="The paper uses 2 to 16.")
        self.neighbor_window = check_int(neighbor_window, "self_extend: neighbor_window", minimum=1,
                                         hint=" The paper uses 512 to 2048 for a 4096-token model.")
        self.rope = RoPE(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, **rope_options)

    def terms(self, call: AttentionCall) -> SelfExtendTerms:
        """Merged neighbour / grouped RoPE scores: q and k rotated at their positions and at grouped positions.

        Args:
            q: ``(B, H, Tq, D)``; k, v: ``(B, Hkv, Tk, D)`` unrotated; positions ``(T,)`` or ``(B, T)``.
        """
        q, k, q_pos, k_pos = call.q, call.k, call.q_pos, call.k_pos
        ct = compute_dtype(q)
        qc, kc = q.to(ct), k.to(ct)
        qn, kn = self.rope.rotate(qc, kc, q_pos, k_pos)  # neighbour attention: plain RoPE
        qg_pos, kg_pos = self_extend_positions(q_pos, k_pos, group_size=self.group_size,
                                               neighbor_window=self.neighbor_window)
        qg, kg = self.rope.rotate(qc, kc, qg_pos, kg_pos)  # grouped attention
        return SelfExtendTerms(qn, kn, qg, kg, self.neighbor_window)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, group_size={self.group_size}, neighbor_window={self.neighbor_window}, "
                f"base={self.rope.base:g}, layout={self.rope.layout!r}")


class SelfExtendTerms(AttentionTerms):
    """Self-Extend's per-pair choice between neighbour and grouped scores for one call (replaces the raw scores)."""

    replaces_scores = True
    pair_tensors = 8  # estimated: the two candidate scores, the distances (int64), the choice, the result, grads
    call_tensors = ("qn", "kn", "qg", "kg")  # q and k rotated once per call, both ways

    def __init__(self, qn: Tensor, kn: Tensor, qg: Tensor, kg: Tensor, neighbor_window: int) -> None:
        self.qn, self.kn = qn, kn  # (B, H, Tq, D), (B, Hkv, Tk, D): rotated at the true positions
        self.qg, self.kg = qg, kg  # the same at the grouped positions
        self.neighbor_window = neighbor_window

    def logits(self, scores: None, blk: ScoreBlock) -> Tensor:
        near = (positions_2d(blk.q_pos)[:, :, None] - positions_2d(blk.k_pos)[:, None, :]) < self.neighbor_window
        neighbour = blk.query_rows(self.qn) @ blk.key_rows(self.kn).transpose(-2, -1)  # (B, H, rows, keys)
        grouped = blk.query_rows(self.qg) @ blk.key_rows(self.kg).transpose(-2, -1)
        return torch.where(near[:, None], neighbour, grouped) * blk.scale
