"""``torch.ops.posenc.rope`` (posenc.kernels.rope_op): the CPU kernel as a torch.library operator.

Properties: ``torch.library.opcheck`` passes (schema, fake kernel, autograd registration, AOT dispatch) for every
dtype the kernel takes; float64 gradients (x, cos, sin; and second order) pass gradcheck; ``torch.compile(fullgraph=
True)`` puts the op in the graph and equals eager, forward and backward; ``torch.func`` transforms run it; inference
and no-grad modes give the reference's numbers; without the kernel the fallback is logged once and still correct.
"""

from __future__ import annotations

import logging

import pytest
import torch

import posenc
from posenc.encodings.rope import apply_rope, rope_cos_sin, rope_frequencies
from posenc.kernels import fast_path_name, rope_cpu, rope_op

needs_cpu_kernel = pytest.mark.skipif(rope_cpu.load_library() is None,
                                      reason=f"no C compiler: {rope_cpu.unavailable_reason()}")
LAYOUTS = ("half", "interleaved")


def _tables(pos: torch.Tensor, rot: int, dtype: torch.dtype = torch.float32):
    return rope_cos_sin(pos, rope_frequencies(rot), dtype=dtype)


def _graph_ops(fn, *args) -> list[str]:
    """The call targets of the one FX graph ``torch.compile(fn, fullgraph=True)`` captures (raises on a break)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, fullgraph=True, backend=backend)(*args)
    assert len(graphs) == 1
    return [str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"]


@pytest.fixture
def no_kernel(monkeypatch):
    """The fused kernel unavailable, as on a machine without a C compiler (state restored afterwards)."""
    monkeypatch.setattr(rope_cpu, "build_state", {})
    monkeypatch.setattr(rope_cpu, "_compiler", lambda: None)
    torch._dynamo.reset()  # compiled graphs baked in whether the op was ready
    yield
    torch._dynamo.reset()


# -- the operator -------------------------------------------------------------------------------------------------
@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck(dtype, layout):
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    shared = _tables(torch.arange(3, 10), 12, compute)  # (T, F): partial rotation, 12 of 16 channels
    per_batch = tuple(t.requires_grad_() for t in _tables(torch.randint(0, 900, (2, 7)), 16, compute))  # (B, T, F)
    x = torch.randn(2, 3, 7, 16, dtype=dtype, requires_grad=True)
    view = torch.randn(2, 7, 3, 16, dtype=dtype).transpose(1, 2)  # (B, H, T, D) view, as a projection gives
    for args in ((x, *shared, layout == "interleaved", False), (view, *per_batch, layout == "interleaved", True)):
        torch.library.opcheck(torch.ops.posenc.rope.default, args)


@needs_cpu_kernel
@pytest.mark.parametrize("layout", LAYOUTS)
def test_op_equals_reference_and_negate_inverts(layout):
    cos, sin = _tables(torch.randint(0, 5000, (2, 5)), 10)
    x = torch.randn(2, 3, 5, 12)
    interleaved = layout == "interleaved"
    out = torch.ops.posenc.rope(x, cos, sin, interleaved)
    assert torch.equal(out, apply_rope(x, cos, sin, layout=layout))
    back = torch.ops.posenc.rope(out, cos, sin, interleaved, True)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-6)


@needs_cpu_kernel
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("per_batch", [False, True])
def test_gradcheck_float64(layout, per_batch):
    pos = torch.randint(0, 100, (2, 3)) if per_batch else torch.arange(5, 8)
    cos, sin = (t.clone().requires_grad_() for t in _tables(pos, 6, torch.float64))  # learned tables too
    x = torch.randn(2, 2, 3, 8, dtype=torch.float64, requires_grad=True)
    inter = layout == "interleaved"
    for neg in (False, True):
        assert torch.autograd.gradcheck(lambda a, c, s, neg=neg: rope_op.rope(a, c, s, inter, neg), (x, cos, sin))
        assert torch.autograd.gradcheck(lambda a, c, s, neg=neg: rope_op.rotate(a, c, s, interleaved=inter, negate=neg),
                                        (x, cos, sin))
    assert torch.autograd.gradgradcheck(lambda a, c, s: rope_op.rope(a, c, s, inter, False), (x, cos, sin))


def test_op_rejects_what_does_not_fit():
    cos, sin = _tables(torch.arange(4), 8)
    with pytest.raises(ValueError, match=r"\(B, H, T, D\)"):
        torch.ops.posenc.rope(torch.randn(4, 8), cos, sin)
    with pytest.raises(ValueError, match="2F <= D"):
        torch.ops.posenc.rope(torch.randn(1, 1, 4, 6), cos, sin)
    with pytest.raises(TypeError, match="must be torch.float64"):
        torch.ops.posenc.rope(torch.randn(1, 1, 4, 8, dtype=torch.float64), cos, sin)
    with pytest.raises(ValueError, match="batch 3"):
        torch.ops.posenc.rope(torch.randn(2, 1, 4, 8), cos.expand(3, -1, -1), sin.expand(3, -1, -1))


# -- torch.compile --------------------------------------------------------------------------------------------------
@needs_cpu_kernel
@pytest.mark.parametrize("layout", LAYOUTS)
def test_compile_fullgraph_runs_the_op_and_equals_eager(layout):
    pe = posenc.get_encoding("rope", dim=64, n_heads=4, layout=layout, rotary_dim=12)

    def attend(q, k, pos):
        q, k = pe.rotate(q, k, pos, pos)
        return (q @ k.transpose(-1, -2)).softmax(-1)

    q0, k0 = torch.randn(2, 4, 9, 16), torch.randn(2, 4, 9, 16)
    pos = torch.randint(0, 3000, (2, 9))
    assert _graph_ops(attend, q0, k0, pos).count("posenc.rope.default") == 2  # q and k, no break
    torch._dynamo.reset()
    compiled = torch.compile(attend, fullgraph=True)
    q1, k1 = q0.clone().requires_grad_(), k0.clone().requires_grad_()
    q2, k2 = q0.clone().requires_grad_(), k0.clone().requires_grad_()
    got, want = compiled(q1, k1, pos), attend(q2, k2, pos)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, (q1, k1), g), torch.autograd.grad(want, (q2, k2), g),
                               rtol=1e-5, atol=1e-6)


@needs_cpu_kernel
def test_compiled_model_runs_the_op():
    model = posenc.Transformer(posenc.TransformerConfig(kind="decoder", vocab_size=50, dim=32, n_heads=4,
                                                        n_layers=2, encoding="rope")).eval()
    x = torch.randint(0, 50, (2, 16))
    assert _graph_ops(model, x).count("posenc.rope.default") == 4  # two layers, q and k
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), rtol=1e-5, atol=1e-5)


# -- torch.func, inference and no-grad modes ----------------------------------------------------------------------
@needs_cpu_kernel
def test_torch_func_grad_jacrev_and_vmap_run_the_op(monkeypatch):
    calls = []
    impl = rope_op._impl
    monkeypatch.setattr(rope_op, "_impl", lambda *a: calls.append(1) or impl(*a))
    pe = posenc.get_encoding("rope", dim=32, n_heads=2, layout="interleaved")
    pos = torch.arange(2, 5)
    x = torch.randn(2, 2, 3, 16)
    cos, sin = pe.cos_sin(pos)
    grad = torch.func.grad(lambda y: (pe.rotate_one(y, pos, "q") * x).sum())(x)
    # d/dy sum(R(y) * x) = R^T x: the inverse rotation of x
    torch.testing.assert_close(grad, apply_rope(x, cos, -sin, layout="interleaved"), rtol=0, atol=1e-6)
    jac = torch.func.jacrev(lambda y: pe.rotate_one(y, pos, "q"))(x[:1])
    want = torch.autograd.functional.jacobian(lambda y: apply_rope(y, cos, sin, layout="interleaved"), x[:1])
    torch.testing.assert_close(jac, want, rtol=0, atol=1e-6)
    stacked = torch.stack([x, 2 * x, -x])  # (N, B, H, T, D)
    batched = torch.func.vmap(lambda y: pe.rotate_one(y, pos, "q"))(stacked)
    torch.testing.assert_close(batched[1], apply_rope(2 * x, cos, sin, layout="interleaved"), rtol=0, atol=1e-6)
    assert len(calls) >= 3  # the kernel ran under each transform (not the reference formula)


@needs_cpu_kernel
def test_vmap_rule_over_tables_and_inputs():
    pos = torch.randint(0, 500, (4, 2, 5))  # N=4 sets of (B=2, T=5) positions
    cos, sin = _tables(pos, 8)  # (N, B, T, F)
    x = torch.randn(4, 2, 3, 5, 8)  # (N, B, H, T, D)
    for in_dims, xs in (((0, 0, 0), x), ((None, 0, 0), x[0])):  # batched x and tables; one x, batched tables
        out = torch.func.vmap(lambda a, c, s: rope_op.rope(a, c, s), in_dims=in_dims)(xs, cos, sin)
        for n in range(4):
            xn = xs if in_dims[0] is None else xs[n]
            torch.testing.assert_close(out[n], apply_rope(xn, cos[n], sin[n]), rtol=0, atol=1e-6)
    shared = _tables(pos[0], 8)  # unbatched (B, T, F) tables, batched x: each sequence keeps its own positions
    out = torch.func.vmap(lambda a: rope_op.rope(a, *shared), in_dims=1)(x.movedim(0, 1))
    torch.testing.assert_close(out[3], apply_rope(x[3], *shared), rtol=0, atol=1e-6)


@needs_cpu_kernel
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_rotate_under_no_grad_and_inference_mode(mode):
    pe = posenc.get_encoding("rope", dim=64, n_heads=4)
    q, k = torch.randn(2, 4, 6, 16), torch.randn(2, 2, 6, 16)
    pos = torch.arange(10, 16)
    cos, sin = pe.cos_sin(pos)
    with mode():
        out_q, out_k = pe.rotate(q, k, pos, pos)
        op_out = torch.ops.posenc.rope(q, cos, sin)
    assert torch.equal(out_q, apply_rope(q, cos, sin)) and torch.equal(out_k, apply_rope(k, cos, sin))
    assert torch.equal(op_out, out_q)


# -- no silent fallback ---------------------------------------------------------------------------------------------
def test_without_the_kernel_the_fallback_is_logged_once_and_correct(no_kernel, caplog):
    pe = posenc.get_encoding("rope", dim=32, n_heads=2, layout="interleaved")
    q, k = torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16)
    pos = torch.arange(5)
    cos, sin = pe.cos_sin(pos)
    with caplog.at_level(logging.WARNING, logger="posenc.kernels.rope_cpu"):
        assert fast_path_name(q) is None
        for _ in range(3):
            out_q, out_k = pe.rotate(q, k, pos, pos)
        op_out = torch.ops.posenc.rope(q, cos, sin, True)  # the op itself falls back to the formula
        compiled = torch.compile(lambda a, b, p: pe.rotate(a, b, p, p), fullgraph=True)(q, k, pos)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no C compiler" in warnings[0].getMessage(), caplog.text
    assert "plain PyTorch path" in warnings[0].getMessage()
    ref_q, ref_k = apply_rope(q, cos, sin, layout="interleaved"), apply_rope(k, cos, sin, layout="interleaved")
    assert torch.equal(out_q, ref_q) and torch.equal(out_k, ref_k) and torch.equal(op_out, ref_q)
    torch.testing.assert_close(compiled, (ref_q, ref_k), rtol=1e-6, atol=1e-6)
    assert "posenc.rope.default" not in _graph_ops(lambda a, p: pe.rotate_one(a, p, "q"), q, pos)
    with pytest.raises(RuntimeError, match="no C compiler"):
        posenc.kernels.build()


@needs_cpu_kernel
def test_a_build_is_announced_with_its_path_and_build_prebuilds(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("POSENC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(rope_cpu, "build_state", {})
    with caplog.at_level(logging.INFO, logger="posenc.kernels.rope_cpu"):
        path = posenc.kernels.build()
    assert path.parent == tmp_path and path.is_file() and rope_cpu.library_path() == path
    announced = [r.getMessage() for r in caplog.records if "compiling the fused CPU RoPE kernel" in r.getMessage()]
    assert len(announced) == 1 and str(path) in announced[0], caplog.text
    caplog.clear()
    monkeypatch.setattr(rope_cpu, "build_state", {})  # a new process: the cached library loads without compiling
    with caplog.at_level(logging.INFO, logger="posenc.kernels.rope_cpu"):
        assert posenc.kernels.build() == path
    assert "compiling" not in caplog.text
    x = torch.randn(1, 2, 3, 8)
    cos, sin = _tables(torch.arange(3), 8)
    assert torch.equal(torch.ops.posenc.rope(x, cos, sin), apply_rope(x, cos, sin))


def test_rotate_outside_torch_func_binds_no_signature_per_call(monkeypatch):
    """``Function.apply`` with ``setup_context`` calls ``inspect.signature`` on every use (torch 2.13): ~26 us per
    call, ~3% of a training step. Outside ``torch.func`` transforms ``rotate`` must not pay it; inside them it
    still uses the ``setup_context`` class that the transforms require, and both give the same gradients."""
    import inspect

    from posenc.kernels import rope_op

    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    angles = torch.randn(5, 4, dtype=torch.float64)
    cos, sin = angles.cos(), angles.sin()
    calls = []
    real = inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda *a, **k: calls.append(a) or real(*a, **k))
    out = rope_op.rotate(x, cos, sin)
    (grad,) = torch.autograd.grad((out * out.detach().cos()).sum(), x)
    assert calls == []
    monkeypatch.setattr(inspect, "signature", real)
    expected = torch.func.grad(lambda t: (rope_op.rotate(t, cos, sin) * out.detach().cos()).sum())(x.detach())
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
