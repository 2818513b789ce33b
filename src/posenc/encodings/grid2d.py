"""2-D encodings for image patches: ``sinusoidal_2d`` (MAE / DETR), ``axial_rope`` and ``rope_mixed`` (Heo et al. 2024).

Positions are ``(row, col)`` coordinates. Pass them as int64 ``(B, T, 2)`` to the hooks, or give a coordinate table
``Positions(coordinates=coords)`` (``(L, 2)`` or ``(B, L, 2)``; row ``p`` is the ``(row, col)`` of the token at
position ``p``) and plain positions index it, which is what :class:`posenc.Transformer` does::

    grid = Positions(coordinates=grid_coordinates(8, 8, prefix_tokens=1))   # a CLS token then an 8x8 grid
    logits = model(tokens, positions=grid)                                 # tokens: (B, 65)

:func:`grid_coordinates` lays out a ``rows x cols`` grid row-major and puts ``prefix_tokens`` (CLS, registers) at
``(-1, -1)``, outside the grid. With plain positions and no table, a sequence is a ``1 x T`` grid: token ``p`` sits at
``(0, p)``; so ``axial_rope`` on a plain sequence is 1-D RoPE over the first half of each head's channels (a partial
RoPE with ``rotary_dim = head_dim / 2``). Evaluating at a larger grid than in training (resolution extrapolation)
only needs a larger coordinate table.

Channel layout of the two rotary encodings: the first ``head_dim / 2`` channels of each head form one rotary block,
the last ``head_dim / 2`` another; each block uses ``layout`` ("half" or "interleaved", see
:mod:`posenc.encodings.rope`) inside itself. ``axial_rope`` rotates block 1 by ``col * theta_i`` and block 2 by
``row * theta_i`` with ``theta_i = base^(-i / (head_dim / 4))``; ``rope_mixed`` rotates pair ``t`` of block ``b`` by
``col * fx[b, t] + row * fy[b, t]`` with learned frequencies, which equals ``axial_rope`` at ``init="axial"``.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor, nn

from posenc._checks import check_int
from posenc.base import PositionalEncoding, register
from posenc.encodings._structured import StructuredPositions
from posenc.encodings.rope import LAYOUTS, apply_rope, check_head_tensor

__all__ = ["AxialRoPE", "RoPEMixed", "Sinusoidal2D", "axial_frequencies", "grid_coordinates", "sinusoidal_2d_table"]


def grid_coordinates(rows: int, cols: int, *, prefix_tokens: int = 0, device: torch.device | str | None = None
                     ) -> Tensor:
    """``(row, col)`` of ``prefix_tokens`` tokens at ``(-1, -1)`` then a ``rows x cols`` grid in row-major order.

    Returns:
        int64 ``(prefix_tokens + rows * cols, 2)``.

    Example:
        >>> grid_coordinates(2, 3).tolist()
        [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    """
    for arg, value in (("rows", rows), ("cols", cols), ("prefix_tokens", prefix_tokens)):
        check_int(value, f"grid_coordinates: {arg}", minimum=0)
    r = torch.arange(rows, device=device).repeat_interleave(cols)
    c = torch.arange(cols, device=device).repeat(rows)
    grid = torch.stack((r, c), dim=-1)  # (rows * cols, 2)
    prefix = torch.full((prefix_tokens, 2), -1, dtype=torch.long, device=device)
    return torch.cat((prefix, grid), dim=0)


def sinusoidal_2d_table(coords: Tensor, dim: int, *, base: float = 10000.0) -> Tensor:
    """MAE's 2-D sin-cos encoding (arXiv 2111.06377; DETR 2005.12872) at integer ``(row, col)`` coordinates.

    ``[sin(col * w), cos(col * w), sin(row * w), cos(row * w)]`` with ``w_i = base^(-i / (dim / 4))`` for
    ``i < dim / 4``, exactly as MAE's ``get_2d_sincos_pos_embed`` (whose first half encodes the column).

    Args:
        coords: int ``(..., 2)`` as ``(row, col)``.
        dim: encoding width, a multiple of 4.

    Returns:
        float32 ``(..., dim)``; angles are formed in float64.
    """
    if dim % 4:
        raise ValueError(f"sinusoidal_2d: dim must be a multiple of 4 (sin and cos for each of two axes); got {dim}.")
    quarter = dim // 4
    omega = torch.pow(float(base), -torch.arange(quarter, device=coords.device, dtype=torch.float64) / quarter)
    row = coords[..., 0:1].to(torch.float64) * omega  # (..., dim/4)
    col = coords[..., 1:2].to(torch.float64) * omega
    return torch.cat((col.sin(), col.cos(), row.sin(), row.cos()), dim=-1).to(torch.float32)


def axial_frequencies(head_dim: int, base: float, *, device: torch.device | str | None = None) -> Tensor:
    """``theta_i = base^(-i / (head_dim / 4))`` for ``i < head_dim / 4``: float64 ``(head_dim // 4,)``."""
    quarter = head_dim // 4
    return torch.pow(float(base), -torch.arange(quarter, device=device, dtype=torch.float64) / quarter)


def _rotate_blocks(x: Tensor, angles: Tensor, layout: str) -> Tensor:
    """Rotate the two channel halves of ``x`` ``(B, H, T, D)`` by ``angles`` ``(B|1, H|1, T, 2, D/4)`` (float64)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    half = x.shape[-1] // 2
    first = apply_rope(x[..., :half], cos[..., 0, :], sin[..., 0, :], layout=layout)
    second = apply_rope(x[..., half:], cos[..., 1, :], sin[..., 1, :], layout=layout)
    return torch.cat((first, second), dim=-1)


class _GridEncoding(StructuredPositions, PositionalEncoding):
    """Shared plumbing: ``(row, col)`` coordinates read from ``Positions(coordinates=...)``, the 1 x T default."""

    n_axes = 2
    axis_names = ("row", "col")
    allow_negative = True  # prefix tokens (CLS) sit outside the grid at (-1, -1)

    def plain_coordinates(self, pos: Tensor) -> Tensor:
        return torch.stack((torch.zeros_like(pos), pos), dim=-1)  # a 1 x T grid: (0, p)


@register("sinusoidal_2d")
class Sinusoidal2D(_GridEncoding):
    """Fixed 2-D sin-cos encoding of ``(row, col)`` added to patch embeddings (MAE, arXiv 2111.06377; DETR).

    Half of the width encodes the column, half the row (see :func:`sinusoidal_2d_table`). Zero parameters; defined
    at any coordinate, so a larger grid at test time just reads new rows of the same formula.

    Args:
        base: wavelength base (10000 as in MAE and DETR).
        scale: multiplier on the encoding before it is added.
    """

    family = "2d"
    paper = "2111.06377"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: float = 10000.0, scale: float = 1.0) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if dim % 4:
            raise ValueError(f"sinusoidal_2d: dim must be a multiple of 4 (sin and cos for each of two axes); got "
                             f"{dim}.")
        if not base > 1:
            raise ValueError(f"sinusoidal_2d: base must be > 1; got {base}.")
        self.base = float(base)
        self.scale = float(scale)

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        """``x`` ``(B, T, dim)`` plus the encoding of ``pos`` (``(B, T, 2)`` coordinates or plain positions)."""
        coords = self.resolve(pos, x.shape[-2], batch=x.shape[0], device=x.device, name="pos")  # (B|1, T, 2)
        return x + (self.scale * sinusoidal_2d_table(coords, self.dim, base=self.base)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.base:g}, scale={self.scale}"


class _GridRoPE(_GridEncoding):
    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int, causal: bool, base: float, layout: str) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        who = type(self).name or type(self).__name__
        if self.head_dim % 4:
            raise ValueError(f"{who}: head_dim = dim // n_heads must be a multiple of 4 (two axes, channels rotate "
                             f"in pairs); got head_dim={self.head_dim}.")
        if layout not in LAYOUTS:
            raise ValueError(f"{who}: layout must be one of {LAYOUTS}; got {layout!r}.")
        if not (isinstance(base, (int, float)) and base > 1):
            raise ValueError(f"{who}: base must be a number > 1; got {base!r}.")
        self.base = float(base)
        self.layout = layout

    @abc.abstractmethod
    def angles(self, coords: Tensor, n_heads: int) -> Tensor:
        """float64 angles ``(B|1, n_heads|1, T, 2, head_dim/4)`` for coordinates ``(B|1, T, 2)``."""

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate ``q`` ``(B, H, Tq, D)`` and ``k`` ``(B, Hkv, Tk, D)`` at ``(B, T, 2)`` coordinates or positions."""
        return self.rotate_one(q, q_pos, "q"), self.rotate_one(k, k_pos, "k")

    def rotate_one(self, x: Tensor, pos: Tensor, name: str = "x") -> Tensor:
        check_head_tensor(x, self.head_dim, name)
        coords = self.resolve(pos, x.shape[-2], batch=x.shape[0], device=x.device, name=f"{name}_pos")
        return _rotate_blocks(x, self.angles(coords, x.shape[1]), self.layout)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.base:g}, layout={self.layout!r}"


@register("axial_rope")
class AxialRoPE(_GridRoPE):
    """Axial 2-D RoPE: half of each head rotates by column, half by row (RoPE-Axial, Heo et al., arXiv 2403.13298).

    ``q(r1, c1) . k(r2, c2)`` depends on the coordinates only through ``(r1 - r2, c1 - c2)``. On a ``1 x N`` grid
    (plain positions) it equals 1-D ``rope`` with ``rotary_dim = head_dim / 2`` and the same base and layout.

    Args:
        base: frequency base (100 in Heo et al. for images; use 10000 for long 1-D sequences).
        layout: pair layout inside each half, ``"half"`` or ``"interleaved"``.
    """

    family = "2d"
    paper = "2403.13298"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: float = 100.0, layout: str = "half") -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, base=base, layout=layout)

    def angles(self, coords: Tensor, n_heads: int) -> Tensor:
        theta = axial_frequencies(self.head_dim, self.base, device=coords.device)  # (D/4,)
        col = coords[..., 1:2].to(torch.float64) * theta  # (B|1, T, D/4)
        row = coords[..., 0:1].to(torch.float64) * theta
        return torch.stack((col, row), dim=-2).unsqueeze(1)  # (B|1, 1, T, 2, D/4)


