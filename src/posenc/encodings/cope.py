"""Contextual position encoding, CoPE (Golovneva et al. 2024, arXiv 2405.18719).

Positions are counted by the content: for query ``i`` every key ``t`` gets a gate ``g_it = sigmoid(s_it)`` from
its attention logit ``s_it = q_i . k_t * scale`` (after the mask, so masked keys have gate 0), and the position of
key ``j`` relative to ``i`` is the number of "counted" keys between them:

    p_ij = sum_{t=j}^{i} g_it                                       (causal, the paper's definition)

The fractional ``p_ij`` (clamped to ``npos_max - 1``) interpolates learned position embeddings ``e[p]`` of size
``head_dim``, and the logit becomes

    s_ij + q_i . ((ceil p - p) e[floor p] + (p - floor p) e[ceil p])

which is computed, as in the paper's Appendix B code, by forming ``q @ e^T`` once per query (``(B, H, Tq,
npos_max)``) and gathering at ``floor p`` and ``ceil p``: no ``(Tq, Tk, D)`` tensor. As in that code the position
term ``q . e`` is not multiplied by ``scale``, and one embedding table is shared by all heads.

Bidirectional attention (``causal=False``), our extension: the paper defines CoPE for decoders only. Here a key
``j`` after the query counts ``p_ij = sum_{t=i}^{j} g_it`` (the gates from the query forward to the key), and reads
a second table ``e_future`` (created only when the encoding is built with ``causal=False``) so the two directions
stay distinguishable; keys at or before the query use the paper's formula and table. "Query index" means the key
index the query sits at, bottom-right aligned (``Tk - Tq + i``), as everywhere in :mod:`posenc.backends`.

CoPE is an attention term (:mod:`posenc.terms`) over the raw scores of each block of query rows: the gates of a
query row need only that row's scores, so ``chunked`` computes it in ``O(rows * Tk)`` memory (forward and backward);
``dense``/``reference`` hold the ``(B, H, Tq, Tk)`` gates and their cumulative sums.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posenc._checks import check_int
from posenc.base import PositionalEncoding, register
from posenc.terms import AttentionCall, AttentionTerms, ScoreBlock, check_head_dim

__all__ = ["CoPE", "cope_interpolate", "cope_positions"]


def cope_positions(gates: Tensor, *, causal: bool = True,
                   query_index: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Contextual positions from gates.

    Args:
        gates: ``(..., Tq, Tk)`` values in ``[0, 1]``; query ``i`` sits at key index ``query_index[i]``.
        causal: if True, only keys at or before the query are counted (later keys get position 0 here and are
            expected to be masked).
        query_index: int64 ``(Tq,)``, the key index of each query row; default ``Tk - Tq + i`` (bottom-right
            aligned, the queries are the last keys). A block of query rows passes its own.

    Returns:
        ``(past, future)``: ``past[..., i, j] = sum_{t=j}^{i} g_it`` for ``j <= i`` (0 after), and for
        ``causal=False`` also ``future[..., i, j] = sum_{t=i}^{j} g_it`` for ``j > i`` (0 before), else ``None``.
        Each is accumulated directly (a reversed or forward cumulative sum), not as a difference of prefix sums,
        so there is no cancellation at long lengths.
    """
    tq, tk = gates.shape[-2:]
    if query_index is None:
        query_index = torch.arange(tk - tq, tk, device=gates.device)
    q_idx = query_index[:, None]  # (Tq, 1) key index of each query
    k_idx = torch.arange(tk, device=gates.device)  # (Tk,)
    before = k_idx <= q_idx  # (Tq, Tk)
    past = gates.masked_fill(~before, 0.0).flip(-1).cumsum(-1).flip(-1).masked_fill(~before, 0.0)
    if causal:
        return past, None
    after = k_idx > q_idx
    from_query = k_idx >= q_idx
    future = gates.masked_fill(~from_query, 0.0).cumsum(-1).masked_fill(~after, 0.0)
    return past, future


def cope_interpolate(pos_logits: Tensor, positions: Tensor) -> Tensor:
    """Linear interpolation of per-integer-position logits at fractional positions.

    Args:
        pos_logits: ``(B, H, Tq, P)``: ``q_i . e[p]`` for ``p = 0 .. P-1``.
        positions: ``(B, H, Tq, Tk)`` fractional positions in ``[0, P-1]``; larger ones are clamped to ``P - 1``
            (with zero gradient there, as ``clamp`` gives).

    Returns:
        ``(B, H, Tq, Tk)``: ``(1 - w) * pos_logits[floor p] + w * pos_logits[ceil p]`` with ``w = p - floor p``.
    """
    top = pos_logits.shape[-1] - 1
    if torch.is_grad_enabled() and (pos_logits.requires_grad or positions.requires_grad) \
            and not torch.compiler.is_compiling():
        return _Interpolation.apply(pos_logits, positions, top)
    return _interpolate(pos_logits, positions.clamp(max=top))


def _interpolate(pos_logits: Tensor, positions: Tensor) -> Tensor:
    floor = positions.floor()
    w = positions - floor
    lo = pos_logits.gather(-1, floor.long())
    hi = pos_logits.gather(-1, positions.ceil().long())
    return hi * w + lo * (1.0 - w)


