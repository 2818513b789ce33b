"""xPos: RoPE with an exponential decay per frequency (Sun et al. 2022, arXiv 2212.10554)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from posenc._checks import reads_values
from posenc.base import check_positions, register
from posenc.encodings.rope import RoPE, apply_rope, check_head_tensor

__all__ = ["XPos"]


@register("xpos")
class XPos(RoPE):
    """Extrapolatable RoPE (arXiv 2212.10554): rotary pairs also scaled so attention decays with distance.

    Pair ``i`` of a query at position ``n`` is scaled by ``zeta_i ** ((n - c) / scale_base)`` and of a key at ``m``
    by ``zeta_i ** (-(m - c) / scale_base)``, with ``zeta_i = (2i / rotary_dim + gamma) / (1 + gamma)``. The product
    depends only on ``n - m``, so ``q . k`` stays relative and shrinks by ``zeta_i ** ((n - m) / scale_base)``.

    The separate factors grow exponentially with ``|pos - c|``: the encoding raises a ``ValueError`` instead of
    overflowing once ``|pos - c| * max_i(-ln zeta_i) / scale_base`` exceeds half of ``ln(finfo(dtype).max)``
    (about |pos - c| < 18,000 in float32 and bfloat16, 2,200 in float16 with the defaults). ``c`` (``center``) is a
    fixed option rather than a per-call value so that keys cached during decoding keep their scale; set it near the
    positions you use (default ``max_seq_len // 2``).

    Args:
        scale_base: the decay length (512 in the paper).
        gamma: the paper's 0.4.
        center: the position where both scales are 1.
        (and every ``rope`` option)
    """

    family = "rotary"
    paper = "2212.10554"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: float = 10000.0, layout: str = "interleaved", rotary_dim: int | None = None,
                 rotary_fraction: float | None = None, scale_base: float = 512.0, gamma: float = 0.4,
                 center: int | None = None) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, base=base, layout=layout,
                         rotary_dim=rotary_dim, rotary_fraction=rotary_fraction)
        if not scale_base > 0:
            raise ValueError(f"xpos: scale_base must be > 0; got {scale_base}.")
        if not gamma > 0:
            raise ValueError(f"xpos: gamma must be > 0; got {gamma}.")
        self.scale_base = float(scale_base)
        self.gamma = float(gamma)
        self.center = max_seq_len // 2 if center is None else int(center)

    def log_zeta(self, device: torch.device | str | None = None) -> Tensor:
        """``ln zeta_i`` as float64 ``(rotary_dim // 2,)`` (all negative)."""
        i = torch.arange(0, self.rotary_dim, 2, device=device, dtype=torch.float64)
        return torch.log((i / self.rotary_dim + self.gamma) / (1 + self.gamma))

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate and scale ``q`` ``(B, H, Tq, D)`` up and ``k`` ``(B, Hkv, Tk, D)`` down by their positions."""
        return self._rotate_scaled(q, q_pos, "q", 1.0), self._rotate_scaled(k, k_pos, "k", -1.0)

    def _rotate_scaled(self, x: Tensor, pos: Tensor, name: str, sign: float) -> Tensor:
        check_head_tensor(x, self.head_dim, name)
        check_positions(pos, x.shape[-2], name=f"{name}_pos", batch=x.shape[0], device=x.device)
        log_zeta = self.log_zeta(pos.device)
        rel = (pos.to(torch.float64) - self.center) / self.scale_base  # (T,) or (B, T)
        if rel.numel() and reads_values(rel):  # the overflow guard reads values: eager only
            limit = 0.5 * math.log(torch.finfo(x.dtype).max)
            worst = float(rel.abs().max()) * float(-log_zeta.min())
            if worst > limit:
                raise ValueError(f"xpos: positions up to {int((pos - self.center).abs().max())} away from center="
                                 f"{self.center} need scales up to exp({worst:.0f}), beyond {x.dtype}'s safe "
                                 f"exp({limit:.0f}). Build xpos with center= near your positions (or a larger "
                                 f"scale_base).")
        scale = torch.exp(sign * rel.unsqueeze(-1) * log_zeta)  # (..., F)
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        cos, sin = self.cos_sin(pos, dtype=torch.float64)
        return apply_rope(x, (cos * scale).to(compute), (sin * scale).to(compute), layout=self.layout)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale_base={self.scale_base:g}, center={self.center}"
