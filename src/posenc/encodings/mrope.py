"""Multimodal RoPE, M-RoPE (Qwen2-VL, Wang et al. 2024, arXiv 2409.12191): one position system for text and images.

Every token has three coordinates ``(time, height, width)``. The ``head_dim / 2`` rotary frequencies
``theta_i = base^(-2i / head_dim)`` are split in three consecutive *sections*: pair ``i`` in the first section rotates
by ``time * theta_i``, in the second by ``height * theta_i``, in the third by ``width * theta_i`` (Qwen2-VL's
``mrope_section = [16, 24, 24]`` for ``head_dim = 128``). Qwen3-VL interleaves them instead
(``mrope_interleaved=True``): pair ``i`` uses axis ``i mod 3`` while that axis has pairs left (height and width take
the pairs ``1, 4, 7, ...`` and ``2, 5, 8, ...`` up to ``3 * section``), the rest are time — so every axis sees high and
low frequencies (``mrope_axes`` gives the assignment). Text tokens carry the same position on all three axes,
so on text alone M-RoPE *is* 1-D RoPE; image patches carry ``(t, row, col)`` offset by the text before them.

Positions: int64 ``(B, T, 3)`` coordinates passed to the hooks, or plain positions indexing a table given as
``Positions(coordinates=ids)`` (``(L, 3)`` or ``(B, L, 3)``), which is how :class:`posenc.Transformer` uses it
(``model(tokens, positions=Positions(coordinates=mrope_position_ids([...])))``). :func:`mrope_position_ids` builds
the table for a mixed sequence. Past the table, new tokens are text continuing after the largest position so far
(Qwen2-VL's ``rope_deltas``), so KV-cache generation after a prompt with images needs nothing more (the model's
cache keeps the table of the prompt). With no table, plain positions are text-only: ``(p, p, p)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from posenc._checks import is_int
from posenc.base import PositionalEncoding, register
from posenc.encodings._structured import StructuredPositions
from posenc.encodings.rope import LAYOUTS, apply_rope, check_head_tensor, rope_frequencies

__all__ = ["NO_AXIS", "VISION_ADVANCES", "MRoPE", "bailing_axes", "default_mrope_section", "mrope_angles", "mrope_axes",
           "mrope_position_ids", "openpangu_axes", "pair_axis_angles"]

NO_AXIS = -1  # an entry of a pair -> axis table: the pair is not rotated (angle 0; HoPE's temporal pairs)


def default_mrope_section(head_dim: int) -> tuple[int, int, int]:
    """Qwen2-VL's proportions ``(1/4, 3/8, 3/8)`` of the ``head_dim / 2`` frequencies: ``(16, 24, 24)`` at 128."""
    n_freq = head_dim // 2
    hw = 3 * n_freq // 8
    return (n_freq - 2 * hw, hw, hw)


VISION_ADVANCES = ("max_id", "max_hw")


