"""``torch.ops.posenc.rope``: the fused CPU RoPE kernel as a PyTorch operator (arXiv 2104.09864).

Registered with :mod:`torch.library`, so ``torch.compile`` (``fullgraph=True``), ``torch.export`` and ``torch.func``
see one opaque op instead of a :mod:`ctypes` call they cannot trace:

- the CPU implementation is :func:`posenc.kernels.rope_cpu.rotate_into` (the C kernel); where that kernel cannot be
  built, the reference formula :func:`posenc.kernels.reference.apply_rope` (after the one WARNING the loader logs);
- a fake kernel (``register_fake``): output metadata for tracing, with the same argument checks;
- autograd (``register_autograd``): the backward of a rotation is the rotation by minus the angle, so the gradient
  of ``x`` is this op again with ``negate`` flipped (and so twice differentiable); gradients of ``cos``/``sin``
  (learned frequencies) are formed with plain torch ops;
- a vmap rule (``register_vmap``): the vmapped dimension is folded into ``B``.

:func:`rotate` is the differentiable entry point to use: it wraps the op in a :class:`torch.autograd.Function` with
``setup_context`` and ``generate_vmap_rule``, which ``torch.func.grad``/``jacrev``/``vmap`` need (torch 2.13's
``register_autograd`` does not compose with ``torch.func.grad``: "it must override the setup_context staticmethod").
Both use the same backward.

Shapes: ``x`` ``(B, H, T, D)`` on CPU, float32, float64, bfloat16 or float16, any strides; ``cos``/``sin`` ``(T, F)``
or ``(B, T, F)`` (``B`` may be 1) in the compute dtype (float32; float64 for float64 ``x``) with ``2F <= D``. The
output is a new tensor like ``torch.empty_like(x)``: the first ``2F`` channels rotated pairwise (``"half"`` pairs
``(i, i + F)``, or ``interleaved`` pairs ``(2i, 2i + 1)``), the rest copied.
"""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.kernels import rope_cpu
from posenc.kernels.reference import apply_rope

__all__ = ["check_args", "rope", "rotate"]


