"""``check_rope``: drive a candidate RoPE over a matrix of inputs, compare it with posenc's reference, name the bug.

A candidate is a callable ``fn(q, k, positions) -> (q, k)`` with q ``(B, H, T, D)``, k ``(B, Hkv, T, D)`` and int64
positions ``(T,)`` or ``(B, T)`` (a posenc ``rope`` encoding works too). The configuration is a Hugging Face style
dict, flat (``{"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 4096,
"head_dim": 128, "partial_rotary_factor": 0.5}``) or a whole config.json / ``PretrainedConfig``.

The reference (:func:`reference_rope`) forms every angle in float64 from posenc's own frequencies
(:mod:`posenc.rope_scaling`, equal to transformers' for every method both implement) and rotates in float64; the
known bugs are the same reference with one mistake (:func:`rope_hypotheses`).

Example::

    >>> from posenc.testing import check_rope
    >>> result = check_rope(my_rope, {"rope_type": "yarn", "factor": 4.0, "head_dim": 64,
    ...                               "original_max_position_embeddings": 4096})
    >>> result.passed, result.diagnosis
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from posenc._checks import is_number
from posenc.encodings.rope import LAYOUTS, apply_rope
from posenc.rope_scaling import SCALING_METHODS, base_inv_freq, logn_scale, resolve_scaling, scaled_inv_freq
from posenc.testing._args import (
    DTYPES,
    config_mapping,
    require_bool,
    require_dtypes,
    require_int,
    require_number,
    require_target,
)
from posenc.testing.diagnose import (
    MEMORY_LAYOUTS,
    ConformanceResult,
    Finding,
    Hypothesis,
    Probe,
    diagnose,
    dtype_name,
    one_thread,
)

__all__ = ["RopeSpec", "arrange", "check_rope", "reference_rope", "rope_cases", "rope_hypotheses", "rope_spec"]

PAIRS = {"half": "(x[i], x[i + d/2])", "interleaved": "(x[2i], x[2i + 1])"}
_NOT_SCALING = {"rope_theta", "partial_rotary_factor", "head_dim", "hidden_size", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "layout", "rope_type", "type", "base"}


@dataclass(frozen=True)
class RopeSpec:
    """Everything that fixes RoPE's numbers, plus the knobs the bug hypotheses turn.

    The first six fields come from the configuration; the rest are posenc's correct choices unless a hypothesis
    changes them.
    """

    head_dim: int
    rotary_dim: int
    base: float
    layout: str = "half"
    scaling: dict | None = None  # resolved (posenc.rope_scaling.resolve_scaling); None = plain RoPE
    rope_type: str = "default"
    freq_dim: int | None = None  # the d in base^(-2i/d); None = rotary_dim (correct)
    rotary_start: str = "first"  # which channels rotate: "first" (correct) or "last"
    pairing: str = "slice"  # "slice" (pairs inside the rotary channels) or "full_half" (i with i + head_dim/2)
    q_scale_power: int = 1  # queries carry attention_scale ** q_scale_power (1 correct)
    k_scale_power: int = 1
    shift: int = 0  # positions p are rotated as p + shift
    sign: int = 1  # -1: every pair rotated the other way (angle -p * theta)
    angle_dtype: torch.dtype = torch.float64  # pos * theta formed (rounded) in this dtype

    def inv_freq(self, seq_len: int | None = None) -> tuple[Tensor, float]:
        """float64 ``(rotary_dim // 2,)`` frequencies and the attention scale for this call's length."""
        dim = self.freq_dim or self.rotary_dim
        if self.scaling is None:
            freq, scale = base_inv_freq(dim, self.base), 1.0
        else:
            length = seq_len if SCALING_METHODS[self.scaling["rope_type"]].length_dependent else None
            freq, scale = scaled_inv_freq(dim, self.base, self.scaling, seq_len=length)
        return freq[: self.rotary_dim // 2], scale

    def describe(self) -> dict:
        out = {"head_dim": self.head_dim, "rotary_dim": self.rotary_dim, "rope_theta": self.base,
               "layout": self.layout, "rope_type": self.rope_type}
        if self.scaling is not None:
            out.update({k: v for k, v in self.scaling.items() if k != "rope_type" and v is not None})
        return out


def config_value(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` for a dict, ``config.key`` for a config object (``default`` when absent)."""
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def rope_spec(config: Any, *, layout: str | None = None) -> RopeSpec:
    """The :class:`RopeSpec` of an HF-style config: a flat dict with ``head_dim`` (and ``rope_type``, ``rope_theta``,
    ``factor``, ``partial_rotary_factor``, ...), or a config.json dict / ``PretrainedConfig``.

    Raises:
        TypeError: not a dict / config object, or a value of the wrong type (``rope_theta: "1e4"``).
        ValueError: no head dim, an unknown ``rope_type`` or invalid scaling parameters (as posenc's ``rope`` does).
    """
    values = config_mapping(config, "conform", "{'rope_type': 'default', 'rope_theta': 10000.0, 'head_dim': 64}")
    layout = layout or config_value(config, "layout") or "half"
    if layout not in LAYOUTS:
        raise ValueError(f"conform: layout must be one of {LAYOUTS}; got {layout!r}.")
    nested = config_value(config, "rope_parameters") or config_value(config, "rope_scaling")
    if nested is not None or config_value(config, "num_attention_heads") is not None:
        from posenc.hf import from_hf_config  # a whole HF config: read it exactly as posenc's interop does
        pe = from_hf_config(config)
        scaling = None if pe.scaling is None else dict(pe.scaling)
        return RopeSpec(pe.head_dim, pe.rotary_dim, pe.base, layout, scaling,
                        "default" if scaling is None else scaling["rope_type"])
    head_dim = config_value(config, "head_dim")
    if head_dim is not None:
        require_int(head_dim, "head_dim", "conform")
    if head_dim is None or head_dim <= 0 or head_dim % 2:
        raise ValueError(f"conform: the configuration needs an even positive int 'head_dim'; got {head_dim!r}. "
                         f"Example: {{'rope_type': 'default', 'rope_theta': 10000.0, 'head_dim': 64}}.")
    theta_key = "rope_theta" if config_value(config, "rope_theta") is not None else "base"
    base = require_number(config_value(config, theta_key, 10000.0), theta_key, "conform", above=1.0)
    fraction = config_value(config, "partial_rotary_factor")
    fraction = 1.0 if fraction is None else require_number(fraction, "partial_rotary_factor", "conform")
    if not 0 < fraction <= 1:
        raise ValueError(f"conform: partial_rotary_factor must be in (0, 1]; got {fraction!r}.")
    rotary_dim = int(head_dim * fraction)
    if rotary_dim % 2 or rotary_dim <= 0:
        raise ValueError(f"conform: head_dim * partial_rotary_factor = {rotary_dim} must be a positive even number.")
    rope_type = config_value(config, "rope_type", config_value(config, "type", "default")) or "default"
    if rope_type not in SCALING_METHODS:
        raise ValueError(f"conform: unknown rope_type {rope_type!r}; posenc implements {sorted(SCALING_METHODS)}.")
    params = {k: v for k, v in values.items() if k in SCALING_METHODS[rope_type].params}
    max_len = config_value(config, "max_position_embeddings") or params.get("original_max_position_embeddings") or 4096
    if rope_type == "dynamic":  # transformers stretches past max_position_embeddings
        params.setdefault("original_max_position_embeddings", max_len)
    scaling = resolve_scaling({"rope_type": rope_type, **params}, max_seq_len=max_len)
    scaled_inv_freq(rotary_dim, base, scaling)  # validates the values now, not inside the first case
    if rope_type == "default" and not scaling["logn"]:
        scaling = None
    return RopeSpec(head_dim, rotary_dim, base, layout, scaling, rope_type)


def reference_rope(q: Tensor, k: Tensor, positions: Tensor, spec: RopeSpec) -> tuple[Tensor, Tensor]:
    """posenc's reference in float64: q ``(B, H, T, D)``, k ``(B, Hkv, T, D)`` at positions ``(T,)`` / ``(B, T)``.

    Length-dependent scalings (``dynamic``, ``longrope``) use ``seq_len = 1 + positions.max()`` as Hugging Face does.
    """
    pos = positions.to(torch.int64)
    seq_len = int(pos.max()) + 1 if pos.numel() else None
    inv_freq, scale = spec.inv_freq(seq_len)
    dt = spec.angle_dtype
    angles = (pos + spec.shift).to(dt).unsqueeze(-1) * (inv_freq * spec.sign).to(dt)  # (T, F) or (B, T, F)
    angles = angles.to(torch.float64)
    cos, sin = angles.cos(), angles.sin()
    sq, sk = scale ** spec.q_scale_power, scale ** spec.k_scale_power  # on cos/sin: pass-through channels stay
    q_out = _rotate(q.to(torch.float64), cos * sq, sin * sq, spec)
    k_out = _rotate(k.to(torch.float64), cos * sk, sin * sk, spec)
    if spec.scaling is not None and spec.scaling.get("logn"):
        s = logn_scale(pos, spec.scaling["original_max_position_embeddings"]).to(torch.float64)
        q_out = q_out * (s[:, None] if s.dim() == 1 else s[:, None, :, None])
    return q_out, k_out


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, spec: RopeSpec) -> Tensor:
    d, r = spec.head_dim, spec.rotary_dim
    if spec.pairing == "full_half":  # rotate_half over the whole head: pair i with i + d/2, the first r/2 pairs
        if cos.dim() == 3:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        f, h = r // 2, d // 2
        x1, x2 = x[..., :f], x[..., h:h + f]
        out = x.clone()
        out[..., :f], out[..., h:h + f] = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        return out
    start = 0 if spec.rotary_start == "first" else d - r
    rotated = apply_rope(x[..., start:start + r], cos, sin, layout=spec.layout)
    return torch.cat((x[..., :start], rotated, x[..., start + r:]), dim=-1)


# -- the matrix --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RopeCase:
    """One input: a name, dtype, sizes, positions ``(T,)`` or ``(B, T)`` and how q/k sit in memory (``memory``: a
    key of :data:`~posenc.testing.diagnose.MEMORY_LAYOUTS`, see :func:`arrange`)."""

    name: str
    dtype: torch.dtype
    batch: int
    heads: int
    kv_heads: int
    positions: Tensor
    memory: str = "contiguous"

    def describe(self) -> str:
        p = self.positions
        if not p.numel():
            return "empty (T = 0)"
        kind = "" if p.dtype == torch.int64 else f" ({dtype_name(p.dtype)})"
        if p.dim() == 2:
            return f"(B, T) {p.min().item()}..{p.max().item()}{kind}"
        return (f"{p[0].item()}" if p.numel() == 1 else f"{p[0].item()}..{p[-1].item()}") + kind


def rope_cases(*, dtypes: Sequence[str | torch.dtype] = ("float32", "bfloat16", "float16"),
               max_position: int = 1_000_000, gqa: bool = True, batch_positions: bool = True,
               length: int = 16, heads: int = 4) -> list[RopeCase]:
    """The default matrix: prefill, an offset chunk (KV cache), a decode step, ``(B, T)`` positions with a packed
    restart, GQA, and long positions 131071, 10**5 and 10**6 (up to ``max_position``), in every dtype (the full set in
    float32, prefill / ``(B, T)`` / the longest in the others).

    q/k are contiguous except in the ``-transposed`` cases (prefill in every dtype, ``(B, T)`` positions in the
    first): ``(B, H, T, D)`` views of ``(B, T, H, D)`` storage, as Hugging Face's attention passes them; and the
    ``-fused`` case (GQA, or prefill without it, in the first dtype): views into one fused qkv projection output; and
    ``offset-fused-heads``: views into a per-head fused qkv output (GPT-NeoX). In the first dtype also
    ``offset-int32`` (int32 positions, as vLLM passes them), ``prefill-aliased`` (one tensor passed as q and k) and
    ``empty`` (T = 0: outputs of shape ``(B, H, 0, D)``)."""
    dtypes = require_dtypes(dtypes, "conform rope")
    max_position = require_int(max_position, "max_position", "conform rope", minimum=1)
    require_bool(gqa, "gqa", "conform rope")
    require_bool(batch_positions, "batch_positions", "conform rope")
    T = require_int(length, "length", "conform rope", minimum=2)
    heads = require_int(heads, "heads", "conform rope", minimum=1)
    ar = torch.arange(T)
    batch_pos = torch.stack((ar, torch.cat((torch.arange(100, 100 + T // 2), torch.arange(T - T // 2)))))
    longs = [(f"long-{top}", top) for top in (131071, 100_007, 1_000_000 - 1) if top <= max_position]
    longs = sorted({top: name for name, top in longs}.items())
    out = []
    for n, dt in enumerate(dtypes):
        sfx = "" if n == 0 else f"-{dtype_name(dt)}"
        out.append(RopeCase(f"prefill{sfx}", dt, 2, heads, heads, ar))
        out.append(RopeCase(f"prefill-transposed{sfx}", dt, 2, heads, heads, ar, "transposed"))
        if n == 0:
            out.append(RopeCase("offset", dt, 2, heads, heads, ar + 37))
            out.append(RopeCase("decode", dt, 2, heads, heads, torch.tensor([min(1000, max_position)])))
        if batch_positions:
            out.append(RopeCase(f"batch{sfx}", dt, 2, heads, heads, batch_pos))
            if n == 0:
                out.append(RopeCase("batch-transposed", dt, 2, heads, heads, batch_pos, "transposed"))
        if gqa and n == 0:
            out.append(RopeCase("gqa", dt, 2, heads, max(1, heads // 2), ar))
        if n == 0:
            kv = max(1, heads // 2) if gqa else heads
            out.append(RopeCase("gqa-fused" if gqa else "prefill-fused", dt, 2, heads, kv, ar, "fused"))
            out.append(RopeCase("offset-fused-heads", dt, 2, heads, heads, ar + 37, "fused_heads"))
            # what else callers pass: int32 positions (vLLM, ONNX exports), q and k as one tensor, no tokens at all
            out.append(RopeCase("offset-int32", dt, 2, heads, heads, (ar + 37).to(torch.int32)))
            out.append(RopeCase("prefill-aliased", dt, 2, heads, heads, ar, "aliased"))
            out.append(RopeCase("empty", dt, 2, heads, heads, torch.arange(0)))
        for top, name in (longs if n == 0 else longs[-1:]):
            out.append(RopeCase(f"{name}{sfx}", dt, 2, heads, heads, ar + (top - T + 1)))
    return out


# -- the bugs ----------------------------------------------------------------------------------------------------------
def rope_hypotheses(spec: RopeSpec) -> list[tuple[str, str, RopeSpec]]:
    """``(name, sentence, buggy spec)`` for every known bug that changes this configuration's numbers."""
    out = []
    d, r = spec.head_dim, spec.rotary_dim
    other = "interleaved" if spec.layout == "half" else "half"
    where = "" if r == d else f" inside the {r} rotary channels"
    out.append(("layout", f"your output equals the reference with {other} pairs {PAIRS[other]}{where}; the "
                f"configuration expects {spec.layout} pairs {PAIRS[spec.layout]}", dataclasses.replace(spec,
                                                                                                   layout=other)))
    if r < d:
        out.append(("partial_ignored", f"your output rotates all {d} channels; partial_rotary_factor "
                    f"{r / d:g} means only the first {r} rotate and the other {d - r} pass through",
                    dataclasses.replace(spec, rotary_dim=d, freq_dim=d)))
        out.append(("partial_last", f"your output rotates the last {r} channels; the reference rotates the first {r} "
                    f"and passes the last {d - r} through", dataclasses.replace(spec, rotary_start="last")))
        if spec.layout == "half":
            out.append(("partial_pairs", f"your output pairs channel i with i + {d // 2} (rotate_half over the whole "
                        f"head); with {r} of {d} channels rotary the half-split pairs are (i, i + {r // 2}) inside "
                        f"the rotary slice", dataclasses.replace(spec, pairing="full_half")))
        out.append(("partial_frequencies", f"your frequencies are base^(-2i/{d}) (the head dim); with partial rotary "
                    f"they are base^(-2i/{r}) (the rotary dim)", dataclasses.replace(spec, freq_dim=d)))
    _, scale = spec.inv_freq(None)
    if not math.isclose(scale, 1.0):
        t = spec.rope_type
        for name, qp, kp, text in (
                ("attention_factor_missing", 0, 0, f"your output equals the reference without the attention factor "
                 f"{scale:.6g} ({t} multiplies cos and sin by it): the factor is missing"),
                ("attention_factor_doubled", 2, 2, f"your output carries the attention factor twice (q and k scaled "
                 f"by {scale ** 2:.6g} instead of {scale:.6g}): the factor is doubled"),
                ("attention_factor_q_only", 1, 0, f"your queries carry the attention factor {scale:.6g} but your keys "
                 f"do not; the reference scales both (through cos and sin), so your logits are off by {scale:.6g}"),
                ("attention_factor_k_only", 0, 1, f"your keys carry the attention factor {scale:.6g} but your queries "
                 f"do not; the reference scales both (through cos and sin), so your logits are off by {scale:.6g}"),
                ("mscale_wrong_side", 2, 0, f"your queries carry the whole attention factor squared "
                 f"({scale ** 2:.6g}) and your keys none: the logits agree, but the reference scales q and k by "
                 f"{scale:.6g} each (mscale applied on the wrong side), which breaks cached keys and fused kernels")):
            out.append((name, text, dataclasses.replace(spec, q_scale_power=qp, k_scale_power=kp)))
    for shift in (1, -1):
        sign = "+" if shift > 0 else "-"
        out.append((f"offset_{'plus' if shift > 0 else 'minus'}_one", f"your output equals the reference at positions "
                    f"shifted by {shift:+d} (an off-by-one offset: position p is rotated as p {sign} 1)",
                    dataclasses.replace(spec, shift=shift)))
    out.append(("rotation_reversed", "your output rotates every pair by -p * theta (sin with the wrong sign: the "
                "rotation runs the other way, so q . k depends on m - n instead of n - m)",
                dataclasses.replace(spec, sign=-1)))
    for dt in (torch.bfloat16, torch.float16):
        out.append((f"angles_{dtype_name(dt)}", f"your angles are formed in {dtype_name(dt)} (pos and inv_freq cast to "
                    f"{dtype_name(dt)} before multiplying): even short positions lose most of the angle; form them "
                    f"in float32 or better float64", dataclasses.replace(spec, angle_dtype=dt)))
    if spec.base != 10000.0:
        out.append(("wrong_base", f"your output equals the reference with base 10000; the configuration's rope_theta "
                    f"is {spec.base:g}", dataclasses.replace(spec, base=10000.0)))
    if spec.scaling is not None:
        s = spec.scaling
        factor = s.get("factor")
        shown = f" (factor {factor:g})" if factor else ""
        if spec.rope_type != "default":
            out.append(("scaling_ignored", f"your output equals plain RoPE: the configuration's rope_type "
                        f"{spec.rope_type!r}{shown} is ignored (a silent fallback to the default rope settings)",
                        dataclasses.replace(spec, scaling=None, rope_type="default")))
        confusions = {"ntk": ("linear", "dynamic"), "dynamic": ("ntk", "linear"), "linear": ("ntk", "dynamic"),
                      "yarn": ("linear", "ntk"), "llama3": ("linear",)}
        for alt in confusions.get(spec.rope_type, ()):
            params = {"rope_type": alt, "factor": factor,
                      "original_max_position_embeddings": s["original_max_position_embeddings"]}
            try:
                alt_scaling = resolve_scaling(params, max_seq_len=s["original_max_position_embeddings"])
            except ValueError:
                continue
            kind = "NTK vs linear confusion" if {alt, spec.rope_type} & {"ntk", "dynamic"} and \
                {alt, spec.rope_type} & {"linear"} else "a different scaling"
            if {alt, spec.rope_type} == {"ntk", "dynamic"}:
                kind = "static vs dynamic NTK confusion"
            out.append((f"scaling_{alt}", f"your output equals the reference with rope_type {alt!r}{shown}; the "
                        f"configuration asks for {spec.rope_type!r} ({kind})",
                        dataclasses.replace(spec, scaling=alt_scaling, rope_type=alt)))
        if spec.rope_type == "yarn":
            flipped = not s.get("truncate", True)
            out.append(("yarn_truncate", f"your output equals YaRN with truncate={flipped} (the correction range "
                        f"{'rounded to whole pairs' if flipped else 'left fractional'}); the configuration has "
                        f"truncate={not flipped}", dataclasses.replace(spec, scaling={**s, "truncate": flipped})))
    return out


# -- the check ---------------------------------------------------------------------------------------------------------
def _as_candidate(candidate: Any) -> Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
    from posenc.base import PositionalEncoding
    if isinstance(candidate, PositionalEncoding):
        return lambda q, k, pos: candidate.rotate(q, k, pos, pos)
    if not callable(candidate):
        raise TypeError(f"conform: the candidate must be a callable fn(q, k, positions) -> (q, k) or a posenc "
                        f"encoding; got {type(candidate).__name__}.")
    return candidate


def _inputs(case: RopeCase, head_dim: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    T = case.positions.shape[-1]
    q = torch.randn(case.batch, case.heads, T, head_dim, generator=g, dtype=torch.float64)  # (B, H, T, D)
    k = torch.randn(case.batch, case.kv_heads, T, head_dim, generator=g, dtype=torch.float64)  # (B, Hkv, T, D)
    return q.to(case.dtype), k.to(case.dtype)


def arrange(q: Tensor, k: Tensor, memory: str = "contiguous") -> tuple[Tensor, Tensor]:
    """Fresh copies of q ``(B, H, T, D)`` and k ``(B, Hkv, T, D)`` laid out in memory as ``memory`` says.

    - ``"contiguous"``: contiguous ``(B, H, T, D)``;
    - ``"transposed"``: ``x.transpose(1, 2)`` of contiguous ``(B, T, H, D)`` tensors (Hugging Face's attention:
      ``q_proj(h).view(B, T, H, D).transpose(1, 2)``);
    - ``"fused"``: views into one ``(B, T, (H + 2 Hkv) * D)`` buffer, q then k then a v block (Phi-3's ``qkv_proj``
      sliced and viewed): strides ``(T W, D, W, 1)`` with ``W = (H + 2 Hkv) D``, k at a storage offset;
    - ``"fused_heads"``: views into one ``(B, T, H, 3 D)`` buffer, each head's q, k, v side by side (GPT-NeoX's
      ``query_key_value(h).view(B, T, H, 3 D).transpose(1, 2).chunk(3, -1)``): strides ``(3 T H D, 3 D, 3 H D,
      1)``; needs as many key heads as query heads.

    - ``"aliased"``: one contiguous tensor passed as both q and k (``k is q``: shared-QK attention such as Reformer's,
      or a caller that rotates one tensor for both); the values are q's, so the case is built with ``k == q``.

    The values are q's and k's in every layout (k's are q's for ``"aliased"``); these are fresh copies, so the kit
    can tell whether the candidate wrote into them (:func:`call_candidate`).
    """
    if memory == "aliased":
        if k.shape != q.shape:
            raise ValueError(f"conform: the aliased layout passes one tensor as q and k, so they need one shape; got "
                             f"q {tuple(q.shape)} and k {tuple(k.shape)}.")
        x = q.clone(memory_format=torch.contiguous_format)
        return x, x
    if memory == "contiguous":
        return q.clone(memory_format=torch.contiguous_format), k.clone(memory_format=torch.contiguous_format)
    if memory == "transposed":
        return q.transpose(1, 2).contiguous().transpose(1, 2), k.transpose(1, 2).contiguous().transpose(1, 2)
    if memory == "fused":
        (B, H, T, D), Hk = q.shape, k.shape[1]
        qw, kw = H * D, Hk * D
        g = torch.Generator().manual_seed(0)
        buf = torch.randn(B, T, qw + 2 * kw, generator=g, dtype=torch.float64).to(q.dtype)  # the v block stays random
        buf[..., :qw] = q.transpose(1, 2).reshape(B, T, qw)
        buf[..., qw:qw + kw] = k.transpose(1, 2).reshape(B, T, kw)
        return (buf[..., :qw].view(B, T, H, D).transpose(1, 2),  # (B, H, T, D)
                buf[..., qw:qw + kw].view(B, T, Hk, D).transpose(1, 2))  # (B, Hkv, T, D)
    if memory == "fused_heads":
        (B, H, T, D), Hk = q.shape, k.shape[1]
        if Hk != H:
            raise ValueError(f"conform: the per-head fused layout (GPT-NeoX) has as many key heads as query heads; "
                             f"got {H} and {Hk}.")
        g = torch.Generator().manual_seed(0)
        buf = torch.randn(B, T, H, 3 * D, generator=g, dtype=torch.float64).to(q.dtype)  # (B, T, H, 3D)
        buf[..., :D], buf[..., D:2 * D] = q.transpose(1, 2), k.transpose(1, 2)
        qkv = buf.transpose(1, 2)  # (B, H, T, 3D)
        return qkv[..., :D], qkv[..., D:2 * D]
    raise ValueError(f"conform: memory layout must be one of {sorted(MEMORY_LAYOUTS)}; got {memory!r}.")


def call_candidate(fn: Callable, q: Tensor, k: Tensor, pos: Tensor, memory: str = "contiguous", *,
                   inplace: bool = False) -> tuple[list[Tensor] | None, str | None, str | None]:
    """Run a candidate ``fn(q, k, pos)`` under no_grad on copies of q/k laid out as ``memory`` (:func:`arrange`).

    Returns:
        ``(outputs, None, mutated)`` or ``(None, why it failed, mutated)``; ``mutated`` says which input the
        candidate wrote into (``"q"``, ``"k"``, ``"q and k"``, ``"positions"``) or is ``None``. Callers keep using
        q, k (the cache) and positions after the call, so a write is a bug unless the candidate is declared
        ``inplace`` (then q/k may change; positions never).
    """
    q_in, k_in = arrange(q, k, memory)
    pos_in = pos.clone()
    before = (q_in.clone(), k_in.clone(), pos_in.clone())  # the values the caller passed, to spot writes
    try:
        with torch.no_grad():
            out = fn(q_in, k_in, pos_in)
    except Exception as exc:  # noqa: BLE001 - a candidate's failure is a result, not a crash of the kit
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0], _mutated(before, (q_in, k_in, pos_in), inplace)
    mutated = _mutated(before, (q_in, k_in, pos_in), inplace)
    if not isinstance(out, (tuple, list)) or len(out) != 2 or not all(isinstance(t, Tensor) for t in out):
        return None, f"expected (q, k) tensors back; got {type(out).__name__}", mutated
    for name, got, want in (("q", out[0], q), ("k", out[1], k)):
        if tuple(got.shape) != tuple(want.shape):
            return None, f"returned {name} of shape {tuple(got.shape)} for input {tuple(want.shape)}", mutated
        if got.dtype != want.dtype:
            return None, f"returned {name} in {dtype_name(got.dtype)} for {dtype_name(want.dtype)} input", mutated
    return [out[0].detach(), out[1].detach()], None, mutated


def _mutated(before: tuple[Tensor, ...], after: tuple[Tensor, ...], inplace: bool) -> str | None:
    """Which of q, k, positions changed (bitwise: NaN-safe ``equal`` on the raw values), or ``None``."""
    def changed(a: Tensor, b: Tensor) -> bool:
        return a.shape != b.shape or not torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))

    names = [] if inplace else [n for n, a, b in zip(("q", "k"), before, after) if changed(a, b)]
    if changed(before[2], after[2]):
        names.append("positions")
    return " and ".join(names) or None


def _position_of(pos: Tensor) -> Callable[[str, tuple[int, ...]], int]:
    def at(_name: str, index: tuple[int, ...]) -> int:
        b, t = index[0], index[2]
        return int(pos[b, t]) if pos.dim() == 2 else int(pos[t])
    return at


def check_rope(candidate: Any, config: Any, *, layout: str | None = None,
               dtypes: Sequence[str | torch.dtype] = ("float32", "bfloat16", "float16"),
               max_position: int = 1_000_000, gqa: bool = True, batch_positions: bool = True,
               cases: Sequence[RopeCase] | None = None, seed: int = 0, target: str | None = None,
               inplace: bool = False) -> ConformanceResult:
    """Check a RoPE implementation against posenc's reference and, if it fails, name the bug.

    Args:
        candidate: ``fn(q, k, positions) -> (q, k)``; q ``(B, H, T, D)``, k ``(B, Hkv, T, D)``, positions int64
            ``(T,)`` or ``(B, T)``; outputs of the same shapes and dtypes. Or a posenc ``rope`` encoding.
        config: HF-style dict (``rope_type``, ``rope_theta``, ``factor``, ``head_dim``, ``partial_rotary_factor``,
            ...) or a whole config.json dict / ``PretrainedConfig``.
        layout: the pair layout the candidate must use, ``"half"`` (Hugging Face, default) or ``"interleaved"``.
        dtypes: input dtypes to run (the first gets the full matrix).
        max_position: largest position to try (default 10**6).
        gqa: include the GQA case (fewer key heads than query heads).
        batch_positions: include the ``(B, T)`` positions cases.
        cases: an explicit matrix instead of :func:`rope_cases`.
        inplace: the candidate is declared to rotate q and k in place (it may write into them; it must still return
            the rotated q and k, also when q and k are one tensor). Without it, any write into q, k or positions
            fails with the finding ``mutates_input``: callers keep using them after the call.

    The candidate gets q/k as contiguous tensors and, in the ``-transposed`` / ``-fused`` cases, as the strided views
    Hugging Face's attention passes (:func:`arrange`); a candidate right on the first and wrong on the others fails
    with the finding ``memory_layout``, and each row of the result names its ``memory``.

    Returns:
        A :class:`~posenc.testing.ConformanceResult`: ``passed``, ``conforms``, ``diagnosis``, ``cases``.

    Raises:
        TypeError: a candidate that is not callable, or an argument of the wrong type (``dtypes="float32"``,
            ``seed="0"``, ``cases=[1, 2]``, a config value such as ``rope_theta: "1e4"``).
        ValueError: an argument of the right type with a wrong value (``dtypes=("float8",)``, ``max_position=0``,
            an empty ``cases``, an invalid configuration).
    """
    with one_thread():
        return _check_rope(candidate, config, layout=layout, dtypes=dtypes, max_position=max_position, gqa=gqa,
                           batch_positions=batch_positions, cases=cases, seed=seed, target=target, inplace=inplace)


def _check_rope(candidate: Any, config: Any, *, layout, dtypes, max_position, gqa, batch_positions, cases, seed,
                target, inplace) -> ConformanceResult:
    fn = _as_candidate(candidate)
    require_bool(inplace, "inplace", "conform rope")
    require_int(seed, "seed", "conform rope")
    require_target(target, "conform rope")
    spec = rope_spec(config, layout=layout)
    if cases is None:
        cases = rope_cases(dtypes=dtypes, max_position=max_position, gqa=gqa, batch_positions=batch_positions)
    else:
        _check_cases(cases, spec)
    probes = []
    for i, case in enumerate(cases):
        q, k = _inputs(case, spec.head_dim, seed + i)
        if case.memory == "aliased":
            k = q  # one tensor passed as both: the reference rotates the same values twice
        want = list(reference_rope(q, k, case.positions, spec))
        got, message, mutated = call_candidate(fn, q, k, case.positions, case.memory, inplace=inplace)
        top = int(case.positions.abs().max()) if case.positions.numel() else 0
        top_freq = float(spec.inv_freq(top + 1)[0].max())
        probes.append(Probe(case.name, case.dtype, tuple(q.shape), case.describe(), top, want,
                            got, {"q": q, "k": k, "positions": case.positions},
                            angle=top * top_freq, message=message, position_of=_position_of(case.positions),
                            memory=case.memory, mutated=mutated))
    hypotheses = [Hypothesis(name, sentence, _buggy(bug)) for name, sentence, bug in rope_hypotheses(spec)]
    result = diagnose("rope", target or getattr(candidate, "__qualname__", type(candidate).__name__), spec.describe(),
                      probes, hypotheses)
    if result.finding is not None and result.finding.hypothesis == "unexplained":
        _blind_diagnosis(fn, spec, result)
    return result


def _blind_diagnosis(fn: Callable, spec: RopeSpec, result: ConformanceResult) -> None:
    """No listed bug explains the numbers: estimate what the candidate computes (:mod:`posenc.testing.estimate`) and
    put the differences, with their measured values, in the finding (``"estimate"``)."""
    from posenc.testing.estimate import explain_rope

    words, estimate = explain_rope(fn, spec)
    result.estimate = estimate.to_dict()
    old = result.finding
    where = old.sentence.split("; ", 1)[1] if "; " in old.sentence else old.sentence
    if not words:
        result.finding = Finding("unexplained", "bug", f"no known bug explains the numbers, and the estimate from "
                                 f"your outputs (float32 contiguous q/k at positions 0..32768) finds your rotation "
                                 f"equal to the configuration's, so the failure is in what that probe does not cover; "
                                 f"{where}", old.worst)
        return
    if words[0].startswith("the estimate cannot describe"):
        result.finding = Finding("unexplained", "bug", f"no known bug explains the numbers; {'; '.join(words)}; "
                                 f"{where}", old.worst)
        return
    result.finding = Finding("estimate", "bug", f"no listed bug, but the estimate from your outputs says: "
                             f"{'; '.join(words)}; {where}", old.worst)


def _check_cases(cases: Any, spec: RopeSpec) -> None:
    if isinstance(cases, (str, bytes)) or not isinstance(cases, Sequence) or not all(
            isinstance(c, RopeCase) for c in cases):
        raise TypeError(f"conform rope: cases must be a list of RopeCase (see rope_cases()); got {cases!r:.80}.")
    if not cases:
        raise ValueError("conform rope: cases is empty; pass at least one RopeCase, or None for the default matrix.")
    for c in cases:
        if c.dtype not in DTYPES.values() or c.memory not in MEMORY_LAYOUTS:
            raise ValueError(f"conform rope: case {c.name!r} has dtype {c.dtype} / memory {c.memory!r}; the kit "
                             f"checks dtypes {sorted(DTYPES)} and memory layouts {sorted(MEMORY_LAYOUTS)}.")
        if c.memory == "fused_heads" and c.heads != c.kv_heads:
            raise ValueError(f"conform rope: case {c.name!r}: the per-head fused layout needs heads == kv_heads; got "
                             f"{c.heads} and {c.kv_heads}.")
        if c.memory == "aliased" and c.heads != c.kv_heads:
            raise ValueError(f"conform rope: case {c.name!r}: the aliased layout (one tensor as q and k) needs heads "
                             f"== kv_heads; got {c.heads} and {c.kv_heads}.")
        if c.positions.dtype not in (torch.int64, torch.int32) or c.positions.dim() not in (1, 2):
            raise ValueError(f"conform rope: case {c.name!r} needs int64 (or int32) positions (T,) or (B, T); got "
                             f"{c.positions.dtype} of shape {tuple(c.positions.shape)}.")


def _buggy(spec: RopeSpec) -> Callable[[Probe], list[Tensor]]:
    def reference(p: Probe) -> list[Tensor]:
        return list(reference_rope(p.inputs["q"], p.inputs["k"], p.inputs["positions"], spec))
    return reference


# -- exported tables ---------------------------------------------------------------------------------------------------
def table_candidate(cos: Tensor, sin: Tensor, positions: Tensor, *, rotary_dim: int,
                    layout: str = "half") -> Callable:
    """A candidate ``fn(q, k, positions)`` that applies exported cos/sin tables as their consumer would.

    Args:
        cos, sin: ``(N, W)`` rows for ``positions`` ``(N,)``; ``W`` is ``rotary_dim`` (Hugging Face's ``cat(f, f)``
            for the half layout, ``repeat_interleave(f, 2)`` for interleaved) or ``rotary_dim / 2`` (one per pair).
        rotary_dim: rotated channels per head (the configuration's).
        layout: how the consumer pairs channels.
    """
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[0] != positions.numel():
        raise ValueError(f"conform: cos and sin must be (N, W) tables with one row per position; got cos "
                         f"{tuple(cos.shape)}, sin {tuple(sin.shape)} for {positions.numel()} positions.")
    if cos.shape[1] not in (rotary_dim, rotary_dim // 2):
        raise ValueError(f"conform: table rows must have rotary_dim = {rotary_dim} columns (HF's cat(f, f)) or "
                         f"rotary_dim / 2 = {rotary_dim // 2} (one per pair); got {cos.shape[1]}.")
    if cos.shape[1] == rotary_dim // 2:  # one column per pair: spread it over the pair's two channels
        spread = (lambda t: torch.cat((t, t), -1)) if layout == "half" else (lambda t: t.repeat_interleave(2, -1))
        cos, sin = spread(cos), spread(sin)
    order = torch.argsort(positions)
    keys, cos, sin = positions[order], cos[order], sin[order]

    def rows(pos: Tensor) -> Tensor:
        idx = torch.searchsorted(keys, pos).clamp(max=keys.numel() - 1)
        if not bool((keys[idx] == pos).all()):
            missing = pos[keys[idx] != pos][0].item()
            raise ValueError(f"the tables have no row for position {missing}")
        return idx

    def fn(q: Tensor, k: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        idx = rows(pos)
        c, s = cos[idx].float(), sin[idx].float()  # (T, W) or (B, T, W)
        if c.dim() == 3:
            c, s = c[:, None], s[:, None]  # (B, 1, T, W)

        def rot(x: Tensor) -> Tensor:
            xf = x.float()
            cw, sw, r = c, s, c.shape[-1]
            xr = xf[..., :r]
            if layout == "half":
                turned = torch.cat((-xr[..., r // 2:], xr[..., : r // 2]), -1)
            else:
                turned = torch.stack((-xr[..., 1::2], xr[..., 0::2]), -1).flatten(-2)
            return torch.cat((xr * cw + turned * sw, xf[..., r:]), -1).to(x.dtype)

        return rot(q), rot(k)

    return fn


def check_rope_tables(data: Mapping[str, Any], *, layout: str | None = None,
                      dtypes: Sequence[str | torch.dtype] = ("float32",), target: str = "tables") -> ConformanceResult:
    """Check exported cos/sin tables: ``{"config": {...}, "layout": "half", "positions": [...], "cos": [[...]],
    "sin": [[...]]}`` (see :func:`table_candidate` for the widths); the matrix uses the tables' own positions.

    Raises:
        TypeError / ValueError: a missing key, positions that are not integers (``1.5`` is refused, never truncated),
            or cos/sin that are not tables of numbers.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"conform: a tables JSON must be an object with 'config', 'positions', 'cos' and 'sin'; got "
                        f"{type(data).__name__}.")
    for key in ("config", "positions", "cos", "sin"):
        if key not in data:
            raise ValueError(f"conform: a tables JSON needs 'config', 'positions', 'cos' and 'sin'; '{key}' is "
                             f"missing.")
    dtypes = require_dtypes(dtypes, "conform tables")
    layout = layout or data.get("layout") or "half"
    positions = torch.tensor(_table_positions(data["positions"]), dtype=torch.int64)
    cos, sin = (_table_values(data[key], key) for key in ("cos", "sin"))
    fn = table_candidate(cos, sin, positions, rotary_dim=rope_spec(data["config"]).rotary_dim, layout=layout)
    have = torch.unique(positions)  # sorted
    T = min(16, have.numel())
    chunks = {"first": have[:T], "last": have[-T:]}
    if have.numel() > 2 * T:
        mid = have.numel() // 2
        chunks["middle"] = have[mid - T // 2: mid - T // 2 + T]
    cases = []
    for n, dt in enumerate(dtypes):
        sfx = "" if n == 0 else f"-{dtype_name(dt)}"
        for name, pos in chunks.items():
            cases.append(RopeCase(f"{name}{sfx}", dt, 2, 4, 4, pos))
        if n == 0:
            cases.append(RopeCase("batch", dt, 2, 4, 4, torch.stack((chunks["first"], chunks["last"]))))
            cases.append(RopeCase("decode", dt, 2, 4, 4, have[-1:]))
    return check_rope(fn, data["config"], layout=layout, cases=cases, target=target)


def _table_positions(values: Any) -> list[int]:
    """The tables' positions as ints: JSON integers (or floats with an integral value, as numpy's ``tolist`` of a
    float array writes them); a fractional position has no row in any RoPE table and is refused, never truncated."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"conform: a tables JSON's 'positions' must be a non-empty list of integers; got "
                        f"{values!r:.80}.")
    out = []
    for i, v in enumerate(values):
        if not is_number(v):
            raise TypeError(f"conform: positions[{i}] = {v!r} is not an integer; a tables JSON's 'positions' are the "
                            f"integer positions of its rows.")
        if isinstance(v, float) and not v.is_integer():
            raise ValueError(f"conform: positions[{i}] = {v!r} is fractional; a row of a RoPE table belongs to an "
                             f"integer position. Export the integer positions the tables were computed at.")
        if not abs(v) < 2 ** 53:  # the reference forms p * theta in float64, exact for integers below 2^53
            raise ValueError(f"conform: positions[{i}] = {v!r} is beyond +-2^53; the reference holds positions "
                             f"exactly only below that (and no RoPE table has rows there).")
        out.append(int(v))
    return out


def _table_values(values: Any, key: str) -> Tensor:
    try:
        table = torch.tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"conform: a tables JSON's {key!r} must be a list of rows of numbers (N, W); {exc}") from None
    if not torch.isfinite(table).all():
        raise ValueError(f"conform: a tables JSON's {key!r} holds NaN or infinite values.")
    return table
