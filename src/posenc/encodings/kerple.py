"""KERPLE, kernelized relative positional embedding (Chi et al. 2022, arXiv 2205.09921).

A conditionally positive definite kernel of the distance ``|i - j|`` becomes an additive bias, with two learned
positive parameters per head:

- ``log``:   ``-r1 * log(1 + r2 * |i - j|)`` (the paper's best variant),
- ``power``: ``-r1 * |i - j|^r2`` with ``0 < r2 <= 2`` (ALiBi is ``r2 = 1`` with fixed ``r1``).

Positivity. The authors' code (chijames/KERPLE, a gpt-neox fork) clamps the raw parameters in place before every
forward, to ``[0.01, inf)`` and the exponent to ``[0.01, 2]``, and initialises them uniformly (``log``: ``r1`` in
``(0, 2)``, ``r2`` in ``(0, 1)``; ``power``: ``r1`` in ``(0, 1)``, ``r2`` in ``(0, 2)``). posenc keeps the same
initial distribution but reparametrises instead of clamping, so gradients never vanish at the boundary and no
forward mutates parameters: ``r = 0.01 + softplus(raw)`` for the coefficients, ``r2 = 2 * sigmoid(raw)`` for the
``power`` exponent. :meth:`KERPLE.coefficients` returns the constrained values.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.base import register
from posenc.encodings._relative import PairwiseBias

__all__ = ["KERPLE", "VARIANTS", "kerple_bias"]

VARIANTS = ("log", "power")
EPS = 1e-2  # the floor the authors' code clamps to


def kerple_bias(dist: Tensor, r1: Tensor, r2: Tensor, *, variant: str = "log") -> Tensor:
    """KERPLE's bias at non-negative distances ``dist`` for (broadcastable) positive parameters ``r1``, ``r2``.

    ``log``: ``-r1 * log(1 + r2 * dist)``; ``power``: ``-r1 * dist^r2``. ``dist`` is a float tensor (any shape) of
    ``|i - j|``. At ``dist = 0`` the ``power`` form is 0 with a zero (not NaN) gradient in ``r2``.
    """
    if variant == "log":
        return -r1 * torch.log1p(r2 * dist)
    if variant == "power":
        positive = dist > 0
        safe = torch.where(positive, dist, torch.ones_like(dist))  # keeps d(x^p)/dp = x^p log x finite at x = 0
        return -r1 * torch.where(positive, safe.pow(r2), torch.zeros_like(safe))
    raise ValueError(f"kerple: variant must be one of {VARIANTS}; got {variant!r}.")


def _inverse_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))  # softplus(x) = y  <=>  x = log(e^y - 1)


@register("kerple")
class KERPLE(PairwiseBias):
    """KERPLE kernelized relative position bias (Chi et al. 2022, arXiv 2205.09921): log or power kernel per head.

    Symmetric in ``i - j`` (the kernel is of ``|i - j|``), so the same bias serves causal decoders (where keys after
    the query are masked anyway) and bidirectional encoders.

    Args:
        variant: ``"log"`` (``-r1 log(1 + r2 |i-j|)``) or ``"power"`` (``-r1 |i-j|^r2``, ``0 < r2 <= 2``).
    """

    paper = "2205.09921"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 variant: str = "log") -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if variant not in VARIANTS:
            raise ValueError(f"kerple: variant must be one of {VARIANTS}; got {variant!r}. 'log' is the paper's "
                             f"best; 'power' generalises ALiBi.")
        self.variant = variant
        # The authors' initial distribution, kept off the clamp floor so the inverse maps are finite.
        r1_scale, r2_scale = (2.0, 1.0) if variant == "log" else (1.0, 2.0)
        r1 = (torch.rand(n_heads) * r1_scale).clamp(min=2 * EPS)
        r2 = (torch.rand(n_heads) * r2_scale).clamp(min=2 * EPS, max=2 - 2 * EPS)
        self.r1_raw = nn.Parameter(_inverse_softplus(r1 - EPS))  # (H,)
        self.r2_raw = nn.Parameter(_inverse_softplus(r2 - EPS) if variant == "log" else torch.logit(r2 / 2))  # (H,)

    def coefficients(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """The constrained per-head ``(r1, r2)``, each ``(H,)``, in ``dtype`` (default: the compute dtype)."""
        dtype = dtype or self.compute_dtype()
        r1 = EPS + F.softplus(self.r1_raw.to(dtype))
        r2_raw = self.r2_raw.to(dtype)
        r2 = EPS + F.softplus(r2_raw) if self.variant == "log" else 2 * torch.sigmoid(r2_raw)
        return r1, r2

    def prepare(self, q_pos: Tensor, k_pos: Tensor, dtype: torch.dtype) -> dict[str, Any]:
        r1, r2 = self.coefficients(dtype)
        return {"r1": r1, "r2": r2, "variant": self.variant}

    @staticmethod
    def pair_bias(q: Tensor, k: Tensor, h: Tensor, p: dict[str, Any]) -> Tensor:
        dist = (q - k).abs().to(p["r1"].dtype)
        return kerple_bias(dist, p["r1"][h], p["r2"][h], variant=p["variant"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variant={self.variant!r}"