def check_args(x: Tensor, cos: Tensor, sin: Tensor) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``x``, ``cos``, ``sin`` fit the op (metadata only: works on fakes)."""
    if x.dim() != 4:
        raise ValueError(f"posenc::rope: x must be (B, H, T, D); got shape {tuple(x.shape)}.")
    if x.dtype not in rope_cpu.SUPPORTED_DTYPES:
        raise TypeError(f"posenc::rope: x has dtype {x.dtype}; supported: {list(rope_cpu.SUPPORTED_DTYPES)}.")
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    if cos.dtype != compute or sin.dtype != compute:
        raise TypeError(f"posenc::rope: cos/sin must be {compute} for {x.dtype} input; got {cos.dtype}/{sin.dtype}.")
    if cos.shape != sin.shape or cos.dim() not in (2, 3):
        raise ValueError(f"posenc::rope: cos/sin must share a shape (T, F) or (B, T, F); got {tuple(cos.shape)} and "
                         f"{tuple(sin.shape)}.")
    if cos.shape[-2] != x.shape[-2] or 2 * cos.shape[-1] > x.shape[-1]:
        raise ValueError(f"posenc::rope: cos/sin {tuple(cos.shape)} do not fit x {tuple(x.shape)}: T must match and "
                         f"2F <= D.")
    if cos.dim() == 3 and cos.shape[0] != 1 and cos.shape[0] != x.shape[0]:
        raise ValueError(f"posenc::rope: cos/sin batch {cos.shape[0]} matches neither 1 nor x's batch {x.shape[0]}.")


def _impl(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool, negate: bool) -> Tensor:
    check_args(x, cos, sin)
    layout = "interleaved" if interleaved else "half"
    out = torch.empty_like(x)
    if rope_cpu.load_library() is None:  # logged once at WARNING by the loader; same numbers, slower
        return out.copy_(apply_rope(x, cos, -sin if negate else sin, layout=layout))  # the fake's strides
    return rope_cpu.rotate_into(x, out, cos, sin, layout=layout, negate=negate)


@torch.library.custom_op("posenc::rope", mutates_args=(), device_types="cpu")
def rope(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False, negate: bool = False) -> Tensor:
    """RoPE of ``x`` ``(B, H, T, D)`` by the angles whose ``cos``/``sin`` ``(T, F)`` or ``(B, T, F)`` are given.

    ``negate`` rotates by minus the angle (the inverse rotation). See the module docstring for dtypes and layouts.
    """
    return _impl(x, cos, sin, interleaved, negate)


@rope.register_fake
def _fake(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False, negate: bool = False) -> Tensor:
    check_args(x, cos, sin)
    return torch.empty_like(x)


def _table_grads(grad: Tensor, x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool,
                 negate: bool) -> tuple[Tensor, Tensor]:
    """Gradients of ``cos`` and ``sin`` (learned frequencies), reduced to their shapes ``(T, F)`` or ``(B|1, T, F)``.

    With ``s' = -sin`` when ``negate``: ``out1 = x1 cos - x2 s'`` and ``out2 = x2 cos + x1 s'``, so
    ``d cos = sum_h (g1 x1 + g2 x2)`` and ``d s' = sum_h (g2 x1 - g1 x2)``.
    """
    n = cos.shape[-1]
    compute = cos.dtype
    g, xr = grad[..., : 2 * n].to(compute), x[..., : 2 * n].to(compute)  # (B, H, T, 2F)
    if interleaved:
        g1, g2, x1, x2 = g[..., 0::2], g[..., 1::2], xr[..., 0::2], xr[..., 1::2]
    else:
        g1, g2, x1, x2 = g[..., :n], g[..., n:], xr[..., :n], xr[..., n:]
    d_cos = (g1 * x1 + g2 * x2).sum(1)  # (B, T, F): the heads share one table
    d_sin = (g2 * x1 - g1 * x2).sum(1)
    if negate:
        d_sin = -d_sin
    if cos.dim() == 2:
        d_cos, d_sin = d_cos.sum(0), d_sin.sum(0)
    elif cos.shape[0] == 1:
        d_cos, d_sin = d_cos.sum(0, keepdim=True), d_sin.sum(0, keepdim=True)
    return d_cos, d_sin


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    x, cos, sin, interleaved, negate = inputs
    ctx.interleaved, ctx.negate = interleaved, negate
    tables = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    ctx.save_for_backward(cos, sin, x if tables else None)  # x only for the tables' gradients


def _backward(ctx, grad: Tensor) -> tuple:
    cos, sin, x = ctx.saved_tensors
    dx = rotate(grad, cos, sin, interleaved=ctx.interleaved, negate=not ctx.negate) if ctx.needs_input_grad[0] \
        else None
    d_cos = d_sin = None
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        d_cos, d_sin = _table_grads(grad, x, cos, sin, ctx.interleaved, ctx.negate)
    return dx, d_cos, d_sin, None, None


rope.register_autograd(_backward, setup_context=_setup_context)


@rope.register_vmap
def _vmap(info, in_dims: tuple, x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False,
          negate: bool = False) -> tuple[Tensor, int]:
    """Fold the vmapped dimension ``N`` into the batch: ``(N, B, H, T, D)`` -> ``(N * B, H, T, D)``."""
    n = info.batch_size
    x_dim, cos_dim, sin_dim = in_dims[:3]
    x = x.movedim(x_dim, 0) if x_dim is not None else x.expand(n, *x.shape)  # (N, B, H, T, D)
    b = x.shape[1]
    if cos_dim is None and sin_dim is None and (cos.dim() == 2 or cos.shape[0] == 1):
        c, s = cos, sin  # one table for every sequence: it broadcasts over N * B as it did over B
    else:
        def per_sequence(t: Tensor, dim: int | None) -> Tensor:  # -> (N * B, T, F)
            t = t.movedim(dim, 0) if dim is not None else t.expand(n, *t.shape)  # (N, T, F) or (N, B|1, T, F)
            if t.dim() == 3:
                t = t.unsqueeze(1)
            return t.expand(n, b, *t.shape[2:]).reshape(n * b, *t.shape[2:])

        c, s = per_sequence(cos, cos_dim), per_sequence(sin, sin_dim)
    out = rope(x.reshape(n * b, *x.shape[2:]), c, s, interleaved, negate)
    return out.view(n, b, *out.shape[1:]), 0


class _Rotate(torch.autograd.Function):
    """:func:`rope` as an autograd.Function with ``setup_context``: what ``torch.func`` transforms require."""

    generate_vmap_rule = True  # forward is the op, whose vmap rule is registered above

    @staticmethod
    def forward(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool, negate: bool) -> Tensor:  # noqa: D102
        if type(x) is Tensor and not torch._C._functorch.is_functorch_wrapped_tensor(x):
            return _impl(x, cos, sin, interleaved, negate)  # plain eager tensors: skip the dispatcher (~20 us)
        return rope(x, cos, sin, interleaved, negate)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


class _RotateEager(torch.autograd.Function):
    """:class:`_Rotate` in the old style (``forward(ctx, ...)``), for calls outside ``torch.func`` transforms.

    ``Function.apply`` of a class that defines ``setup_context`` binds its arguments with ``inspect.signature`` on
    every call (torch 2.13), ~3% of a profiled training step for this one op; this class has no ``setup_context``,
    so ``apply`` goes straight to the autograd node. Same forward, same saved tensors, same backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool, negate: bool) -> Tensor:  # noqa: D102
        out = _Rotate.forward(x, cos, sin, interleaved, negate)
        _setup_context(ctx, (x, cos, sin, interleaved, negate), out)
        return out

    backward = staticmethod(_backward)


def rotate(x: Tensor, cos: Tensor, sin: Tensor, *, interleaved: bool = False, negate: bool = False) -> Tensor:
    """Differentiable :func:`rope` that also composes with ``torch.func`` (grad, jacrev, vmap); same arguments.

    Under ``torch.compile`` call :func:`rope` itself (``torch.ops.posenc.rope``): AOTAutograd then uses the
    registered backward.
    """
    if torch._C._are_functorch_transforms_active():
        return _Rotate.apply(x, cos, sin, interleaved, negate)
    return _RotateEager.apply(x, cos, sin, interleaved, negate)
