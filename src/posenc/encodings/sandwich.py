"""Sandwich (Chi et al. 2023, arXiv 2212.10356): the dot product of sinusoidal embeddings as a relative bias.

Two sinusoidal position embeddings of width ``d'`` have the dot product

    ``p_i . p_j = sum_{k=1}^{d'/2} cos((i - j) / 10000^(2k / d'))``,

a function of ``i - j`` alone that decays roughly logarithmically over the first few thousand positions. Sandwich
drops the token/position cross terms of the vanilla sinusoidal model and keeps only this term as a parameter-free
bias. As ALiBi does with its slopes, it compresses the bias differently per head: head ``n = 1..H`` divides it by
``8n / H``. posenc also subtracts ``d'/2`` (the value at distance 0), so the bias is 0 on the diagonal and
non-positive elsewhere; a constant per head changes nothing after the softmax.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from posenc._checks import check_int, check_number
from posenc.base import register
from posenc.encodings._relative import PairwiseBias, distance_range

__all__ = ["Sandwich", "sandwich_head_scales", "sandwich_kernel"]


def sandwich_kernel(dist: Tensor, sandwich_dim: int, *, base: float = 10000.0) -> Tensor:
    """``sum_{k=1}^{d'/2} cos(dist / base^(2k/d')) - d'/2`` at integer distances ``dist`` (any shape), in float64.

    The angles are formed in float64, so the kernel is exact to float64 rounding at any distance the positions
    allow. Memory is ``O(dist.numel())``: the sum runs over frequencies one at a time.
    """
    check_int(sandwich_dim, "sandwich: sandwich_dim", minimum=2)
    if sandwich_dim % 2:
        raise ValueError(f"sandwich: sandwich_dim must be even (sines and cosines come in pairs); got {sandwich_dim}.")
    d = dist.to(torch.float64)
    total = torch.zeros_like(d)
    for k in range(1, sandwich_dim // 2 + 1):
        total = total + torch.cos(d * base ** (-2.0 * k / sandwich_dim))
    return total - sandwich_dim / 2


def sandwich_head_scales(n_heads: int, *, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> Tensor:
    """The per-head multipliers ``H / (8n)`` for heads ``n = 1..H``, shape ``(H,)``."""
    n = torch.arange(1, n_heads + 1, dtype=torch.float64, device=device)
    return (n_heads / (8.0 * n)).to(dtype)


@register("sandwich")
class Sandwich(PairwiseBias):
    """Sandwich parameter-free relative bias (Chi et al. 2023, arXiv 2212.10356): dot products of sinusoids.

    ``bias_n(i, j) = (sum_{k=1}^{d'/2} cos((i - j) / 10000^(2k/d')) - d'/2) * H / (8n)`` for head ``n = 1..H``.
    Symmetric in ``i - j``, so it serves causal decoders and bidirectional encoders alike.

    The kernel is evaluated once per call on the range of distances present (``Tq + Tk - 1`` values for
    contiguous positions) in float64 and rounded to float32; ``bias`` and ``score_mod`` both look it up, so they
    agree exactly and neither forms a ``T x T x d'/2`` tensor.

    Args:
        sandwich_dim: ``d'``, the width of the sinusoidal embeddings (default: the model width ``dim``, as when the
            embeddings are the vanilla model's); must be even.
        base: the sinusoid's wavelength base (10000).
    """

    paper = "2212.10356"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 sandwich_dim: int | None = None, base: float = 10000.0) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        sandwich_dim = dim if sandwich_dim is None else sandwich_dim
        check_int(sandwich_dim, "sandwich: sandwich_dim", minimum=2)
        if sandwich_dim % 2:
            raise ValueError(f"sandwich: sandwich_dim must be even (sines and cosines come in pairs); got "
                             f"{sandwich_dim}. Hint: pass sandwich_dim= an even width.")
        check_number(base, "sandwich: base", above=1)
        self.sandwich_dim = sandwich_dim
        self.base = float(base)
        # A buffer, so .double() / .to(device) reach the encoding; rebuilt exactly after every move (see _apply).
        self.register_buffer("head_scales", sandwich_head_scales(n_heads), persistent=False)  # (H,)

    def _apply(self, fn, recurse=True):
        # H / (8n) is not exact in bfloat16: rebuild after every move, float64 if the module went float64.
        super()._apply(fn, recurse)
        dtype = torch.float64 if self.head_scales.dtype == torch.float64 else torch.float32
        self.head_scales = sandwich_head_scales(self.n_heads, dtype=dtype, device=self.head_scales.device)
        return self

    def prepare(self, q_pos: Tensor, k_pos: Tensor, dtype: torch.dtype) -> dict[str, Any]:
        lo, hi = distance_range(q_pos, k_pos)
        dist = torch.arange(lo, hi + 1, device=q_pos.device)
        table = sandwich_kernel(dist, self.sandwich_dim, base=self.base).to(dtype)  # (hi - lo + 1,)
        return {"table": table, "lo": lo, "scales": self.head_scales.to(device=q_pos.device, dtype=dtype)}

    @staticmethod
    def pair_bias(q: Tensor, k: Tensor, h: Tensor, p: dict[str, Any]) -> Tensor:
        return p["table"][q - k - p["lo"]] * p["scales"][h]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sandwich_dim={self.sandwich_dim}, base={self.base:g}"
