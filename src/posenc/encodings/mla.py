"""Decoupled RoPE of Multi-head Latent Attention, MLA (DeepSeek-V2, arXiv 2405.04434; DeepSeek-V3).

MLA compresses keys and values into a latent that cannot carry a rotation (RoPE would not commute with the up
projection), so each head is split in two: ``qk_nope_head_dim`` channels with no position, and ``qk_rope_head_dim``
channels rotated by RoPE — for keys one rotated vector shared by every head. Per head, the channels are
``[nope | rope]``: the *last* ``qk_rope_head_dim`` channels rotate, the first ones pass through (posenc's ``rope``
with ``rotary_dim`` keeps the rotated channels first instead)::

    q . k = q_nope . k_nope + R(n) q_rope . R(m) k_rope

With YaRN, DeepSeek scales twice: the cos/sin of the rope channels by ``mscale(s, mscale) / mscale(s,
mscale_all_dim)`` (the ``yarn`` attention factor, as for any rope), and the whole softmax by ``mscale(s,
mscale_all_dim) ** 2`` (Hugging Face's ``yarn_apply_mscale``), with ``mscale(s, m) = 0.1 m ln s + 1``. posenc folds the
second one into the queries (:attr:`MLARoPE.query_scale`), so ``posenc.attention``'s default ``1 / sqrt(head_dim)``
(``head_dim = qk_nope_head_dim + qk_rope_head_dim``) gives DeepSeek's softmax scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from posenc._checks import is_int
from posenc.base import PositionalEncoding, register
from posenc.encodings.rope import RoPE, check_head_tensor
from posenc.rope_scaling import yarn_mscale

__all__ = ["MLARoPE", "mla_softmax_scale"]


def mla_softmax_scale(qk_head_dim: int, scaling: Mapping[str, Any] | None) -> float:
    """DeepSeek's softmax scale: ``qk_head_dim ** -0.5``, times ``mscale(factor, mscale_all_dim) ** 2`` when a
    scaling sets a non-zero ``mscale_all_dim`` (Hugging Face's ``yarn_apply_mscale``)."""
    scale = qk_head_dim ** -0.5
    if scaling is not None and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        mscale_all_dim = scaling.get("mscale_all_dim") or 0
        if mscale_all_dim:
            scale *= yarn_mscale(float(scaling["factor"]), float(mscale_all_dim)) ** 2
    return scale


@register("mla")
class MLARoPE(PositionalEncoding):
    """Decoupled RoPE of MLA (DeepSeek-V2, arXiv 2405.04434): RoPE on the last qk_rope_head_dim channels of a head.

    Args:
        qk_rope_head_dim: rotated channels at the end of each head (DeepSeek-V2/V3: 64 of 192); default a third of
            ``head_dim`` rounded down to an even number. The rest (``qk_nope_head_dim``) carry no position.
        base: RoPE base (DeepSeek-V3: 10000).
        layout: pairing inside the rotated slice: ``"interleaved"`` (DeepSeek's weights; Hugging Face's
            ``rope_interleave=True``, the default there) or ``"half"`` (``rope_interleave=False``).
        scaling: any ``rope`` scaling (DeepSeek-V3: ``yarn`` with ``mscale`` and ``mscale_all_dim``); with a
            non-zero ``mscale_all_dim`` queries are also multiplied by ``mscale(s, mscale_all_dim) ** 2``
            (:attr:`query_scale`, the softmax factor; see the module docstring).

    Keys are rotated per head here; an MLA model computes one rotated key slice and shares it across heads, which is
    the same numbers.
    """

    family = "rotary"
    paper = "2405.04434"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 qk_rope_head_dim: int | None = None, base: float = 10000.0, layout: str = "interleaved",
                 scaling: dict | None = None) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        rope_dim = max(2, self.head_dim // 3 // 2 * 2) if qk_rope_head_dim is None else qk_rope_head_dim
        if not is_int(rope_dim) or rope_dim % 2 or \
                not 0 < rope_dim <= self.head_dim:
            raise ValueError(f"mla: qk_rope_head_dim must be an even number of channels in (0, head_dim="
                             f"{self.head_dim}]; got {qk_rope_head_dim!r}. DeepSeek-V3 uses 64 of 192.")
        self.qk_rope_head_dim = rope_dim
        self.qk_nope_head_dim = self.head_dim - rope_dim
        self.rope = RoPE(dim=n_heads * rope_dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, base=base,
                         layout=layout, scaling=scaling)
        self.query_scale = mla_softmax_scale(1, self.rope.scaling)  # mscale(s, mscale_all_dim) ** 2, or 1

    @property
    def softmax_scale(self) -> float:
        """DeepSeek's softmax scale, ``head_dim ** -0.5 * query_scale`` (what attention applies to q . k overall)."""
        return self.head_dim ** -0.5 * self.query_scale

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate the last ``qk_rope_head_dim`` channels of ``q`` ``(B, H, Tq, D)`` and ``k`` ``(B, Hkv, Tk, D)``."""
        check_head_tensor(q, self.head_dim, "q")
        check_head_tensor(k, self.head_dim, "k")
        n = self.qk_nope_head_dim
        q_rope, k_rope = self.rope.rotate(q[..., n:], k[..., n:], q_pos, k_pos)
        q = torch.cat((q[..., :n], q_rope), dim=-1)
        k = torch.cat((k[..., :n], k_rope), dim=-1)
        if self.query_scale != 1.0:
            q = q * self.query_scale
        return q, k

    def extra_repr(self) -> str:
        scaling = None if self.rope.scaling is None else self.rope.scaling["rope_type"]
        return (f"{super().extra_repr()}, qk_rope_head_dim={self.qk_rope_head_dim}, base={self.rope.base:g}, "
                f"layout={self.rope.layout!r}, scaling={scaling!r}, query_scale={self.query_scale:.6g}")
