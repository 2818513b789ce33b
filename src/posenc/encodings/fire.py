"""FIRE, functional interpolation for relative positional encoding (Li et al. 2024, arXiv 2310.04418).

For query position ``i`` and key position ``j <= i`` head ``h`` adds

    ``b_h(i, j) = f_theta( psi(i - j) / psi(max(L, i)) )_h``,   ``psi(x) = log(c * x + 1)``,

where ``f_theta`` is an MLP (1 -> ``hidden`` -> ``n_heads``, ReLU; hidden 32 in the paper), ``c > 0`` a learned
log-transform scale and ``L`` a learned threshold. Dividing by ``psi(max(L, i))`` is the "progressive
interpolation": the MLP's input stays in ``[0, 1]`` at any sequence length, so it never sees an input it was not
trained on, while ``L`` keeps short contexts from being squeezed into a tiny interval.

The bias depends on the query's absolute position ``i`` through the normaliser, so FIRE is translation invariant
only while every query position stays below ``L``.

Details follow the paper's reference code (its appendix listing): ``c`` starts at 0.1, ``L = |L_multiplier * init_L|``
with a learned ``L_multiplier`` (starting at 1) and a fixed ``init_L`` (512), ``|c * x|`` inside the logarithm and
``eps = 1e-6`` added to the denominator.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from posenc._checks import check_int, check_number
from posenc.base import register
from posenc.encodings._relative import PairwiseBias

__all__ = ["FIRE", "fire_normalized_distance"]


def fire_normalized_distance(q_pos: Tensor, k_pos: Tensor, *, c: Tensor, threshold: Tensor, eps: float = 1e-6,
                             bidirectional: bool = False) -> Tensor:
    """FIRE's MLP input ``psi(|i - j|) / psi(max(L, i))`` for broadcastable int positions, in ``c``'s dtype.

    Causal (the paper): ``log(|c (i - j)| + 1) / (log(|c max(L, i)| + 1) + eps)``; for ``j <= i`` it lies in
    ``[0, 1]``. Bidirectional (posenc's extension, see :class:`FIRE`): ``sign(i - j)`` times
    ``log(|c (i - j)| + 1) / (log(|c max(L, i, j)| + 1) + eps)``, which lies in ``[-1, 1]`` for non-negative
    positions and equals the causal value for every key at or before the query (``j <= i``).
    """
    dtype = c.dtype
    rel = (q_pos - k_pos).to(dtype)  # int64 difference first: exact
    reach = q_pos if not bidirectional else torch.maximum(q_pos, k_pos)
    num = torch.log(torch.abs(c * rel) + 1)
    den = torch.log(torch.abs(c * torch.maximum(reach.to(dtype), threshold)) + 1) + eps
    out = num / den
    return torch.sign(rel) * out if bidirectional else out


@register("fire")
class FIRE(PairwiseBias):
    """FIRE learned relative bias (Li et al. 2024, arXiv 2310.04418): an MLP of the log-scaled, interpolated distance.

    Causal models (``causal=True``) get the paper's bias, which looks only at ``|i - j|`` (keys after the query are
    masked). FIRE was defined for decoders; for a bidirectional encoder (``causal=False``, or ``bidirectional=True``)
    posenc feeds the MLP the *signed* interpolated distance ``sign(i - j) * psi(|i - j|) / psi(max(L, i, j))``, so
    keys before and after the query can get different biases and the input still stays in ``[-1, 1]``; for keys at
    or before the query it is the paper's value.

    ``bias`` and ``score_mod`` evaluate the MLP elementwise (its second layer as a sum over the hidden units in a
    fixed order), so both paths give identical numbers; the dense bias costs ``O(H * Tq * Tk)`` memory plus, under
    autograd, the hidden activations of every pair.

    Args:
        hidden: width of the MLP's hidden layer (paper: 32).
        init_c: initial log-transform scale ``c`` (paper: 0.1).
        init_threshold: ``init_L``, the fixed part of the threshold ``L = |L_multiplier * init_L|`` (paper: 512).
        bidirectional: signed input (see above); defaults to ``not causal``.
        eps: added to the normaliser (paper: 1e-6).
    """

    paper = "2310.04418"
    extrapolates = True  # the normalised distance stays in [0, 1] at any length
    flex_backward = False  # the MLP weights are read once per hidden unit; flex backward rejects that (GPU, torch 2.11)

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False, hidden: int = 32,
                 init_c: float = 0.1, init_threshold: float = 512.0, bidirectional: bool | None = None,
                 eps: float = 1e-6) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        check_int(hidden, "fire: hidden", minimum=1)
        for name, value in (("init_c", init_c), ("init_threshold", init_threshold), ("eps", eps)):
            check_number(value, f"fire: {name}", above=0)
        if bidirectional is not None and not isinstance(bidirectional, bool):
            raise TypeError(f"fire: bidirectional must be True, False or None (= not causal); got {bidirectional!r}.")
        self.bidirectional = (not self.causal) if bidirectional is None else bidirectional
        self.hidden = hidden
        self.init_threshold = float(init_threshold)
        self.eps = float(eps)
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, n_heads))
        self.c = nn.Parameter(torch.tensor(float(init_c)))
        self.threshold_multiplier = nn.Parameter(torch.tensor(1.0))

    def threshold(self, dtype: torch.dtype | None = None) -> Tensor:
        """``L = |L_multiplier * init_L|``, a 0-d tensor."""
        return torch.abs(self.threshold_multiplier.to(dtype or self.compute_dtype()) * self.init_threshold)

    def prepare(self, q_pos: Tensor, k_pos: Tensor, dtype: torch.dtype) -> dict[str, Any]:
        first, last = self.mlp[0], self.mlp[2]
        return {"c": self.c.to(dtype), "threshold": self.threshold(dtype), "eps": self.eps,
                "bidirectional": self.bidirectional,
                "w1": first.weight[:, 0].to(dtype), "b1": first.bias.to(dtype),  # (hidden,)
                "w2": last.weight.to(dtype), "b2": last.bias.to(dtype)}  # (H, hidden), (H,)

    @staticmethod
    def pair_bias(q: Tensor, k: Tensor, h: Tensor, p: dict[str, Any]) -> Tensor:
        x = fire_normalized_distance(q, k, c=p["c"], threshold=p["threshold"], eps=p["eps"],
                                     bidirectional=p["bidirectional"])
        w1, b1, w2 = p["w1"], p["b1"], p["w2"]
        out = p["b2"][h]
        for u in range(w1.shape[0]):  # f(x)_h = b2_h + sum_u w2_hu relu(w1_u x + b1_u), in a fixed order
            out = out + torch.relu(x * w1[u] + b1[u]) * w2[h, u]
        return out

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, hidden={self.hidden}, init_threshold={self.init_threshold:g}, "
                f"bidirectional={self.bidirectional}")
