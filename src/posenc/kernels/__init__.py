"""Fused kernels for positional encodings, each beside the plain PyTorch reference it must equal.

RoPE (arXiv 2104.09864) has two fast paths, chosen by device:

- CPU: a C kernel compiled once with the system compiler (:mod:`posenc.kernels.rope_cpu`): one read and one write
  per element, any strides, POSIX threads.
- CUDA: a Triton kernel (:mod:`posenc.kernels.rope_triton`): q and k in one launch, any strides, forward and
  backward.

:func:`fast_rotate` is what :meth:`posenc.encodings.rope.RoPE.rotate` calls; it returns ``None`` when no fast path
applies (then the caller uses :func:`posenc.encodings.rope.apply_rope`, the reference). It never falls back
silently after trying: a kernel that cannot be built is reported once at WARNING with the reason. Set
``POSENC_FAST_ROPE=0`` to always use the reference path (for comparisons).

Shapes: q ``(B, H, Tq, D)``, k ``(B, Hkv, Tk, D)``; cos/sin ``(T, F)`` or ``(B, T, F)`` float32 (float64 for
float64 input) with ``2F <= D`` rotated channels.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

from posenc.kernels import rope_cpu

__all__ = ["fast_path_name", "fast_rotate", "rope_rotate", "rope_rotate_qk"]

log = logging.getLogger(__name__)

_LAYOUTS = ("half", "interleaved")


_ENV = "POSENC_FAST_ROPE"
# os.environ.get costs a few Python frames per call (key encoding, Mapping.get): in a decode step, where RoPE runs
# once per layer between cache-evicting matmuls, that was ~25 us a call. The raw environment dict that os.environ
# keeps up to date (CPython's os._Environ._data) answers in one lookup; the parsed answer is cached per raw value.
_ENV_DATA: dict | None = getattr(os.environ, "_data", None)
try:
    _ENV_KEY = os.environ.encodekey(_ENV)  # type: ignore[attr-defined]
except (AttributeError, TypeError):
    _ENV_DATA = None
_ENV_PARSED: dict = {}


def _parse_enabled(value: str) -> bool:
    return value.strip().lower() not in ("0", "false", "no", "off")


def _enabled() -> bool:
    if _ENV_DATA is None:  # not CPython's os._Environ: the portable, slower lookup
        return _parse_enabled(os.environ.get(_ENV, "1"))
    raw = _ENV_DATA.get(_ENV_KEY)
    if raw is None:
        return True
    parsed = _ENV_PARSED.get(raw)
    if parsed is None:
        parsed = _ENV_PARSED[raw] = _parse_enabled(os.environ.get(_ENV, "1"))
    return parsed


_triton = None  # posenc.kernels.rope_triton, imported on first CUDA use (importing triton takes a while)


def _rope_triton():
    global _triton
    if _triton is None:
        from posenc.kernels import rope_triton

        _triton = rope_triton
    return _triton


def _triton_ready() -> bool:
    return _rope_triton().available()


def fast_path_name(x: Tensor) -> str | None:
    """``"cpu"`` or ``"triton"`` when a fused RoPE path can rotate ``x``, else ``None``."""
    if not _enabled() or torch.compiler.is_compiling() or torch._C._is_tracing():
        return None  # compilers and tracers must see the reference formula (they cannot trace into the kernels)
    return _path_for(x)


def _path_for(x: Tensor) -> str | None:
    """:func:`fast_path_name` without the process-wide checks (environment, compiler, tracer)."""
    if (type(x) is not Tensor and not isinstance(x, torch.nn.Parameter)) or \
            torch._C._functorch.is_functorch_wrapped_tensor(x):
        return None  # tensor subclasses and torch.func (vmap, grad) wrappers: only the reference composes with them
    if x.is_cpu:
        if x.dtype in rope_cpu.SUPPORTED_DTYPES and rope_cpu.load_library() is not None:
            return "cpu"
        return None
    if x.is_cuda and x.dtype in (torch.float32, torch.bfloat16, torch.float16) and _triton_ready():
        return "triton"
    return None


def _pair_path(q: Tensor, k: Tensor | None) -> str | None:
    """The fused path that can rotate q and k together, or ``None``; checks the environment once for both."""
    path = fast_path_name(q)
    if path is None or k is None:
        return path
    if type(k) is type(q) and k.dtype == q.dtype and k.device == q.device:
        # Same kind of tensor as q: only a torch.func wrapper around k alone could still rule it out.
        return None if torch._C._functorch.is_functorch_wrapped_tensor(k) else path
    return path if k.device == q.device and _path_for(k) == path else None


class _CpuRope(torch.autograd.Function):
    """Rotation on CPU through the fused kernel; backward rotates the gradient by minus the angle."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor, layout: str) -> Tensor:  # noqa: D102
        ctx.save_for_backward(cos, sin)
        ctx.layout = layout
        return rope_cpu.rotate_qk_into(x, torch.empty_like(x), cos, sin, layout=layout)[0]

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        cos, sin = ctx.saved_tensors
        dx = rope_cpu.rotate_qk_into(grad, torch.empty_like(grad), cos, sin, layout=ctx.layout, negate=True)[0]
        return dx, None, None, None


