"""Masks and explicit attention of a block of query rows: the arithmetic every backend but SDPA's fused path shares.

A *block* is query rows ``start:stop`` of one :class:`~posenc.terms.AttentionCall` against its first ``key_stop``
keys (all ``Tk`` keys unless a causal block skips the keys none of its rows may see). Two kinds of masks exist:

- :func:`visibility_mask`: which keys each row may see -- the causal mask (by index, bottom-right aligned: query
  row ``i`` of ``Tq`` sits at key index ``Tk - Tq + i``) and the caller's ``attn_mask`` -- as a bool mask (True =
  attend), an additive float mask, or ``None``;
- :func:`sdpa_mask`: that, plus the encoding's position-only ``bias``, as one mask for
  :func:`torch.nn.functional.scaled_dot_product_attention`.

With attention terms (or for the ``reference`` oracle) a block is computed explicitly by :func:`attend_explicit`::

    blk     = make_block(call, rows)                              the ScoreBlock the terms read
    scores  = terms.queries(blk) k^T * scale                      raw_scores
    weights = terms.normalize(mask(terms.logits(scores) + bias))  block_weights
    out     = weights @ v + terms.values(weights)                 attend_explicit

:func:`attend_sdpa` runs SDPA on a block with :func:`sdpa_mask` (``dense`` is one block of every row; ``chunked``
calls it per block for encodings without terms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from posenc.terms import AttentionCall, ScoreBlock, compute_dtype, expand_kv, safe_softmax

__all__ = ["attend_explicit", "attend_sdpa", "block_weights", "causal_mask", "make_block", "raw_scores", "sdpa_mask",
           "visibility_mask"]


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


def _slice_attn_mask(mask: Tensor, q_len: int, k_len: int, start: int, stop: int, key_stop: int) -> Tensor:
    """Rows ``start:stop`` and keys ``:key_stop`` of an ``attn_mask`` broadcastable to ``(B, H, Tq, Tk)``."""
    if mask.dim() >= 2 and mask.shape[-2] == q_len and (start, stop) != (0, q_len):
        mask = mask[..., start:stop, :]
    if mask.dim() >= 1 and mask.shape[-1] == k_len and key_stop != k_len:
        mask = mask[..., :key_stop]
    return mask


def visibility_mask(call: AttentionCall, start: int, stop: int, key_stop: int) -> Tensor | None:
    """Which keys ``:key_stop`` rows ``start:stop`` may see: causal mask and ``attn_mask`` (no bias).

    Returns a bool mask (True = attend), an additive float mask, or ``None`` when nothing is masked, broadcastable
    to ``(B, H, stop - start, key_stop)``.
    """
    q_len, k_len = call.q.shape[2], call.k.shape[2]  # (B, H, T, D): a negative index mutates to an equal one
    mask = call.attn_mask
    if mask is not None:
        mask = _slice_attn_mask(mask, q_len, k_len, start, stop, key_stop)
    if call.causal and start != q_len - 1:  # the last query row attends every key (a decode step): no mask needed
        cm = causal_mask(q_len, k_len, call.q.device, start=start, stop=stop, key_stop=key_stop)
        if mask is None:
            mask = cm
        elif mask.dtype == torch.bool:
            mask = mask & cm
        else:
            mask = mask.masked_fill(~cm, float("-inf"))
    return mask


def sdpa_mask(call: AttentionCall, dtype: torch.dtype, *, start: int = 0, stop: int | None = None,
              key_stop: int | None = None) -> Tensor | None:
    """The mask SDPA takes for rows ``start:stop`` and keys ``:key_stop``: bias + causal + ``attn_mask`` in one.

    Returns an additive float mask in ``dtype`` broadcastable to ``(B, H, stop - start, key_stop)`` when the
    encoding has a bias, else :func:`visibility_mask` (bool, float or ``None``).
    """
    q_len, k_len = call.q.shape[2], call.k.shape[2]  # (B, H, T, D): a negative index mutates to an equal one
    stop = q_len if stop is None else stop
    key_stop = k_len if key_stop is None else key_stop
    mask = visibility_mask(call, start, stop, key_stop)
    if not call.uses_bias:
        return mask
    q_pos = call.q_pos if (start, stop) == (0, q_len) else call.q_pos[..., start:stop]
    k_pos = call.k_pos if key_stop == k_len else call.k_pos[..., :key_stop]
    bias = call.pe.bias(q_pos, k_pos).to(dtype)  # (B|, H, rows, keys); the whole call's own tensors when not sliced
    if bias.dim() == 3:  # (H, Tq, Tk) -> (1, H, Tq, Tk)
        bias = bias.unsqueeze(0)
    if mask is None:
        return bias
    if mask.dtype == torch.bool:
        return bias.masked_fill(~mask, float("-inf"))
    return bias + mask.to(dtype)


def attend_sdpa(call: AttentionCall, start: int, stop: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SDPA of rows ``start:stop`` (``q`` ``(B, H, rows, D)``) against ``k``, ``v`` ``(B, Hkv, keys, D|Dv)``."""
    mask = sdpa_mask(call, q.dtype, start=start, stop=stop, key_stop=k.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=call.scale,
                                          enable_gqa=call.n_rep > 1)  # (B, H, rows, Dv)