def mrope_position_ids(segments: Sequence[int | tuple], *, vision_advance: str = "max_id",
                       device: torch.device | str | None = None) -> Tensor:
    """``(time, height, width)`` position ids for a sequence of text runs and vision grids, as Qwen2-VL's
    ``get_rope_index`` builds them.

    Each segment starts at ``s`` (0 at the start). A text run of ``n`` tokens gets ``s, s + 1, ..., s + n - 1`` on all
    three axes and the next segment starts at ``s + n``. A vision grid ``(t, h, w)`` of ``t * h * w`` patches (already
    spatially merged, in ``(t, row, col)`` row-major order) gets ``(s + floor(ti * interval), s + row, s + col)``,
    where ``interval`` is 1, or the fourth entry ``(t, h, w, interval)``: Qwen2.5-VL spaces video frames by
    ``tokens_per_second * second_per_grid_t`` (e.g. 25 tokens/s x 2 s per temporal patch = 50). Where the next
    segment starts after a grid is ``vision_advance``:

    - ``"max_id"`` (default): 1 + the largest id so far — Qwen2-VL's original code (and the paper);
    - ``"max_hw"``: ``s + max(h, w)`` — transformers >= 5 (``get_rope_index`` of Qwen2-VL, Qwen2.5-VL, Qwen3-VL),
      which ignores the time axis, so text after a video of ``t > max(h, w)`` frames (or spaced frames) continues
      *below* the video's largest time id.

    The two agree for images (``t = 1``, interval 1). Qwen3-VL splits a video into one ``(1, h, w)`` grid per frame
    with timestamp text between them; pass it the same way.

    Args:
        segments: an ``int`` per text run (its length), a ``(t, h, w)`` or ``(t, h, w, interval)`` tuple per image /
            video grid.
        vision_advance: ``"max_id"`` or ``"max_hw"`` (above).

    Returns:
        int64 ``(T, 3)``.

    Example:
        >>> mrope_position_ids([2, (1, 2, 2), 1]).tolist()
        [[0, 0, 0], [1, 1, 1], [2, 2, 2], [2, 2, 3], [2, 3, 2], [2, 3, 3], [4, 4, 4]]
        >>> mrope_position_ids([1, (2, 1, 1, 2.0), 1], vision_advance="max_hw").tolist()
        [[0, 0, 0], [1, 1, 1], [3, 1, 1], [2, 2, 2]]
    """
    if vision_advance not in VISION_ADVANCES:
        raise ValueError(f"mrope_position_ids: vision_advance must be one of {VISION_ADVANCES} ('max_id': Qwen2-VL's "
                         f"original rule, 'max_hw': transformers >= 5); got {vision_advance!r}.")
    parts = []
    start = 0
    for i, seg in enumerate(segments):
        if isinstance(seg, bool):
            seg = None  # reject below
        if isinstance(seg, int) and seg >= 0:
            ids = torch.arange(start, start + seg, device=device).unsqueeze(-1).expand(-1, 3)  # (n, 3)
            start += seg
        elif isinstance(seg, (tuple, list)) and len(seg) in (3, 4) and all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in seg[:3]) and (
                len(seg) == 3 or (isinstance(seg[3], (int, float)) and not isinstance(seg[3], bool) and seg[3] > 0)):
            t, h, w = seg[:3]
            interval = float(seg[3]) if len(seg) == 4 else 1.0
            ti = (torch.arange(t, device=device, dtype=torch.float64) * interval).long().repeat_interleave(h * w)
            hi = torch.arange(h, device=device).repeat_interleave(w).repeat(t)
            wi = torch.arange(w, device=device).repeat(t * h)
            ids = torch.stack((ti, hi, wi), dim=-1) + start  # (t*h*w, 3)
            start = int(ids.max()) + 1 if vision_advance == "max_id" else start + max(h, w)
        else:
            raise ValueError(f"mrope_position_ids: segment {i} must be a non-negative int (a text run's length) or a "
                             f"(t, h, w) / (t, h, w, time_interval) tuple of positive numbers (a vision grid); got "
                             f"{seg!r}.")
        parts.append(ids)
    if not parts:
        return torch.zeros(0, 3, dtype=torch.long, device=device)
    return torch.cat(parts, dim=0).long()


def mrope_axes(section: Sequence[int], *, interleaved: bool = False) -> list[int]:
    """The axis (0 time, 1 height, 2 width) each of the ``sum(section)`` rotary pairs reads.

    Contiguous (Qwen2-VL): ``section[0]`` pairs of time, then height, then width. Interleaved (Qwen3-VL, Hugging
    Face's ``apply_interleaved_mrope``): pair ``i`` is height if ``i % 3 == 1`` and ``i < 3 * section[1]``, width if
    ``i % 3 == 2`` and ``i < 3 * section[2]``, time otherwise.

    Example:
        >>> mrope_axes([2, 1, 1], interleaved=True)
        [0, 1, 2, 0]
    """
    if not interleaved:
        return [a for a, n in enumerate(section) for _ in range(n)]
    n_freq = sum(section)
    axes = [0] * n_freq
    for axis in (1, 2):
        for i in range(axis, min(3 * section[axis], n_freq), 3):
            axes[i] = axis
    return axes


