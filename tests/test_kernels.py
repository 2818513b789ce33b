"""Fused RoPE paths (posenc.kernels) against the reference ``apply_rope``: values, gradients, layouts, strides.

The Triton kernel runs under Triton's CPU interpreter here (``TRITON_INTERPRET=1``); those tests skip without triton.
Tolerances: float32/float64 agree to 1e-6 (the same float32 formula, one rounding); bfloat16/float16 on the CPU
kernel round once like the reference (equal up to one unit in the last place); the interpreter truncates
float32 -> bfloat16 where GPUs round to nearest, so there we allow one bfloat16 ulp (rtol 2**-7).
"""

from __future__ import annotations

import importlib
import logging
import os

import pytest
import torch

import posenc
from posenc.encodings.rope import apply_rope, rope_cos_sin, rope_frequencies
from posenc.kernels import fast_path_name, rope_cpu, rope_rotate, rope_rotate_qk

LAYOUTS = ("half", "interleaved")

needs_cpu_kernel = pytest.mark.skipif(rope_cpu.load_library() is None,
                                      reason=f"no C compiler: {rope_cpu.unavailable_reason()}")


def _tables(pos: torch.Tensor, rot: int, dtype: torch.dtype = torch.float32):
    return rope_cos_sin(pos, rope_frequencies(rot), dtype=dtype)


def _views(b: int, h: int, t: int, d: int, dtype: torch.dtype = torch.float32):
    """Contiguous, (B, T, H, D) transposed, and a view with channel stride 2."""
    yield torch.randn(b, h, t, d, dtype=dtype)
    yield torch.randn(b, t, h, d, dtype=dtype).transpose(1, 2)  # (B, H, T, D) view, as a projection gives
    yield torch.randn(b, h, t, 2 * d, dtype=dtype)[..., ::2]  # channel stride 2


# -- CPU kernel --------------------------------------------------------------------------------------------------------
@needs_cpu_kernel
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rot", [16, 10])  # full and partial rotation (F = 5 pairs: not a power of two)
@pytest.mark.parametrize("per_batch", [False, True])
def test_cpu_kernel_matches_reference(layout, rot, per_batch):
    b, h, t, d = 3, 2, 7, 16
    pos = torch.randint(0, 5000, (b, t)) if per_batch else torch.arange(3, 3 + t)
    cos, sin = _tables(pos, rot)
    for x in _views(b, h, t, d):
        out = rope_rotate(x, cos, sin, layout=layout)
        torch.testing.assert_close(out, apply_rope(x, cos, sin, layout=layout), rtol=0, atol=1e-6)
        assert out.shape == x.shape and out.stride() == torch.empty_like(x).stride()


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_cpu_kernel_dtypes(dtype):
    pos = torch.arange(40, 52)
    cos, sin = _tables(pos, 8, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    x = (torch.randn(2, 3, 12, 12) * 4).to(dtype)
    for layout in LAYOUTS:
        out, ref = rope_rotate(x, cos, sin, layout=layout), apply_rope(x, cos, sin, layout=layout)
        assert out.dtype == dtype
        if dtype == torch.float64:
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        else:  # one rounding of the same float32 value: equal, or one ulp apart where the product rounded differently
            torch.testing.assert_close(out.float(), ref.float(), rtol=2.0**-7 if dtype == torch.bfloat16 else 2.0**-10,
                                       atol=0)
            assert (out == ref).float().mean() > 0.95


@needs_cpu_kernel
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpu_kernel_backward_matches_autograd(layout):
    b, h, t, d = 2, 3, 5, 12
    pos = torch.randint(0, 100, (b, t))
    cos, sin = _tables(pos, 8)
    base = torch.randn(b, t, h, d).transpose(1, 2)
    grad_out = torch.randn(b, h, t, d)
    x1, x2 = base.clone().requires_grad_(), base.clone().requires_grad_()
    (g1,) = torch.autograd.grad(rope_rotate(x1, cos, sin, layout=layout), x1, grad_out)
    (g2,) = torch.autograd.grad(apply_rope(x2, cos, sin, layout=layout), x2, grad_out)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-6)
    c64, s64 = cos[:1, :3].double(), sin[:1, :3].double()
    assert torch.autograd.gradcheck(lambda y: rope_rotate(y, c64, s64, layout=layout),
                                    (base.double()[:1, :1, :3].clone().requires_grad_(),))


