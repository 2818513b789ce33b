"""LieRE: rotations from learned (non-commuting) Lie-algebra generators (Ostmeier et al., arXiv 2406.10322)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posenc.base import register
from posenc.encodings._rotnd import BlockGenerators, skew

__all__ = ["LieRE"]


@register("liere")
class LieRE(BlockGenerators):
    """LieRE: Lie rotational position encodings with learned skew-symmetric generators (ICML 2025, arXiv 2406.10322).

    ``R(r) = exp(sum_k r_k A_k)`` with one learned skew-symmetric generator ``A_k`` per coordinate axis (and per
    generator set), applied to queries and keys alike: ``score = (R(r_q) q) . (R(r_k) k)``. The generators do not
    commute in general, so ``R(r_q)^T R(r_k)`` is *not* a function of ``r_k - r_q`` alone (on two or more axes, or
    on one axis never: one generator always commutes with itself, so 1-D LieRE is exactly relative).
    Parametrisation as in the official code (``StanfordMIMI/LieRE``, ``LierePositionEncoder``): a raw tensor drawn
    ``U[0, 2 pi)`` whose strict upper triangle ``U`` gives ``A = U - U^T``; ``block_size`` channels per block
    (the paper's dense generator is ``block_size = head_dim``, the default; smaller blocks make it block-diagonal).
    Positions are normalised as the paper does: multiplied by ``position_scale`` (default ``1 / max_seq_len``, so a
    training sequence spans ``[0, 1)``; give normalised float coordinates with ``position_scale=1.0``).

    Shapes: q ``(B, H, Tq, D)``, k ``(B, Hkv, Tk, D)``; coordinates ``(B, T, A)`` int64/float32/float64 or a table
    ``Positions(coordinates=...)`` ``(L, A)`` / ``(B, L, A)`` indexed by plain positions (default ``(0, .., 0, p)``).

    Args:
        axes: number of coordinate axes ``A`` (1, 2 or 3).
        block_size: generator block size ``b`` dividing ``head_dim`` (default ``head_dim``: dense).
        position_scale: coordinates are multiplied by it (default ``1 / max_seq_len``).
        rotation_heads: number of generator sets ``G``; head ``h`` of ``n`` uses set ``h G // n`` (``G`` must divide
            the key/value heads; the paper's per-head option is ``G = n_heads``). Default 1.

    Numerics, cost and limits: the summed generator is formed and exponentiated in float64
    (``torch.linalg.matrix_exp``: scaling and squaring, ``O(b^3 log ||r A||)`` per block), ``O(T G D b^2)`` per call;
    dense blocks of ``D = 64`` cost ~500x RoPE's per-token work. ``R`` stays orthogonal to ``~||r A|| * 1e-16``: at
    position 10**6 with the default scale (``||r A|| ~ 10**6 / max_seq_len * 2 pi b``) that is ~1e-9, far below the
    float32 rounding of the product; the angles themselves have no periodic meaning that large positions keep.
    KV cache: keys are rotated by their own coordinates and cached rotated, so decoding equals the full forward.
    """

    paper = "2406.10322"

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False, axes: int = 1,
                 block_size: int | None = None, position_scale: float | None = None,
                 rotation_heads: int = 1) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, axes=axes,
                         position_scale=position_scale, rotation_heads=rotation_heads,
                         default_scale=None, block_size=block_size)
        b = self.block_size
        # official init: torch.rand(...) * 2 pi; only the strict upper triangle is read
        self.generator_raw = nn.Parameter(torch.rand(rotation_heads, axes, self.n_blocks, b, b) * (2 * math.pi))

    def generators(self) -> Tensor:
        return skew(self.generator_raw.to(torch.float64))  # (G, A, nb, b, b)
