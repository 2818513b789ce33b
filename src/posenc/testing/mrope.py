"""``check_mrope``: a candidate multimodal RoPE (Qwen2-VL, arXiv 2409.12191; Qwen3-VL's interleaved sections)
against posenc's reference, with diagnoses.

A candidate is ``fn(q, k, coords) -> (q, k)`` with q ``(B, H, T, D)``, k ``(B, Hkv, T, D)`` and int64 coordinates
``(B, T, 3)`` = ``(time, height, width)`` per token (posenc's convention; Hugging Face's ``position_ids`` are
``(3, B, T)``: pass ``coords.permute(2, 0, 1)``). The configuration is HF-style: ``{"head_dim": 128, "rope_theta":
1e6, "mrope_section": [16, 24, 24], "mrope_interleaved": False}``.

Sections: pair ``i`` (of ``head_dim / 2``) rotates by one coordinate. *Blocked* (Qwen2-VL, posenc's ``mrope``): the
first ``s_t`` pairs by time, the next ``s_h`` by height, the last ``s_w`` by width. *Interleaved* (Qwen3-VL): pair
``i`` uses height when ``i % 3 == 1 and i < 3 s_h``, width when ``i % 3 == 2 and i < 3 s_w``, time otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from posenc.encodings.mrope import default_mrope_section, mrope_position_ids
from posenc.encodings.rope import LAYOUTS, apply_rope, rope_frequencies
from posenc.hf import _mrope_family
from posenc.testing._args import (
    config_mapping,
    require_bool,
    require_callable,
    require_dtypes,
    require_int,
    require_number,
    require_target,
)
from posenc.testing.diagnose import ConformanceResult, Hypothesis, Probe, diagnose, dtype_name, one_thread
from posenc.testing.rope import PAIRS, call_candidate, config_value

__all__ = ["MRopeSpec", "check_mrope", "mrope_axes", "mrope_spec", "reference_mrope"]


@dataclass(frozen=True)
class MRopeSpec:
    """M-RoPE's numbers: head dim, base, sections, blocked or interleaved, layout; plus the hypotheses' knobs."""

    head_dim: int
    base: float
    section: tuple[int, int, int]
    interleaved: bool = False
    layout: str = "half"
    axis_order: tuple[int, int, int] = (0, 1, 2)  # which coordinate each section reads (a swap is a bug)
    text_only: bool = False  # every pair reads the time coordinate (image coordinates ignored)
    shift: int = 0

    def describe(self) -> dict:
        return {"head_dim": self.head_dim, "rope_theta": self.base, "mrope_section": list(self.section),
                "mrope_interleaved": self.interleaved, "layout": self.layout}


def mrope_spec(config: Any, *, layout: str | None = None) -> MRopeSpec:
    """Read ``head_dim`` (or ``hidden_size // num_attention_heads``), ``rope_theta``, ``mrope_section`` and
    ``mrope_interleaved`` from a flat dict, a config.json dict (``rope_parameters`` / ``rope_scaling``, or a
    ``text_config``) or a ``PretrainedConfig``.

    Raises:
        TypeError: not a dict / config object, or a value of the wrong type (``"mrope_interleaved": "false"``,
            ``"rope_theta": "1e6"``, sections that are not ints).
        ValueError: no head dim, or sections that do not sum to ``head_dim / 2``.
    """
    example = "{'head_dim': 128, 'rope_theta': 1e6, 'mrope_section': [16, 24, 24]}"
    config_mapping(config, "conform mrope", example)
    text = config_value(config, "text_config")
    if text is not None:
        config = text
        config_mapping(config, "conform mrope (text_config)", example)
    model_type = config_value(config, "model_type")
    family = _mrope_family(model_type)
    if family not in ("qwen2", "qwen3"):
        raise ValueError(f"conform mrope: the kit checks Qwen2-VL's sections and Qwen3-VL's round robin; "
                         f"model_type {model_type!r} lays its M-RoPE pairs out its own way ({family}: see "
                         f"posenc.hf.from_hf_config), which a Qwen reference would misjudge. Not checked; compare "
                         f"with posenc.from_hf_config(config) instead.")
    nested = config_value(config, "rope_parameters") or config_value(config, "rope_scaling") or {}
    if not isinstance(nested, Mapping):
        raise TypeError(f"conform mrope: rope_parameters / rope_scaling must be a dict; got {type(nested).__name__}.")
    head_dim = config_value(config, "head_dim")
    if head_dim is None and config_value(config, "hidden_size") and config_value(config, "num_attention_heads"):
        hidden = require_int(config_value(config, "hidden_size"), "hidden_size", "conform mrope", minimum=1)
        heads = require_int(config_value(config, "num_attention_heads"), "num_attention_heads", "conform mrope",
                            minimum=1)
        if hidden % heads:
            raise ValueError(f"conform mrope: hidden_size {hidden} is not divisible by num_attention_heads {heads}; "
                             f"set head_dim explicitly.")
        head_dim = hidden // heads
    if head_dim is not None:
        require_int(head_dim, "head_dim", "conform mrope")
    if head_dim is None or head_dim <= 0 or head_dim % 2:
        raise ValueError(f"conform mrope: the configuration needs an even positive int 'head_dim'; got {head_dim!r}.")
    theta = config_value(nested, "rope_theta")
    theta = config_value(config, "rope_theta") if theta is None else theta
    base = 10000.0 if theta is None else require_number(theta, "rope_theta", "conform mrope", above=1.0)
    section = (config_value(nested, "mrope_section") or config_value(config, "mrope_section")
               or default_mrope_section(head_dim))
    if isinstance(section, (str, bytes)) or not isinstance(section, Sequence) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in section):
        raise TypeError(f"conform mrope: mrope_section must be a list of three ints; got {section!r}.")
    section = tuple(section)
    if len(section) != 3 or sum(section) != head_dim // 2 or min(section) < 0:
        raise ValueError(f"conform mrope: mrope_section must be three sizes summing to head_dim / 2 = "
                         f"{head_dim // 2}; got {list(section)}.")
    interleaved = config_value(nested, "mrope_interleaved", config_value(config, "mrope_interleaved", False))
    interleaved = require_bool(False if interleaved is None else interleaved, "mrope_interleaved", "conform mrope")
    layout = layout or config_value(config, "layout") or "half"
    if layout not in LAYOUTS:
        raise ValueError(f"conform mrope: layout must be one of {LAYOUTS}; got {layout!r}.")
    return MRopeSpec(head_dim, base, section, interleaved, layout)


def mrope_axes(section: Sequence[int], interleaved: bool) -> list[int]:
    """The coordinate (0 time, 1 height, 2 width) each of the ``sum(section)`` pairs reads."""
    n = sum(section)
    if not interleaved:
        return [a for a, s in enumerate(section) for _ in range(s)]
    axes = [0] * n
    for a in (1, 2):
        for i in range(a, min(3 * section[a], n), 3):
            axes[i] = a
    return axes


def reference_mrope(q: Tensor, k: Tensor, coords: Tensor, spec: MRopeSpec) -> tuple[Tensor, Tensor]:
    """posenc's M-RoPE reference in float64 at ``(B, T, 3)`` coordinates."""
    axes = mrope_axes(spec.section, spec.interleaved)
    axes = [0 if spec.text_only else spec.axis_order[a] for a in axes]
    chosen = (coords.to(torch.int64) + spec.shift).to(torch.float64)[..., axes]  # (B, T, F)
    angles = chosen * rope_frequencies(spec.head_dim, spec.base)
    cos, sin = angles.cos(), angles.sin()
    return (apply_rope(q.to(torch.float64), cos, sin, layout=spec.layout),
            apply_rope(k.to(torch.float64), cos, sin, layout=spec.layout))


def mrope_hypotheses(spec: MRopeSpec) -> list[tuple[str, str, MRopeSpec]]:
    other = "interleaved" if spec.layout == "half" else "half"
    mine, theirs = ("interleaved", "blocked") if spec.interleaved else ("blocked", "interleaved")
    out = [("sections_order", f"your output equals M-RoPE with {theirs} sections ("
            f"{'Qwen3-VL: pairs cycle t, h, w' if theirs == 'interleaved' else 'Qwen2-VL: t pairs, then h, then w'}); "
            f"the configuration has {mine} sections (mrope_interleaved={spec.interleaved})",
            dataclasses.replace(spec, interleaved=not spec.interleaved)),
           ("layout", f"your output equals the reference with {other} pairs {PAIRS[other]}; the configuration "
            f"expects {spec.layout} pairs {PAIRS[spec.layout]}", dataclasses.replace(spec, layout=other)),
           ("height_width_swapped", "your output equals the reference with the height and width coordinates "
            "swapped (the h section reads columns, the w section rows)",
            dataclasses.replace(spec, axis_order=(0, 2, 1))),
           ("text_only", "your output equals 1-D RoPE on the time coordinate: the height and width sections ignore "
            "the image coordinates", dataclasses.replace(spec, text_only=True))]
    for shift in (1, -1):
        out.append((f"offset_{'plus' if shift > 0 else 'minus'}_one", f"your output equals the reference at "
                    f"coordinates shifted by {shift:+d} (an off-by-one offset)",
                    dataclasses.replace(spec, shift=shift)))
    if spec.base != 10000.0:
        out.append(("wrong_base", f"your output equals the reference with base 10000; the configuration's rope_theta "
                    f"is {spec.base:g}", dataclasses.replace(spec, base=10000.0)))
    return out


def mrope_cases(*, dtypes: Sequence[str | torch.dtype] = ("float32", "bfloat16"), max_position: int = 1_000_000,
                heads: int = 4) -> list[tuple[str, torch.dtype, int, Tensor, str]]:
    """``(name, dtype, kv_heads, coords (B, T, 3), memory)``: text, an image between text runs, a video grid,
    ``(B, T)`` rows with different layouts, GQA, an image at 50000 and text at 10**5 and 10**6 (up to
    ``max_position``). q/k are contiguous except in ``image-transposed`` (every dtype: views of ``(B, T, H, D)``
    storage, as Hugging Face's attention passes them) and ``gqa-fused`` (views into one fused qkv output); see
    :func:`posenc.testing.rope.arrange`."""
    image = mrope_position_ids([3, (1, 3, 4), 2])  # (17, 3)
    video = mrope_position_ids([2, (2, 2, 3), 3])  # (17, 3)
    text = mrope_position_ids([17])
    dtypes = require_dtypes(dtypes, "conform mrope")
    max_position = require_int(max_position, "max_position", "conform mrope", minimum=1)
    heads = require_int(heads, "heads", "conform mrope", minimum=1)
    out = []
    for n, dt in enumerate(dtypes):
        sfx = "" if n == 0 else f"-{dtype_name(dt)}"
        out.append((f"image{sfx}", dt, heads, torch.stack((image, image)), "contiguous"))
        out.append((f"image-transposed{sfx}", dt, heads, torch.stack((image, image)), "transposed"))
        out.append((f"batch{sfx}", dt, heads, torch.stack((image, video)), "contiguous"))
        if n == 0:
            out.append(("text", dt, heads, torch.stack((text, text + 40)), "contiguous"))
            out.append(("video", dt, heads, torch.stack((video, video)), "contiguous"))
            out.append(("gqa", dt, max(1, heads // 2), torch.stack((image, image)), "contiguous"))
            out.append(("gqa-fused", dt, max(1, heads // 2), torch.stack((image, video)), "fused"))
            for top in (100_007, 999_999):
                if top <= max_position:
                    out.append((f"long-{top}", dt, heads, torch.stack((text + top - 16, text + top - 16)),
                                "contiguous"))
            out.append(("long-image", dt, heads, torch.stack((image + 50_000, image + 50_000)), "contiguous"))
    return out


def check_mrope(candidate: Callable, config: Any, *, layout: str | None = None,
                dtypes: Sequence[str | torch.dtype] = ("float32", "bfloat16"), max_position: int = 1_000_000,
                seed: int = 0, target: str | None = None) -> ConformanceResult:
    """Check an M-RoPE ``fn(q, k, coords) -> (q, k)`` (coords int64 ``(B, T, 3)``); see the module docstring.

    Raises:
        TypeError / ValueError: a candidate that is not callable, or a bad argument or configuration value (as
            :func:`~posenc.testing.check_rope`), before anything runs.
    """
    require_callable(candidate, "conform mrope", "fn(q, k, coords) -> (q, k)")
    require_int(seed, "seed", "conform mrope")
    require_target(target, "conform mrope")
    with one_thread():
        spec = mrope_spec(config, layout=layout)
        probes = []
        for i, (name, dt, kv_heads, coords, memory) in enumerate(mrope_cases(dtypes=dtypes,
                                                                             max_position=max_position)):
            g = torch.Generator().manual_seed(seed + i)
            B, T = coords.shape[:2]
            q = torch.randn(B, 4, T, spec.head_dim, generator=g, dtype=torch.float64).to(dt)  # (B, H, T, D)
            k = torch.randn(B, kv_heads, T, spec.head_dim, generator=g, dtype=torch.float64).to(dt)
            want = list(reference_mrope(q, k, coords, spec))
            got, message, mutated = call_candidate(candidate, q, k, coords, memory)
            top = int(coords.max())
            probes.append(Probe(name, dt, tuple(q.shape), f"coords {int(coords.min())}..{top}", top, want, got,
                                {"q": q, "k": k, "coords": coords}, angle=float(top), message=message,
                                position_of=lambda _n, idx, c=coords: int(c[idx[0], idx[2]].max()), memory=memory,
                                mutated=mutated))
        hypotheses = [Hypothesis(n, s, _buggy(b)) for n, s, b in mrope_hypotheses(spec)]
        return diagnose("mrope", target or getattr(candidate, "__qualname__", type(candidate).__name__),
                        spec.describe(), probes, hypotheses)


def _buggy(spec: MRopeSpec) -> Callable[[Probe], list[Tensor]]:
    def reference(p: Probe) -> list[Tensor]:
        return list(reference_mrope(p.inputs["q"], p.inputs["k"], p.inputs["coords"], spec))
    return reference