@needs_cpu_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_kernel_threaded_rows(threads):
    """Large enough for the kernel to split rows over torch's OpenMP threads (>= 2**17 elements)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pos = torch.randint(0, 4096, (2, 512))
        cos, sin = _tables(pos, 48)
        x = torch.randn(2, 512, 4, 64).transpose(1, 2)  # (B, H, T, D) view, 262144 elements
        for layout in LAYOUTS:
            torch.testing.assert_close(rope_rotate(x, cos, sin, layout=layout), apply_rope(x, cos, sin, layout=layout),
                                       rtol=0, atol=1e-6)
    finally:
        torch.set_num_threads(previous)


@needs_cpu_kernel
def test_cpu_kernel_in_place_and_pair_call():
    pos = torch.arange(9)
    cos, sin = _tables(pos, 16)
    q, k = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 9, 16)
    ref_q, ref_k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out_q, out_k = rope_rotate_qk(q, k, cos, sin, cos, sin)
    torch.testing.assert_close((out_q, out_k), (ref_q, ref_k), rtol=0, atol=1e-6)
    q_in = q.clone()
    assert rope_rotate(q_in, cos, sin, inplace=True) is q_in
    torch.testing.assert_close(q_in, ref_q, rtol=0, atol=1e-6)


@needs_cpu_kernel
def test_rope_module_uses_fused_path_with_same_numbers(monkeypatch):
    pe = posenc.get_encoding("rope", dim=48, n_heads=3, rotary_dim=12, layout="interleaved")
    q, k = torch.randn(2, 6, 3, 16).transpose(1, 2), torch.randn(2, 3, 6, 16)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 8, 9, 10, 11, 12]])
    assert fast_path_name(q) == "cpu"
    fused = pe.rotate(q, k, pos, pos)
    monkeypatch.setenv("POSENC_FAST_ROPE", "0")
    assert fast_path_name(q) is None
    torch.testing.assert_close(fused, pe.rotate(q, k, pos, pos), rtol=0, atol=1e-6)


def test_torch_func_transforms_equal_the_reference():
    pe = posenc.get_encoding("rope", dim=32, n_heads=2)
    pos = torch.arange(3)
    x = torch.randn(1, 2, 3, 16)
    jac = torch.func.jacrev(lambda y: pe.rotate_one(y, pos, "q"))(x)  # (1, 2, 3, 16, 1, 2, 3, 16)
    cos, sin = pe.cos_sin(pos)
    want = torch.autograd.functional.jacobian(lambda y: apply_rope(y, cos, sin), x)
    torch.testing.assert_close(jac, want)
    batched = torch.func.vmap(lambda y: pe.rotate_one(y, pos, "q"))(x[None].expand(2, -1, -1, -1, -1))
    torch.testing.assert_close(batched[1], apply_rope(x, cos, sin))


def test_missing_compiler_falls_back_with_a_logged_reason(monkeypatch, caplog):
    monkeypatch.setattr(rope_cpu, "build_state", {})
    monkeypatch.setattr(rope_cpu, "_compiler", lambda: None)
    with caplog.at_level(logging.WARNING, logger="posenc.kernels.rope_cpu"):
        assert rope_cpu.load_library() is None
    assert "no C compiler" in caplog.text and "plain PyTorch path" in caplog.text
    x = torch.randn(1, 2, 4, 8)
    assert fast_path_name(x) is None
    pe = posenc.get_encoding("rope", dim=16, n_heads=2)
    pos = torch.arange(4)
    cos, sin = pe.cos_sin(pos)
    torch.testing.assert_close(pe.rotate(x, x, pos, pos)[0], apply_rope(x, cos, sin))
    with pytest.raises(RuntimeError, match="no fused path"):
        rope_rotate(x, cos, sin)


def test_fused_call_validates_its_inputs():
    cos, sin = _tables(torch.arange(4), 8)
    with pytest.raises(ValueError, match="layout"):
        rope_rotate(torch.randn(1, 1, 4, 8), cos, sin, layout="pairs")
    with pytest.raises(ValueError, match="do not fit"):
        rope_rotate(torch.randn(1, 1, 5, 8), cos, sin)
    with pytest.raises(ValueError, match=r"\(B, H, T, D\)"):
        rope_rotate(torch.randn(4, 8), cos, sin)


# -- Triton kernel in interpreter mode ---------------------------------------------------------------------------------
try:  # optional: without triton these tests skip and the CPU tests above still run
    import triton
except ImportError:
    triton = None

needs_triton = pytest.mark.skipif(triton is None, reason="triton not installed (pip install 'posenc[gpu]')")


@pytest.fixture(scope="module")
def rt():
    """posenc.kernels.rope_triton with its kernels built for Triton's interpreter (CPU tensors)."""
    from posenc.kernels import rope_triton

    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        yield rope_triton  # a real GPU: the tests below run on it, compiled
        return
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"  # read when @triton.jit decorates, i.e. at (re)import
    try:
        module = importlib.reload(rope_triton)
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
    yield module
    importlib.reload(rope_triton)  # leave the module as the rest of the process expects it


