"""Fused kernels for positional encodings, each beside the plain PyTorch reference it must equal.

RoPE (arXiv 2104.09864) has two fast paths, chosen by device:

- CPU: a C kernel compiled once with the system compiler (:mod:`posenc.kernels.rope_cpu`): one read and one write
  per element, any strides, OpenMP threads. It is registered as the operator ``torch.ops.posenc.rope``
  (:mod:`posenc.kernels.rope_op`: fake kernel, autograd, vmap), so ``torch.compile(fullgraph=True)`` and
  ``torch.func`` (grad, jacrev, vmap) run it too.
- CUDA: a Triton kernel (:mod:`posenc.kernels.rope_triton`): q and k in one launch, any strides, forward and
  backward.

:func:`fast_rotate` is what :meth:`posenc.encodings.rope.RoPE.rotate` calls; it returns ``None`` when no fast path
applies (then the caller uses :func:`posenc.kernels.reference.apply_rope`, the reference). It never falls back
silently after trying: a kernel that cannot be built is reported once at WARNING with the reason, and a build is
announced by one INFO line with the library's path. :func:`build` compiles the CPU kernel ahead of time. Set
``POSENC_FAST_ROPE=0`` to always use the reference path (for comparisons).

Which route a CPU call takes (all give the same numbers):

- eager, nothing to differentiate (inference, decoding): q and k in one direct kernel call (no dispatcher);
- eager with autograd, or inside ``torch.func`` transforms: :func:`posenc.kernels.rope_op.rotate`;
- ``torch.compile``: the operator ``torch.ops.posenc.rope`` (one graph node per tensor, no graph break);
- ``torch.jit`` tracing and tensor subclasses: the reference formula.

Shapes: q ``(B, H, Tq, D)``, k ``(B, Hkv, Tk, D)``; cos/sin ``(T, F)`` or ``(B, T, F)`` float32 (float64 for
float64 input) with ``2F <= D`` rotated channels.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from posenc.kernels import rope_cpu, rope_op

__all__ = ["build", "fast_path_name", "fast_rotate", "rope_rotate", "rope_rotate_qk"]

log = logging.getLogger(__name__)

_LAYOUTS = ("half", "interleaved")
_CPU_DTYPES = frozenset(rope_cpu.SUPPORTED_DTYPES)
_wrapped = torch._C._functorch.is_functorch_wrapped_tensor  # torch.func (grad, vmap) wrappers
_ENV = "POSENC_FAST_ROPE"
_ENV_PARSED: dict[str, bool] = {}  # raw value -> parsed; the variable is read at every call (~1 us)


def _enabled() -> bool:
    raw = os.environ.get(_ENV, "1")
    parsed = _ENV_PARSED.get(raw)
    if parsed is None:
        parsed = _ENV_PARSED[raw] = raw.strip().lower() not in ("0", "false", "no", "off")
    return parsed


def build() -> Path:
    """Compile the fused CPU RoPE kernel now (or load it from the cache) and return the library's path.

    Without this, the first CPU :meth:`~posenc.encodings.rope.RoPE.rotate` builds it (once per machine and
    compiler, under a second, announced by one INFO log line). Raises ``RuntimeError`` with the reason when it cannot
    be built; RoPE then runs the plain PyTorch formula. See :func:`posenc.kernels.rope_cpu.build`.
    """
    return rope_cpu.build()


_triton = None  # posenc.kernels.rope_triton, imported on first CUDA use (importing triton takes a while)


def _rope_triton():
    global _triton
    if _triton is None:
        from posenc.kernels import rope_triton

        _triton = rope_triton
    return _triton


def _triton_ready() -> bool:
    return _rope_triton().available()


@torch.compiler.assume_constant_result
def _cpu_op_ready() -> bool:
    """Whether compiled graphs should call ``torch.ops.posenc.rope``: a constant to ``torch.compile`` (read at trace
    time, so the kernel is built, or its failure logged, then and not inside the graph)."""
    return _enabled() and rope_cpu.load_library() is not None


def fast_path_name(x: Tensor) -> str | None:
    """``"cpu"`` or ``"triton"`` when a fused RoPE path can rotate ``x``, else ``None``."""
    if torch.compiler.is_compiling():
        # The CPU kernel is an operator compiled graphs can hold; on CUDA, Inductor's own Triton code of the
        # reference formula is what a compiled model should run.
        return "cpu" if x.device.type == "cpu" and x.dtype in rope_cpu.SUPPORTED_DTYPES and _cpu_op_ready() else None
    if not _enabled() or torch._C._is_tracing():
        return None  # torch.jit.trace records aten ops: it gets the reference formula
    return _path_for(x)


def _path_for(x: Tensor) -> str | None:
    """:func:`fast_path_name` in eager mode, without the process-wide checks (environment, tracer)."""
    if type(x) is not Tensor and not isinstance(x, torch.nn.Parameter):
        return None  # tensor subclasses: only the reference formula composes with what they override
    if x.is_cpu:
        if x.dtype in rope_cpu.SUPPORTED_DTYPES and rope_cpu.load_library() is not None:
            return "cpu"
        return None
    if x.is_cuda and x.dtype in (torch.float32, torch.bfloat16, torch.float16) and _triton_ready() and \
            not _wrapped(x):
        return "triton"  # (torch.func wrappers on CUDA: the Triton path has no functorch rules; the reference does)
    return None


def _pair_path(q: Tensor, k: Tensor | None) -> str | None:
    """The fused path that can rotate q and k together, or ``None``; checks the environment once for both."""
    path = fast_path_name(q)
    if path is None or k is None:
        return path
    if k.device != q.device:
        return None
    if torch.compiler.is_compiling():
        return path if k.dtype in rope_cpu.SUPPORTED_DTYPES else None
    if type(k) is type(q) and k.dtype == q.dtype:
        return path if path == "cpu" or not _wrapped(k) else None
    return path if _path_for(k) == path else None


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
                           f"{os.environ.get(_ENV, '1')}); use posenc.apply_rope.")
    return _dispatch(path, q, k, cos_q, sin_q, cos_k, sin_k, layout=layout, inplace=inplace)


def _dispatch(path: str, q: Tensor, k: Tensor | None, cos_q: Tensor, sin_q: Tensor, cos_k: Tensor | None,
              sin_k: Tensor | None, *, layout: str, inplace: bool) -> tuple[Tensor, Tensor | None]:
    if path == "triton":
        return _rope_triton().rope_qk(q, k, cos_q, sin_q, cos_k, sin_k, layout=layout, inplace=inplace)
    interleaved = layout == "interleaved"
    if torch.compiler.is_compiling():
        if inplace:
            raise RuntimeError("rope: inplace=True is not supported under torch.compile; use inplace=False.")
        op = rope_op.rope  # one graph node per tensor; AOTAutograd differentiates it with the registered backward
        return op(q, cos_q, sin_q, interleaved, False), None if k is None else op(k, cos_k, sin_k, interleaved, False)
    grad = torch.is_grad_enabled() and (q.requires_grad or cos_q.requires_grad or sin_q.requires_grad or (
        k is not None and (k.requires_grad or cos_k.requires_grad or sin_k.requires_grad)))
    if grad or _wrapped(q) or (k is not None and _wrapped(k)):
        if inplace:
            raise RuntimeError("rope: inplace=True on CPU does not support autograd or torch.func transforms; "
                               "use inplace=False.")
        rotate = rope_op.rotate
        return rotate(q, cos_q, sin_q, interleaved=interleaved), \
            None if k is None else rotate(k, cos_k, sin_k, interleaved=interleaved)
    # Nothing to record (inference, decoding): q and k in one kernel call, straight to the C library.
    return rope_cpu.rotate_qk_into(q, q if inplace else torch.empty_like(q), cos_q, sin_q, k,
                                   None if k is None else k if inplace else torch.empty_like(k), cos_k, sin_k,
                                   layout=layout)


def _fusable_table(cos: Tensor, sin: Tensor) -> bool:
    """Whether a cos/sin pair has a shape the fused kernels read: both ``(T, F)`` or both ``(B, T, F)``."""
    return cos.dim() in (2, 3) and sin.dim() == cos.dim()


def fast_rotate(q: Tensor, k: Tensor | None, cos_q: Tensor, sin_q: Tensor, cos_k: Tensor | None = None,
                sin_k: Tensor | None = None, *, layout: str) -> tuple[Tensor, Tensor | None] | None:
    """Rotated ``(q, k)`` through a fused path, or ``None`` when none applies (the caller uses the reference).

    ``k`` may be ``None`` (then the second output is ``None``); ``cos_k``/``sin_k`` default to q's. Returns ``None``
    when: ``POSENC_FAST_ROPE=0``; under ``torch.jit`` tracing; for tensor subclasses; when the device/dtype has no
    kernel (on CUDA also inside ``torch.compile``, and when cos/sin need gradients); q and k on different devices;
    tables that are not ``(T, F)`` or ``(B, T, F)`` (per-head tables ``(B|1, H, T, F)``: the reference broadcasts them).
    """
    if cos_k is None:
        cos_k, sin_k = cos_q, sin_q
    if k is None:
        cos_k = sin_k = None
    # The kernels take one table per position, (T, F) or (B, T, F): per-head tables (B|1, H, T, F), as FoPE's, are
    # the reference formula's to broadcast. Declining here keeps the promise above instead of raising in the kernel.
    if not _fusable_table(cos_q, sin_q) or (k is not None and not _fusable_table(cos_k, sin_k)):
        return None
    # The common CPU case first, in as few Python steps as possible (a decode step rotates a few hundred numbers,
    # so these checks are most of its cost): plain tensors, eager, nothing to differentiate -> one kernel call.
    # is_compiling() comes before the build-state read: under torch.compile the kernel may be built inside the traced
    # frame, and a guard on that dict would then fail on the frame that created it.
    if type(q) is Tensor and q.is_cpu and q.dtype in _CPU_DTYPES and not torch.compiler.is_compiling() and \
            "kernel" in rope_cpu.build_state and \
            (k is None or type(k) is Tensor and k.is_cpu and k.dtype in _CPU_DTYPES) and \
            not (torch.is_grad_enabled() and (q.requires_grad or cos_q.requires_grad or sin_q.requires_grad or
                                              k is not None and (k.requires_grad or cos_k.requires_grad or
                                                                 sin_k.requires_grad))) and \
            not torch._C._is_tracing() and not _wrapped(q) and (k is None or not _wrapped(k)) and _enabled():
        return rope_cpu.rotate_qk_into(q, torch.empty_like(q), cos_q, sin_q, k,
                                       None if k is None else torch.empty_like(k), cos_k, sin_k, layout=layout)
    path = _pair_path(q, k)
    if path is None:
        return None
    if path == "triton" and (cos_q.requires_grad or sin_q.requires_grad or
                             (k is not None and (cos_k.requires_grad or sin_k.requires_grad))):
        return None  # the Triton backward computes no cos/sin gradients: the reference does
    return _dispatch(path, q, k, cos_q, sin_q, cos_k, sin_k, layout=layout, inplace=False)
