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

A key needs a different rotation per case, so the encoding rotates inside :meth:`DualChunkAttention.attend`;
:meth:`rotate` is the identity, and a KV cache keeps unrotated keys and their positions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from posenc.base import PositionalEncoding, register
from posenc.encodings._attend_utils import additive_mask, attend_inputs, positions_4d, safe_softmax
from posenc.encodings._relative import check_int
from posenc.encodings.rope import RoPE

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
        self.chunk_size = check_int("dual_chunk", "chunk_size", chunk_size, minimum=2,
                                    hint=" ChunkLlama uses 3/4 of the training length.")
        self.local_window = check_int("dual_chunk", "local_window", local_window, minimum=0,
                                      hint=" ChunkLlama uses 1/16 of the training length.")
        if self.local_window >= self.chunk_size:
            raise ValueError(f"dual_chunk: local_window must be smaller than chunk_size (chunks have chunk_size - "
                             f"local_window positions); got local_window={local_window}, chunk_size={chunk_size}.")
        self.rope = RoPE(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, **rope_options)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, q_pos: Tensor, k_pos: Tensor, causal: bool = False,
               attn_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
        """Attention with DCA's per-pair query (or, after the query, key) positions.

        Args:
            q: ``(B, H, Tq, D)``; k, v: ``(B, Hkv, Tk, D)`` unrotated (``H % Hkv == 0``).
            q_pos, k_pos: int64 ``(Tq,)``/``(B, Tq)`` and ``(Tk,)``/``(B, Tk)``.
            causal: mask keys after each query (by index, bottom-right aligned).
            attn_mask: bool (True = attend) or additive float mask broadcastable to ``(B, H, Tq, Tk)``.
            scale: default ``1 / sqrt(D)``.

        Returns:
            ``(B, H, Tq, Dv)`` in the dtype of ``q`` (float32 compute, float64 for float64 input).
        """
        qc, kc, vc, scale, ct = attend_inputs(self, q, k, v, scale)  # (B, H, T, D), kv heads expanded
        c, size = self.chunk_size - self.local_window, self.chunk_size
        qm, km = q_pos % c, k_pos % c
        rotate = self.rope.rotate_one

        def dots(q_at: Tensor, k_at: Tensor) -> Tensor:  # (B, H, Tq, Tk) logits with q at q_at, k at k_at
            return rotate(qc, q_at, "q") @ rotate(kc, k_at, "k").transpose(-2, -1)

        inter = torch.full_like(qm, min(2 * c - 1, size))
        gap = _floor(positions_4d(q_pos), c)[:, :, None] - _floor(positions_4d(k_pos), c)[:, None, :]  # (B|1,Tq,Tk)
        scores = torch.where((gap == 0)[:, None], dots(q_pos, k_pos), dots(inter, km))
        scores = torch.where((gap == 1)[:, None], dots(torch.clamp(qm + c, max=size), km), scores)
        # keys after the query: the mirrored rule. Eager skips it when no pair needs it; compiled code always
        # computes it (the same numbers), since a data-dependent branch would break the graph.
        if torch.compiler.is_compiling() or bool((gap < 0).any()):
            scores = torch.where((gap == -1)[:, None], dots(qm, torch.clamp(km + c, max=size)), scores)
            scores = torch.where((gap <= -2)[:, None], dots(qm, torch.full_like(km, min(2 * c - 1, size))), scores)
        scores = scores * scale
        mask = additive_mask(q.shape[-2], k.shape[-2], causal=causal, attn_mask=attn_mask, dtype=ct, device=q.device)
        if mask is not None:
            scores = scores + mask
        return (safe_softmax(scores) @ vc).to(q.dtype)  # (B, H, Tq, Dv)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, chunk_size={self.chunk_size}, local_window={self.local_window}, "
                f"base={self.rope.base:g}, layout={self.rope.layout!r}")
