"""Attention terms: what an encoding adds inside attention, computed by the backends one block of query rows at a time.

An encoding whose effect on attention is more than a position-only bias (``bias``/``score_mod``) returns an
:class:`AttentionTerms` from its ``terms(call)`` hook, once per :func:`posenc.attention` call. The backends
(``reference``, ``dense``, ``chunked``) then compute, for each block of query rows ``start:stop`` against the keys
``:key_stop`` it may see::

    scores = terms.queries(blk) k^T * scale               (B, H, rows, keys)   -- skipped if terms.replaces_scores
    logits = terms.logits(scores, blk)                    (B, H, rows, keys)   -- the encoding's logit terms
    logits = logits + bias, masked                       the one mask (causal, attn_mask, packed documents)
    probs  = terms.normalize(logits, blk)                 the one normaliser: the masked safe softmax by default
    out    = probs @ v_blk + terms.values(probs, blk)     (B, H, rows, Dv)     -- the encoding's value terms

so no encoding builds a mask, a softmax or a grouped-query expansion, and every term runs in ``O(rows * Tk)``
memory on ``chunked`` (which also recomputes each block in the backward pass). A logit term receives the block's raw
scores because some terms are functions of them (DAPE's MLP over ``[scores, bias]``, CoPE's gates
``sigmoid(scores + mask)``); others add a query-dependent term (Shaw's ``q . a^K``, Transformer-XL's content and
position terms, TUPE's untied positional correlation). A value term (Shaw's ``sum_j p_ij a^V_{i-j}``) is added to
the block's output.

The terms of one call come from the encoding's ``terms(call)`` hook, which receives one :class:`AttentionCall`: the
call's validated ``q``, ``k``, ``v``, positions, mask and scale, the *features* of every key (per-token tensors the
encoding computed from the layer's input with its ``features`` hook, cached by the model beside k and v) and a
:class:`LayerView` of the layer it serves (its index, head counts and own q/k projections). That is what the
encodings that read the hidden state need: FoX's decay ``sum_{t=j+1}^{i} log f_t`` is a logit term from prefix sums
of per-token gates (features), stick-breaking replaces the softmax (:meth:`AttentionTerms.normalize`), DeBERTa
projects a shared relative table with the layer's own ``W_q``/``W_k`` (``call.layer``), and PaTH's key transform is a
per-call computation followed by a ``replaces_scores`` logit term.

The hook must be *pure*: no state changes, no randomness (``posenc.explain`` calls it to decide a backend, and the
backward pass of ``chunked`` may rebuild nothing from it but the object it returned).

Shapes: ``B`` batch, ``H`` query heads, ``Hkv`` key/value heads (``H % Hkv == 0``), ``rows = stop - start``,
``keys = key_stop`` (all ``Tk`` keys unless a causal block skips the keys no row of it may see).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from posenc._checks import reads_values

if TYPE_CHECKING:
    from posenc.base import PositionalEncoding

__all__ = ["AttentionCall", "AttentionTerms", "LayerView", "ScoreBlock", "apply_mask", "check_head_dim",
           "compute_dtype", "expand_kv", "positions_2d", "safe_softmax"]


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision input, float64 for float64 input: the dtype explicit scores are formed in."""
    return torch.promote_types(x.dtype, torch.float32)


def expand_kv(x: Tensor, n_rep: int) -> Tensor:
    """``(B, Hkv, T, D)`` -> ``(B, Hkv * n_rep, T, D)``; kv head ``j`` serves query heads ``j*n_rep .. (j+1)*n_rep-1``.

    The grouped-query convention of SDPA's ``enable_gqa`` (``repeat_interleave`` over heads), as a broadcast view
    followed by one copy.
    """
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def safe_softmax(scores: Tensor) -> Tensor:
    """Softmax over the last axis; a row whose every entry is ``-inf`` gives zeros (with zero, not NaN, gradients)."""
    dead = torch.isneginf(scores).all(dim=-1, keepdim=True)
    if reads_values(dead) and not bool(dead.any()):  # skip the fix-up when no row is dead
        return torch.softmax(scores, dim=-1)
    return torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)