class _Interpolation(torch.autograd.Function):
    """:func:`cope_interpolate` saving only the positions (autograd would keep ~8 score-sized tensors: int64 floor
    and ceil indices, weights, both gathers), so a ``chunked`` block's backward pass stays small. The gradients:
    ``d pos_logits`` scatters ``g (1 - w)`` to ``floor p`` and ``g w`` to ``ceil p``; ``d p = g (e[ceil p] -
    e[floor p])`` where ``p <= P - 1`` (0 where clamped)."""

    @staticmethod
    def forward(ctx, pos_logits: Tensor, positions: Tensor, top: int) -> Tensor:
        ctx.save_for_backward(pos_logits, positions)
        ctx.top = top
        return _interpolate(pos_logits, positions.clamp(max=top))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        pos_logits, positions = ctx.saved_tensors
        p = positions.clamp(max=ctx.top)
        floor = p.floor()
        w = p - floor  # (B, H, Tq, Tk)
        lo_idx, hi_idx = floor.long(), p.ceil().long()
        d_logits = None
        if ctx.needs_input_grad[0]:
            d_logits = torch.zeros_like(pos_logits).scatter_add_(-1, hi_idx, grad * w)
            d_logits.scatter_add_(-1, lo_idx, grad * (1.0 - w))
        d_pos = None
        if ctx.needs_input_grad[1]:
            d_pos = pos_logits.gather(-1, hi_idx).sub_(pos_logits.gather(-1, lo_idx)).mul_(grad)
            d_pos.masked_fill_(positions > ctx.top, 0.0)
        return d_logits, d_pos, None


@register("cope")
class CoPE(PositionalEncoding):
    """Contextual position encoding (Golovneva et al. 2024, arXiv 2405.18719): positions counted by sigmoid gates.

    Computed as an attention term (:meth:`terms`; the formula is in the module docstring). Positions are contextual
    counts, so the
    absolute ``q_pos``/``k_pos`` values are not used at all: the encoding is translation invariant and defined at
    any position (``extrapolates = True``).

    Args:
        npos_max: number of learned position embeddings; contextual positions are clamped to ``npos_max - 1``
            (x-transformers defaults to 16; the paper uses up to the context length for counting tasks).
        init_std: normal initialisation of the tables; the paper's code starts them at zero (the default).

    Parameters: ``pos_table`` ``(npos_max, D)``; with ``causal=False`` also ``future_table`` ``(npos_max, D)``.
    """

    family = "contextual"
    paper = "2405.18719"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 npos_max: int = 64, init_std: float = 0.0) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        check_int(npos_max, "cope: npos_max (learned contextual positions)", minimum=2,
                  hint="Hint: 16-64 for language modelling; about the context length for counting tasks.")
        if not (isinstance(init_std, (int, float)) and math.isfinite(init_std) and init_std >= 0):
            raise ValueError(f"cope: init_std must be a finite number >= 0; got {init_std!r}.")
        self.npos_max = npos_max
        self.pos_table = nn.Parameter(torch.randn(npos_max, self.head_dim) * init_std)  # (P, D)
        self.future_table = None if self.causal else nn.Parameter(torch.randn(npos_max, self.head_dim) * init_std)

    def terms(self, call: AttentionCall) -> CoPETerms:
        """The logit term ``q_i . e[p_ij]`` with ``p_ij`` counted by the gates ``sigmoid(scores + mask)``.

        Args:
            q: ``(B, H, Tq, D)``; k, v: ``(B, Hkv, Tk, D)``; positions are accepted for the common interface and
                unused (positions are contextual); ``causal=False`` needs an encoding built with ``causal=False``.
                The mask (causal and ``attn_mask``) enters the scores before the gates, so masked keys are not
                counted; ``scale`` multiplies ``q . k`` only, the position term is not scaled.
        """
        q, k, causal = call.q, call.k, call.causal
        check_head_dim(self, q, k)
        if not causal and self.future_table is None:
            raise ValueError("cope: this encoding was built with causal=True (the paper's decoder-only CoPE) but is "
                             "called for bidirectional attention; build it with causal=False to get the "
                             "bidirectional extension (a second table for keys after the query).")
        return CoPETerms(self)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, npos_max={self.npos_max}, causal={self.causal}"


class CoPETerms(AttentionTerms):
    """CoPE's gated-count, interpolated position term for one call; see :class:`CoPE`."""

    pair_tensors = 16  # measured at T=4096 (live tensors in chunked's backward pass): gates, counts, indices, grads
    call_tensors = ()  # the block methods read the block and the encoding's tables only

    def __init__(self, pe: CoPE) -> None:
        self.pe = pe
    def logits(self, scores: Tensor, blk: ScoreBlock) -> Tensor:
        pe, ct = self.pe, scores.dtype
        past, future = cope_positions(torch.sigmoid(blk.masked(scores)), causal=blk.causal,
                                      query_index=blk.q_index)  # (B, H, rows, keys) each
        position = cope_interpolate(blk.q @ pe.pos_table.to(ct).t(), past)  # (B, H, rows, keys), clamped to P - 1
        if future is not None:
            future_term = cope_interpolate(blk.q @ pe.future_table.to(ct).t(), future)
            after = torch.arange(blk.keys, device=scores.device) > blk.q_index[:, None]  # (rows, keys)
            position = torch.where(after, future_term, position)
        return scores + position