def bailing_axes(section: Sequence[int]) -> list[int]:
    """Bailing's (Ling / Ming VL) and Ernie-4.5-VL's pair -> axis table: ``section = (time, height, width)`` with
    ``height == width``; the first ``height + width`` pairs alternate height (1), width (2), the last ``time`` pairs are
    time (0). vLLM's ``BailingMRotaryEmbedding.select_cos_sin``; the same table as VideoRoPE's.

    Example:
        >>> bailing_axes([2, 3, 3])
        [1, 2, 1, 2, 1, 2, 0, 0]
    """
    section = _three_sizes(section, "bailing_axes")
    if section[1] != section[2]:
        raise ValueError(f"bailing_axes: height and width alternate pair by pair, so section (time, height, width) "
                         f"needs height == width; got {list(section)}.")
    return [1 + j % 2 for j in range(section[1] + section[2])] + [0] * section[0]


def openpangu_axes(section: Sequence[int]) -> list[int]:
    """openPangu-VL's pair -> axis table (vLLM's ``MRotaryEmbeddingInterleaved``, ``rope_type="openpangu"``).

    ``section = (time, height, width)``. The last pair is time; the others are dealt greedily, each pair going to the
    axis with pairs left that has so far received the smallest share of its own count (``placed / count``, the lower
    axis index on ties), never the axis of the pair before unless it is the only one left ("rarest first").

    Example:
        >>> openpangu_axes([2, 3, 3])
        [0, 1, 2, 1, 2, 1, 2, 0]
    """
    t, h, w = _three_sizes(section, "openpangu_axes")
    if t < 1:
        raise ValueError(f"openpangu_axes: the last pair is time, so section (time, height, width) needs time >= 1; "
                         f"got {list(section)}.")
    counts = (t - 1, h, w)
    placed = [0, 0, 0]
    out: list[int] = []
    for _ in range(sum(counts)):
        left = [a for a in range(3) if placed[a] < counts[a]]
        fresh = [a for a in left if not out or a != out[-1]] or left
        # smallest placed / count, compared exactly (cross-multiplied), then the lower axis index
        best = fresh[0]
        for a in fresh[1:]:
            if placed[a] * counts[best] < placed[best] * counts[a]:
                best = a
        out.append(best)
        placed[best] += 1
    return out + [0]


def _three_sizes(section: Sequence[int], who: str) -> tuple[int, int, int]:
    if not isinstance(section, (list, tuple)) or len(section) != 3 or any(not is_int(v) or v < 0 for v in section):
        raise ValueError(f"{who}: section must be three non-negative ints (time, height, width); got {section!r}.")
    return tuple(int(v) for v in section)


def pair_axis_angles(coords: Tensor, inv_freq: Tensor, pair_axes: Sequence[int],
                     axis_scale: Sequence[float] | None = None) -> Tensor:
    """Angles ``(..., F)`` in float64 of an explicit pair -> axis table: the one rule behind every M-RoPE layout.

    Pair ``i`` rotates by ``coords[..., a] * axis_scale[a] * inv_freq[i]`` with ``a = pair_axes[i]``, or not at all
    (angle 0) where ``pair_axes[i] == NO_AXIS`` (-1). Qwen2-VL's sections, Qwen3-VL's round robin
    (:func:`mrope_axes`), VideoRoPE's and HoPE's layouts are tables of this kind.

    Args:
        coords: ``(..., A)`` coordinates, integer or floating (VideoRoPE's / HoPE's scaled time).
        inv_freq: ``(F,)`` frequencies.
        pair_axes: ``F`` axis indices in ``[-1, A)``.
        axis_scale: ``A`` multipliers of each axis' coordinate (default all 1).
    """
    axes = torch.tensor(list(pair_axes), device=coords.device)  # (F,)
    chosen = coords.to(torch.float64).index_select(-1, axes.clamp(min=0))  # (..., F): the coordinate each pair uses
    if axis_scale is not None and any(float(a) != 1.0 for a in axis_scale):
        scale = torch.tensor([float(a) for a in axis_scale], dtype=torch.float64, device=coords.device)
        chosen = chosen * scale.index_select(0, axes.clamp(min=0))
    angles = chosen * inv_freq.to(device=coords.device, dtype=torch.float64)
    if any(a == NO_AXIS for a in pair_axes):
        angles = angles.masked_fill(axes == NO_AXIS, 0.0)
    return angles