@register("rope_mixed")
class RoPEMixed(_GridRoPE):
    """RoPE-Mixed: 2-D RoPE with learned mixed-axis frequencies (Heo et al. 2024, arXiv 2403.13298).

    Pair ``t`` of block ``b`` rotates by ``col * fx[g, b, t] + row * fy[g, b, t]``: each frequency is a learned 2-D
    direction, so diagonal relations get their own frequencies, and scores still depend only on coordinate
    differences. Initialisation as in the paper's code: magnitudes ``base^(-t / (head_dim / 4))``, block 1 along a
    random angle ``phi`` per frequency set and block 2 along ``phi + pi/2`` (``init="random"``), or exactly
    ``axial_rope`` (``init="axial"``, ``phi = 0``).

    Args:
        base: frequency base of the initial magnitudes (10 in the paper's RoPE-Mixed).
        layout: pair layout inside each half, ``"half"`` or ``"interleaved"``.
        init: ``"random"`` (paper) or ``"axial"``.
        freq_heads: number of learned frequency sets ``G``; query head ``h`` uses set ``h * G // H``. The paper
            learns one per head (``G = n_heads``); with grouped-query attention ``G`` must divide the number of
            key/value heads so each key head has one set. Default 1 (shared; works with any number of kv heads).
    """

    family = "2d"
    paper = "2403.13298"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: float = 10.0, layout: str = "half", init: str = "random", freq_heads: int = 1) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, base=base, layout=layout)
        if init not in ("random", "axial"):
            raise ValueError(f"rope_mixed: init must be 'random' or 'axial'; got {init!r}.")
        if check_int(freq_heads, "rope_mixed: freq_heads", minimum=1) and n_heads % freq_heads:
            raise ValueError(f"rope_mixed: freq_heads must be a positive divisor of n_heads={n_heads}; got "
                             f"{freq_heads!r}.")
        self.init = init
        self.freq_heads = freq_heads
        mag = axial_frequencies(self.head_dim, self.base).float()  # (D/4,)
        phi = torch.rand(freq_heads, 1) * 2 * math.pi if init == "random" else torch.zeros(freq_heads, 1)
        phi = torch.stack((phi, phi + math.pi / 2), dim=1)  # (G, 2 blocks, 1)
        self.freqs = nn.Parameter(torch.stack((mag * phi.cos(), mag * phi.sin()), dim=-1))  # (G, 2, D/4, [x, y])

    def angles(self, coords: Tensor, n_heads: int) -> Tensor:
        g = self.freq_heads
        if n_heads % g:
            raise ValueError(f"rope_mixed: a tensor with {n_heads} heads cannot use freq_heads={g} frequency sets; "
                             f"freq_heads must divide the number of key/value heads (grouped-query attention).")
        f = self.freqs.to(torch.float64)  # (G, 2, D/4, 2)
        c = coords.to(torch.float64)[:, None, :, None, None, :]  # (B|1, 1, T, 1, 1, [row, col])
        ang = c[..., 1] * f[None, :, None, ..., 0] + c[..., 0] * f[None, :, None, ..., 1]  # (B|1, G, T, 2, D/4)
        return ang.repeat_interleave(n_heads // g, dim=1) if g > 1 else ang

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init={self.init!r}, freq_heads={self.freq_heads}"
