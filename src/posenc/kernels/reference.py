"""The plain PyTorch RoPE formula: the reference every fused RoPE kernel here is checked against, and its fallback.

Kept beside the kernels (which are leaves of the package: they import no encoding) and re-exported as
``posenc.apply_rope`` / ``posenc.encodings.rope.apply_rope``. Layouts: ``"half"`` pairs channel ``i`` with
``i + F`` (Hugging Face / GPT-NeoX ``rotate_half``); ``"interleaved"`` pairs ``2i`` with ``2i + 1`` (the paper, Meta's
llama).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["LAYOUTS", "apply_rope"]

LAYOUTS = ("half", "interleaved")


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, *, layout: str = "half") -> Tensor:
    """Rotate the first ``2F`` channels of ``x`` by the angles whose cos/sin are given; the rest pass through.

    Args:
        x: ``(B, H, T, D)`` (any leading dims; the last two are ``(T, D)``).
        cos: ``(T, F)`` shared by the batch, or ``(B, T, F)`` per sequence, with ``2F <= D``.
        sin: the same shape as ``cos``.
        layout: ``"half"`` or ``"interleaved"`` (see the module docstring).

    Returns:
        A tensor like ``x`` (same shape and dtype). The arithmetic runs in float32, or float64 for float64 input.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"rope: layout must be one of {LAYOUTS}; got {layout!r}.")
    n_freq = cos.shape[-1]
    rot = 2 * n_freq
    if rot > x.shape[-1]:
        raise ValueError(f"rope: {rot} rotary channels do not fit in head_dim={x.shape[-1]}.")
    if cos.dim() == 3:  # (B, T, F) -> (B, 1, T, F): broadcast over heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    compute = torch.promote_types(x.dtype, torch.float32)
    cos, sin = cos.to(compute), sin.to(compute)
    xr = x[..., :rot].to(compute)
    if layout == "half":
        x1, x2 = xr[..., :n_freq], xr[..., n_freq:]
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    out = out.to(x.dtype)
    if rot == x.shape[-1]:
        return out
    return torch.cat((out, x[..., rot:]), dim=-1)
