"""VideoRoPE (Wei et al., ICML 2025, arXiv 2502.05173): M-RoPE for video with time on the lowest frequencies.

Three changes to Qwen2-VL's M-RoPE (``mrope``), all from the authors' code (``Wiselnn570/VideoRoPE``,
``videorope-transformer/modeling_videorope.py``):

- **Low-frequency temporal allocation** (the pair -> axis table, :func:`videorope_axes`): of the ``F = head_dim / 2``
  rotary pairs (pair ``i`` at frequency ``base^(-2i / head_dim)``), the first ``S = section[1] + section[2]``
  (the high frequencies) alternate height, width, height, width, ... and the last ``section[0]`` (the lowest
  frequencies) are time. Low frequencies barely turn over a long video, so time positions far apart do not alias
  (the paper's "semantic attack" on the high temporal frequencies of M-RoPE). ``apply_m_modify_multimodal_rotary_
  pos_emb`` in the authors' code; ``section = (16, 24, 24)`` for ``head_dim = 128``: 48 alternating spatial pairs,
  then 16 temporal ones.
- **Diagonal layout** (:func:`videorope_position_ids`, the authors' ``get_t_scale_rope_index``): a video grid
  starting at ``s`` puts patch ``(ti, row, col)`` at ``time = s + delta * ti``, ``height = time + row - (h - 1) // 2``,
  ``width = time + col - (w - 1) // 2``: spatial indices are centred and offset by the temporal index, so the
  frames move along the diagonal that text tokens (all three coordinates equal) follow.
- **Adjustable temporal spacing** ``delta`` (``temporal_stride``; the authors use 2): the next segment starts at
  ``s + delta * (t - 1) + 1`` (the largest *time* index + 1, not the largest of the three).

Text carries one position on all three axes, so on text alone VideoRoPE equals 1-D ``rope`` (same base, layout).

Positions: as ``mrope`` (``Positions(coordinates=videorope_position_ids([...]))`` in :class:`posenc.Transformer`, or
``(B, T, 3)`` coordinates to the hooks). Coordinates may be negative (a centred grid right at the start) and may be
floating (a non-integer ``delta``; the authors' position ids are float32). Shapes: q ``(B, H, Tq, D)``, k ``(B, Hkv,
Tk, D)``, coordinates ``(B, T, 3)`` / a table ``(L, 3)`` or ``(B, L, 3)``.

Limits: angles are formed in float64 and cos/sin cast to float32 (float64 inputs keep float64), so a coordinate of
10^6 keeps its angle to ~1e-10 rad (float32 positions, as the authors' code uses, would lose ~0.03 rad there).
KV cache: positions past the coordinate table are text continuing after the largest *time* index of the table (the
authors' ``rope_deltas = llm_positions[0].max() + 1 - len``), so decoding after a video prompt needs no more input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from posenc._checks import is_int, reads_values
from posenc.base import register
from posenc.encodings.mrope import MRoPE, default_mrope_section

__all__ = ["VideoRoPE", "videorope_axes", "videorope_position_ids"]


def videorope_axes(section: Sequence[int], *, temporal_axis: int = 0) -> list[int]:
    """VideoRoPE's pair -> axis table: ``section[1] + section[2]`` pairs alternating height (1) and width (2), then
    ``section[0]`` pairs of ``temporal_axis`` (0 = time; HoPE passes -1, not rotated).

    Example:
        >>> videorope_axes([2, 3, 3])
        [1, 2, 1, 2, 1, 2, 0, 0]
    """
    spatial = section[1] + section[2]
    return [1 + j % 2 for j in range(spatial)] + [temporal_axis] * section[0]


def _check_scale(value, i: int, who: str, what: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{who}: {what} must be a finite number > 0 (grid {i}); got {value!r}.")
    return value


def videorope_position_ids(segments: Sequence[int | tuple], *, temporal_stride: float | Sequence[float] = 2,
                           device: torch.device | str | None = None, name: str = "videorope_position_ids") -> Tensor:
    """``(time, height, width)`` ids of a sequence of text runs and video / image grids, VideoRoPE's diagonal layout
    (the authors' ``get_t_scale_rope_index``; HoPE's ``get_dynamic_rope_index`` is the same with its own scale).

    Each segment starts at ``s`` (0 at the start). A text run of ``n`` tokens gets ``s, ..., s + n - 1`` on all three
    axes and the next starts at ``s + n``. A grid ``(t, h, w)`` of ``t * h * w`` patches (already spatially merged, in
    ``(t, row, col)`` row-major order) gets ``time = s + delta * ti``, ``height = time + row - (h - 1) // 2``,
    ``width = time + col - (w - 1) // 2``; the next segment starts at ``s + delta * (t - 1) + 1``. An empty text run
    changes nothing.

    Args:
        segments: an ``int`` per text run (its length), a ``(t, h, w)`` tuple of positive ints per grid.
        temporal_stride: ``delta``, a number > 0 (the authors' VideoRoPE uses 2), or one per grid.
        device: where the result lives.
        name: the function named in error messages.

    Returns:
        ``(T, 3)``: int64 when every ``delta`` is a Python ``int``, float64 otherwise (a scaled time is fractional).

    Example:
        >>> videorope_position_ids([1, (2, 2, 2), 1]).tolist()
        [[0, 0, 0], [1, 1, 1], [1, 1, 2], [1, 2, 1], [1, 2, 2], [3, 3, 3], [3, 3, 4], [3, 4, 3], [3, 4, 4], [4, 4, 4]]
    """
    n_grids = sum(1 for seg in segments if isinstance(seg, (tuple, list)))
    if isinstance(temporal_stride, (list, tuple)):
        strides = list(temporal_stride)
        if len(strides) != n_grids:
            raise ValueError(f"{name}: temporal_stride has {len(strides)} entries but there are {n_grids} grids; give "
                             f"one number, or one per grid.")
    else:
        strides = [temporal_stride] * n_grids
    strides = [_check_scale(v, i, name, "temporal_stride") for i, v in enumerate(strides)]
    integral = all(is_int(v) for v in strides)
    dtype = torch.long if integral else torch.float64
    parts, start, g = [], 0, 0
    for i, seg in enumerate(segments):
        if isinstance(seg, int) and not isinstance(seg, bool) and seg >= 0:
            ids = (torch.arange(seg, device=device, dtype=dtype) + start).unsqueeze(-1).expand(-1, 3)  # (n, 3)
            start = start + seg
        elif isinstance(seg, (tuple, list)) and len(seg) == 3 and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in seg):
            t, h, w = seg
            delta = strides[g]
            g += 1
            ti = torch.arange(t, device=device, dtype=dtype).repeat_interleave(h * w) * delta + start  # (t*h*w,)
            hi = torch.arange(h, device=device, dtype=dtype).repeat_interleave(w).repeat(t) - (h - 1) // 2
            wi = torch.arange(w, device=device, dtype=dtype).repeat(t * h) - (w - 1) // 2
            ids = torch.stack((ti, ti + hi, ti + wi), dim=-1)  # (t*h*w, 3)
            start = start + delta * (t - 1) + 1  # the largest time index + 1
        else:
            raise ValueError(f"{name}: segment {i} must be a non-negative int (a text run's length) or a (t, h, w) "
                             f"tuple of positive ints (a video / image grid); got {seg!r}.")
        parts.append(ids)
    if not parts:
        return torch.zeros(0, 3, dtype=dtype, device=device)
    return torch.cat(parts, dim=0)


class _FloatCoordinates:
    """Mixin for VideoRoPE and HoPE: coordinate tables may be floating (a fractional temporal stride or scale)."""

    def check_coordinates(self, coords: Tensor, *, name: str, allow_2d: bool = False) -> Tensor:
        if not (isinstance(coords, Tensor) and coords.dtype.is_floating_point):
            return super().check_coordinates(coords, name=name, allow_2d=allow_2d)
        shapes = "(L, 3) or (B, L, 3)" if allow_2d else "(B, T, 3)"
        if coords.dim() not in ((2, 3) if allow_2d else (3,)) or coords.shape[-1] != 3:
            raise ValueError(f"{getattr(self, 'name', '')}: {name} must have shape {shapes} (time, height, width); "
                             f"got shape {tuple(coords.shape)}.")
        if coords.numel() and reads_values(coords) and not bool(torch.isfinite(coords).all()):
            raise ValueError(f"{getattr(self, 'name', '')}: {name} must be finite; got a NaN or infinite coordinate.")
        return coords.to(torch.float64)  # float32 ids of 10^6 would already have lost their fraction

    def continue_coordinates(self, table: Tensor, pos: Tensor) -> Tensor:
        # rope_deltas of the authors' code: text continues after the largest *time* index (+1), on every axis
        top = table[..., 0].amax(dim=1)  # (B,)
        text = top[:, None] + 1 + (pos - table.shape[1])  # (B, T)
        return text.unsqueeze(-1).expand(*text.shape, 3)


@register("videorope")
class VideoRoPE(_FloatCoordinates, MRoPE):
    """VideoRoPE (ICML 2025, arXiv 2502.05173): M-RoPE with time on the lowest frequencies, diagonal layout.

    Pair ``i`` of ``F = head_dim / 2`` rotates by ``coord[a_i] * base^(-2i / head_dim)`` with ``a_i`` from
    :func:`videorope_axes` (height/width alternating over the high frequencies, time on the last ``section[0]``);
    build the coordinates with :func:`videorope_position_ids` (diagonal layout, temporal stride ``delta``). See the
    module docstring for the formulas, limits and KV-cache behaviour.

    Args:
        base: frequency base (10000 by default; Qwen2-VL, which the authors fine-tune, uses 1000000).
        layout: ``"half"`` (the authors' ``rotate_half``, default) or ``"interleaved"``.
        mrope_section: ``(time, height, width)`` pair counts summing to ``head_dim / 2``; only ``time`` and
            ``height + width`` matter (the spatial pairs alternate). Default :func:`default_mrope_section`
            (``(16, 24, 24)`` at ``head_dim = 128``, the authors' setting).
    """

    family = "rotary"
    paper = "2502.05173"
    allow_negative = True  # a centred grid at the start of a sequence has negative height / width indices

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: float = 10000.0, layout: str = "half", mrope_section: Sequence[int] | None = None) -> None:
        head_dim = dim // n_heads if n_heads > 0 and dim > 0 else 0
        section = _section(mrope_section, head_dim, "videorope")
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, base=base, layout=layout,
                         pair_axes=videorope_axes(section) if section is not None else None)
        self.mrope_section = tuple(section) if section is not None else self.mrope_section


def _section(mrope_section, head_dim: int, who: str) -> tuple[int, int, int] | None:
    """The validated ``(time, height, width)`` pair counts, or ``None`` when ``head_dim`` is invalid (the base class
    then raises its own error about ``dim`` / ``n_heads``)."""
    if head_dim <= 0 or head_dim % 2:
        return None
    if mrope_section is None:
        return default_mrope_section(head_dim)
    section = tuple(mrope_section) if isinstance(mrope_section, (list, tuple)) else ()
    if len(section) != 3 or any(not is_int(s) or s < 0 for s in section) or sum(section) != head_dim // 2:
        raise ValueError(f"{who}: mrope_section must be three non-negative ints (time, height, width) summing to "
                         f"head_dim / 2 = {head_dim // 2}; got {mrope_section!r}. Hint: [16, 24, 24] for head_dim "
                         f"128.")
    return tuple(int(s) for s in section)
