"""One attention entry point for every encoding: :func:`attention` picks a backend, never an encoding's name.

Shapes: ``q`` is ``(B, H, Tq, D)``, ``k`` is ``(B, Hkv, Tk, D)`` and ``v`` is ``(B, Hkv, Tk, Dv)`` with ``H`` a
multiple of ``Hkv`` (grouped-query attention). Positions are int64 ``(T,)`` or ``(B, T)``.

An encoding acts inside attention through a position-only ``bias`` (with its FlexAttention ``score_mod``), or
through attention *terms* (:mod:`posenc.terms`: logit terms computed from a block's raw scores, value terms from its
probabilities) when it needs the queries, keys or scores. Either way the backends here own the mask
(:func:`block_mask`), the softmax and the grouped-query expansion; with terms, ``reference``, ``dense`` and
``chunked`` evaluate them per block of query rows (:func:`_scores_block`), ``sdpa``'s fused kernels and ``flex``
cannot.

Backends (``backend=``), all computing the same numbers:

- ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient / math kernels),
  what ``auto`` uses when the encoding adds no bias. Given a bias it behaves exactly like ``"dense"`` (kept so that
  code written before ``"dense"`` existed keeps working), but ``auto`` names that path ``"dense"``.
- ``"dense"``: the encoding's ``bias``, the causal mask and ``attn_mask`` materialized as one ``(B|1, H, Tq, Tk)``
  float mask, then SDPA. Fastest for short sequences; ``O(H * Tq * Tk)`` extra memory.
- ``"chunked"``: queries in blocks of :func:`chunk_rows` rows; each block builds only its own
  ``(B|1, H, rows, Tk)`` mask (``pe.bias(q_pos[..., rows], k_pos)``) and runs SDPA -- or, for an encoding with terms,
  its own ``(B, H, rows, Tk)`` scores, logit terms, softmax and value terms -- and under autograd each block is
  recomputed in the backward pass (activation checkpointing; with terms, :class:`_ChunkedTerms`, which also
  accumulates the q/k/v gradients in place), so extra memory is ``O(rows * Tk)`` in the forward *and* the backward
  pass. Causal blocks also skip the keys no query of the block may see. The CPU training path for
  long sequences.
- ``"flex"``: :func:`torch.nn.attention.flex_attention` with the encoding's ``score_mod`` and a ``block_mask`` for
  causal / boolean ``attn_mask``, compiled once per process (``O(T)`` extra memory). The causal block mask comes
  from block arithmetic (:func:`causal_flex_block_mask`, cached per shape); a bool ``attn_mask`` goes through
  ``create_block_mask`` (compiled on GPU; on CPU it evaluates the ``(Tq, Tk)`` grid once per call). On CPU Flex
  runs only compiled and forward-only, so it refuses calls that need gradients there.
- ``"reference"``: explicit softmax math in float32 (float64 for float64 input) over all rows at once, for every
  encoding: the oracle for tests.
- ``"auto"``: the highest-priority backend that both *supports* the call (can compute it exactly) and *suits* it
  (is the cheap choice for its device, size and gradient needs): ``flex`` > ``chunked`` > ``dense`` > ``sdpa``.
  :func:`explain` says which and why, and every ``auto`` choice is logged at DEBUG level on the
  ``"posenc.attention"`` logger.

For an encoding with terms, ``dense`` (and ``sdpa``) is the same explicit computation as ``reference`` in one
block of all rows, and ``chunked`` in blocks; ``auto`` picks ``chunked`` once the ``(B, H, Tq, Tk)`` scores would
pass ``DENSE_MAX_ELEMENTS``.

More backends register themselves with :func:`register_backend`.

Causal masking is by *index*, aligned bottom-right: query ``i`` of ``Tq`` sits at key index ``Tk - Tq + i``, which
is right for KV-cache decoding (the new queries are the last tokens) and independent of position values (which may
be randomized or restart per packed document; mask documents with ``attn_mask``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from posenc.base import PositionalEncoding, check_positions, check_positions_layout, default_positions
from posenc.flex import HAVE_CXX, causal_flex_block_mask, flex_block_mask, flex_forward, flex_module
from posenc.positions import Positions
from posenc.terms import AttentionTerms, ScoreBlock, compute_dtype, expand_kv, safe_softmax

__all__ = ["AttentionCall", "attention", "explain", "register_backend", "BACKENDS", "causal_flex_block_mask",
           "chunk_rows"]

logger = logging.getLogger("posenc.attention")

# Cost model of ``auto`` (element counts of the dense ``(B|1, H, Tq, Tk)`` mask that ``dense`` would build).
DENSE_MAX_ELEMENTS = 2**24  # above this (64 MiB in float32) a bias call leaves ``dense`` for ``chunked``/``flex``
FLEX_MIN_ELEMENTS = 2**20  # on GPU, smaller calls (decode steps) stay on ``dense``: no compile, no shape churn
# auto never picks compiled Flex on CPU by default: torch 2.13's CPU flex template fails to compile some score_mods
# (inductor C++ error "cur_qSplitSize<N> was not declared"; seen for sandwich, and for every bias over (B, T)
# positions with Tq != Tk). Set a finite number of mask elements to opt in (2**26 pays for the ~30 s compile).
FLEX_CPU_MIN_ELEMENTS = math.inf
CHUNK_ELEMENTS = 2**22  # ``chunked`` sizes its query blocks so one block's mask holds about this many elements
# With attention terms the budget is a quarter of that, shared by the terms' ``pair_tensors`` score-sized tensors of
# one block (1 MiB of float32 each per quarter budget), and blocks may be as small as TERMS_MIN_ROWS rows: the
# backward pass (_ChunkedTerms) keeps nothing but one block and the gradients, so smaller blocks do pay (Shaw at
# T=4096: 8 rows cost 4 MiB beyond the output and gradients, 28 rows 15 MiB), at some time per block.
TERMS_BUDGET_SHARE = 4
TERMS_MIN_ROWS = 4


@dataclasses.dataclass
class AttentionCall:
    """Everything a backend needs, validated once by :func:`attention`."""

    q: Tensor  # (B, H, Tq, D)
    k: Tensor  # (B, Hkv, Tk, D)
    v: Tensor  # (B, Hkv, Tk, Dv)
    pe: PositionalEncoding | None
    q_pos: Tensor  # (Tq,) or (B, Tq) int64
    k_pos: Tensor  # (Tk,) or (B, Tk) int64
    causal: bool
    attn_mask: Tensor | None  # bool (True = attend) or float additive, broadcastable to (B, H, Tq, Tk)
    scale: float
    terms: AttentionTerms | None = None  # the encoding's attention terms for this call (pe.terms(...))

    @property
    def n_rep(self) -> int:
        return self.q.shape[1] // self.k.shape[1]

    @property
    def uses_bias(self) -> bool:
        return self.pe is not None and self.pe.uses_bias

    @property
    def uses_terms(self) -> bool:
        return self.terms is not None

    @property
    def needs_grad(self) -> bool:
        """Whether autograd will record this call (an input or a parameter of the encoding requires grad)."""
        if not torch.is_grad_enabled():
            return False
        if any(t is not None and t.requires_grad for t in (self.q, self.k, self.v, self.attn_mask)):
            return True
        return self.pe is not None and any(p.requires_grad for p in self.pe.parameters())

    @property
    def dense_mask_shape(self) -> tuple[int, int, int, int]:
        """Shape of the float mask ``dense`` materializes: ``(B or 1, H, Tq, Tk)`` (always ``B`` with terms)."""
        b, h, tq, _ = self.q.shape
        batched = self.uses_terms or any(p.dim() == 2 and p.shape[0] > 1 for p in (self.q_pos, self.k_pos)) or (
            self.attn_mask is not None and self.attn_mask.dim() == 4 and self.attn_mask.shape[0] > 1)
        return (b if batched else 1, h, tq, self.k.shape[-2])

    def describe(self) -> str:
        """One line of the facts ``auto`` decides on (for :func:`explain` and the debug log)."""
        facts = (f"device={self.q.device.type}, dtype={str(self.q.dtype).removeprefix('torch.')}, "
                 f"grad={self.needs_grad}, causal={self.causal}, q {tuple(self.q.shape)}, k {tuple(self.k.shape)}")
        shape = self.dense_mask_shape
        size = _human_bytes(math.prod(shape) * 4)
        if self.uses_terms:
            return f"{facts}, terms={self.pe.name}: dense scores {shape} = {size} in float32"
        if not self.uses_bias:
            return f"{facts}, no bias"
        return f"{facts}, bias={self.pe.name}: dense mask {shape} = {size} in float32"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable[[AttentionCall], Tensor]
    supports: Callable[[AttentionCall], str | None]  # None if it can run this call exactly, else why not
    priority: int  # auto tries higher first
    suits: Callable[[AttentionCall], str | None]  # None if auto should pick it for this call (cost), else why not


BACKENDS: dict[str, Backend] = {}


def _always(call: AttentionCall) -> str | None:
    return None


def register_backend(name: str, *, priority: int = 0, supports: Callable[[AttentionCall], str | None] = _always,
                     suits: Callable[[AttentionCall], str | None] = _always):
    """Decorator: add ``fn(call: AttentionCall) -> (B, H, Tq, Dv)`` as ``backend=name``.

    Args:
        name: the ``backend=`` name.
        priority: ``auto`` tries higher priorities first.
        supports: ``supports(call)`` returns ``None`` when the backend can compute this call exactly, or a reason
            why not (then neither ``auto`` nor an explicit ``backend=name`` runs it).
        suits: ``suits(call)`` returns ``None`` when ``auto`` should pick this backend for the call (it is the cheap
            choice for this device, size and gradient need), or a reason why not; an explicit ``backend=name``
            ignores it.
    """

    def decorator(fn: Callable[[AttentionCall], Tensor]) -> Callable[[AttentionCall], Tensor]:
        BACKENDS[name] = Backend(name, fn, supports, priority, suits)
        return fn

    return decorator


# -- masks -------------------------------------------------------------------------------------------------------------
def causal_mask(q_len: int, k_len: int, device: torch.device, *, start: int = 0, stop: int | None = None,
                key_stop: int | None = None) -> Tensor:
    """Bool ``(stop - start, key_stop)``, True where query ``i`` (at key index ``Tk - Tq + i``) may attend key ``j``.

    With the defaults it is the full ``(Tq, Tk)`` mask; ``start``/``stop`` select query rows and ``key_stop`` the
    first keys, as ``chunked`` needs for one block.
    """
    stop = q_len if stop is None else stop
    key_stop = k_len if key_stop is None else key_stop
    q_idx = torch.arange(k_len - q_len + start, k_len - q_len + stop, device=device)
    return torch.arange(key_stop, device=device) <= q_idx[:, None]


def _slice_mask(mask: Tensor, q_len: int, k_len: int, start: int, stop: int, key_stop: int) -> Tensor:
    """Rows ``start:stop`` and keys ``:key_stop`` of an ``attn_mask`` broadcastable to ``(B, H, Tq, Tk)``."""
    if mask.dim() >= 2 and mask.shape[-2] == q_len and (start, stop) != (0, q_len):
        mask = mask[..., start:stop, :]
    if mask.dim() >= 1 and mask.shape[-1] == k_len and key_stop != k_len:
        mask = mask[..., :key_stop]
    return mask


def block_mask(call: AttentionCall, dtype: torch.dtype, *, start: int = 0, stop: int | None = None,
               key_stop: int | None = None, with_bias: bool = True) -> Tensor | None:
    """The mask of query rows ``start:stop`` against keys ``:key_stop``: bias + causal + ``attn_mask`` in one.

    Returns an additive float mask in ``dtype`` broadcastable to ``(B, H, stop - start, key_stop)`` when there is a
    bias, a bool mask (True = attend) when there is only masking, or ``None`` when there is neither.
    """
    q_len, k_len = call.q.shape[-2], call.k.shape[-2]
    stop = q_len if stop is None else stop
    key_stop = k_len if key_stop is None else key_stop
    mask = _block_attn_mask(call, start, stop, key_stop)
    if not (with_bias and call.uses_bias):
        return mask
    q_pos = call.q_pos if (start, stop) == (0, q_len) else call.q_pos[..., start:stop]
    k_pos = call.k_pos if key_stop == k_len else call.k_pos[..., :key_stop]
    bias = call.pe.bias(q_pos, k_pos)  # (B|, H, rows, keys); the whole call's own tensors when not sliced
    bias = bias.to(dtype)
    if bias.dim() == 3:  # (H, Tq, Tk) -> (1, H, Tq, Tk)
        bias = bias.unsqueeze(0)
    if mask is None:
        return bias
    if mask.dtype == torch.bool:
        return bias.masked_fill(~mask, float("-inf"))
    return bias + mask.to(dtype)


def _block_attn_mask(call: AttentionCall, start: int, stop: int, key_stop: int) -> Tensor | None:
    """Causal mask and ``attn_mask`` (no bias) of rows ``start:stop`` and keys ``:key_stop``: bool, float or None."""
    q, k = call.q, call.k
    q_len, k_len = q.shape[-2], k.shape[-2]
    mask = call.attn_mask
    if mask is not None:
        mask = _slice_mask(mask, q_len, k_len, start, stop, key_stop)
    if call.causal and start != q_len - 1:  # the last query row attends every key (a decode step): no mask needed
        cm = causal_mask(q_len, k_len, q.device, start=start, stop=stop, key_stop=key_stop)
        if mask is None:
            mask = cm
        elif mask.dtype == torch.bool:
            mask = mask & cm
        else:
            mask = mask.masked_fill(~cm, float("-inf"))
    return mask


def combined_mask(call: AttentionCall, dtype: torch.dtype, *, with_bias: bool = True) -> Tensor | None:
    """The causal mask, ``attn_mask`` and the encoding's dense bias as one additive float mask (or a bool mask)."""
    return block_mask(call, dtype, with_bias=with_bias)