def _dev() -> str:
    return "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0") else "cpu"


@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rot,block_t", [(16, None), (6, None), (16, 2)])  # block_t=2: several row tiles per head
def test_triton_matches_reference(rt, layout, rot, block_t):
    dev = _dev()
    b, h, hkv, tq, tk, d = 2, 4, 2, 5, 7, 16
    q = torch.randn(b, tq, h, d, device=dev).transpose(1, 2)  # non-contiguous (B, H, T, D) view
    k = torch.randn(b, hkv, tk, 2 * d, device=dev)[..., ::2]  # channel stride 2
    q_pos = torch.randint(0, 1000, (b, tq), device=dev)  # per-batch positions
    k_pos = torch.arange(10, 10 + tk, device=dev)  # shared positions with an offset
    cq, sq = _tables(q_pos, rot)
    ck, sk = _tables(k_pos, rot)
    out_q, out_k = rt.rope_qk(q, k, cq, sq, ck, sk, layout=layout, block_t=block_t)
    # rtol covers a GPU contracting x1 * c - x2 * s into one FMA (exact in the interpreter)
    torch.testing.assert_close(out_q, apply_rope(q, cq, sq, layout=layout), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out_k, apply_rope(k, ck, sk, layout=layout), rtol=1e-6, atol=1e-6)
    assert out_q.stride() == torch.empty_like(q).stride()  # keeps the input's memory layout


@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
def test_triton_backward_matches_autograd(rt, layout):
    dev = _dev()
    q0, k0 = torch.randn(2, 3, 4, 12, device=dev), torch.randn(2, 1, 4, 12, device=dev)
    pos = torch.randint(0, 50, (2, 4), device=dev)
    cos, sin = _tables(pos, 8)
    gq, gk = torch.randn_like(q0), torch.randn_like(k0)
    q1, k1 = q0.clone().requires_grad_(), k0.clone().requires_grad_()
    grads = torch.autograd.grad(rt.rope_qk(q1, k1, cos, sin, layout=layout), (q1, k1), (gq, gk))
    q2, k2 = q0.clone().requires_grad_(), k0.clone().requires_grad_()
    ref = torch.autograd.grad((apply_rope(q2, cos, sin, layout=layout), apply_rope(k2, cos, sin, layout=layout)),
                              (q2, k2), (gq, gk))
    torch.testing.assert_close(grads, ref, rtol=1e-6, atol=1e-6)


