"""Dynamic position bias: a small MLP maps the (log-scaled) signed distance to one bias per head.

The continuous position bias of Swin Transformer v2 (Liu et al. 2022, arXiv 2111.09883), in one dimension and as
x-transformers' ``DynamicPositionBias`` builds it: the MLP's input is ``sign(d) * log(1 + |d|)`` with
``d = i - j`` (query position minus key position), so nearby distances are resolved finely and far ones
compressed, and an MLP trained on short sequences is queried at moderately larger inputs, not at unseen scales.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc._checks import check_int
from posenc.base import register
from posenc.encodings._relative import PairwiseBias, distance_range

__all__ = ["DynamicPositionBias", "signed_log_distance"]


def signed_log_distance(dist: Tensor) -> Tensor:
    """``sign(d) * log(1 + |d|)`` for a float tensor of signed distances (any shape)."""
    return torch.sign(dist) * torch.log1p(dist.abs())


@register("dynamic")
class DynamicPositionBias(PairwiseBias):
    """Dynamic (continuous) position bias (Swin v2, arXiv 2111.09883): an MLP of signed log distance per head.

    The MLP is ``Linear(1, hidden), SiLU, [Linear(hidden, hidden), SiLU] x (depth - 1), Linear(hidden, n_heads)``,
    the layout of x-transformers' ``DynamicPositionBias`` (without its optional norm), so weights copy across.
    It is evaluated once per call on the range of distances present (``Tq + Tk - 1`` values for contiguous
    positions) and looked up per pair, by ``bias`` and ``score_mod`` alike: exact agreement and ``O(T)`` memory.
    For positions spread far apart (say a batch mixing offsets 0 and 10**6) the table covers the whole spread.

    Args:
        hidden: MLP width (x-transformers uses ``dim // 4``; posenc's default 64 keeps it small).
        depth: number of hidden layers (>= 1; x-transformers' default 2).
        log_distance: feed ``sign(d) log(1 + |d|)`` (Swin v2); ``False`` feeds the raw distance ``d``.
    """

    paper = "2111.09883"
    extrapolates = True  # the MLP is defined for every distance (how well it generalises is an empirical question)
    flex_backward = False  # its lookup-table gather of trainable MLP outputs fails to compile a flex backward

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False, hidden: int = 64,
                 depth: int = 2, log_distance: bool = True) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        check_int(hidden, "dynamic: hidden", minimum=1)
        check_int(depth, "dynamic: depth", minimum=1, hint=" The MLP needs at least one hidden layer.")
        if not isinstance(log_distance, bool):
            raise TypeError(f"dynamic: log_distance must be a bool; got {log_distance!r}.")
        self.hidden, self.depth, self.log_distance = hidden, depth, log_distance
        layers: list[nn.Module] = [nn.Linear(1, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, n_heads))
        self.mlp = nn.Sequential(*layers)

    def mlp_at(self, dist: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """The MLP at signed distances ``dist`` ``(N,)`` (int or float) -> ``(N, H)`` in ``dtype``."""
        dtype = dtype or self.compute_dtype()
        x = dist.to(dtype)[:, None]  # (N, 1)
        if self.log_distance:
            x = signed_log_distance(x)
        for layer in self.mlp:  # parameters upcast to the compute dtype (they may be stored in bf16)
            x = F.linear(x, layer.weight.to(dtype), layer.bias.to(dtype)) if isinstance(layer, nn.Linear) else layer(x)
        return x

    def prepare(self, q_pos: Tensor, k_pos: Tensor, dtype: torch.dtype) -> dict[str, Any]:
        lo, hi = distance_range(q_pos, k_pos)
        table = self.mlp_at(torch.arange(lo, hi + 1, device=q_pos.device), dtype)  # (hi - lo + 1, H)
        return {"table": table, "lo": lo}

    @staticmethod
    def pair_bias(q: Tensor, k: Tensor, h: Tensor, p: dict[str, Any]) -> Tensor:
        return p["table"][q - k - p["lo"], h]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden={self.hidden}, depth={self.depth}, log_distance={self.log_distance}"
