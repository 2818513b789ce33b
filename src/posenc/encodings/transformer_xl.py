"""Transformer-XL relative attention (Dai et al. 2019, arXiv 1901.02860): sinusoidal relative embeddings, u and v.

The paper's score between query ``i`` and key ``j`` (its eq. for ``A^rel_ij``), per head:

    A_ij = q_i . k_j  +  q_i . W_R R_{i-j}  +  u . k_j  +  v . W_R R_{i-j}
         = (q_i + u) . k_j  +  (q_i + v) . W_R R_{i-j}

with ``R_d = [sin(d w_0) .. sin(d w_{F-1}), cos(d w_0) .. cos(d w_{F-1})]``, ``w_f = 10000^(-2f/d_R)`` (the
sin-then-cos layout of the paper's code), ``W_R`` a learned ``(H*D, d_R)`` projection, ``u`` (content bias) and
``v`` (position bias) learned ``(H, D)``. The whole score is multiplied by ``scale`` (``1/sqrt(D)``), as in the
reference code. Here ``d = q_pos - k_pos`` comes from the given positions; in a bidirectional encoder ``d`` is
negative for keys after the query and ``R_d`` is simply evaluated there (sin is odd, cos even, so the two
directions stay distinguishable).

No relative-shift trick is needed because the positional term is gathered by distance:

- ``"gather"`` path: ``R`` is evaluated only at the ``U`` distances present (``U = Tq + Tk - 1`` for contiguous
  positions), ``(q + v) W_R R^T`` gives ``(B, H, Tq, U)`` and each pair gathers its distance;
- ``"factored"`` path, used by ``"auto"`` when the distances span more than ``Tq + Tk`` values (sparse or far
  apart positions): ``sin/cos((p_i - p_j) w)``
  expands into products of ``sin/cos(p_i w)`` and ``sin/cos(p_j w)``, so the positional term is one matmul of a
  ``(B, H, Tq, d_R)`` query-side tensor with a ``(Tk, d_R)`` key-side tensor (the same algebra as RoPE).

Both are exact, and both are attention terms (:mod:`posenc.terms`) evaluated per block of query rows: peak extra
memory is ``O(B * H * rows * max(Tk, U))`` per block (``rows = Tq`` on ``dense``/``reference``), never
``(Tq, Tk, D)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posenc._checks import check_int, reads_values
from posenc.base import PositionalEncoding, register
from posenc.terms import AttentionCall, AttentionTerms, ScoreBlock, check_head_dim, positions_2d

__all__ = ["TransformerXL", "relative_sinusoid", "xl_frequencies", "xl_position_logits"]


def xl_frequencies(rel_dim: int, *, device: torch.device | str | None = None) -> Tensor:
    """``w_f = 10000^(-2f / rel_dim)`` for ``f = 0 .. rel_dim/2 - 1`` in float64, shape ``(rel_dim // 2,)``."""
    return torch.pow(10000.0, -torch.arange(0, rel_dim, 2, device=device, dtype=torch.float64) / rel_dim)


def relative_sinusoid(dist: Tensor, rel_dim: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """``R_d = [sin(d w), cos(d w)]`` at integer distances ``dist`` ``(...)`` -> ``(..., rel_dim)`` in ``dtype``.

    Angles are formed in float64, so ``R`` is exact to ``dtype`` rounding at any distance.
    """
    angles = dist.to(torch.float64).unsqueeze(-1) * xl_frequencies(rel_dim, device=dist.device)  # (..., F)
    out = angles.new_empty(*angles.shape[:-1], rel_dim, dtype=dtype)  # written in halves: no concatenated copy
    out[..., :rel_dim // 2] = angles.sin()
    out[..., rel_dim // 2:] = angles.cos_()
    return out


def xl_position_logits(qv: Tensor, w_r: Tensor, q_pos: Tensor, k_pos: Tensor, *, method: str = "auto") -> Tensor:
    """The positional terms ``(q_i + v) . W_R R_{q_pos[i] - k_pos[j]}`` for all pairs, unscaled.

    Args:
        qv: ``(B, H, Tq, D)`` queries plus the position bias ``v``.
        w_r: ``(H * D, rel_dim)`` projection ``W_R``.
        q_pos: int64 ``(Tq,)`` or ``(B, Tq)``; k_pos: int64 ``(Tk,)`` or ``(B, Tk)``.
        method: ``"gather"`` (over the distinct distances), ``"factored"`` or ``"auto"`` (gather over the range
            ``min .. max`` of the distances when it spans at most ``Tq + Tk`` values, else factored); see the module
            docstring. All give the same numbers.

    Returns:
        ``(B, H, Tq, Tk)`` in the dtype of ``qv``.
    """
    if method not in ("auto", "gather", "factored"):
        raise ValueError(f"transformer_xl: method must be 'auto', 'gather' or 'factored'; got {method!r}.")
    b, h, tq, d = qv.shape
    tk = k_pos.shape[-1]
    rel_dim = w_r.shape[-1]
    w_heads = w_r.view(h, d, rel_dim)  # (H, D, d_R)
    dist = positions_2d(q_pos)[:, :, None] - positions_2d(k_pos)[:, None, :]  # (B|1, Tq, Tk)  i - j
    uniq = inverse = None
    if method == "auto" and not reads_values(dist):  # no data-dependent choice inside a graph (or on meta)
        method = "factored"
    if method == "auto" and dist.numel() == 0:  # T = 0 or B = 0: nothing to index, any method gives (.., 0, ..)
        method = "factored"
    if method == "auto":  # contiguous-ish positions: index distances by offset from the smallest (no sort)
        lo, hi = int(dist.min()), int(dist.max())
        if hi - lo + 1 <= tq + tk:
            uniq, inverse = torch.arange(lo, hi + 1, device=dist.device), dist - lo  # (U,), (B|1, Tq, Tk)
        else:
            method = "factored"
    elif method == "gather":
        uniq, inverse = torch.unique(dist, return_inverse=True)  # (U,), (B|1, Tq, Tk)
    if method == "factored":
        freqs = xl_frequencies(rel_dim, device=qv.device)  # (F,)
        n = freqs.shape[0]
        y = qv @ w_heads  # (B, H, Tq, d_R): coefficients of sin (first F) and cos (last F)
        a, c = y[..., :n], y[..., n:]
        ang_q = positions_2d(q_pos).to(torch.float64)[..., None] * freqs  # (B|1, Tq, F)
        ang_k = positions_2d(k_pos).to(torch.float64)[..., None] * freqs  # (B|1, Tk, F)
        sq, cq = ang_q.sin().to(qv.dtype)[:, None], ang_q.cos().to(qv.dtype)[:, None]  # (B|1, 1, Tq, F)
        # sin(x - y) = sin x cos y - cos x sin y;  cos(x - y) = cos x cos y + sin x sin y
        query_side = torch.cat((a * sq + c * cq, c * sq - a * cq), dim=-1)  # (B, H, Tq, 2F)
        key_side = torch.cat((ang_k.cos(), ang_k.sin()), dim=-1).to(qv.dtype)[:, None]  # (B|1, 1, Tk, 2F)
        return query_side @ key_side.transpose(-2, -1)  # (B, H, Tq, Tk)
    y = qv @ w_heads  # (B, H, Tq, d_R)
    if torch.compiler.is_compiling():
        per_dist = y @ relative_sinusoid(uniq, rel_dim, dtype=qv.dtype).t()  # (B, H, Tq, U)
    else:  # the same without holding R (U, d_R) whole
        per_dist = _SinusoidLogits.apply(y, uniq)  # (B, H, Tq, U): (q_i + v) . W_R R_d per distance
    return per_dist.gather(-1, inverse[:, None].expand(b, h, tq, tk))


class _SinusoidLogits(torch.autograd.Function):
    """``y @ R^T`` for ``y`` ``(..., d_R)`` and the sinusoids ``R`` ``(U, d_R)`` at the distances ``dist`` ``(U,)``.

    ``R`` is a constant as large as the keys (``U ~ Tq + Tk`` rows of ``d_R = dim``), so it is made in pieces of
    ``_TABLE_PIECE`` distances, in the forward pass and again in the backward pass, and never held whole: on
    ``chunked`` that keeps every block's extra memory ``O(rows * Tk)``.
    """

    @staticmethod
    def forward(ctx, y: Tensor, dist: Tensor) -> Tensor:
        ctx.save_for_backward(dist)
        ctx.rel_dim = y.shape[-1]
        out = y.new_empty(*y.shape[:-1], dist.shape[0])  # (..., U)
        for a in range(0, dist.shape[0], _TABLE_PIECE):
            r = relative_sinusoid(dist[a:a + _TABLE_PIECE], y.shape[-1], dtype=y.dtype)  # (piece, d_R)
            out[..., a:a + _TABLE_PIECE] = y @ r.t()
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        (dist,) = ctx.saved_tensors
        dy = grad.new_zeros(*grad.shape[:-1], ctx.rel_dim)  # (..., d_R)
        for a in range(0, dist.shape[0], _TABLE_PIECE):
            r = relative_sinusoid(dist[a:a + _TABLE_PIECE], ctx.rel_dim, dtype=grad.dtype)  # (piece, d_R)
            dy.add_(grad[..., a:a + _TABLE_PIECE] @ r)
        return dy, None


_TABLE_PIECE = 512  # distances per piece of R in _SinusoidLogits


@register("transformer_xl")
class TransformerXL(PositionalEncoding):
    """Transformer-XL relative attention (Dai et al. 2019, arXiv 1901.02860): ``(q+u).k + (q+v).W_R R_{i-j}``.

    Computed as attention terms (:meth:`terms`); depends on positions only through ``q_pos - k_pos``, so it is
    translation invariant and defined at any position (``extrapolates = True``). ``u``, ``v`` and ``W_R`` belong to the
    encoding; in :class:`posenc.Transformer` every layer of a stack shares them (the paper has one set per layer).

    Args:
        rel_dim: width ``d_R`` of the sinusoidal ``R`` (even); default ``dim`` rounded up to even, as in the paper.
        init_std: normal initialisation of ``W_R``, ``u`` and ``v`` (0.02 as in the reference code).
        method: how the positional term is formed, ``"auto"``, ``"gather"`` or ``"factored"`` (module docstring);
            all are exact.

    Parameters: ``w_r`` ``(H*D, d_R)``, ``content_bias`` (u) ``(H, D)``, ``position_bias`` (v) ``(H, D)``.
    """

    family = "relative"
    paper = "1901.02860"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 rel_dim: int | None = None, init_std: float = 0.02, method: str = "auto") -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        rel_dim = dim + dim % 2 if rel_dim is None else rel_dim
        if check_int(rel_dim, "transformer_xl: rel_dim", minimum=1) % 2:
            raise ValueError(f"transformer_xl: rel_dim must be a positive even int (R holds sin/cos pairs); got "
                             f"{rel_dim!r}. The paper uses rel_dim = dim.")
        if not (isinstance(init_std, (int, float)) and math.isfinite(init_std) and init_std >= 0):
            raise ValueError(f"transformer_xl: init_std must be a finite number >= 0; got {init_std!r}.")
        if method not in ("auto", "gather", "factored"):
            raise ValueError(f"transformer_xl: method must be 'auto', 'gather' or 'factored'; got {method!r}.")
        self.rel_dim = rel_dim
        self.method = method
        self.w_r = nn.Parameter(torch.randn(n_heads * self.head_dim, rel_dim) * init_std)  # (H*D, d_R)
        self.content_bias = nn.Parameter(torch.randn(n_heads, self.head_dim) * init_std)  # u (H, D)
        self.position_bias = nn.Parameter(torch.randn(n_heads, self.head_dim) * init_std)  # v (H, D)

    def terms(self, call: AttentionCall) -> TransformerXLTerms:
        """The logit terms ``(u . k_j + (q_i + v) . W_R R_{i-j}) * scale`` added to ``q_i . k_j * scale``.

        Args:
            q: ``(B, H, Tq, D)``; k, v: ``(B, Hkv, Tk, D)``; positions ``(T,)`` or ``(B, T)``; ``scale``
                multiplies the whole score (``1 / sqrt(D)`` by default).
        """
        q, k = call.q, call.k
        check_head_dim(self, q, k)
        return TransformerXLTerms(self)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rel_dim={self.rel_dim}, method={self.method!r}"


class TransformerXLTerms(AttentionTerms):
    """Transformer-XL's content-bias and position terms for one call; see :class:`TransformerXL`."""

    pair_tensors = 11  # measured at T=4096 (benchmarks/terms_memory.py): scores, position term, gather indices, ...
    call_tensors = ()  # the block methods read the block and the encoding's parameters only

    def __init__(self, pe: TransformerXL) -> None:
        self.pe = pe

    def queries(self, blk: ScoreBlock) -> Tensor:
        return blk.q + self.pe.content_bias.to(blk.q.dtype)[None, :, None, :]  # (B, H, rows, D): q_i + u

    def logits(self, scores: Tensor, blk: ScoreBlock) -> Tensor:
        # scores = (q_i + u) . k_j * scale (queries() adds the content bias u)
        pe, ct = self.pe, blk.q.dtype
        vb = pe.position_bias.to(ct)[None, :, None, :]  # (1, H, 1, D)
        position = xl_position_logits(blk.q + vb, pe.w_r.to(ct), blk.q_pos, blk.k_pos, method=pe.method)
        return scores + position * blk.scale  # (B, H, rows, keys)
