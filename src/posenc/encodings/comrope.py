"""ComRoPE: rotations from learned commuting generators, exactly relative (Yu et al., arXiv 2506.03737)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from posenc._checks import check_int
from posenc.base import register
from posenc.encodings._rotnd import BlockGenerators

__all__ = ["ComRoPE"]

VARIANTS = ("ap", "ld")


@register("comrope")
class ComRoPE(BlockGenerators):
    """ComRoPE: RoPE with trainable commuting angle matrices (Yu et al., CVPR 2025, arXiv 2506.03737).

    ``R(r) = exp(sum_k r_k A_k)`` with block-diagonal skew-symmetric ``A_k`` (``b x b`` blocks) forced to commute,
    which makes it exactly relative: ``R(r_q)^T R(r_k) = R(r_k - r_q)``. Two ways, as the official code
    (``Longin-Yu/ComRoPE/model.py``) parametrises them, with ``B_j = W_j - W_j^T`` from a learned ``W`` per block:

    - ``variant="ap"`` (axis-partition, ``ComRoPEAPAttention``): block ``j`` belongs to axis ``j mod A`` only:
      ``A_k = diag(B_j if j mod A == k else 0)``;
    - ``variant="ld"`` (linearly dependent, ``ComRoPELDAttention``): ``A_k = diag(m_{k, j} B_j)`` with learned
      multipliers ``m`` ``(A, nb)`` shared by the heads.

    Either way block ``j`` of the summed generator is ``s_j B_j`` for a scalar ``s_j(r)``, so one ``b x b``
    exponential per (token, block) gives ``R``. Init as the reference: ``W ~ N(0, init_std^2)``, ``m ~ N(0, 1)``.
    Positions are normalised as the paper does (to ``[0, 1]``): coordinates are multiplied by ``position_scale``
    (default ``1 / max_seq_len``; give normalised float coordinates with ``position_scale=1.0``).

    Shapes: q ``(B, H, Tq, D)``, k ``(B, Hkv, Tk, D)``; coordinates ``(B, T, A)`` int64/float32/float64 or a table
    ``Positions(coordinates=...)`` ``(L, A)`` / ``(B, L, A)`` indexed by plain positions (default ``(0, .., 0, p)``).

    Args:
        axes: number of coordinate axes ``A`` (1, 2 or 3).
        variant: ``"ap"`` or ``"ld"``.
        block_size: block size ``b`` dividing ``head_dim`` (2, the reference config's default; the paper also
            trains 4 and 8). For ``"ap"``, ``head_dim / b`` must be a multiple of ``A``.
        init_std: standard deviation of the initial ``W`` (1.0 as the reference).
        position_scale: coordinates are multiplied by it (default ``1 / max_seq_len``).
        rotation_heads: number of ``W`` sets ``G`` (the reference learns one per head, ``G = n_heads``); head ``h``
            of ``n`` uses set ``h G // n``; ``G`` must divide the key/value heads. Default 1.

    Numerics, cost and limits: generators and exponentials in float64, ``O(T G D b^2)`` per call; ``R`` is
    orthogonal and exactly relative to ~``|s| ||B|| * 1e-16``, ~1e-10 at position 10**6 with the default scale, far
    below the float32 rounding of the product. KV cache: keys are rotated by their own coordinates and cached
    rotated, so decoding equals the full forward.
    """

    paper = "2506.03737"

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False, axes: int = 1,
                 variant: str = "ap", block_size: int = 2, init_std: float = 1.0,
                 position_scale: float | None = None, rotation_heads: int = 1) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"comrope: variant must be 'ap' (axis-partition) or 'ld' (linearly dependent); got "
                             f"{variant!r}.")
        check_int(block_size, "comrope: block_size", minimum=2)
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, axes=axes,
                         position_scale=position_scale, rotation_heads=rotation_heads,
                         default_scale=None, block_size=block_size)
        if isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or not 0 < init_std < float("inf"):
            raise ValueError(f"comrope: init_std must be a finite number > 0; got {init_std!r}.")
        nb, b = self.n_blocks, self.block_size
        if variant == "ap" and nb % axes:
            raise ValueError(f"comrope: the axis-partition variant gives each of axes={axes} the same number of "
                             f"blocks, so head_dim / block_size = {nb} must be a multiple of {axes}.")
        self.variant = variant
        self.init_std = float(init_std)
        self.weight = nn.Parameter(torch.randn(rotation_heads, nb, b, b) * self.init_std)  # (G, nb, b, b): W
        if variant == "ld":
            self.multiplier = nn.Parameter(torch.randn(axes, nb))  # m_{k, j}
        else:
            self.register_buffer("partition", self._partition(torch.device("cpu")), persistent=False)  # (A, nb)

    def _partition(self, device: torch.device) -> Tensor:
        """Which blocks each axis owns (axis-partition variant): block ``j`` belongs to axis ``j % axes``."""
        axis = torch.arange(self.n_blocks, device=device) % self.n_axes
        return axis == torch.arange(self.n_axes, device=device)[:, None]  # (A, nb) bool

    def rebuild_caches(self) -> None:
        # a derived table, not state: rebuilt after every .to() / .to_empty() (which leaves it uninitialised)
        super().rebuild_caches()
        if getattr(self, "variant", None) == "ap" and "partition" in self._buffers:
            self.partition = self._partition(self.partition.device)

    def generators(self) -> Tensor:
        w = self.weight.to(torch.float64)
        blocks = w - w.transpose(-1, -2)  # (G, nb, b, b): B_j
        if self.variant == "ld":
            scale = self.multiplier.to(torch.float64)  # (A, nb)
        else:
            scale = self.partition.to(torch.float64)
        return scale[None, :, :, None, None] * blocks[:, None]  # (G, A, nb, b, b)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variant={self.variant!r}, init_std={self.init_std:g}"