@needs_triton
def test_triton_in_place_q_only_and_bfloat16(rt):
    dev = _dev()
    pos = torch.arange(100, 106, device=dev)
    cos, sin = _tables(pos, 8)
    q = torch.randn(1, 2, 6, 10, device=dev)
    ref = apply_rope(q, cos, sin)
    q_in = q.clone()
    out, none = rt.rope_qk(q_in, None, cos, sin, inplace=True)
    assert none is None and out is q_in
    torch.testing.assert_close(q_in, ref, rtol=1e-6, atol=1e-6)
    qb = (q * 8).bfloat16()
    out_b, _ = rt.rope_qk(qb, None, cos, sin)
    assert out_b.dtype == torch.bfloat16
    torch.testing.assert_close(out_b.float(), apply_rope(qb, cos, sin).float(), rtol=2.0**-7, atol=0)


# -- CUDA only (benchmarks/gpu.sh runs these on a GPU) ---------------------------------------------------------------
needs_cuda_triton = pytest.mark.skipif(not (torch.cuda.is_available() and triton is not None),
                                       reason="needs a CUDA GPU and triton")


@needs_cuda_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_rope_module_uses_triton(dtype, layout):
    pe = posenc.get_encoding("rope", dim=8 * 64, n_heads=8, layout=layout, rotary_dim=48).cuda()
    q = torch.randn(2, 33, 8, 64, device="cuda", dtype=dtype).transpose(1, 2)  # (B, H, T, D) view
    k = torch.randn(2, 2, 33, 64, device="cuda", dtype=dtype)  # GQA: 2 KV heads
    pos = torch.randint(0, 10_000, (2, 33), device="cuda")
    assert fast_path_name(q) == "triton"
    out_q, out_k = pe.rotate(q, k, pos, pos)
    cos, sin = pe.cos_sin(pos)
    tol = {torch.float32: (1e-6, 1e-6), torch.bfloat16: (2.0**-7, 1e-6), torch.float16: (2.0**-10, 1e-6)}[dtype]
    for out, x in ((out_q, q), (out_k, k)):
        ref = apply_rope(x, cos, sin, layout=layout)
        torch.testing.assert_close(out.float(), ref.float(), rtol=tol[0], atol=tol[1])
    for t in (1, 2):  # decode steps
        one = pe.rotate(q[:, :, :t], k[:, :, :t], pos[:, :t], pos[:, :t])[0]
        torch.testing.assert_close(one.float(), out_q[:, :, :t].float(), rtol=tol[0], atol=tol[1])


@needs_cuda_triton
def test_cuda_triton_issue_shape_forward_backward():
    """The benchmark shape (bf16 q [4,32,4096,128], k [4,8,4096,128]): values and gradients against the reference."""
    from posenc.kernels import rope_triton

    pos = torch.arange(4096, device="cuda")
    cos, sin = _tables(pos, 128)
    q = torch.randn(4, 32, 4096, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(4, 8, 4096, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out_q, out_k = rope_triton.rope_qk(q, k, cos, sin)
    ref_q, ref_k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    torch.testing.assert_close(out_q.float(), ref_q.float(), rtol=2.0**-7, atol=1e-6)
    torch.testing.assert_close(out_k.float(), ref_k.float(), rtol=2.0**-7, atol=1e-6)
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    got = torch.autograd.grad((out_q, out_k), (q, k), (gq, gk))
    want = torch.autograd.grad((ref_q, ref_k), (q, k), (gq, gk))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), rtol=2.0**-7, atol=1e-6)


# -- one C call for q and k (decode-step overhead, issue #8 item 4) ------------------------------------------------
@needs_cpu_kernel
def test_cpu_pair_call_mixes_dtypes_and_tables():
    """q and k in one kernel call may differ in dtype, heads, length, strides and cos/sin (the record is per tensor)."""
    cq, sq = _tables(torch.arange(3, 8), 16)
    ck, sk = _tables(torch.randint(0, 900, (2, 9)), 12)
    q = torch.randn(2, 5, 4, 16).transpose(1, 2)  # (B, H, Tq, D) view
    k = (torch.randn(2, 3, 9, 16) * 4).bfloat16()
    out_q, out_k = rope_cpu.rotate_qk_into(q, torch.empty_like(q), cq, sq, k, torch.empty_like(k), ck, sk,
                                           layout="interleaved")
    assert torch.equal(out_q, apply_rope(q, cq, sq, layout="interleaved"))
    torch.testing.assert_close(out_k.float(), apply_rope(k, ck, sk, layout="interleaved").float(),
                               rtol=2.0**-7, atol=0)