def apply_mask(scores: Tensor, mask: Tensor | None) -> Tensor:
    """``scores`` with a mask applied: bool (True = attend) sets the rest to ``-inf``, a float mask is added."""
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask.to(scores.dtype)


def check_head_dim(pe, q: Tensor, k: Tensor) -> None:
    """Raise unless ``q`` and ``k`` have the head dim ``pe`` was built for (``dim // n_heads``): its tables have it."""
    if q.shape[-1] != pe.head_dim or k.shape[-1] != pe.head_dim:
        raise ValueError(f"{pe.name}: built for head_dim={pe.head_dim} (dim // n_heads) but q has head_dim "
                         f"{q.shape[-1]} and k has {k.shape[-1]}.")


def positions_2d(pos: Tensor) -> Tensor:
    """Positions ``(T,)`` or ``(B, T)`` -> ``(1, T)`` or ``(B, T)``, so pairwise tensors get a batch axis."""
    return pos.unsqueeze(0) if pos.dim() == 1 else pos


@dataclasses.dataclass(frozen=True)
class LayerView:
    """What an encoding may read of the attention layer it serves (``call.layer``; ``layer=`` of ``features``).

    A model builds one per layer and call; a bare :func:`posenc.attention` call may pass one (or none). The
    projections are the layer's own, so an encoding can project a table of its own with them (DeBERTa projects its
    shared relative-position table with the layer's ``W_q`` and ``W_k``).
    """

    index: int  # the layer's position in its stack, from 0
    n_heads: int  # query heads H
    n_kv_heads: int  # key/value heads Hkv (H % Hkv == 0)
    head_dim: int  # D
    # (..., dim) -> (..., H, D): the layer's query projection W_q (no rotation), or None when there is none
    project_q: Callable[[Tensor], Tensor] | None = dataclasses.field(default=None, repr=False, compare=False)
    # (..., dim) -> (..., Hkv, D): the layer's key projection W_k
    project_k: Callable[[Tensor], Tensor] | None = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass
class AttentionCall:
    """One validated :func:`posenc.attention` call: what an encoding's ``terms(call)`` hook and the backends read.

    Shapes: ``q`` ``(B, H, Tq, D)``, ``k`` ``(B, Hkv, Tk, D)``, ``v`` ``(B, Hkv, Tk, Dv)``; positions int64 ``(Tq,)`` /
    ``(B, Tq)`` and ``(Tk,)`` / ``(B, Tk)``. The queries are the last ``Tq`` keys (bottom-right alignment): query row
    ``i`` sits at key index ``Tk - Tq + i``. ``features`` hold every key's per-token tensors ``(B|1, Hkv|H|1, Tk, X)``
    (the cached keys' first, then the call's own), so a query's own features are the last ``Tq`` entries on the
    time axis (:meth:`query_features`).
    """

    q: Tensor  # (B, H, Tq, D)
    k: Tensor  # (B, Hkv, Tk, D)
    v: Tensor  # (B, Hkv, Tk, Dv)
    pe: PositionalEncoding | None
    q_pos: Tensor  # (Tq,) or (B, Tq) int64
    k_pos: Tensor  # (Tk,) or (B, Tk) int64
    causal: bool
    attn_mask: Tensor | None  # bool (True = attend) or float additive, broadcastable to (B, H, Tq, Tk)
    scale: float  # the softmax scale (default 1 / sqrt(D))
    features: Mapping[str, Tensor] = dataclasses.field(default_factory=dict)  # name -> (B|1, Hkv|H|1, Tk, X)
    layer: LayerView | None = None  # the layer the call serves (None for a bare call that names none)
    terms: AttentionTerms | None = None  # filled in by the core from pe.terms(call): the encoding's terms

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head."""
        return self.q.shape[1] // self.k.shape[1]

    @property
    def uses_bias(self) -> bool:
        return self.pe is not None and self.pe.uses_bias

    @property
    def uses_terms(self) -> bool:
        return self.terms is not None

    @property
    def needs_grad(self) -> bool:
        """Whether autograd will record this call (an input, a feature or a parameter of the encoding needs grad)."""
        if not torch.is_grad_enabled():
            return False
        if any(t is not None and t.requires_grad for t in (self.q, self.k, self.v, self.attn_mask)):
            return True
        if any(f.requires_grad for f in self.features.values()):
            return True
        return self.pe is not None and any(p.requires_grad for p in self.pe.parameters())

    def query_features(self, name: str) -> Tensor:
        """The queries' own entries of feature ``name``: its last ``Tq`` steps, ``(B|1, Hkv|H|1, Tq, X)``."""
        if name not in self.features:
            raise KeyError(f"{self.pe.name if self.pe is not None else 'attention'}: no feature {name!r} in this "
                           f"call (it has {sorted(self.features)}); the encoding's features() hook makes it, and a "
                           f"bare posenc.attention call passes it as features={{{name!r}: tensor}}.")
        x = self.features[name]
        return x[:, :, x.shape[2] - self.q.shape[2]:]


