"""Fused RoPE for CUDA in Triton (Su et al. 2021, arXiv 2104.09864): q and k rotated by one launch.

One program rotates ``BLOCK_T`` rows of one ``(batch, head)`` of q or of k: it loads the two channel halves of each
pair (``"half"``: ``x[i]`` and ``x[i + F]``; ``"interleaved"``: ``x[2i]`` and ``x[2i + 1]``) and the float32 cos/sin
rows ``(T, F)`` or ``(B, T, F)``, computes in float32, rounds once to the output dtype, and copies the channels past
``2F`` (partial rotation) unless it writes in place. Every ``(B, H, T, D)`` stride is a kernel argument, so views
(e.g. ``(B, T, H, D)`` projections transposed to ``(B, H, T, D)``) are read without a ``.contiguous()`` copy, and
outputs keep the input's memory layout (``torch.empty_like``).

Backward is the same kernel with the angle negated (a rotation's transpose is its inverse), so the gradient pass
costs exactly one more read and write of q and k, and nothing is saved but the cos/sin tables.

Without a GPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is
imported), which is how the tests exercise it on CPU.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

try:  # triton is an optional dependency (the ``gpu`` extra); without it the plain path is used
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None

__all__ = ["available", "default_config", "interpreting", "rope_qk"]

log = logging.getLogger(__name__)
_warned: set[str] = set()


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return triton is not None and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    """Whether the Triton kernel can run here (triton importable, and a CUDA device or the interpreter)."""
    if triton is None:
        if torch.cuda.is_available() and "no-triton" not in _warned:
            _warned.add("no-triton")
            log.warning("triton is not installed: RoPE on CUDA uses the plain PyTorch path "
                        "(pip install 'posenc[gpu]' for the fused kernel).")
        return False
    return torch.cuda.is_available() or interpreting()


if triton is not None:

    @triton.jit
    def _rope_rows(x_ptr, o_ptr, c_ptr, s_ptr, pid, H, T, n_tb,
                   sxb, sxh, sxt, sxd, sob, soh, sot, sod, scb, sct,
                   F: tl.constexpr, D: tl.constexpr, INTERLEAVED: tl.constexpr, NEGATE: tl.constexpr,
                   COPY_TAIL: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr,
                   BLOCK_TAIL: tl.constexpr):
        bh = pid // n_tb
        tb = pid - bh * n_tb
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
        f = tl.arange(0, BLOCK_F)
        t_ok = t < T
        mask = t_ok[:, None] & (f < F)[None, :]
        t64 = t.to(tl.int64)[:, None]
        x_row = x_ptr + b * sxb + h * sxh + t64 * sxt  # (BLOCK_T, 1) pointers
        o_row = o_ptr + b * sob + h * soh + t64 * sot
        if INTERLEAVED:
            d1 = 2 * f
            d2 = 2 * f + 1
        else:
            d1 = f
            d2 = f + F
        x1 = tl.load(x_row + d1[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_row + d2[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
        cs_off = b * scb + t64 * sct + f[None, :]
        c = tl.load(c_ptr + cs_off, mask=mask, other=0.0)
        s = tl.load(s_ptr + cs_off, mask=mask, other=0.0)
        if NEGATE:
            s = -s
        out_ty = o_ptr.dtype.element_ty
        tl.store(o_row + d1[None, :] * sod, (x1 * c - x2 * s).to(out_ty), mask=mask)
        tl.store(o_row + d2[None, :] * sod, (x2 * c + x1 * s).to(out_ty), mask=mask)
        if COPY_TAIL:
            e = 2 * F + tl.arange(0, BLOCK_TAIL)
            tail_mask = t_ok[:, None] & (e < D)[None, :]
            tail = tl.load(x_row + e[None, :] * sxd, mask=tail_mask, other=0.0)
            tl.store(o_row + e[None, :] * sod, tail, mask=tail_mask)

    @triton.jit
    def _rope_qk_kernel(q_ptr, qo_ptr, cq_ptr, sq_ptr, k_ptr, ko_ptr, ck_ptr, sk_ptr,
                        Hq, Tq, ntq, n_q_progs, Hk, Tk, ntk,
                        sqb, sqh, sqt, sqd, soqb, soqh, soqt, soqd, scqb, scqt,
                        skb, skh, skt, skd, sokb, sokh, sokt, sokd, sckb, sckt,
                        F: tl.constexpr, D: tl.constexpr, INTERLEAVED: tl.constexpr, NEGATE: tl.constexpr,
                        COPY_TAIL: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr,
                        BLOCK_TAIL: tl.constexpr):
        pid = tl.program_id(0)
        if pid < n_q_progs:  # programs [0, n_q_progs) rotate q, the rest rotate k
            _rope_rows(q_ptr, qo_ptr, cq_ptr, sq_ptr, pid, Hq, Tq, ntq,
                       sqb, sqh, sqt, sqd, soqb, soqh, soqt, soqd, scqb, scqt,
                       F, D, INTERLEAVED, NEGATE, COPY_TAIL, BLOCK_T, BLOCK_F, BLOCK_TAIL)
        else:
            _rope_rows(k_ptr, ko_ptr, ck_ptr, sk_ptr, pid - n_q_progs, Hk, Tk, ntk,
                       skb, skh, skt, skd, sokb, sokh, sokt, sokd, sckb, sckt,
                       F, D, INTERLEAVED, NEGATE, COPY_TAIL, BLOCK_T, BLOCK_F, BLOCK_TAIL)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def default_config(n_freq: int, length: int) -> tuple[int, int]:
    """``(BLOCK_T, num_warps)``: tiles of about 4096 rotated elements per program (two halves of 2048)."""
    block_t = max(2, min(64, 2048 // _next_pow2(n_freq), _next_pow2(length)))  # >= 2: no 1-wide aranges
    return block_t, 4


def _tables(cos: Tensor, sin: Tensor, batch: int) -> tuple[Tensor, Tensor, int, int]:
    cos3 = cos if cos.dim() == 3 else cos.unsqueeze(0)  # (B or 1, T, F)
    sin3 = sin if sin.dim() == 3 else sin.unsqueeze(0)
    cos3, sin3 = cos3.float().contiguous(), sin3.float().contiguous()  # small tables; x itself is never copied
    batch_stride = cos3.stride(0) if cos3.shape[0] == batch and batch > 1 else 0
    return cos3, sin3, batch_stride, cos3.stride(1)


def _launch(q: Tensor, qo: Tensor, cq: Tensor, sq: Tensor, k: Tensor | None, ko: Tensor | None,
            ck: Tensor | None, sk: Tensor | None, *, layout: str, negate: bool, block_t: int | None = None,
            num_warps: int | None = None) -> None:
    if triton is None:
        raise RuntimeError("rope_triton: triton is not installed (pip install 'posenc[gpu]').")
    b_q, h_q, t_q, d = q.shape
    n_freq = cq.shape[-1]
    cq3, sq3, scqb, scqt = _tables(cq, sq, b_q)
    if k is None:  # q only: the k slot repeats q and gets no programs
        k, ko, ck3, sk3, sckb, sckt = q, qo, cq3, sq3, scqb, scqt
        n_k = False
    else:
        if k.shape[-1] != d or ck.shape[-1] != n_freq:
            raise ValueError(f"rope_triton: q {tuple(q.shape)} and k {tuple(k.shape)} need the same head_dim and "
                             f"rotary width.")
        ck3, sk3, sckb, sckt = _tables(ck, sk, k.shape[0])
        n_k = True
    b_k, h_k, t_k, _ = k.shape
    default_bt, default_warps = default_config(n_freq, max(t_q, t_k if n_k else 1))
    block_t = block_t or default_bt
    ntq, ntk = triton.cdiv(t_q, block_t), triton.cdiv(t_k, block_t)
    n_q_progs = b_q * h_q * ntq
    grid = (n_q_progs + (b_k * h_k * ntk if n_k else 0),)
    if grid[0] == 0:
        return
    copy_tail = 2 * n_freq < d and not (qo.data_ptr() == q.data_ptr() and ko.data_ptr() == k.data_ptr())
    _rope_qk_kernel[grid](
        q, qo, cq3, sq3, k, ko, ck3, sk3,
        h_q, t_q, ntq, n_q_progs, h_k, t_k, ntk,
        *q.stride(), *qo.stride(), scqb, scqt,
        *k.stride(), *ko.stride(), sckb, sckt,
        F=n_freq, D=d, INTERLEAVED=layout == "interleaved", NEGATE=negate, COPY_TAIL=copy_tail,
        BLOCK_T=block_t, BLOCK_F=_next_pow2(n_freq), BLOCK_TAIL=_next_pow2(max(d - 2 * n_freq, 2)),
        num_warps=num_warps or default_warps,
    )


class _RopeQK(torch.autograd.Function):
    """q and k rotated in one launch; backward rotates both gradients by minus the angle in one launch."""

    @staticmethod
    def forward(ctx, q, k, cq, sq, ck, sk, layout, inplace, block_t, num_warps):  # noqa: D102
        qo = q if inplace else torch.empty_like(q)
        ko = None if k is None else (k if inplace else torch.empty_like(k))
        _launch(q, qo, cq, sq, k, ko, ck, sk, layout=layout, negate=False, block_t=block_t, num_warps=num_warps)
        if inplace:
            ctx.mark_dirty(*(t for t in (q, k) if t is not None))
        ctx.save_for_backward(cq, sq, ck, sk)
        ctx.layout, ctx.block_t, ctx.num_warps = layout, block_t, num_warps
        return qo, ko

    @staticmethod
    def backward(ctx, gq, gk):  # noqa: D102
        cq, sq, ck, sk = ctx.saved_tensors
        dq = None if gq is None else torch.empty_like(gq)
        dk = None if gk is None else torch.empty_like(gk)
        if gq is not None:
            _launch(gq, dq, cq, sq, gk, dk, ck if gk is not None else None, sk if gk is not None else None,
                    layout=ctx.layout, negate=True, block_t=ctx.block_t, num_warps=ctx.num_warps)
        elif gk is not None:
            _launch(gk, dk, ck, sk, None, None, None, None, layout=ctx.layout, negate=True, block_t=ctx.block_t,
                    num_warps=ctx.num_warps)
        return dq, dk, None, None, None, None, None, None, None, None


def rope_qk(q: Tensor, k: Tensor | None, cos_q: Tensor, sin_q: Tensor, cos_k: Tensor | None = None,
            sin_k: Tensor | None = None, *, layout: str = "half", inplace: bool = False, block_t: int | None = None,
            num_warps: int | None = None) -> tuple[Tensor, Tensor | None]:
    """Rotate q ``(B, H, Tq, D)`` and k ``(B, Hkv, Tk, D)`` (or ``k=None``) in one Triton launch.

    Args:
        q, k: CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``), float32/bfloat16/float16, any strides.
        cos_q, sin_q: ``(Tq, F)`` or ``(B, Tq, F)`` float32; ``cos_k, sin_k`` likewise for k (default: q's).
        layout: ``"half"`` or ``"interleaved"``.
        inplace: write the result into q and k (autograd-aware: they are marked dirty).
        block_t, num_warps: tile rows per program and warps (default: :func:`default_config`), for tuning.

    Returns:
        ``(q_rotated, k_rotated)`` (``k_rotated`` is ``None`` when ``k`` is). Differentiable in q and k.
    """
    if layout not in ("half", "interleaved"):
        raise ValueError(f"rope_triton: layout must be 'half' or 'interleaved'; got {layout!r}.")
    if k is not None and cos_k is None:
        cos_k, sin_k = cos_q, sin_q
    if not (torch.is_grad_enabled() and (q.requires_grad or (k is not None and k.requires_grad))):
        qo = q if inplace else torch.empty_like(q)  # no graph to record: skip autograd.Function's overhead
        ko = None if k is None else (k if inplace else torch.empty_like(k))
        _launch(q, qo, cos_q, sin_q, k, ko, cos_k, sin_k, layout=layout, negate=False, block_t=block_t,
                num_warps=num_warps)
        return qo, ko
    return _RopeQK.apply(q, k, cos_q, sin_q, cos_k, sin_k, layout, inplace, block_t, num_warps)
