"""ALiBi, attention with linear biases (Press et al. 2022, arXiv 2108.12409).

Head ``h`` adds ``-m_h * (i - j)`` to the score of query position ``i`` and key position ``j``. The slopes ``m_h``
form a geometric sequence that starts at ``2^(-8/n)`` with the same ratio, for ``n`` heads a power of two; for
other head counts the paper takes the ``2^floor(log2 n)`` slopes of the nearest smaller power of two and fills up
with every other slope of the next power of two (:func:`alibi_slopes`).

``falcon=True`` gives the numbers of Falcon checkpoints (transformers' ``build_alibi_tensor``), which differ from the
paper's in three ways a trained Falcon model depends on: the bias is ``+m_h * j`` (per key, equal to the paper's under
softmax only in exact arithmetic), slope and key position are both rounded to bfloat16 and so is their product, and
the result is divided by ``sqrt(head_dim)`` (Falcon adds the bias before the ``1/sqrt(d)`` scaling):
``bias = bf16(bf16(m_h) * bf16(j)) / sqrt(head_dim)`` (:func:`falcon_alibi_slopes` builds ``m_h`` in float32 as
Falcon does). Position ``j = 4096`` already rounds to a multiple of 16 in bfloat16.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from posenc._checks import check_int
from posenc.base import register
from posenc.encodings._relative import PairwiseBias

__all__ = ["ALiBi", "alibi_bias", "alibi_slopes", "falcon_alibi_bias", "falcon_alibi_slopes"]


def _power_of_two_slopes(n: int) -> list[float]:
    start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))  # 2^(-8/n)
    return [start * start**i for i in range(n)]


def alibi_slopes(n_heads: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """The paper's per-head slopes ``(n_heads,)``, exactly as its reference code builds them.

    For ``n`` a power of two: ``2^(-8/n), 2^(-16/n), ..., 2^(-8)``. Otherwise, with ``p = 2^floor(log2 n)``: the
    ``p`` slopes for ``p`` heads followed by the first ``n - p`` of the odd-indexed (0, 2, 4, ...) slopes for
    ``2p`` heads.

    Example:
        >>> alibi_slopes(8).tolist()  # doctest: +SKIP
        [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625]
    """
    check_int(n_heads, "alibi_slopes: n_heads", minimum=1)
    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = _power_of_two_slopes(closest)
    if closest != n_heads:
        slopes += _power_of_two_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float64, device=device).to(dtype)


def falcon_alibi_slopes(n_heads: int, *, device: torch.device | str | None = None) -> Tensor:
    """Falcon's slopes ``(n_heads,)`` rounded to bfloat16, computed in float32 as transformers'
    ``build_alibi_tensor`` does (``pow(base, 1..p)`` in float32; the same sequence as :func:`alibi_slopes`)."""
    alibi_slopes(n_heads)  # validates n_heads
    closest = 2 ** math.floor(math.log2(n_heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest) - 3))), dtype=torch.float32, device=device)
    slopes = torch.pow(base, torch.arange(1, 1 + closest, dtype=torch.int32, device=device))
    if closest != n_heads:
        extra = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest) - 3))), dtype=torch.float32, device=device)
        powers = torch.arange(1, 1 + 2 * min(closest, n_heads - closest), 2, dtype=torch.int32, device=device)
        slopes = torch.cat([slopes, torch.pow(extra, powers)])
    return slopes.bfloat16()


def falcon_alibi_bias(k_pos: Tensor, slopes_bf16: Tensor, head_dim: int, *, dtype: torch.dtype = torch.float32
                      ) -> Tensor:
    """Falcon's bias ``bf16(bf16(m_h) * bf16(j)) / sqrt(head_dim)`` for key positions ``j`` broadcast against the
    bfloat16 slopes (torch casts the int64 positions to bfloat16 before the product, as Falcon's code runs)."""
    return (slopes_bf16 * k_pos.to(torch.bfloat16)).to(dtype) / math.sqrt(head_dim)


def alibi_bias(q_pos: Tensor, k_pos: Tensor, slopes: Tensor, *, symmetric: bool = False) -> Tensor:
    """``-slope_h * (i - j)`` (or ``-slope_h * |i - j|`` when ``symmetric``) for broadcastable positions.

    Args:
        q_pos: int64 query positions ``i``, e.g. ``(Tq, 1)``.
        k_pos: int64 key positions ``j``, e.g. ``(1, Tk)``.
        slopes: ``(H,)`` slopes.

    Returns:
        ``(H, *broadcast(q_pos, k_pos).shape)`` in ``slopes``' dtype.
    """
    dist = (q_pos - k_pos).to(slopes.dtype)  # exact in float32 up to 2^24
    dist = dist.abs() if symmetric else dist
    return -slopes.view(-1, *([1] * dist.dim())) * dist


@register("alibi")
class ALiBi(PairwiseBias):
    """ALiBi linear attention biases (Press et al. 2022, arXiv 2108.12409): ``-m_h * (i - j)`` per head.

    Parameter-free. In a causal model (``causal=True``) the bias is the paper's ``-m_h * (i - j)``; keys after the
    query are masked, so their (positive) values never matter. A bidirectional encoder (``causal=False``) gets the
    symmetric form ``-m_h * |i - j|`` (as x-transformers and encoder ALiBi variants use), so distance is penalised
    on both sides.

    Formula:
        $$
        \\mathrm{softmax}\\!\\left(\\frac{q_i^\\top k_j}{\\sqrt{d}} - m_h\\,(i - j)\\right),\\quad
        m_h = 2^{-8h/H}\\ \\text{(H a power of two)}
        $$

    Args:
        symmetric: use ``-m_h * |i - j|``; defaults to ``not causal``.
        slopes: explicit per-head slopes (a sequence of ``n_heads`` positive floats) instead of the paper's.
        falcon: Falcon's numbers, ``bf16(bf16(m_h) * bf16(j)) / sqrt(head_dim)`` (see the module docstring), to run
            Falcon checkpoints; needs a causal, non-symmetric encoding (Falcon is a decoder).
    """

    paper = "2108.12409"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 symmetric: bool | None = None, slopes: list[float] | tuple[float, ...] | None = None,
                 falcon: bool = False) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if symmetric is not None and not isinstance(symmetric, bool):
            raise TypeError(f"alibi: symmetric must be True, False or None (= not causal); got {symmetric!r}.")
        if not isinstance(falcon, bool):
            raise TypeError(f"alibi: falcon must be a bool; got {falcon!r}.")
        self.symmetric = (not self.causal) if symmetric is None else symmetric
        if falcon and (self.symmetric or not self.causal):
            raise ValueError("alibi: falcon=True is Falcon's causal decoder bias +m_h * j; build it with causal=True "
                             "(and symmetric left at None/False).")
        self.falcon = falcon
        if slopes is None:
            values = alibi_slopes(n_heads, dtype=torch.float64)
        else:
            values = torch.as_tensor(slopes, dtype=torch.float64)
            if values.shape != (n_heads,) or not bool((values > 0).all()):
                raise ValueError(f"alibi: slopes must be {n_heads} positive numbers (one per head); got "
                                 f"{list(values.reshape(-1).tolist())}. Leave slopes=None for the paper's.")
        self.custom_slopes = slopes is not None
        self._slope_values = [float(v) for v in values.tolist()]  # exact, to rebuild the buffer after dtype moves
        self.register_buffer("slopes", values.float(), persistent=False)  # (H,)

    def _apply(self, fn, recurse=True):
        # .to(bfloat16) would round the slopes for good (2^-0.5 does not survive a trip through bf16); rebuild them
        # from the exact values after every move: float64 if the module went float64, float32 otherwise.
        super()._apply(fn, recurse)
        dtype = torch.float64 if self.slopes.dtype == torch.float64 else torch.float32
        self.slopes = torch.tensor(self._slope_values, dtype=torch.float64, device=self.slopes.device).to(dtype)
        return self

    def prepare(self, q_pos: Tensor, k_pos: Tensor, dtype: torch.dtype) -> dict[str, Any]:
        p = {"slopes": self.slopes.to(device=q_pos.device, dtype=dtype), "symmetric": self.symmetric,
             "falcon": self.falcon}
        if self.falcon:
            p["falcon_slopes"] = (torch.tensor(self._slope_values, device=q_pos.device).bfloat16()
                                  if self.custom_slopes else falcon_alibi_slopes(self.n_heads, device=q_pos.device))
            p["head_dim"] = self.head_dim
        return p

    @staticmethod
    def pair_bias(q: Tensor, k: Tensor, h: Tensor, p: dict[str, Any]) -> Tensor:
        if p["falcon"]:
            return falcon_alibi_bias(k, p["falcon_slopes"][h], p["head_dim"], dtype=p["slopes"].dtype)
        dist = (q - k).to(p["slopes"].dtype)  # int64 difference first: exact translation invariance
        if p["symmetric"]:
            dist = dist.abs()
        return -p["slopes"][h] * dist

    def extra_repr(self) -> str:
        falcon = ", falcon=True" if self.falcon else ""
        return f"{super().extra_repr()}, symmetric={self.symmetric}, custom_slopes={self.custom_slopes}{falcon}"
