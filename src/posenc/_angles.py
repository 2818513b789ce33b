"""``pos * theta`` with exact range reduction, so angles stay exact at any int64 position.

A float64 product ``p * theta`` is rounded to 53 bits of the *angle*: at position 2**40 an angle of ~1e12 rad is off
by ~1e-4 rad, and past 2**53 the position itself is no longer representable, so the angle is garbage. Below
:data:`EXACT_FROM` the plain product is exact to ~2e-9 rad and is used as is (bit-identical to the simple formula).
From there on, the position is split into 21-bit chunks ``p = c0 + c1 * 2**21 + c2 * 2**42`` (exact integers) and

    ``angle = c0 * r0 + c1 * r1 + c2 * r2``,   ``r_j = (2**(21 j) * theta) mod 2 pi``

where each ``r_j`` is computed once per frequency in exact rational arithmetic (the float64 ``theta`` is taken as
exact, 2 pi to 40 digits). Every term is below ``2**21 * 2 pi``, so the sum is exact to ~1e-8 rad for every position
up to 2**63 - 1. The frequencies themselves are float64 roundings (relative error ~1e-16) of ``base^(-2i/d)``: that is
the encoding's definition here, as in every implementation; angles are exact *for those frequencies*.

Under ``torch.compile`` (no host round trip allowed), and for meta tensors (no values), the plain product is used.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["EXACT_FROM", "exact_angles"]

EXACT_FROM = 1 << 24  # below this, float64 p * theta is exact to p * 2**-53 < 2e-9 rad
_CHUNK = 21
_TWO_PI = Fraction("6.283185307179586476925286766559005768394")  # 2 pi to 40 digits


@lru_cache(maxsize=64)
def _reduced(thetas: tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
    """``((2**(21 j) * theta_i) mod 2 pi for i) for j in 0, 1, 2`` as float64, from exact rationals."""
    out = []
    for j in range(3):
        row = []
        for t in thetas:
            x = Fraction(t) * (1 << (_CHUNK * j))
            row.append(float(x - (x // _TWO_PI) * _TWO_PI))
        out.append(tuple(row))
    return tuple(out)


def exact_angles(pos: Tensor, inv_freq: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """``pos[..., None] * inv_freq`` in ``dtype`` (float64; float32 on MPS), range-reduced when positions are large.

    Args:
        pos: integer positions ``(...)`` (int64).
        inv_freq: frequencies ``(F,)``.

    Returns:
        ``(..., F)`` angles, equal to the plain product while ``|pos| < EXACT_FROM``; beyond, congruent to the exact
        ``pos * inv_freq`` modulo 2 pi to ~1e-8 rad.
    """
    theta = inv_freq.to(device=pos.device, dtype=dtype)
    # meta tensors hold no values to range-check (model.to("meta"), deferred init): only the shapes matter there
    plain = dtype != torch.float64 or pos.numel() == 0 or pos.is_floating_point() or pos.device.type == "meta" or \
        torch.compiler.is_compiling() or torch.jit.is_tracing()
    if not plain:
        lo, hi = int(pos.min()), int(pos.max())
        plain = lo > -EXACT_FROM and hi < EXACT_FROM
    if plain:
        return pos.to(dtype).unsqueeze(-1) * theta
    sign = torch.where(pos < 0, -1.0, 1.0).to(dtype).unsqueeze(-1)
    mag = pos.abs()  # int64; -2**63 cannot occur (check_positions refuses negative positions anyway)
    reduced = torch.tensor(_reduced(tuple(inv_freq.double().tolist())), dtype=dtype, device=pos.device)  # (3, F)
    mask = (1 << _CHUNK) - 1
    angles = torch.zeros((*pos.shape, theta.shape[0]), dtype=dtype, device=pos.device)
    for j in range(3):
        chunk = ((mag >> (_CHUNK * j)) & mask).to(dtype).unsqueeze(-1)  # exact: < 2**21
        angles = angles + chunk * reduced[j]
    return sign * angles