# -- backends ----------------------------------------------------------------------------------------------------------
def _no_bias_reason(call: AttentionCall) -> str | None:
    if call.uses_bias or call.uses_terms:
        return None
    return "no bias to apply: sdpa's fused kernels need nothing materialized"


def _dense_suits(call: AttentionCall) -> str | None:
    return _no_bias_reason(call)


@register_backend("sdpa", priority=10)
@register_backend("dense", priority=20, suits=_dense_suits)
def _dense(call: AttentionCall) -> Tensor:
    """SDPA with bias, causal mask and ``attn_mask`` as one dense mask (no mask at all when there is none).

    With attention terms: the explicit computation of :func:`_scores_block` over all query rows at once.
    """
    q, k, v = call.q, call.k, call.v
    if call.uses_terms:
        return _scores_block(call, 0, q.shape[-2], q, k, v)
    if call.causal and call.attn_mask is None and not call.uses_bias and q.shape[-2] == k.shape[-2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=call.scale, enable_gqa=call.n_rep > 1)
    mask = combined_mask(call, q.dtype)  # (B|1, H|1, Tq, Tk) or None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=call.scale, enable_gqa=call.n_rep > 1)


def chunk_rows(call: AttentionCall) -> int:
    """Query rows per ``chunked`` block: about ``CHUNK_ELEMENTS`` mask elements per block, at least 16 rows.

    With attention terms the terms' ``pair_tensors`` score-sized tensors share ``CHUNK_ELEMENTS //
    TERMS_BUDGET_SHARE`` elements, at least ``TERMS_MIN_ROWS`` rows.
    """
    b, h, q_len, _ = call.dense_mask_shape
    per_row = b * h * call.k.shape[-2]
    if call.uses_terms:
        budget = CHUNK_ELEMENTS // TERMS_BUDGET_SHARE // max(1, call.terms.pair_tensors)
        return max(1, min(q_len, max(TERMS_MIN_ROWS, budget // max(1, per_row))))
    return max(1, min(q_len, max(16, CHUNK_ELEMENTS // max(1, per_row))))


def _chunked_suits(call: AttentionCall) -> str | None:
    if not (call.uses_bias or call.uses_terms):
        return _no_bias_reason(call)
    n = math.prod(call.dense_mask_shape)
    if n <= DENSE_MAX_ELEMENTS:
        what = "scores" if call.uses_terms else "mask"
        return f"the dense {what} is small ({n} <= DENSE_MAX_ELEMENTS = {DENSE_MAX_ELEMENTS} elements): dense is faster"
    return None


def _attend_block(call: AttentionCall, start: int, stop: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    # q (B, H, rows, D), k (B, Hkv, keys, D), v (B, Hkv, keys, Dv) -> (B, H, rows, Dv)
    mask = block_mask(call, q.dtype, start=start, stop=stop, key_stop=k.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=call.scale, enable_gqa=call.n_rep > 1)


def _score_block(call: AttentionCall, start: int, stop: int, q: Tensor, k: Tensor, v: Tensor) -> ScoreBlock:
    """The :class:`ScoreBlock` of query rows ``start:stop`` against the keys ``k``, ``v`` given (the first ``keys``).

    Args:
        q: ``(B, H, rows, D)``; k: ``(B, Hkv, keys, D)``; v: ``(B, Hkv, keys, Dv)``, in the input dtype.
    """
    compute = compute_dtype(q)
    keys = k.shape[-2]
    q_len, k_len = call.q.shape[-2], call.k.shape[-2]
    mask = _block_attn_mask(call, start, stop, keys)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(compute)
    return ScoreBlock(q=q.to(compute), k=expand_kv(k, call.n_rep).to(compute),
                      v=expand_kv(v, call.n_rep).to(compute), q_pos=call.q_pos[..., start:stop],
                      k_pos=call.k_pos[..., :keys],
                      q_index=torch.arange(k_len - q_len + start, k_len - q_len + stop, device=q.device),
                      start=start, stop=stop, causal=call.causal, scale=call.scale, n_rep=call.n_rep, mask=mask)


def _raw_scores(call: AttentionCall, blk: ScoreBlock) -> Tensor | None:
    """``q_blk k^T * scale`` ``(B, H, rows, keys)``, or ``None`` when the terms form the whole score themselves."""
    if call.terms is None:
        return (blk.q @ blk.k.transpose(-2, -1)) * call.scale
    if call.terms.replaces_scores:
        return None
    return (call.terms.queries(blk) @ blk.k.transpose(-2, -1)) * call.scale


def _block_probs(call: AttentionCall, blk: ScoreBlock, scores: Tensor | None) -> Tensor:
    """``safe_softmax(terms.logits(scores) + bias + mask)`` ``(B, H, rows, keys)``: the one mask and softmax."""
    logits = call.terms.logits(scores, blk) if call.terms is not None else scores
    if call.uses_bias:
        logits = logits + call.pe.bias(blk.q_pos, blk.k_pos).to(logits.dtype)  # (H|B, H, rows, keys)
    return safe_softmax(blk.masked(logits))


def _scores_block(call: AttentionCall, start: int, stop: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Explicit attention of query rows ``start:stop`` against the keys ``k``, ``v`` given (the first ``keys``).

    ``softmax(terms.logits(q k^T * scale) + bias + mask) @ v + terms.values(probs)`` in the compute dtype
    (float32, or float64 for float64 input): the one place scores, the mask, the softmax and the grouped-query
    expansion meet, for ``reference`` (all rows, every encoding), ``dense`` and ``chunked`` (encodings with terms).

    Args:
        q: ``(B, H, rows, D)``; k: ``(B, Hkv, keys, D)``; v: ``(B, Hkv, keys, Dv)``, in the input dtype.

    Returns:
        ``(B, H, rows, Dv)`` in the dtype of ``q``.
    """
    blk = _score_block(call, start, stop, q, k, v)
    probs = _block_probs(call, blk, _raw_scores(call, blk))  # (B, H, rows, keys)
    out = probs @ blk.v  # (B, H, rows, Dv)
    extra = call.terms.values(probs, blk) if call.terms is not None else None
    if extra is not None:
        out = out + extra
    return out.to(q.dtype)


def _blocks(call: AttentionCall, rows: int):
    """``(start, stop, key_stop)`` of each ``chunked`` block: causal blocks skip the keys none of their rows sees."""
    q_len, k_len = call.q.shape[-2], call.k.shape[-2]
    for start in range(0, q_len, rows):
        stop = min(start + rows, q_len)
        # Causal: the block's last query sits at key index k_len - q_len + stop - 1; later keys are masked anyway.
        yield start, stop, (k_len - q_len + stop if call.causal else k_len)


def _add_grouped_matmul_(out: Tensor, a: Tensor, b: Tensor, n_rep: int, alpha: float = 1.0) -> None:
    """``out += alpha * a^T @ b`` summed over the ``n_rep`` query heads of each kv head, in place.

    ``out`` ``(B, Hkv, M, N)`` (a view into a gradient buffer), ``a`` ``(B, H, K, M)``, ``b`` ``(B, H, K, N)``: the
    heads of one group and their ``K`` rows form one contraction, so nothing ``(B, H, M, N)``-sized is allocated.
    """
    bsz, hkv, m, n = out.shape
    a = a.reshape(bsz * hkv, n_rep * a.shape[-2], m)  # (B*Hkv, n_rep*K, M): a view for a contiguous a
    b = b.reshape(bsz * hkv, n_rep * b.shape[-2], n)
    out.view(bsz * hkv, m, n).baddbmm_(a.transpose(-2, -1), b, alpha=alpha)


class _SliceLeaves:
    """The slices of per-call tensors that one recomputed block reads, each a leaf of its own (``slice_leaf``).

    Differentiated with respect to a slice (the block's rows of a query-side tensor, its keys of a key-side one), the
    block's gradient is the size of the slice; with respect to the whole tensor it would be a full-size tensor, zero
    outside the slice, for every block.
    """

    def __init__(self, tensors: list[Tensor]) -> None:
        self.which = {id(t): i for i, t in enumerate(tensors) if t.requires_grad}
        self.taken: list[tuple[int, tuple, Tensor]] = []  # (which tensor, the slice's index in it, the slice's leaf)

    def __call__(self, x: Tensor, index: tuple) -> Tensor:
        i = self.which.get(id(x))
        if i is None:
            return x[index]
        leaf = x[index].detach().requires_grad_()
        self.taken.append((i, index, leaf))
        return leaf

    @property
    def leaves(self) -> list[Tensor]:
        return [leaf for _, _, leaf in self.taken]


def _add_term_grads_(dt: list[Tensor | None], got: dict[int, Tensor], leaves: list[Tensor],
                     slices: _SliceLeaves) -> None:
    """Add one block's gradients of the terms' tensors ``leaves`` (``got``, by id) into ``dt``, in place.

    The gradient of a whole tensor (a parameter, or a per-call tensor read other than through ``query_rows`` or
    ``key_rows``) is added as it is; that of a slice goes into its rows of a full-size zero buffer, made once.
    """
    for i, leaf in enumerate(leaves):
        g = got.get(id(leaf))
        if g is not None:
            dt[i] = g.contiguous() if dt[i] is None else dt[i].add_(g)  # contiguous: written in place later
    for i, index, leaf in slices.taken:
        g = got.get(id(leaf))
        if g is not None:
            if dt[i] is None:
                dt[i] = torch.zeros_like(leaves[i])
            dt[i][index].add_(g)


class _ChunkedTerms(torch.autograd.Function):
    """``chunked`` attention with terms under autograd, ``O(rows * Tk)`` extra memory beyond the gradients.

    The forward pass keeps nothing but its inputs. The backward pass recomputes one block at a time and sends its
    gradients straight into ``dq`` (the block's rows), ``dk``/``dv`` and the term tensors' gradients, allocated once:
    the core (``q k^T`` and ``probs @ v``) is differentiated by hand, with the products for ``dk`` and ``dv``
    accumulated in place (:func:`_add_grouped_matmul_`), and autograd differentiates only the terms, from the block's
    raw scores, with respect to the block's slices of the per-call tensors (:class:`_SliceLeaves`). Checkpointing
    each block (the fallback, :func:`_chunked`) would instead give every block a full-size ``(B, Hkv, Tk, D)``
    gradient of ``k`` and ``v`` and a full-size ``(B, H, Tq, D)`` one of its ``q`` slice.
    """

    @staticmethod
    def forward(ctx, call: AttentionCall, rows: int, q: Tensor, k: Tensor, v: Tensor, *tensors: Tensor) -> Tensor:
        ctx.call, ctx.rows = call, rows
        ctx.save_for_backward(q, k, v, *tensors)
        out = q.new_empty(*q.shape[:-1], v.shape[-1])  # (B, H, Tq, Dv)
        for start, stop, key_stop in _blocks(call, rows):
            out[:, :, start:stop] = _scores_block(call, start, stop, q[:, :, start:stop], k[:, :, :key_stop],
                                                  v[:, :, :key_stop])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        call, rows = ctx.call, ctx.rows
        q, k, v, *tensors = ctx.saved_tensors
        need_q, need_k, need_v, *need_t = ctx.needs_input_grad[2:]
        compute, n_rep, scale = compute_dtype(q), call.n_rep, call.scale
        dq = q.new_empty(q.shape, dtype=compute) if need_q else None  # every row is in one block: all written
        dk = k.new_zeros(k.shape, dtype=compute) if need_k else None
        dv = v.new_zeros(v.shape, dtype=compute) if need_v else None
        # The terms' per-call tensors (the first len(call_tensors) of tensors) become leaves of the recomputed blocks,
        # in a copy of the terms: their history belongs to the caller's graph, which autograd continues from the
        # gradients returned here. The encoding's parameters (the rest) are leaves already.
        names = call.terms.call_tensors
        leaves = [t.detach().requires_grad_(need) if i < len(names) else t
                  for i, (t, need) in enumerate(zip(tensors, need_t))]
        if names:
            terms = copy.copy(call.terms)
            for name, leaf in zip(names, leaves):
                setattr(terms, name, leaf)
            call = dataclasses.replace(call, terms=terms)
        dt: list[Tensor | None] = [None] * len(tensors)
        for start, stop, key_stop in _blocks(call, rows):
            blk = _score_block(call, start, stop, q[:, :, start:stop], k[:, :, :key_stop], v[:, :, :key_stop])
            go = grad_out[:, :, start:stop].to(compute)  # (B, H, rows, Dv)
            with torch.enable_grad():
                # the terms may read blk.q, blk.k, blk.v: their own gradients
                qg = blk.q.detach().requires_grad_(need_q)
                kg = blk.k.detach().requires_grad_(need_k)
                vg = blk.v.detach().requires_grad_(need_v)
                slices = _SliceLeaves(leaves[:len(names)])
                blk_g = dataclasses.replace(blk, q=qg, k=kg, v=vg, slice_leaf=slices)
                shifted = None if call.terms.replaces_scores else call.terms.queries(blk_g)  # (B, H, rows, D)
            scores = None  # the raw scores (B, H, rows, keys), a leaf: their gradient gives the core's dq and dk
            if shifted is not None:
                scores = (shifted.detach() @ blk.k.transpose(-2, -1)) * scale
                scores.requires_grad_(need_k or shifted.requires_grad)
            with torch.enable_grad():
                probs = _block_probs(call, blk_g, scores)
                extra = call.terms.values(probs, blk_g)
            inputs = [x for x in (scores, qg, kg, vg, *leaves, *slices.leaves) if x is not None and x.requires_grad]
            if need_v:  # the core's value gradient: probs^T @ grad_out, summed per kv head
                _add_grouped_matmul_(dv[:, :, :key_stop], probs.detach(), go, n_rep)
            grads = [None] * len(inputs)
            if probs.requires_grad:
                outputs, seeds = [probs], [go @ blk.v.transpose(-2, -1)]  # d probs from probs @ v: (B, H, rows, keys)
                if extra is not None and extra.requires_grad:
                    outputs.append(extra)
                    seeds.append(go.to(extra.dtype))
                grads = list(torch.autograd.grad(outputs, inputs, seeds, allow_unused=True))
            del probs, extra
            got = dict(zip(map(id, inputs), grads))
            d_scores = got.get(id(scores)) if scores is not None else None
            if need_k and d_scores is not None:  # dk from the scores: d_scores^T @ queries * scale
                _add_grouped_matmul_(dk[:, :, :key_stop], d_scores, shifted.detach(), n_rep, alpha=scale)
            if d_scores is not None and shifted is not qg:  # shifted queries: on to q and the terms' tensors
                through = [x for x in (qg, *leaves, *slices.leaves) if x.requires_grad]
                extra_grads = torch.autograd.grad(shifted, through, (d_scores @ blk.k) * scale, allow_unused=True)
                for x, g in zip(through, extra_grads):
                    if g is not None:
                        got[id(x)] = g if got.get(id(x)) is None else got[id(x)] + g
                d_scores = None
            if need_q:
                d_q = got.get(id(qg))
                d_q = torch.zeros_like(blk.q) if d_q is None else d_q
                if d_scores is not None:  # from the scores: d_scores @ k * scale
                    d_q = d_q + (d_scores @ blk.k) * scale
                dq[:, :, start:stop] = d_q
            for buf, got_x in ((dk, got.get(id(kg))), (dv, got.get(id(vg)))):
                if buf is not None and got_x is not None:  # a term's own k/v gradient, summed per kv head
                    b, h, keys, d = got_x.shape
                    buf[:, :, :key_stop] += got_x.view(b, h // n_rep, n_rep, keys, d).sum(2)
            _add_term_grads_(dt, got, leaves, slices)
            del grads, got, got_x  # this block's gradients, freed before the next block makes its own
        return (None, None, None if dq is None else dq.to(q.dtype), None if dk is None else dk.to(k.dtype),
                None if dv is None else dv.to(v.dtype), *dt)


def _check_call_tensors(terms: AttentionTerms, params: list[Tensor]) -> None:
    """Raise unless every tensor attribute of ``terms`` that requires grad is in its ``call_tensors`` or a parameter.

    :class:`_ChunkedTerms` differentiates the recomputed blocks with respect to those only, so the gradient of any
    other tensor the block methods read would be lost without a word.
    """
    declared, param_ids = set(terms.call_tensors), {id(p) for p in params}
    missing = [name for name, x in vars(terms).items()
               if isinstance(x, Tensor) and x.requires_grad and name not in declared and id(x) not in param_ids]
    if missing:
        raise TypeError(f"{type(terms).__name__}: the attributes {missing} hold tensors that require grad but are not "
                        f"in call_tensors {terms.call_tensors}, so chunked would lose their gradients. List them in "
                        f"call_tensors (or declare call_tensors = None to checkpoint each block instead).")


@register_backend("chunked", priority=30, suits=_chunked_suits)
def _chunked(call: AttentionCall) -> Tensor:
    """Query blocks of :func:`chunk_rows` rows, each with only its own mask; recomputed in the backward pass.

    Recomputing is what keeps the *backward* pass small too: SDPA saves its ``attn_mask`` for backward, so without
    it every block's mask would stay alive until backward and the total would be the dense mask again. With terms
    that declare what they read (``AttentionTerms.call_tensors``) the blocks run inside :class:`_ChunkedTerms`;
    otherwise (and under ``torch.compile``) each block is checkpointed.
    """
    q, k, v = call.q, call.k, call.v
    rows = chunk_rows(call)
    if call.needs_grad and call.uses_terms and not torch.compiler.is_compiling() and (
            call.attn_mask is None or not call.attn_mask.requires_grad):
        names = call.terms.call_tensors
        if names is not None:  # the terms' per-call tensors first, then the encoding's parameters (the bias's too)
            tensors = [getattr(call.terms, name) for name in names]
            params = [p for p in call.pe.parameters() if p.requires_grad]
            _check_call_tensors(call.terms, params)
            return _ChunkedTerms.apply(call, rows, q, k, v, *tensors, *params)
    recompute = call.needs_grad
    block = _scores_block if call.uses_terms else _attend_block
    outs = []
    for start, stop, key_stop in _blocks(call, rows):
        args = (call, start, stop, q[:, :, start:stop], k[:, :, :key_stop], v[:, :, :key_stop])
        if recompute:
            outs.append(checkpoint(block, *args, use_reentrant=False, preserve_rng_state=False))
        else:
            outs.append(block(*args))
    if not outs:
        return q.new_zeros(*q.shape[:-1], v.shape[-1])
    return torch.cat(outs, dim=-2)  # (B, H, Tq, Dv)


def _flex_supports(call: AttentionCall) -> str | None:
    if call.uses_terms:
        return (f"{call.pe.name}'s attention terms read the queries, keys or scores, which a FlexAttention "
                f"score_mod cannot; use 'chunked' (O(rows * Tk) memory) or 'dense'")
    if flex_module() is None:
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention (it needs torch >= 2.5)"
    device = call.q.device.type
    if device == "cpu" and call.needs_grad:
        return (f"FlexAttention on CPU is forward-only in torch {torch.__version__.split('+')[0]} and these inputs "
                f"need gradients; use 'chunked' for training (or run under torch.no_grad())")
    if device == "cpu" and not HAVE_CXX:
        return "FlexAttention on CPU runs only under torch.compile, which needs a C++ compiler (g++ or clang++)"
    if call.q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"FlexAttention computes in float32/bfloat16/float16, not {call.q.dtype}"
    if call.attn_mask is not None and call.attn_mask.dtype != torch.bool:
        return "a float attn_mask cannot become a block_mask; pass a bool mask (True = attend) or use 'chunked'"
    if device == "cpu" and call.uses_bias and (call.q_pos.dim() == 2 or call.k_pos.dim() == 2):
        # torch 2.13's CPU flex template fails to compile (C++ error 'cur_qSplitSize4' not declared) when a score_mod
        # reads per-sequence positions with Tq != Tk; refuse (B, T) positions on CPU rather than crash mid-call.
        return ("FlexAttention on CPU cannot compile a score_mod over per-sequence (B, T) positions in torch "
                f"{torch.__version__.split('+')[0]} (inductor codegen error); use 'chunked' or 'dense'")
    if call.uses_bias and type(call.pe).score_mod is PositionalEncoding.score_mod:
        return f"{call.pe.name} defines bias() but no score_mod()"
    if call.uses_bias and call.needs_grad and not getattr(call.pe, "flex_backward", True):
        return (f"{call.pe.name}'s score_mod indexes a trainable tensor more than once, which FlexAttention's "
                f"backward does not support (torch {torch.__version__.split('+')[0]}); use 'chunked' or 'dense'")
    return None


def _flex_suits(call: AttentionCall) -> str | None:
    if not call.uses_bias:
        return _no_bias_reason(call)
    n = math.prod(call.dense_mask_shape)
    if call.q.device.type == "cpu" and n < FLEX_CPU_MIN_ELEMENTS:
        if FLEX_CPU_MIN_ELEMENTS == math.inf:
            return ("auto does not use compiled FlexAttention on CPU (torch's CPU flex kernel fails to compile some "
                    "score_mods; opt in by setting FLEX_CPU_MIN_ELEMENTS in the posenc.attention module)")
        return (f"on CPU compiling FlexAttention (~30 s once) pays off only from FLEX_CPU_MIN_ELEMENTS = "
                f"{FLEX_CPU_MIN_ELEMENTS} mask elements; this call has {n}")
    if call.q.device.type != "cpu" and n < FLEX_MIN_ELEMENTS:
        return f"a small call ({n} < FLEX_MIN_ELEMENTS = {FLEX_MIN_ELEMENTS} mask elements) is cheaper dense"
    return None


@register_backend("flex", priority=40, supports=_flex_supports, suits=_flex_suits)
def _flex(call: AttentionCall) -> Tensor:
    """FlexAttention: the encoding's ``score_mod`` and a ``block_mask``, compiled; no ``(Tq, Tk)`` tensor."""
    score_mod = call.pe.score_mod(call.q_pos, call.k_pos) if call.uses_bias else None
    block_mask = flex_block_mask(call.q, call.k, causal=call.causal, attn_mask=call.attn_mask)
    return flex_forward(call.q, call.k, call.v, score_mod=score_mod, block_mask=block_mask, scale=call.scale,
                        enable_gqa=call.n_rep > 1)  # (B, H, Tq, Dv)


@register_backend("reference", priority=-100)
def _reference(call: AttentionCall) -> Tensor:
    """``softmax(terms(q k^T * scale) + bias + mask) v + value terms`` in float32 (float64 for float64 input), all
    rows at once; fully masked rows give 0."""
    return _scores_block(call, 0, call.q.shape[-2], call.q, call.k, call.v)  # (B, H, Tq, Dv)


# -- entry point -------------------------------------------------------------------------------------------------------
def attention(q: Tensor, k: Tensor, v: Tensor, pe: PositionalEncoding | None = None, *, q_pos: Tensor | None = None,
              k_pos: Tensor | None = None, causal: bool = False, attn_mask: Tensor | None = None,
              backend: str = "auto", scale: float | None = None, positions: Positions | None = None) -> Tensor:
    """Scaled dot-product attention with a positional encoding's bias or custom attention applied.

    Rotary encodings are applied *before* this call (``q, k = pe.rotate(q, k, q_pos, k_pos)``), because a KV cache
    stores keys already rotated; this function applies what acts inside attention (``bias``/``score_mod``, or the
    encoding's attention ``terms``).

    Args:
        q: ``(B, H, Tq, D)`` queries.
        k: ``(B, Hkv, Tk, D)`` keys; ``H % Hkv == 0`` (grouped-query attention when ``Hkv < H``).
        v: ``(B, Hkv, Tk, Dv)`` values.
        pe: the positional encoding, or ``None``.
        q_pos: int64 ``(Tq,)`` or ``(B, Tq)``; default ``Tk - Tq .. Tk - 1`` (the last ``Tq`` keys' positions).
        k_pos: int64 ``(Tk,)`` or ``(B, Tk)``; default ``0 .. Tk - 1``.
        causal: mask keys after each query (by index, bottom-right aligned; see the module docstring).
        attn_mask: bool (True = may attend) or additive float mask broadcastable to ``(B, H, Tq, Tk)``.
        backend: ``"auto"``, or a name in ``BACKENDS``: ``"sdpa"``, ``"dense"``, ``"chunked"``, ``"flex"``,
            ``"reference"`` (see the module docstring). A named backend that cannot compute the call
            exactly raises ``ValueError`` with the reason; it never falls back silently.
        scale: softmax scale, default ``1 / sqrt(D)``.
        positions: instead of ``q_pos``/``k_pos``, a :class:`posenc.Positions` holding them (``pos``, ``key_pos``),
            as a model passes to every layer. When it is ``validated`` (``Positions.validate``, which the model runs
            once per forward) the position values are not checked again here (their shapes and devices still are),
            so a layer's call costs no device sync.

    Returns:
        ``(B, H, Tq, Dv)`` in the dtype of ``q``.
    """
    call = _prepare(q, k, v, pe, q_pos=q_pos, k_pos=k_pos, causal=causal, attn_mask=attn_mask, scale=scale,
                    positions=positions)
    chosen, reason = _choose(call, backend)
    if backend == "auto" and not torch.compiler.is_compiling() and logger.isEnabledFor(logging.DEBUG):
        logger.debug("auto chose %s: %s [%s]", chosen.name, reason, call.describe())
    return chosen.fn(call)


def explain(q: Tensor, k: Tensor, v: Tensor, pe: PositionalEncoding | None = None, *, backend: str = "auto",
            **kwargs) -> str:
    """Which backend :func:`attention` would use for these arguments, and why (no attention is computed).

    Takes the same arguments as :func:`attention`. The answer reads ``"<backend>: <why> [<facts>]"``, where the
    facts are what ``auto`` decides on (device, dtype, whether gradients are needed, the bias, the dense mask size)
    and the *why* lists every higher-priority backend that was skipped with its reason.

    Example:
        >>> posenc.attention.explain(q, k, v, pe, causal=True)  # doctest: +SKIP
        'chunked: highest-priority backend that supports and suits this call (skipped: flex: FlexAttention on CPU
        is forward-only ...) [device=cpu, dtype=float32, grad=True, causal=True, bias=alibi, dense mask
        (1, 8, 8192, 8192) = 2.0 GiB in float32]'
    """
    call = _prepare(q, k, v, pe, **kwargs)
    chosen, reason = _choose(call, backend)
    return f"{chosen.name}: {reason} [{call.describe()}]"


# ``posenc.attention`` is this function (the package re-exports it over the module name), so hang ``explain`` on it
# too: ``posenc.attention.explain(...)`` then works whichever of the two a user holds.
attention.explain = explain


def _choose(call: AttentionCall, backend: str) -> tuple[Backend, str]:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str; got {type(backend).__name__}.")
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose 'auto' or one of {sorted(BACKENDS)}.")
        chosen = BACKENDS[backend]
        why_not = chosen.supports(call)
        if why_not is not None:
            raise ValueError(f"backend {backend!r} cannot compute this call exactly: {why_not}. Use backend='auto'.")
        return chosen, "requested"
    skipped = []
    for candidate in sorted(BACKENDS.values(), key=lambda b: -b.priority):
        if candidate.name == "reference":
            continue
        why_not = candidate.supports(call) or candidate.suits(call)
        if why_not is None:
            extra = f" (skipped {_join_skipped(skipped)})" if skipped else ""
            return candidate, f"highest-priority backend that supports and suits this call{extra}"
        skipped.append((candidate.name, why_not))
    return BACKENDS["reference"], f"no faster backend supports this call (skipped {_join_skipped(skipped)})"


def _join_skipped(skipped: list[tuple[str, str]]) -> str:
    """``[(name, reason), ...]`` as ``"a, b: reason; c: other reason"`` (backends with one reason share it)."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped:
        by_reason.setdefault(reason, []).append(name)
    return "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items())


def _prepare(q: Tensor, k: Tensor, v: Tensor, pe: PositionalEncoding | None, *, q_pos: Tensor | None = None,
             k_pos: Tensor | None = None, causal: bool = False, attn_mask: Tensor | None = None,
             scale: float | None = None, positions: Positions | None = None) -> AttentionCall:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor of shape (B, H, T, D); got {type(t).__name__}.")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, T, D) = 4 dims; got shape {tuple(t.shape)}. Hint: "
                             f"x.view(B, T, H, D).transpose(1, 2) turns (B, T, H*D) into (B, H, T, D).")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor; got {t.dtype}.")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}.")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device; got {q.device}, {k.device}, {v.device}.")
    (b, h, tq, d), (bk, hk, tk, dk), (bv, hv, tv, _) = q.shape, k.shape, v.shape
    if not (b == bk == bv):
        raise ValueError(f"batch sizes differ: q {b}, k {bk}, v {bv}.")
    if d != dk:
        raise ValueError(f"q and k must share head_dim; got {d} and {dk}.")
    if hk != hv or tk != tv:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must agree on heads and length.")
    if hk == 0 or h % hk:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({hk}) for grouped-query "
                         f"attention.")
    if pe is not None and not isinstance(pe, PositionalEncoding):
        raise TypeError(f"pe must be a posenc PositionalEncoding or None; got {type(pe).__name__}. "
                        f"Hint: posenc.get_encoding(name, dim=..., n_heads=...).")
    if pe is not None and (pe.uses_bias or pe.uses_terms) and pe.n_heads != h:
        raise ValueError(f"{pe.name} was built for n_heads={pe.n_heads} but q has {h} heads.")
    if causal and tq > tk:
        raise ValueError(f"causal attention needs Tq <= Tk (queries are the last Tq keys); got Tq={tq}, Tk={tk}.")
    if attn_mask is not None:
        _check_mask(attn_mask, (b, h, tq, tk), q)
        attn_mask = _normalize_mask(attn_mask, q.dtype)
    check = check_positions
    if positions is not None:
        if not isinstance(positions, Positions):
            raise TypeError(f"positions must be a posenc.Positions; got {type(positions).__name__}. Hint: pass "
                            f"position tensors as q_pos= and k_pos=.")
        if q_pos is not None or k_pos is not None:
            raise ValueError("pass positions=Positions(...) or q_pos=/k_pos=, not both.")
        q_pos = positions.pos
        k_pos = positions.pos if positions.key_pos is None else positions.key_pos
        if positions.validated:  # checked once where they entered (the model's forward): shapes only, no sync
            check = _check_layout
    q_pos = check(q_pos, tq, name="q_pos", batch=b, device=q.device)
    k_pos = check(k_pos, tk, name="k_pos", batch=b, device=q.device)
    if k_pos is None:
        k_pos = default_positions(tk, device=q.device)
    if q_pos is None:  # the queries are the last Tq keys (self-attention, KV-cache decoding)
        q_pos = default_positions(tq, offset=max(tk - tq, 0), device=q.device)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    terms = None
    if pe is not None and pe.uses_terms:
        terms = pe.terms(q, k, v, q_pos=q_pos, k_pos=k_pos, causal=bool(causal), scale=scale)
    return AttentionCall(q, k, v, pe, q_pos, k_pos, bool(causal), attn_mask, scale, terms)


def _check_layout(pos: Tensor | None, length: int, *, name: str, batch: int, device: torch.device) -> Tensor | None:
    if pos is not None:
        check_positions_layout(pos, length, name=name, batch=batch, device=device)
    return pos


def _check_mask(mask: Tensor, target: tuple[int, int, int, int], q: Tensor) -> None:
    if not isinstance(mask, Tensor):
        raise TypeError(f"attn_mask must be a tensor; got {type(mask).__name__}.")
    if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
        raise TypeError(f"attn_mask must be bool (True = attend) or a float additive mask; got {mask.dtype}.")
    if mask.device != q.device:
        raise ValueError(f"attn_mask is on {mask.device} but q is on {q.device}.")
    shape = tuple(mask.shape)
    ok = mask.dim() <= 4 and all(m in (1, t) for m, t in zip(shape[::-1], target[::-1]))
    if not ok:
        raise ValueError(f"attn_mask of shape {shape} does not broadcast to (B, H, Tq, Tk) = {target}; each dim must "
                         f"be 1 or match.")


def _normalize_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A checked ``attn_mask`` as every backend takes it: 4-D (a view), a float mask in a dtype SDPA accepts.

    ``(Tk,)`` or ``(Tq, Tk)`` masks gain leading size-1 dims (SDPA and the slicing in :func:`block_mask` index
    ``shape[-2]``); a float mask in another dtype than the queries (float16 with bfloat16 queries, say) is cast to
    float64 for float64 queries and float32 otherwise, which holds every float16/bfloat16 value exactly.
    """
    if mask.dim() < 4:
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if mask.dtype != torch.bool and mask.dtype != dtype:
        mask = mask.to(torch.float64 if dtype == torch.float64 else torch.float32)
    return mask
