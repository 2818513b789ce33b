"""HoPE (Li et al., NeurIPS 2025, arXiv 2505.20444): hybrid position embedding for video, no temporal rotation.

Not the 2024 "HoPE" (high-frequency rotary position encoding for text), a different method with the same name.

From the authors' code (``hrlics/HoPE``, ``modeling_hope.py``):

- **Hybrid frequency allocation** (``apply_hybrid_multimodal_rotary_pos_emb``): VideoRoPE's table
  (:func:`~posenc.encodings.videorope.videorope_axes`) -- the first ``section[1] + section[2]`` pairs (the high
  frequencies) alternate height and width -- but the last ``section[0]`` pairs, which VideoRoPE gives to time, are
  *not rotated* (their cos is 1 and sin 0: the paper's "zero temporal frequencies", NoPE along time). Time still moves
  the spatial pairs through the diagonal layout.
- **Dynamic temporal scaling** (``get_dynamic_rope_index``): VideoRoPE's diagonal index layout with the temporal
  stride drawn per video from ``(0.5, 0.75, 1.0, 1.25, 1.5)`` in training (:data:`HOPE_TRAIN_SCALES`) and chosen by
  the user at inference (the authors' code asserts that one is set). :func:`hope_position_ids` builds it.

Unlike ``mrope`` and ``videorope``, HoPE is *not* 1-D RoPE on text: text tokens rotate only on the spatial pairs
(the temporal ones stay still), i.e. partial RoPE on ``2 * (section[1] + section[2])`` of ``head_dim`` channels.

Positions: as ``videorope`` (``Positions(coordinates=hope_position_ids([...], temporal_scale=...))``, or
``(B, T, 3)`` coordinates, integer or floating -- scales like 0.75 make fractional time). Shapes: q ``(B, H, Tq, D)``,
k ``(B, Hkv, Tk, D)``. Limits: angles in float64, cos/sin cast to float32 (float64 inputs keep float64): a coordinate
of 10^6 keeps its angle to ~1e-10 rad. KV cache: past the table, text continues after the largest time index + 1
(the authors' ``rope_deltas``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from posenc.base import register
from posenc.encodings.mrope import NO_AXIS, MRoPE
from posenc.encodings.videorope import _FloatCoordinates, _section, videorope_axes, videorope_position_ids

__all__ = ["HOPE_TRAIN_SCALES", "HoPE", "hope_axes", "hope_position_ids"]

HOPE_TRAIN_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)  # the temporal scales the authors draw from, one per video, in training


def hope_axes(section: Sequence[int]) -> list[int]:
    """HoPE's pair -> axis table: VideoRoPE's with the temporal pairs not rotated (:data:`NO_AXIS`).

    Example:
        >>> hope_axes([2, 3, 3])
        [1, 2, 1, 2, 1, 2, -1, -1]
    """
    return videorope_axes(section, temporal_axis=NO_AXIS)


def hope_position_ids(segments: Sequence[int | tuple], *, temporal_scale: float | Sequence[float],
                      device: torch.device | str | None = None) -> Tensor:
    """HoPE's ``(time, height, width)`` ids: VideoRoPE's diagonal layout with temporal stride ``temporal_scale``.

    The authors' ``get_dynamic_rope_index``: :func:`~posenc.encodings.videorope.videorope_position_ids` with
    ``temporal_stride = temporal_scale`` (one number, or one per grid as in training, where each video draws from
    :data:`HOPE_TRAIN_SCALES`). There is no default: the authors' inference asserts that the user picks one.

    Returns:
        ``(T, 3)``: int64 when every scale is a Python ``int``, float64 otherwise.

    Example:
        >>> hope_position_ids([1, (2, 1, 1), 1], temporal_scale=0.5).tolist()
        [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.5, 1.5, 1.5], [2.5, 2.5, 2.5]]
    """
    return videorope_position_ids(segments, temporal_stride=temporal_scale, device=device, name="hope_position_ids")


@register("hope")
class HoPE(_FloatCoordinates, MRoPE):
    """HoPE (NeurIPS 2025, arXiv 2505.20444): VideoRoPE's spatial layout with zero temporal frequencies.

    Pair ``i`` of ``F = head_dim / 2`` rotates by ``coord[a_i] * base^(-2i / head_dim)`` with ``a_i`` from
    :func:`hope_axes` (height/width alternating on the high frequencies; the last ``section[0]`` pairs not rotated);
    coordinates from :func:`hope_position_ids`. See the module docstring for limits and KV-cache behaviour.

    Args:
        base: frequency base (10000 by default; Qwen2-VL, which the authors fine-tune, uses 1000000).
        layout: ``"half"`` (the authors' ``rotate_half``, default) or ``"interleaved"``.
        mrope_section: ``(time, height, width)`` pair counts summing to ``head_dim / 2``; ``time`` pairs are left
            unrotated. Default :func:`~posenc.encodings.mrope.default_mrope_section` (``(16, 24, 24)`` at 128).
    """

    family = "rotary"
    paper = "2505.20444"
    allow_negative = True  # a centred grid at the start of a sequence has negative height / width indices

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: float = 10000.0, layout: str = "half", mrope_section: Sequence[int] | None = None) -> None:
        head_dim = dim // n_heads if n_heads > 0 and dim > 0 else 0
        section = _section(mrope_section, head_dim, "hope")
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, base=base, layout=layout,
                         pair_axes=hope_axes(section) if section is not None else None)
        self.mrope_section = tuple(section) if section is not None else self.mrope_section