@needs_cpu_kernel
def test_cpu_kernel_rejects_what_would_leave_memory():
    cos, sin = _tables(torch.arange(4), 8)
    x = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="output alike"):
        rope_cpu.rotate_into(x, torch.empty(1, 2, 4, 6), cos, sin, layout="half")
    with pytest.raises(ValueError, match="2F <= D"):
        rope_cpu.rotate_into(torch.randn(1, 2, 4, 6), torch.empty(1, 2, 4, 6), cos, sin, layout="half")
    with pytest.raises(TypeError, match="cos/sin must be torch.float32"):
        rope_cpu.rotate_into(x, torch.empty_like(x), cos.double(), sin.double(), layout="half")
    with pytest.raises(TypeError, match="pass out_k"):
        rope_cpu.rotate_qk_into(x, torch.empty_like(x), cos, sin, x, layout="half")


@needs_cpu_kernel
@pytest.mark.parametrize("value,fused", [("0", False), (" Off ", False), ("no", False), ("1", True), ("yes", True)])
def test_fast_rope_switch_is_read_at_every_call(monkeypatch, value, fused):
    x = torch.randn(1, 2, 3, 8)
    assert fast_path_name(x) == "cpu"
    monkeypatch.setenv("POSENC_FAST_ROPE", value)
    assert (fast_path_name(x) == "cpu") is fused
    monkeypatch.delenv("POSENC_FAST_ROPE")
    assert fast_path_name(x) == "cpu"


# -- shapes the kernels do not fuse -----------------------------------------------------------------------------------
class _PerHeadRoPE(posenc.encodings.rope.RoPE):
    """RoPE whose cos/sin differ per head, ``(B|1, H, T, F)`` (FoPE's shape): the fused kernels take no such table."""

    def cos_sin(self, pos, *, dtype=torch.float32, seq_len=None):
        cos, sin = super().cos_sin(pos, dtype=dtype, seq_len=seq_len)  # (T, F) or (B, T, F)
        head = torch.linspace(0.5, 1.5, self.n_heads, dtype=cos.dtype)[:, None, None]  # (H, 1, 1): per-head amplitude
        if cos.dim() == 2:
            cos, sin = cos[None], sin[None]
        return cos[:, None] * head, sin[:, None] * head  # (B|1, H, T, F)


@needs_cpu_kernel
@pytest.mark.parametrize("grad", ["no_grad", "inference_mode", "enable_grad"])
def test_fast_rotate_declines_per_head_tables(grad):
    """A RoPE subclass with per-head (4-D) cos/sin crashed under no_grad on CPU: the fused kernel raised on the table
    although fast_rotate promises ``None`` when no fused path applies. It must decline, and the reference rotates."""
    from posenc.kernels import fast_rotate

    enc = _PerHeadRoPE(dim=32, n_heads=4)
    pos = torch.arange(5)
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    cos, sin = enc.cos_sin(pos)
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "enable_grad": torch.enable_grad}
    with context[grad]():
        qr, kr = (t.requires_grad_(grad == "enable_grad") if grad != "inference_mode" else t for t in (q, k))
        assert fast_rotate(qr, kr, cos, sin, layout="half") is None
        assert fast_rotate(qr, None, cos, sin, layout="half") is None
        got_q, got_k = enc.rotate(qr, kr, pos, pos)
    # cos/sin are scaled rotations per head: the reference formula, head by head, with that head's (T, F) table
    for h in range(4):
        want_q = apply_rope(q[:, h:h + 1], cos[0, h], sin[0, h])
        want_k = apply_rope(k[:, h:h + 1], cos[0, h], sin[0, h])
        torch.testing.assert_close(got_q[:, h:h + 1].detach(), want_q, rtol=0, atol=1e-6)
        torch.testing.assert_close(got_k[:, h:h + 1].detach(), want_k, rtol=0, atol=1e-6)