def mrope_angles(coords: Tensor, inv_freq: Tensor, section: Sequence[int], *, interleaved: bool = False) -> Tensor:
    """Angles ``(..., F)`` in float64: pair ``i`` rotates by ``coords[..., mrope_axes(section)[i]] * inv_freq[i]``.

    Args:
        coords: int ``(..., 3)`` ``(time, height, width)``.
        inv_freq: ``(F,)`` frequencies with ``F = sum(section)``.
        section: three section sizes.
        interleaved: Qwen3-VL's assignment of pairs to axes instead of Qwen2-VL's sections (:func:`mrope_axes`).
    """
    return pair_axis_angles(coords, inv_freq, mrope_axes(section, interleaved=interleaved))


@register("mrope")
class MRoPE(StructuredPositions, PositionalEncoding):
    """Multimodal RoPE (Qwen2-VL, arXiv 2409.12191): rotary sections for time, height and width.

    On text-only input (plain positions) it equals 1-D ``rope`` with the same base and layout.

    Args:
        base: frequency base (Qwen2-VL: 1000000; 10000 as in RoPE by default).
        layout: ``"half"`` (Qwen2-VL / HF ``rotate_half``) or ``"interleaved"``.
        mrope_section: sizes of the (time, height, width) sections, summing to ``head_dim / 2``; default
            :func:`default_mrope_section`.
        mrope_interleaved: assign pairs to axes round-robin as Qwen3-VL does (:func:`mrope_axes`) instead of in three
            consecutive sections (Qwen2-VL).
        pair_axes: an explicit pair -> axis table instead of the two options above: ``head_dim / 2`` entries, 0 (time),
            1 (height), 2 (width) or -1 (:data:`NO_AXIS`: the pair is not rotated), pair ``i`` rotating at frequency
            ``base^(-2i / head_dim)`` (:func:`pair_axis_angles`). Default: the table of ``mrope_section`` /
            ``mrope_interleaved`` (``self.pair_axes`` holds it either way). Ernie-4.5-VL, VideoRoPE and HoPE are such
            tables.
        axis_scale: a multiplier of each axis' coordinate (time, height, width) in the angles; default ``(1, 1, 1)``.
    """

    family = "rotary"
    paper = "2409.12191"
    extrapolates = True
    n_axes = 3
    axis_names = ("time", "height", "width")

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 base: float = 10000.0, layout: str = "half", mrope_section: Sequence[int] | None = None,
                 mrope_interleaved: bool = False, pair_axes: Sequence[int] | None = None,
                 axis_scale: Sequence[float] | None = None) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        if self.head_dim % 2:
            raise ValueError(f"mrope: head_dim = dim // n_heads must be even (channels rotate in pairs); got "
                             f"{self.head_dim}.")
        if layout not in LAYOUTS:
            raise ValueError(f"mrope: layout must be one of {LAYOUTS}; got {layout!r}.")
        if not (isinstance(base, (int, float)) and base > 1):
            raise ValueError(f"mrope: base must be a number > 1; got {base!r}.")
        section = default_mrope_section(self.head_dim) if mrope_section is None else tuple(mrope_section)
        if len(section) != 3 or any(not is_int(s) or s < 0 for s in section) or \
                sum(section) != self.head_dim // 2:
            raise ValueError(f"mrope: mrope_section must be three non-negative ints (time, height, width) summing to "
                             f"head_dim / 2 = {self.head_dim // 2}; got {mrope_section!r}. Hint: Qwen2-VL uses "
                             f"[16, 24, 24] for head_dim 128.")
        if not isinstance(mrope_interleaved, bool):
            raise TypeError(f"mrope: mrope_interleaved must be a bool (True: Qwen3-VL's round-robin axes); got "
                            f"{mrope_interleaved!r}.")
        who = getattr(self, "name", "") or "mrope"
        if pair_axes is not None:
            if mrope_section is not None or mrope_interleaved:
                raise ValueError(f"{who}: give either pair_axes (an explicit table) or mrope_section / "
                                 f"mrope_interleaved, not both; got pair_axes={pair_axes!r}, mrope_section="
                                 f"{mrope_section!r}, mrope_interleaved={mrope_interleaved!r}.")
            table = tuple(pair_axes) if isinstance(pair_axes, (list, tuple)) else None
            if table is None or len(table) != self.head_dim // 2 or any(
                    not is_int(a) or not NO_AXIS <= a < self.n_axes for a in table):
                raise ValueError(f"{who}: pair_axes must be a list of head_dim / 2 = {self.head_dim // 2} ints, each "
                                 f"0 (time), 1 (height), 2 (width) or -1 (not rotated); got {pair_axes!r}.")
            table = tuple(int(a) for a in table)
            section = tuple(table.count(a) for a in range(self.n_axes))  # pairs per axis (Qwen's sections if blocked)
        else:
            table = tuple(mrope_axes(section, interleaved=mrope_interleaved))
        if axis_scale is None:
            scale = (1.0,) * self.n_axes
        else:
            scale = tuple(axis_scale) if isinstance(axis_scale, (list, tuple)) else ()
            if len(scale) != self.n_axes or any(isinstance(a, bool) or not isinstance(a, (int, float)) or
                                                not math.isfinite(a) or a < 0 for a in scale):
                raise ValueError(f"{who}: axis_scale must be {self.n_axes} finite numbers >= 0 (time, height, "
                                 f"width); got {axis_scale!r}.")
            scale = tuple(float(a) for a in scale)
        self.base = float(base)
        self.layout = layout
        self.mrope_section = section
        self.mrope_interleaved = mrope_interleaved
        self.pair_axes = table
        self.axis_scale = scale

    @property
    def qwen_layout(self) -> bool:
        """Whether the table is Qwen2-VL's / Qwen3-VL's (``mrope_section`` / ``mrope_interleaved`` describe it)."""
        return (self.pair_axes == tuple(mrope_axes(self.mrope_section, interleaved=self.mrope_interleaved))
                and all(a == 1.0 for a in self.axis_scale))

    # -- coordinates ---------------------------------------------------------------------------------------------------
    def plain_coordinates(self, pos: Tensor) -> Tensor:
        return pos.unsqueeze(-1).expand(*pos.shape, 3)  # text: one position on all three axes

    def continue_coordinates(self, table: Tensor, pos: Tensor) -> Tensor:
        # Qwen2-VL's rope_deltas: a token at index p >= L is text at (largest id + 1) + (p - L) on every axis.
        top = table.amax(dim=(1, 2))  # (B,)
        text = top[:, None] + 1 + (pos - table.shape[1])  # (B, T)
        return text.unsqueeze(-1).expand(*text.shape, 3)

    # -- hook ----------------------------------------------------------------------------------------------------------
    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate ``q`` ``(B, H, Tq, D)`` and ``k`` ``(B, Hkv, Tk, D)`` at ``(B, T, 3)`` coordinates or positions."""
        return self.rotate_one(q, q_pos, "q"), self.rotate_one(k, k_pos, "k")

    def rotate_one(self, x: Tensor, pos: Tensor, name: str = "x") -> Tensor:
        check_head_tensor(x, self.head_dim, name)
        coords = self.resolve(pos, x.shape[-2], batch=x.shape[0], device=x.device, name=f"{name}_pos")  # (B|1,T,3)
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        cos, sin = self.cos_sin(coords, dtype=dtype)
        return apply_rope(x, cos, sin, layout=self.layout)

    def cos_sin(self, coords: Tensor, *, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """cos/sin at ``(..., 3)`` coordinates -> two ``(..., head_dim // 2)`` tensors (angles in float64)."""
        inv_freq = rope_frequencies(self.head_dim, self.base, device=coords.device)
        angles = pair_axis_angles(coords, inv_freq, self.pair_axes, self.axis_scale)  # (..., F)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def extra_repr(self) -> str:
        out = f"{super().extra_repr()}, base={self.base:g}, layout={self.layout!r}, "
        if self.qwen_layout:
            return out + f"mrope_section={list(self.mrope_section)}, mrope_interleaved={self.mrope_interleaved}"
        return out + f"pair_axes={list(self.pair_axes)}, axis_scale={list(self.axis_scale)}"
