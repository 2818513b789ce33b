"""Stick-breaking attention (Tan et al., ICLR 2025, arXiv 2410.17980): a normaliser that gives order without positions.

Each query breaks a stick of length 1, starting at its nearest key: key ``j`` takes the fraction ``beta_ij =
sigmoid(z_ij)`` of what the nearer keys left, with ``z_ij = q_i . k_j * scale``::

    A_ij = beta_ij * prod_{j < l < i} (1 - beta_il)                       (causal; l runs over the keys between)
    log A_ij = logsigmoid(z_ij) + sum_{j < l < i} logsigmoid(-z_il)       (how it is computed: log space only)

The weights need not sum to 1; ``remainder`` optionally spends what is left, ``1 - sum_j A_ij``. Order comes from
the breaking order itself, so the encoding reads no positions (shifting or restarting them changes nothing), and the
core's softmax is replaced (:meth:`StickBreakingTerms.normalize`); q, k and v are used as they are.

Bidirectional calls (the paper is causal only) break the stick in order of *distance* from the query, the earlier
key first on a tie -- ``i, i-1, i+1, i-2, i+2, ...`` -- which is the geometric attention of the Neural Data Router
(Csordas et al., ICLR 2022, arXiv 2110.07732, without its optional L1 renormalisation). Restricted to the keys at or
before the query it is exactly the causal rule, so one definition serves both directions and any mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.base import PositionalEncoding, register
from posenc.terms import AttentionCall, AttentionTerms, ScoreBlock

__all__ = ["REMAINDERS", "StickBreaking", "StickBreakingTerms", "breaking_order", "stick_breaking_weights"]

# What the remainder 1 - sum_j A_ij multiplies: nothing, a learned per-head vector, or the query's own value.
REMAINDERS = ("none", "learned", "value")


def breaking_order(q_index: Tensor, keys: int) -> Tensor:
    """The order in which each query breaks its stick over ``keys`` keys: by distance, the earlier key first on a tie.

    Args:
        q_index: int64 ``(rows,)``: the key index each query sits at (may lie outside ``[0, keys)``, e.g. negative
            for a bidirectional call with more queries than keys).
        keys: the number of keys.

    Returns:
        int64 ``(rows, keys)``: ``order[r, n]`` is the key broken ``n``-th by query ``r``. For a query at key
        index ``i`` the ranks are ``2|j - i| - [j < i]``: ``i, i - 1, i + 1, i - 2, i + 2, ...``.
    """
    key_index = torch.arange(keys, device=q_index.device)
    offset = key_index - q_index[:, None]  # (rows, keys): j - i
    rank = 2 * offset.abs() - (offset < 0).long()  # distinct per row, so the order is unique
    return rank.argsort(dim=-1)


def stick_breaking_weights(logits: Tensor, q_index: Tensor, *, causal: bool, attend_current: bool = False) -> Tensor:
    """Stick-breaking attention weights ``(B, H, rows, keys)`` from masked logits, in log space.

    Masked keys (``-inf``) take nothing and break nothing (``logsigmoid(-inf) = -inf``, ``logsigmoid(+inf) = 0``), so
    padding and other documents in a packed row leave the weights of the visible keys as if they were absent.

    Args:
        logits: ``(B, H, rows, keys)`` scores with the mask applied (``-inf``, or a large negative additive mask,
            where a key may not be seen), in float32 or float64.
        q_index: int64 ``(rows,)``: the key index each query row sits at.
        causal: every visible key sits at or before its query (a causal call). Then the exclusive sums run from the
            last key backwards (a flip and a cumulative sum); otherwise each row is put in breaking order
            (:func:`breaking_order`) first. Both give the same weights wherever the causal rule applies.
        attend_current: whether a query's own key (at ``q_index``) takes part, breaking the stick first. ``False``
            (the paper's ``prod_{j < l < i}`` and the reference kernel's default) masks it.

    Returns:
        ``A`` ``(B, H, rows, keys)`` in the dtype of ``logits``; each row sums to at most 1.

    Precision: the exclusive sums add terms of one sign (``logsigmoid(-z) <= 0``), so they never cancel; they run in
    float64 whatever the compute dtype, so their error does not grow with the number of keys, and the one rounding
    back to the compute dtype changes each weight by at most ``eps / e`` (``eps * |S| * exp(S)`` for a sum ``S``).
    """
    keys = logits.shape[-1]
    if not attend_current:
        own = torch.arange(keys, device=logits.device) == q_index[:, None]  # (rows, keys)
        logits = logits.masked_fill(own, float("-inf"))
    log_take = F.logsigmoid(logits)  # log beta_ij
    log_keep = F.logsigmoid(-logits).double()  # log (1 - beta_ij); exactly 0 for masked keys; summed in float64
    if causal:
        # sum_{l > j} log_keep[l] over the visible keys (later ones are masked: 0): a reverse cumulative sum, shifted
        # by one key rather than minus log_keep[j], which would cancel
        behind = log_keep.flip(-1).cumsum(-1).flip(-1)  # sum_{l >= j}
        before_j = F.pad(behind[..., 1:], (0, 1))
    else:
        order = breaking_order(q_index, keys).expand(logits.shape)  # (B, H, rows, keys)
        ranked = log_keep.gather(-1, order)  # in breaking order
        done = F.pad(ranked.cumsum(-1)[..., :-1], (1, 0))  # what the keys broken before each one kept
        before_j = torch.empty_like(done).scatter_(-1, order, done)  # back to key order
    return torch.exp(log_take + before_j.to(logits.dtype))


@register("stick_breaking")
class StickBreaking(PositionalEncoding):
    """Stick-breaking attention (Tan et al., arXiv 2410.17980): nearest keys first, no position encoding needed.

    Replaces the softmax by ``A_ij = sigmoid(z_ij) prod_{j<l<i} (1 - sigmoid(z_il))`` over the keys between, with
    ``z_ij = q_i . k_j * scale`` (``scale = 1/sqrt(head_dim)`` by default), computed in log space
    (:func:`stick_breaking_weights`): ``out_i = sum_j A_ij v_j [+ (1 - sum_j A_ij) r_i]``.

    Args:
        attend_current: whether a query attends to its own key (``A_ii``, breaking the stick first). ``False`` is the
            paper's ``j < i`` and the default of the reference kernels (``shawntan/stickbreaking-attention``'s
            ``attend_current=False``; IBM dolomite-engine's decoding path drops the query's own key): the first
            token then attends to nothing, and its output is the remainder term alone (zero without one).
        remainder: what ``1 - sum_j A_ij``, the unspent stick, multiplies:
            ``"none"`` (or ``False``, the default): nothing -- the weights alone;
            ``"learned"`` (or ``True``): a learned vector per head ``r_h`` ``(H, head_dim)``, initialised at zero, as
            the released models have it (dolomite-engine's ``head_bias``); the encoding is then built per layer
            (``per_layer``), so each attention layer has its own vectors, as there;
            ``"value"``: the query's own value ``v_i``, as the reference kernel's tests (``ref_fwd``) add it.

    Bidirectional calls break the stick in order of distance (``i, i-1, i+1, i-2, ...``, the earlier key first on a
    tie: the Neural Data Router's geometric attention, arXiv 2110.07732); on keys at or before the query it is the
    causal rule exactly. Keys are ordered by index (a KV cache's order), never by position value, so positions of
    any size are fine and a packed row's documents (masked from each other) do not interact. A masked key takes
    nothing and breaks nothing; in a bidirectional call it still keeps its place in the distance order (the keys
    beyond it stay as far from the query), so padding at either end and packed documents change nothing, but a
    masked key inside a document is not the same as a shorter document: the left and right keys interleave by
    their distances in the full row.

    Limits: the weights are formed per block of query rows in the compute dtype (float32 for float32/bfloat16/
    float16 input, float64 for float64), their log-space sums in float64 at any length (see
    :func:`stick_breaking_weights` for the precision). Every backend but
    ``sdpa``/``flex`` runs it (``chunked`` in ``O(rows * Tk)`` memory, forward and backward). ``"learned"`` needs
    ``v`` of width ``head_dim``; ``"value"`` needs ``Tq <= Tk`` (each query has a key of its own).

    KV cache: an ordinary one suffices -- nothing beyond k and v is cached, and decoding equals the full forward.

    Shapes: ``q`` ``(B, H, Tq, D)``, ``k``/``v`` ``(B, Hkv, Tk, D)``; positions are accepted and ignored.
    """

    family = "contextual"
    paper = "2410.17980"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 attend_current: bool = False, remainder: bool | str = False) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if not isinstance(attend_current, bool):
            raise TypeError(f"stick_breaking: attend_current must be True or False; got "
                            f"{type(attend_current).__name__} {attend_current!r}.")
        if isinstance(remainder, bool):
            remainder = "learned" if remainder else "none"
        if remainder not in REMAINDERS:
            raise ValueError(f"stick_breaking: remainder must be one of {REMAINDERS} (or True for 'learned', False "
                             f"for 'none'); got {remainder!r}.")
        self.attend_current = attend_current
        self.remainder = remainder
        # (H, head_dim): what the unspent stick of each head adds, zero at first (dolomite-engine's head_bias)
        self.remainder_vector = nn.Parameter(torch.zeros(n_heads, self.head_dim)) if remainder == "learned" else None
        self.per_layer = remainder == "learned"  # one vector per attention layer, as the released models have

    def terms(self, call: AttentionCall) -> StickBreakingTerms:
        """The stick-breaking normaliser and the remainder term for one call (refuses what it cannot compute)."""
        tq, tk, dv = call.q.shape[-2], call.k.shape[-2], call.v.shape[-1]
        if self.remainder == "learned" and dv != self.head_dim:
            raise ValueError(f"stick_breaking: remainder='learned' adds a vector of size head_dim={self.head_dim} "
                             f"to each output, but v has {dv} channels; build it with remainder='none' or 'value' "
                             f"for another value width.")
        if self.remainder == "value" and tq > tk:
            raise ValueError(f"stick_breaking: remainder='value' adds each query's own value, but this call has "
                             f"more queries ({tq}) than keys ({tk}), so some queries have none; pass Tq <= Tk or "
                             f"use remainder='none' or 'learned'.")
        return StickBreakingTerms(self)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, attend_current={self.attend_current}, remainder={self.remainder!r}"


class StickBreakingTerms(AttentionTerms):
    """Stick-breaking's normaliser and remainder value term for one call; see :class:`StickBreaking`."""

    # measured (benchmarks/terms_memory.py, T=2048, causal: peak extra memory of chunked / one block's float32
    # scores = 20.8): logits, log-gates, the float64 sums (two units each), weights and their gradients
    pair_tensors = 21
    call_tensors = ()  # the block methods read the block and the encoding's remainder vector only

    def __init__(self, pe: StickBreaking) -> None:
        self.pe = pe

    def normalize(self, logits: Tensor, blk: ScoreBlock) -> Tensor:
        return stick_breaking_weights(logits, blk.q_index, causal=blk.causal, attend_current=self.pe.attend_current)

    def values(self, probs: Tensor, blk: ScoreBlock) -> Tensor | None:
        if self.pe.remainder == "none":
            return None
        unspent = 1.0 - probs.sum(-1, keepdim=True)  # (B, H, rows, 1)
        if self.pe.remainder == "learned":
            return unspent * self.pe.remainder_vector.to(probs.dtype)[None, :, None, :]  # (B, H, rows, D)
        return unspent * blk.v[:, :, blk.q_index]  # the query's own value v_i: (B, H, rows, Dv)