@dataclasses.dataclass
class ScoreBlock:
    """One block of query rows ``start:stop`` against keys ``:keys``, as a backend hands it to an encoding's terms.

    ``q``, ``k`` and ``v`` are in the compute dtype (:func:`compute_dtype`), with kv heads already expanded to ``H``.
    """

    q: Tensor  # (B, H, rows, D)
    k: Tensor  # (B, H, keys, D)
    v: Tensor  # (B, H, keys, Dv)
    q_pos: Tensor  # (rows,) or (B, rows) int64: positions of the block's queries
    k_pos: Tensor  # (keys,) or (B, keys) int64
    q_index: Tensor  # (rows,) int64: the key index each query row sits at (bottom-right aligned: Tk - Tq + row)
    start: int  # first query row of the block in the call
    stop: int  # one past its last query row
    causal: bool
    scale: float  # the softmax scale of the call (default 1 / sqrt(D))
    n_rep: int  # query heads per kv head
    # causal mask and attn_mask of this block (not the bias): bool (True = attend) or additive float in the compute
    # dtype, broadcastable to (B, H, rows, keys); None when nothing is masked
    mask: Tensor | None
    # Set only while chunked's backward pass recomputes the block: ``slice_leaf(x, index)`` is what query_rows and
    # key_rows return for ``x[index]``, a leaf of its own when ``x`` is a per-call tensor being differentiated, so
    # that the block's gradient of it is the size of the slice, not of the whole tensor
    slice_leaf: Callable[[Tensor, tuple], Tensor] | None = dataclasses.field(default=None, repr=False)

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def keys(self) -> int:
        return self.k.shape[-2]

    def masked(self, scores: Tensor) -> Tensor:
        """``scores`` ``(B, H, rows, keys)`` with the block's mask applied (masked pairs ``-inf``)."""
        return apply_mask(scores, self.mask)

    def query_rows(self, x: Tensor) -> Tensor:
        """Rows ``start:stop`` of a per-call query-side tensor ``(..., Tq, X)`` prepared in ``terms(call)``."""
        return self._slice(x, (..., slice(self.start, self.stop), slice(None)))

    def key_rows(self, x: Tensor) -> Tensor:
        """The block's keys of a per-call key-side tensor ``(B|1, Hkv|H|1, Tk, X)``, kv heads expanded to ``H``."""
        x = self._slice(x, (..., slice(None, self.keys), slice(None)))
        heads = self.q.shape[1]
        if x.dim() == 4 and x.shape[1] not in (1, heads):
            x = expand_kv(x, heads // x.shape[1])
        return x

    def _slice(self, x: Tensor, index: tuple) -> Tensor:
        return x[index] if self.slice_leaf is None else self.slice_leaf(x, index)


class AttentionTerms:
    """What an encoding adds inside attention for one call; the backends evaluate it per :class:`ScoreBlock`.

    Subclasses override :meth:`logits` (logit terms), :meth:`values` (value terms), :meth:`normalize` (the
    normaliser) or any of them. Per-call work that does
    not depend on the block (projections of positions, rotations of all keys) belongs in the encoding's
    ``terms(call)`` hook, which builds this object once per call; the methods here see one block at a time and must
    only read its rows and keys, so that ``chunked`` stays exact and ``O(rows * Tk)``.
    """

    # True when logits() forms the whole score itself from blk.q / blk.k (or tensors prepared per call), e.g. rotary
    # variants that rotate keys differently per pair: the backend then skips q k^T and passes scores=None.
    replaces_scores: ClassVar[bool] = False
    # About how many (B, H, rows, keys) float32 tensors one block keeps alive at its peak (forward, or the backward
    # pass recomputing it; an int64 index counts twice); ``chunked`` divides its block size by this, so the terms with
    # many intermediates (CoPE, DAPE) still stay within its per-block memory budget. Measured values for the built-in
    # terms are in benchmarks/terms_memory.py's output (peak extra memory / one block's score size).
    pair_tensors: ClassVar[int] = 8
    # Names of the attributes holding per-call tensors (prepared in ``terms(call)``) that :meth:`logits`/:meth:`values`
    # read and that may carry gradients, e.g. TUPE's position channels ``p U_Q``, ``p U_K`` or Self-Extend's rotated q
    # and k; ``()`` when the block methods read only the block and the encoding's parameters. ``chunked`` recomputes
    # each block in its own backward pass and returns the gradients of the block's q/k/v, the parameters and these
    # tensors into buffers allocated once (with respect to the block's slices of them, when read through
    # ScoreBlock.query_rows / key_rows); autograd carries the gradients of these on to what they were made from (q,
    # k, the parameters). The rule: list every tensor attribute that may require grad (``chunked`` refuses terms
    # holding an unlisted one: its gradient would be lost). Tensors that never need one (integer positions or
    # indices, constant tables) stay plain, unlisted attributes, which the backward pass reads as they are; listing
    # one does no harm (it is saved and gets no gradient). Terms whose per-call tensors vary by call set it per
    # object. ``None`` (not declared, the default) makes ``chunked`` checkpoint each block instead: exact, but every
    # block then has full-size transient gradients of q, k and v.
    call_tensors: ClassVar[tuple[str, ...] | None] = None

    def queries(self, blk: ScoreBlock) -> Tensor:
        """The queries ``(B, H, rows, D)`` the raw scores ``queries @ k^T * scale`` are formed from.

        ``blk.q`` unless an encoding shifts them: Transformer-XL's ``(q_i + u) . k_j``. Shifting the queries rather
        than adding ``u . k_j`` as a logit term lets ``chunked`` form the key gradient of both in one product.
        """
        return blk.q

    def logits(self, scores: Tensor | None, blk: ScoreBlock) -> Tensor:
        """The block's logits ``(B, H, rows, keys)`` from its raw scores ``q_blk k^T * scale`` (before bias and mask).

        Args:
            scores: ``(B, H, rows, keys)`` in the compute dtype, or ``None`` when ``replaces_scores``.
            blk: the block (queries, keys, values, positions, mask).
        """
        if scores is None:
            raise TypeError(f"{type(self).__name__} sets replaces_scores = True, so the backends compute no raw scores "
                            f"for it: it must override logits(scores, blk) to build the block's logits itself.")
        return scores

    def normalize(self, logits: Tensor, blk: ScoreBlock) -> Tensor:
        """The block's attention weights ``(B, H, rows, keys)`` from its masked logits: the normaliser.

        ``logits`` are :meth:`logits` plus the encoding's bias, with the block's mask applied (``-inf`` where a key
        may not be seen), in the compute dtype. The default is the masked safe softmax (a row with no visible key
        gives zeros). Stick-breaking attention replaces it; its weights need not sum to 1 (a value term may add the
        remainder).
        """
        return safe_softmax(logits)

    def values(self, probs: Tensor, blk: ScoreBlock) -> Tensor | None:
        """A value term ``(B, H, rows, Dv)`` added to ``probs @ v``, from the block's weights, or ``None``."""
        return None
