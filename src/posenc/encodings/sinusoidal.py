"""Sinusoidal absolute encodings (Vaswani et al. 2017, arXiv 1706.03762) and a learned-gain variant."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posenc._angles import exact_angles
from posenc._checks import reads_values
from posenc.base import PositionalEncoding, check_positions, register

__all__ = ["SinusoidalPE", "ScaledSinusoidalPE", "sinusoidal_table"]


def sinusoidal_table(pos: Tensor, dim: int, *, base: float = 10000.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """The paper's encoding at integer positions, in float32 (or ``dtype``: float64 keeps every digit).

    ``PE[p, 2i] = sin(p / base^(2i/dim))`` and ``PE[p, 2i+1] = cos(p / base^(2i/dim))`` (interleaved, as in the
    paper; for odd ``dim`` the last column is a sine).

    Args:
        pos: int64 positions, any shape ``(...)``.
        dim: encoding width.
        base: the wavelength base (10000 in the paper).

    Returns:
        tensor of shape ``(..., dim)`` in ``dtype``.

    The angles are formed in float64, range-reduced exactly from position 2**24 on (:mod:`posenc._angles`), and
    only the sines/cosines are rounded to float32, so the table is exact to float32 rounding at every int64 position
    (a float32 angle at 10**6 would already be off by ~0.03 rad, a plain float64 one at 2**40 by ~1e-4). Added to
    bfloat16 / float16 embeddings it is rounded to those formats (~4e-3 / ~5e-4 relative), the same at every position.
    """
    i = torch.arange(0, dim, 2, device=pos.device, dtype=torch.float64)
    inv_freq = torch.exp(-math.log(base) * i / dim)  # (ceil(dim/2),)
    angles = exact_angles(pos, inv_freq)  # (..., ceil(dim/2)) float64
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (..., 2*ceil(dim/2)) interleaved
    return table[..., :dim].to(dtype)


@register("sinusoidal")
class SinusoidalPE(PositionalEncoding):
    """Fixed sinusoidal encoding added to token embeddings (Vaswani et al. 2017, arXiv 1706.03762).

    Zero parameters and defined at any position. ``PE(p + k)`` is a fixed linear map (a block rotation) of ``PE(p)``,
    which is the paper's argument for why relative offsets are easy to attend to.

    Formula:
        $$
        x'_p = x_p + \\mathrm{PE}(p),\\quad
        \\mathrm{PE}(p, 2i) = \\sin\\!\\big(p / b^{2i/d}\\big),\\quad
        \\mathrm{PE}(p, 2i+1) = \\cos\\!\\big(p / b^{2i/d}\\big)
        $$

    Args:
        base: wavelength base (paper: 10000).
        scale: multiplier on the encoding before it is added (1.0 in the paper; some code bases use
            ``1 / sqrt(dim)`` on the table or ``sqrt(dim)`` on the token embeddings instead).
    """

    family = "absolute"
    paper = "1706.03762"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: float = 10000.0, scale: float = 1.0) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if not base > 1:
            raise ValueError(f"sinusoidal: base must be > 1; got {base}.")
        self.base = float(base)
        self.scale = float(scale)
        # Cached table for positions < max_seq_len; positions beyond it are computed directly (same formula).
        self.register_buffer("_table", sinusoidal_table(torch.arange(max_seq_len), dim, base=self.base),
                             persistent=False)

    def rebuild_caches(self) -> None:
        # float64 after .double() (a float64 module gets a float64 table); float32 for every other dtype
        dtype = torch.float64 if self._table.dtype == torch.float64 else torch.float32
        self._table = sinusoidal_table(torch.arange(self.max_seq_len, device=self._table.device), self.dim,
                                       base=self.base, dtype=dtype)

    def table(self, pos: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Encodings at ``pos`` ``(...)`` -> ``(..., dim)``: float32, or float64 for a float64 module or ``dtype``."""
        dtype = torch.float64 if torch.float64 in (dtype, self._table.dtype) else torch.float32
        cached = self._table
        if cached.device != pos.device:
            cached = cached.to(pos.device)
        if not reads_values(pos):  # no data-dependent branch (graph break) under torch.compile; no values on meta
            return sinusoidal_table(pos, self.dim, base=self.base, dtype=dtype)
        if pos.numel() and int(pos.max()) < cached.shape[0] and cached.dtype == dtype:
            return cached[pos]
        return sinusoidal_table(pos, self.dim, base=self.base, dtype=dtype)

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        check_positions(pos, x.shape[-2], batch=x.shape[0], device=x.device)
        return x + (self.scale * self.table(pos, x.dtype)).to(x.dtype)  # (B, T, dim) + (T, dim) or (B, T, dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.base}, scale={self.scale}"


@register("scaled_sinusoidal")
class ScaledSinusoidalPE(SinusoidalPE):
    """Sinusoidal encoding times one learned scalar gain (as in x-transformers' ScaledSinusoidalEmbedding).

    The gain starts at ``dim ** -0.5`` so the encoding does not swamp freshly initialised token embeddings; the
    model learns how much position to mix in (arXiv 1706.03762 for the table).
    """

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: float = 10000.0, init_scale: float | None = None) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, base=base)
        self.gain = nn.Parameter(torch.tensor(dim**-0.5 if init_scale is None else float(init_scale)))

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        check_positions(pos, x.shape[-2], batch=x.shape[0], device=x.device)
        compute = torch.promote_types(x.dtype, torch.float32)  # a 0-d gain would not promote a float32 table
        return x + (self.gain.to(compute) * self.table(pos, x.dtype).to(compute)).to(x.dtype)
