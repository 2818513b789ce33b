"""What a bare ``posenc.attention`` call of an encoding that reads the layer needs: ``features=`` and ``layer=``.

Registry-wide tests call ``posenc.attention(q, k, v, pe, **layer_kwargs(pe, ...))``: for encodings that read the
layer's input (``pe.uses_features``) or its projections, the features come from a seeded random layer input
``x`` ``(B, Tk, dim)`` through the encoding's own ``features`` hook, and the :class:`posenc.LayerView` carries seeded
random q/k projections; for every other encoding it is ``{}`` (the call is unchanged).
"""

from __future__ import annotations

import torch
from torch import nn

import posenc


def layer_view(pe: posenc.PositionalEncoding, *, kv_heads: int | None = None, dtype: torch.dtype = torch.float32,
               seed: int = 11) -> posenc.LayerView:
    """A :class:`posenc.LayerView` of layer 0 with seeded random projections ``(dim) -> (H, D)`` / ``(Hkv, D)``."""
    heads, head_dim = pe.n_heads, pe.head_dim
    kv_heads = heads if kv_heads is None else kv_heads
    g = torch.Generator().manual_seed(seed)
    w_q = torch.randn(heads * head_dim, pe.dim, generator=g, dtype=dtype) * pe.dim**-0.5
    w_k = torch.randn(kv_heads * head_dim, pe.dim, generator=g, dtype=dtype) * pe.dim**-0.5

    def project_q(x):  # (..., dim) -> (..., H, D)
        return nn.functional.linear(x, w_q.to(x.dtype)).unflatten(-1, (heads, head_dim))

    def project_k(x):  # (..., dim) -> (..., Hkv, D)
        return nn.functional.linear(x, w_k.to(x.dtype)).unflatten(-1, (kv_heads, head_dim))

    return posenc.LayerView(0, heads, kv_heads, head_dim, project_q=project_q, project_k=project_k)


def layer_kwargs(pe: posenc.PositionalEncoding | None, *, batch: int, keys: int, kv_heads: int | None = None,
                 k_pos: torch.Tensor | None = None, dtype: torch.dtype = torch.float32, seed: int = 11) -> dict:
    """``{"features": ..., "layer": ...}`` for a bare call of ``pe`` over ``keys`` keys, or ``{}`` when not needed."""
    if pe is None or not (pe.uses_features or getattr(pe, "reads_layer", False)):
        return {}
    layer = layer_view(pe, kv_heads=kv_heads, dtype=dtype, seed=seed)
    if not pe.uses_features:
        return {"layer": layer}
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, keys, pe.dim, generator=g).to(dtype)
    pos = torch.arange(keys) if k_pos is None else k_pos
    return {"features": pe.features(x, pos, layer=layer), "layer": layer}


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: posenc.PositionalEncoding | None = None,
           **kwargs) -> torch.Tensor:
    """``posenc.attention`` with the layer inputs ``pe`` needs (see :func:`layer_kwargs`) unless given."""
    return posenc.attention(q, k, v, pe, **_with_layer(q, k, pe, kwargs))


def prepare(q, k, v, pe=None, **kwargs):
    """``posenc.backends.prepare_call`` with the layer inputs ``pe`` needs."""
    from posenc.backends import prepare_call

    return prepare_call(q, k, v, pe, **_with_layer(q, k, pe, kwargs))


def _with_layer(q, k, pe, kwargs: dict) -> dict:
    if "features" in kwargs or "layer" in kwargs:
        return kwargs
    k_pos = kwargs.get("k_pos")
    if k_pos is None and kwargs.get("positions") is not None:
        p = kwargs["positions"]
        k_pos = p.key_pos if p.key_pos is not None else p.pos
    return {**kwargs, **layer_kwargs(pe, batch=q.shape[0], keys=k.shape[2], kv_heads=k.shape[1], k_pos=k_pos,
                                     dtype=q.dtype)}