def make_block(call: AttentionCall, start: int, stop: int, q: Tensor, k: Tensor, v: Tensor) -> ScoreBlock:
    """The :class:`ScoreBlock` of query rows ``start:stop`` against the keys ``k``, ``v`` given (the first ``keys``).

    Args:
        q: ``(B, H, rows, D)``; k: ``(B, Hkv, keys, D)``; v: ``(B, Hkv, keys, Dv)``, in the input dtype.
    """
    compute = compute_dtype(q)
    keys = k.shape[-2]
    q_len, k_len = call.q.shape[2], call.k.shape[2]  # (B, H, T, D): a negative index mutates to an equal one
    mask = visibility_mask(call, start, stop, keys)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(compute)
    return ScoreBlock(q=q.to(compute), k=expand_kv(k, call.n_rep).to(compute),
                      v=expand_kv(v, call.n_rep).to(compute), q_pos=call.q_pos[..., start:stop],
                      k_pos=call.k_pos[..., :keys],
                      q_index=torch.arange(k_len - q_len + start, k_len - q_len + stop, device=q.device),
                      start=start, stop=stop, causal=call.causal, scale=call.scale, n_rep=call.n_rep, mask=mask)


def raw_scores(call: AttentionCall, blk: ScoreBlock) -> Tensor | None:
    """``queries k^T * scale`` ``(B, H, rows, keys)``, or ``None`` when the terms form the whole score themselves."""
    if call.terms is None:
        return (blk.q @ blk.k.transpose(-2, -1)) * call.scale
    if call.terms.replaces_scores:
        return None
    return (call.terms.queries(blk) @ blk.k.transpose(-2, -1)) * call.scale


def block_weights(call: AttentionCall, blk: ScoreBlock, scores: Tensor | None) -> Tensor:
    """The block's attention weights ``(B, H, rows, keys)``: logit terms, bias, the one mask, the normaliser."""
    logits = call.terms.logits(scores, blk) if call.terms is not None else scores
    if call.uses_bias:
        logits = logits + call.pe.bias(blk.q_pos, blk.k_pos).to(logits.dtype)  # (H|B, H, rows, keys)
    logits = blk.masked(logits)
    return safe_softmax(logits) if call.terms is None else call.terms.normalize(logits, blk)


def attend_explicit(call: AttentionCall, start: int, stop: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Explicit attention of query rows ``start:stop`` against the keys ``k``, ``v`` given (the first ``keys``).

    ``normalize(mask(terms.logits(q k^T * scale) + bias)) @ v + terms.values(weights)`` in the compute dtype
    (float32, or float64 for float64 input): the one place scores, the mask, the normaliser and the grouped-query
    expansion meet, for ``reference`` (all rows, every encoding), ``dense`` and ``chunked`` (encodings with terms).

    Args:
        q: ``(B, H, rows, D)``; k: ``(B, Hkv, keys, D)``; v: ``(B, Hkv, keys, Dv)``, in the input dtype.

    Returns:
        ``(B, H, rows, Dv)`` in the dtype of ``q``.
    """
    blk = make_block(call, start, stop, q, k, v)
    weights = block_weights(call, blk, raw_scores(call, blk))  # (B, H, rows, keys)
    out = weights @ blk.v  # (B, H, rows, Dv)
    extra = call.terms.values(weights, blk) if call.terms is not None else None
    if extra is not None:
        out = out + extra
    return out.to(q.dtype)
