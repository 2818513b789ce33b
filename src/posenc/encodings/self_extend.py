"""Self-Extend (Jin et al. 2024, arXiv 2401.01325): RoPE past its training length with no fine-tuning.

Two attentions merged per query/key pair: *neighbour* attention, plain RoPE, for keys closer than
``neighbor_window`` (``W``); and *grouped* attention for the rest, where positions are floor-divided by
``group_size`` (``G``) — queries at ``floor(i / G) + W - floor(W / G)``, keys at ``floor(j / G)`` — so that the
relative position a far pair sees is ``floor(i / G) - floor(j / G) + W - floor(W / G)``, continuous with the window
at its edge and at most ``W + (L - W) / G`` for a sequence of length ``L``: a model trained at ``L_train`` runs to
about ``(L_train - W) * G + W`` tokens with every relative position inside what it was trained on.

Because a key needs two rotations, the encoding rotates inside :meth:`SelfExtend.attend` and nothing before it
(:meth:`rotate` is the identity, so a KV cache keeps unrotated keys and their positions).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from posenc.base import PositionalEncoding, register
from posenc.encodings._attend_utils import additive_mask, attend_inputs, positions_4d, safe_softmax
from posenc.encodings._relative import check_int
from posenc.encodings.rope import RoPE

__all__ = ["SelfExtend", "self_extend_positions"]


def self_extend_positions(q_pos: Tensor, k_pos: Tensor, *, group_size: int,
                          neighbor_window: int) -> tuple[Tensor, Tensor]:
    """The grouped positions ``(floor(q / G) + W - floor(W / G), floor(k / G))`` of Self-Extend's far pairs."""
    shift = neighbor_window - neighbor_window // group_size
    return torch.div(q_pos, group_size, rounding_mode="floor") + shift, torch.div(k_pos, group_size,
                                                                                  rounding_mode="floor")


@register("self_extend")
class SelfExtend(PositionalEncoding):
    """Self-Extend (Jin et al. 2024, arXiv 2401.01325): RoPE in a neighbour window, grouped positions beyond it.

    Args:
        group_size: ``G``, positions per group for far pairs (the paper: 2 to 16).
        neighbor_window: ``W``, keys with ``i - j < W`` use plain RoPE (the paper: 512 to 2048 for Llama-2's 4096).
        (and every ``rope`` option: ``base``, ``layout``, ``rotary_dim``, ``scaling``, ...)

    With ``group_size=1`` (or all keys within the window) it is exactly ``rope``.
    """

    family = "rotary"
    paper = "2401.01325"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 group_size: int = 8, neighbor_window: int = 512, **rope_options: Any) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        self.group_size = check_int("self_extend", "group_size", group_size, hint=" The paper uses 2 to 16.")
        self.neighbor_window = check_int("self_extend", "neighbor_window", neighbor_window,
                                         hint=" The paper uses 512 to 2048 for a 4096-token model.")
        self.rope = RoPE(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, **rope_options)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, q_pos: Tensor, k_pos: Tensor, causal: bool = False,
               attn_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
        """Merged neighbour / grouped RoPE attention.

        Args:
            q: ``(B, H, Tq, D)``; k, v: ``(B, Hkv, Tk, D)`` unrotated (``H % Hkv == 0``).
            q_pos, k_pos: int64 ``(Tq,)``/``(B, Tq)`` and ``(Tk,)``/``(B, Tk)``.
            causal: mask keys after each query (by index, bottom-right aligned).
            attn_mask: bool (True = attend) or additive float mask broadcastable to ``(B, H, Tq, Tk)``.
            scale: default ``1 / sqrt(D)``.

        Returns:
            ``(B, H, Tq, Dv)`` in the dtype of ``q`` (float32 compute, float64 for float64 input).
        """
        qc, kc, vc, scale, ct = attend_inputs(self, q, k, v, scale)  # (B, H, T, D), kv heads expanded
        qn, kn = self.rope.rotate(qc, kc, q_pos, k_pos)
        qg_pos, kg_pos = self_extend_positions(q_pos, k_pos, group_size=self.group_size,
                                               neighbor_window=self.neighbor_window)
        qg, kg = self.rope.rotate(qc, kc, qg_pos, kg_pos)
        near = (positions_4d(q_pos)[:, :, None] - positions_4d(k_pos)[:, None, :]) < self.neighbor_window
        scores = torch.where(near[:, None], qn @ kn.transpose(-2, -1), qg @ kg.transpose(-2, -1)) * scale
        mask = additive_mask(q.shape[-2], k.shape[-2], causal=causal, attn_mask=attn_mask, dtype=ct, device=q.device)
        if mask is not None:
            scores = scores + mask
        return (safe_softmax(scores) @ vc).to(q.dtype)  # (B, H, Tq, Dv)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, group_size={self.group_size}, neighbor_window={self.neighbor_window}, "
                f"base={self.rope.base:g}, layout={self.rope.layout!r}")
