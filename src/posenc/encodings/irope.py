"""Llama 4's iRoPE (Meta 2025): RoPE layers with chunked local attention, interleaved with NoPE layers.

Llama 4 gives three of every four layers RoPE and *chunked* attention (a query sees only the keys of its own chunk
of ``attention_chunk_size`` positions, so those layers never see a distance past the chunk) and every fourth layer
no position at all, with global attention and a query *temperature* that grows with the position
(``1 + attn_scale * ln(1 + floor((p + 1) / floor_scale))``, the temperature tuning of arXiv 2501.19399, as
transformers' ``Llama4TextAttention``). Two encodings, one per kind of layer:

- ``chunked_rope``: :class:`~posenc.encodings.rope.RoPE` (every option, Llama 4: interleaved pairs, ``llama3``
  scaling) plus the chunk mask as an attention bias (``0`` inside the chunk, ``-inf`` across chunks);
- ``nope_temperature``: no position; queries multiplied by :func:`~posenc.rope_scaling.llama4_attn_temperature`.

:func:`irope_config` returns the :class:`~posenc.TransformerConfig` fields that put them on the right layers
(``encoding="chunked_rope"`` and ``layer_encodings`` with ``nope_temperature`` on every ``nope_interval``-th layer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from posenc._checks import check_int, check_number
from posenc.base import PositionalEncoding, check_positions, register
from posenc.encodings.rope import RoPE, check_head_tensor
from posenc.rope_scaling import llama4_attn_temperature

__all__ = ["ChunkedRoPE", "NoPETemperature", "chunk_mask_bias", "irope_config"]


def chunk_mask_bias(q_pos: Tensor, k_pos: Tensor, chunk: int) -> Tensor:
    """``0`` where ``floor(q / chunk) == floor(k / chunk)``, ``-inf`` elsewhere: broadcast shapes, float32."""
    same = torch.div(q_pos, chunk, rounding_mode="floor") == torch.div(k_pos, chunk, rounding_mode="floor")
    return torch.zeros(same.shape, device=same.device).masked_fill(~same, float("-inf"))


@register("chunked_rope")
class ChunkedRoPE(RoPE):
    """RoPE with chunked local attention (Llama 4's RoPE layers): queries see only keys of their own chunk.

    Args:
        attention_chunk_size: chunk length (Llama 4: 8192); query ``p`` sees keys ``k`` with ``floor(k / C) ==
            floor(p / C)`` (and ``k <= p`` when causal), exactly transformers' ``chunked_causal_mask_function``
            without padding.
        (and every ``rope`` option; Llama 4 uses ``layout="interleaved"``)
    """

    family = "rotary"
    paper = None

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 attention_chunk_size: int = 8192, **rope_options: Any) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, **rope_options)
        self.attention_chunk_size = check_int(attention_chunk_size, "chunked_rope: attention_chunk_size",
                                              minimum=1,
                                              hint=" Llama 4 uses 8192.")

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """The chunk mask ``(H, Tq, Tk)`` (``(B, H, Tq, Tk)`` for per-sequence positions): 0 or ``-inf``."""
        for name, pos in (("q_pos", q_pos), ("k_pos", k_pos)):
            check_positions(pos, pos.shape[-1], name=name)
        batched = q_pos.dim() == 2 or k_pos.dim() == 2
        q = (q_pos if q_pos.dim() == 2 else q_pos[None])[:, None, :, None]  # (B|1, 1, Tq, 1)
        k = (k_pos if k_pos.dim() == 2 else k_pos[None])[:, None, None, :]  # (B|1, 1, 1, Tk)
        out = chunk_mask_bias(q, k, self.attention_chunk_size)
        out = out.expand(max(q.shape[0], k.shape[0]), self.n_heads, q.shape[2], k.shape[3])
        return out if batched else out[0]

    def score_mod(self, q_pos: Tensor, k_pos: Tensor) -> Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]:
        """FlexAttention form of :meth:`bias` (same numbers)."""
        chunk = self.attention_chunk_size
        q_batched, k_batched = q_pos.dim() == 2, k_pos.dim() == 2

        def chunked_score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            q = q_pos[b, q_idx] if q_batched else q_pos[q_idx]
            k = k_pos[b, kv_idx] if k_batched else k_pos[kv_idx]
            return score + chunk_mask_bias(q, k, chunk).to(score.dtype)

        return chunked_score_mod

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, attention_chunk_size={self.attention_chunk_size}"


@register("nope_temperature")
class NoPETemperature(PositionalEncoding):
    """No position, queries scaled by Llama 4's temperature ``1 + attn_scale * ln(1 + floor((p + 1) / floor_scale))``.

    Args:
        attn_scale: the slope (Llama 4: 0.1).
        floor_scale: positions per step (Llama 4: 8192); below ``floor_scale - 1`` the scale is 1 (plain NoPE).
    """

    family = "none"
    paper = "2501.19399"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 attn_scale: float = 0.1, floor_scale: int = 8192) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        self.attn_scale = check_number(attn_scale, "nope_temperature: attn_scale", minimum=0, hint="Llama 4: 0.1.")
        self.floor_scale = check_int(floor_scale, "nope_temperature: floor_scale", minimum=1,
                                     hint="Llama 4 uses 8192.")

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Queries ``(B, H, Tq, D)`` times their temperature; keys ``(B, Hkv, Tk, D)`` unchanged."""
        check_head_tensor(q, self.head_dim, "q")
        check_positions(q_pos, q.shape[-2], name="q_pos", batch=q.shape[0], device=q.device)
        scale = llama4_attn_temperature(q_pos, attn_scale=self.attn_scale, floor_scale=self.floor_scale)
        scale = scale[:, None] if scale.dim() == 1 else scale[:, None, :, None]  # -> (Tq, 1) or (B, 1, Tq, 1)
        return (q.to(torch.promote_types(q.dtype, torch.float32)) * scale).to(q.dtype), k

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, attn_scale={self.attn_scale:g}, floor_scale={self.floor_scale}"


def irope_config(n_layers: int, *, nope_interval: int = 4, attention_chunk_size: int = 8192,
                 attn_temperature_tuning: bool = True, attn_scale: float = 0.1, floor_scale: int = 8192,
                 **rope_options: Any) -> dict[str, Any]:
    """:class:`~posenc.TransformerConfig` fields for Llama 4's layer pattern: NoPE on layers ``i`` with
    ``(i + 1) % nope_interval == 0`` (transformers' ``no_rope_layers``), chunked RoPE on the others.

    Example:
        >>> cfg = TransformerConfig(dim=64, n_heads=4, n_layers=4, **irope_config(4, attention_chunk_size=16,
        ...                         base=500000.0, layout="interleaved"))
        >>> sorted(cfg.layer_encodings)
        [3]
    """
    check_int(n_layers, "irope_config: n_layers", minimum=1)
    check_int(nope_interval, "irope_config: nope_interval", minimum=1)
    nope = {"encoding": "nope_temperature", "attn_scale": attn_scale if attn_temperature_tuning else 0.0,
            "floor_scale": floor_scale}
    return {"encoding": "chunked_rope", "encoding_options": {"attention_chunk_size": attention_chunk_size,
                                                             **rope_options},
            "layer_encodings": {i: dict(nope) for i in range(n_layers) if (i + 1) % nope_interval == 0}}