def _check(x: Tensor, cos: Tensor, sin: Tensor, layout: str, name: str) -> None:
    if layout not in _LAYOUTS:
        raise ValueError(f"rope: layout must be one of {_LAYOUTS}; got {layout!r}.")
    if x.dim() != 4:
        raise ValueError(f"rope: {name} must be (B, H, T, D); got shape {tuple(x.shape)}.")
    if cos.shape != sin.shape or cos.dim() not in (2, 3):
        raise ValueError(f"rope: cos/sin for {name} must share a shape (T, F) or (B, T, F); got "
                         f"{tuple(cos.shape)} and {tuple(sin.shape)}.")
    if 2 * cos.shape[-1] > x.shape[-1] or cos.shape[-2] != x.shape[-2]:
        raise ValueError(f"rope: cos/sin {tuple(cos.shape)} do not fit {name} {tuple(x.shape)}: need T to match "
                         f"and 2F <= D.")
    if cos.dim() == 3 and cos.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"rope: cos/sin batch {cos.shape[0]} does not match {name} batch {x.shape[0]}.")


def rope_rotate(x: Tensor, cos: Tensor, sin: Tensor, *, layout: str = "half", inplace: bool = False) -> Tensor:
    """RoPE of one ``(B, H, T, D)`` tensor through the fused path for its device.

    Args:
        x: ``(B, H, T, D)`` on CPU or CUDA, any strides.
        cos, sin: ``(T, F)`` or ``(B, T, F)``, float32 (float64 for float64 ``x``).
        layout: ``"half"`` or ``"interleaved"`` pairs.
        inplace: overwrite ``x`` (must not need its old value for autograd).

    Raises:
        RuntimeError: no fused path for this device/dtype (see :func:`fast_path_name`).
    """
    return rope_rotate_qk(x, None, cos, sin, None, None, layout=layout, inplace=inplace)[0]


def rope_rotate_qk(q: Tensor, k: Tensor | None, cos_q: Tensor, sin_q: Tensor, cos_k: Tensor | None,
                   sin_k: Tensor | None, *, layout: str = "half",
                   inplace: bool = False) -> tuple[Tensor, Tensor | None]:
    """RoPE of q ``(B, H, Tq, D)`` and k ``(B, Hkv, Tk, D)`` (or ``k=None``) through the fused path.

    On CUDA both tensors are rotated by one Triton launch. Raises ``RuntimeError`` when no fused path applies.
    """
    pairs = [(q, cos_q, sin_q, "q")] + ([(k, cos_k, sin_k, "k")] if k is not None else [])
    for x, cos, sin, name in pairs:
        _check(x, cos, sin, layout, name)
    path = _pair_path(q, k)
    if path is None:
        raise RuntimeError(f"rope: no fused path for {q.device.type} {q.dtype} (POSENC_FAST_ROPE="
                           f"{os.environ.get('POSENC_FAST_ROPE', '1')}); use posenc.apply_rope.")
    return _dispatch(path, q, k, cos_q, sin_q, cos_k, sin_k, layout=layout, inplace=inplace)


def _dispatch(path: str, q: Tensor, k: Tensor | None, cos_q: Tensor, sin_q: Tensor, cos_k: Tensor | None,
              sin_k: Tensor | None, *, layout: str, inplace: bool) -> tuple[Tensor, Tensor | None]:
    if path == "triton":
        return _rope_triton().rope_qk(q, k, cos_q, sin_q, cos_k, sin_k, layout=layout, inplace=inplace)
    grad = torch.is_grad_enabled() and (q.requires_grad or (k is not None and k.requires_grad))
    if inplace:
        if grad:
            raise RuntimeError("rope: inplace=True on CPU does not support autograd; use inplace=False.")
        return rope_cpu.rotate_qk_into(q, q, cos_q, sin_q, k, k, cos_k, sin_k, layout=layout)
    if not grad:  # no graph to record (inference, decoding): q and k in one kernel call, no autograd.Function
        return rope_cpu.rotate_qk_into(q, torch.empty_like(q), cos_q, sin_q, k,
                                       None if k is None else torch.empty_like(k), cos_k, sin_k, layout=layout)
    out_q = _CpuRope.apply(q, cos_q, sin_q, layout) if q.requires_grad else \
        rope_cpu.rotate_qk_into(q, torch.empty_like(q), cos_q, sin_q, layout=layout)[0]
    if k is None:
        return out_q, None
    out_k = _CpuRope.apply(k, cos_k, sin_k, layout) if k.requires_grad else \
        rope_cpu.rotate_qk_into(k, torch.empty_like(k), cos_k, sin_k, layout=layout)[0]
    return out_q, out_k


def fast_rotate(q: Tensor, k: Tensor | None, cos_q: Tensor, sin_q: Tensor, cos_k: Tensor | None = None,
                sin_k: Tensor | None = None, *, layout: str) -> tuple[Tensor, Tensor | None] | None:
    """Rotated ``(q, k)`` through a fused path, or ``None`` when none applies (the caller uses the reference).

    ``k`` may be ``None`` (then the second output is ``None``); ``cos_k``/``sin_k`` default to q's. Returns ``None``
    when: ``POSENC_FAST_ROPE=0``; inside ``torch.compile``; the device/dtype has no kernel; cos/sin need gradients
    (learned frequencies); q and k sit on different devices.
    """
    path = _pair_path(q, k)
    if path is None:
        return None
    if cos_k is None:
        cos_k, sin_k = cos_q, sin_q
    if cos_q.requires_grad or sin_q.requires_grad or cos_k.requires_grad or sin_k.requires_grad:
        return None
    if k is None:
        cos_k = sin_k = None
    if path == "cpu" and not (torch.is_grad_enabled() and (q.requires_grad or (k is not None and k.requires_grad))):
        # Inference and decoding (the common CPU case): straight to one kernel call for q and k.
        return rope_cpu.rotate_qk_into(q, torch.empty_like(q), cos_q, sin_q, k,
                                       None if k is None else torch.empty_like(k), cos_k, sin_k, layout=layout)
    return _dispatch(path, q, k, cos_q, sin_q, cos_k, sin_k, layout=layout, inplace=False)
