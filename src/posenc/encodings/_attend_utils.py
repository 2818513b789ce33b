"""Shared pieces of the ``attend`` hooks (Shaw, Transformer-XL, CoPE, TUPE): masks, a safe softmax, GQA expansion.

Not an encoding (the leading underscore keeps the auto-discovery in ``encodings/__init__.py`` from importing it as
one). Everything here follows :mod:`posenc.attention`'s conventions, so an ``attend`` agrees with the ``reference``
backend on masking: causal masking is by index, aligned bottom-right (query ``i`` of ``Tq`` sits at key index
``Tk - Tq + i``); ``attn_mask`` is bool (True = may attend) or an additive float mask broadcastable to
``(B, H, Tq, Tk)``; a query row with no allowed key returns zeros.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from posenc.attention import causal_mask

__all__ = ["additive_mask", "check_attend_inputs", "compute_dtype", "expand_kv", "positions_4d", "safe_softmax"]


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision input, float64 for float64 input: the dtype scores are formed in."""
    return torch.promote_types(x.dtype, torch.float32)


def expand_kv(x: Tensor, n_rep: int) -> Tensor:
    """``(B, Hkv, T, D)`` -> ``(B, Hkv * n_rep, T, D)``; kv head ``j`` serves query heads ``j*n_rep .. (j+1)*n_rep-1``.

    The same grouping as :mod:`posenc.attention`'s reference backend (``repeat_interleave`` over heads).
    """
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def additive_mask(q_len: int, k_len: int, *, causal: bool, attn_mask: Tensor | None, dtype: torch.dtype,
                  device: torch.device) -> Tensor | None:
    """The causal mask and ``attn_mask`` as one additive float mask (0 = attend, -inf = masked), or ``None``.

    Returns a tensor broadcastable to ``(B, H, Tq, Tk)`` in ``dtype``.
    """
    mask = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            mask = torch.zeros(attn_mask.shape, dtype=dtype, device=device).masked_fill(~attn_mask, float("-inf"))
        else:
            mask = attn_mask.to(dtype)
    if causal:
        allowed = causal_mask(q_len, k_len, device)  # (Tq, Tk)
        mask = torch.zeros(q_len, k_len, dtype=dtype, device=device) if mask is None else mask
        mask = mask.masked_fill(~allowed, float("-inf"))
    return mask


def safe_softmax(scores: Tensor) -> Tensor:
    """Softmax over the last axis; a row whose every entry is ``-inf`` gives zeros (with zero, not NaN, gradients)."""
    dead = torch.isneginf(scores).all(dim=-1, keepdim=True)
    if not torch.compiler.is_compiling() and not bool(dead.any()):  # skip the fix-up when no row is dead
        return torch.softmax(scores, dim=-1)
    return torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)


def positions_4d(pos: Tensor) -> Tensor:
    """Positions ``(T,)`` or ``(B, T)`` -> ``(1, T)`` or ``(B, T)``, so pairwise tensors get a batch axis."""
    return pos.unsqueeze(0) if pos.dim() == 1 else pos


def check_attend_inputs(name: str, q: Tensor, k: Tensor, v: Tensor, *, n_heads: int, head_dim: int) -> int:
    """Validate ``attend`` inputs when called directly (the dispatcher already checks most) and return ``n_rep``."""
    for arg, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name}.attend: {arg} must be a tensor of shape (B, H, T, D); got {got}.")
    if q.shape[1] != n_heads:
        raise ValueError(f"{name}: built for n_heads={n_heads} but q has {q.shape[1]} heads.")
    if q.shape[-1] != head_dim or k.shape[-1] != head_dim:
        raise ValueError(f"{name}: built for head_dim={head_dim} (dim // n_heads) but q has head_dim {q.shape[-1]} "
                         f"and k has {k.shape[-1]}.")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] or k.shape[1] != v.shape[1]:
        raise ValueError(f"{name}: query heads ({q.shape[1]}) must be a multiple of key/value heads "
                         f"(k {k.shape[1]}, v {v.shape[1]}).")
    return q.shape[1] // k.shape[1]


def attend_inputs(pe, q: Tensor, k: Tensor, v: Tensor,
                  scale: float | None) -> tuple[Tensor, Tensor, Tensor, float, torch.dtype]:
    """The common start of every ``attend``: validate, then q, k, v in the compute dtype with kv heads expanded.

    Returns ``(q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv), scale, compute dtype)``; ``scale`` defaults to
    ``1 / sqrt(D)``.
    """
    n_rep = check_attend_inputs(pe.name, q, k, v, n_heads=pe.n_heads, head_dim=pe.head_dim)
    ct = compute_dtype(q)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return q.to(ct), expand_kv(k, n_rep).to(ct), expand_kv(v, n_rep).to(ct), scale, ct
