"""Property-based fuzzing of the public entry points (hypothesis).

Valid input: finite output that every backend computes alike (within the dtype's tolerance). Invalid input: a
ValueError/TypeError that names the argument — never an IndexError, a shape error from deep inside torch, a NaN, or a
silent broadcast. ``make test`` runs the fast profile; ``make test-slow`` the long one (HYPOTHESIS_PROFILE=long).
"""

from __future__ import annotations

import pytest
import torch

import posenc
from layer_inputs import attend, prepare
from posenc.backends import BACKENDS

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
given = hypothesis.given

NAMES = posenc.registered_names()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: 1e-4, torch.bfloat16: 6e-2, torch.float16: 1e-2}
SLOW_BACKENDS = {"flex"}  # compiled FlexAttention: ~30 s per new shape on CPU, covered by its own tests


@st.composite
def attention_cases(draw):
    name = draw(st.sampled_from(NAMES))
    hkv, rep = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
    h, d = hkv * rep, draw(st.sampled_from([4, 8, 16]))
    b, tk = draw(st.integers(1, 3)), draw(st.integers(1, 10))
    tq = draw(st.integers(1, tk))
    causal = draw(st.booleans())
    far = draw(st.sampled_from([0, 1, 37, 1000, 10**6]))
    packed = draw(st.booleans())
    dtype = draw(st.sampled_from(DTYPES))
    padded = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return dict(name=name, h=h, hkv=hkv, d=d, b=b, tq=tq, tk=tk, causal=causal, far=far, packed=packed, dtype=dtype,
                padded=padded, seed=seed)


def _positions(case, max_seq_len: int, extrapolates: bool) -> torch.Tensor:
    b, tk = case["b"], case["tk"]
    start = case["far"] if extrapolates else min(case["far"], max_seq_len - tk)
    pos = torch.arange(start, start + tk).expand(b, tk).clone()
    if case["packed"] and tk > 2:  # a second document starts mid-row: its positions restart
        cut = tk // 2
        pos[:, cut:] = torch.arange(start, start + tk - cut)
    return pos


@given(attention_cases())
def test_fuzz_every_backend_agrees_with_reference(case):
    g = torch.Generator().manual_seed(case["seed"])
    h, hkv, d, b, tq, tk, dtype = (case[k] for k in ("h", "hkv", "d", "b", "tq", "tk", "dtype"))
    try:
        pe = posenc.get_encoding(case["name"], dim=h * d, n_heads=h, max_seq_len=64, causal=case["causal"])
    except ValueError as exc:  # e.g. a head_dim the encoding cannot split: a clear refusal is fine
        assert str(exc)
        return
    pe = pe.eval().to(dtype)
    k_pos = _positions(case, 64, pe.extrapolates)
    q_pos = k_pos[:, tk - tq:]
    q = torch.randn(b, h, tq, d, generator=g).to(dtype)
    k, v = torch.randn(b, hkv, tk, d, generator=g).to(dtype), torch.randn(b, hkv, tk, d, generator=g).to(dtype)
    mask = None
    if case["padded"]:
        mask = torch.rand(b, 1, 1, tk, generator=g) > 0.3
        mask[..., 0] = True  # every query keeps at least one key (key 0 is visible under causal too)
    try:
        q, k = pe.rotate(q, k, q_pos, k_pos)
    except ValueError as exc:  # documented refusals (xPos far from its centre) must say what to do
        assert "center" in str(exc) or "max_seq_len" in str(exc), exc
        return
    kwargs = dict(q_pos=q_pos, k_pos=k_pos, causal=case["causal"], attn_mask=mask)
    ref = attend(q, k, v, pe, backend="reference", **kwargs).float()
    assert ref.shape == (b, h, tq, d) and torch.isfinite(ref).all()
    call = prepare(q, k, v, pe, **kwargs)
    for name, backend in BACKENDS.items():
        if name in SLOW_BACKENDS or name == "reference" or backend.supports(call) is not None:
            continue
        out = attend(q, k, v, pe, backend=name, **kwargs).float()
        torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")
    auto = attend(q, k, v, pe, **kwargs).float()
    torch.testing.assert_close(auto, ref, atol=TOL[dtype], rtol=TOL[dtype])


@st.composite
def broken_calls(draw):
    """A valid call with exactly one thing wrong; returns (kwargs, the argument name the error must mention)."""
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    kwargs = dict(q=q, k=k, v=v, q_pos=torch.arange(2, 7), k_pos=torch.arange(7), attn_mask=None)
    fault = draw(st.sampled_from(["q_rank", "k_len", "heads", "dtype", "pos_float", "pos_len", "pos_neg",
                                  "mask_shape", "mask_dtype", "pos_batch", "head_dim", "not_tensor"]))
    if fault == "q_rank":
        kwargs["q"] = q[0]
        return kwargs, "q"
    if fault == "k_len":
        kwargs["k"] = k[:, :, :6]
        return kwargs, "k"
    if fault == "heads":
        kwargs["k"], kwargs["v"] = torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
        return kwargs, "heads"
    if fault == "dtype":
        kwargs["v"] = v.double()
        return kwargs, "dtype"
    if fault == "pos_float":
        kwargs["q_pos"] = kwargs["q_pos"].float()
        return kwargs, "q_pos"
    if fault == "pos_len":
        kwargs["k_pos"] = torch.arange(draw(st.sampled_from([1, 6, 8])))
        return kwargs, "k_pos"
    if fault == "pos_neg":
        kwargs["k_pos"] = torch.arange(-3, 4)
        return kwargs, "k_pos"
    if fault == "mask_shape":
        kwargs["attn_mask"] = torch.ones(draw(st.sampled_from([3, 6])), 7, dtype=torch.bool)  # Tq is 5
        return kwargs, "attn_mask"
    if fault == "mask_dtype":
        kwargs["attn_mask"] = torch.ones(5, 7, dtype=torch.long)
        return kwargs, "attn_mask"
    if fault == "pos_batch":
        kwargs["k_pos"] = torch.arange(7).expand(3, 7)
        return kwargs, "k_pos"
    if fault == "head_dim":
        kwargs["k"], kwargs["v"] = torch.randn(2, 2, 7, 6), torch.randn(2, 2, 7, 6)
        return kwargs, "head_dim"
    kwargs["v"] = v.tolist()
    return kwargs, "v"


@given(broken_calls(), st.sampled_from(NAMES + [None]), st.booleans())
def test_fuzz_invalid_attention_input_raises_a_clear_error(broken, name, causal):
    kwargs, culprit = broken
    pe = posenc.get_encoding(name, dim=32, n_heads=4, max_seq_len=64) if name else None
    with pytest.raises((ValueError, TypeError)) as info:
        attend(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), pe, causal=causal, **kwargs)
    assert culprit in str(info.value), f"{info.value!r} does not name {culprit}"


@given(st.sampled_from(NAMES), st.integers(-3, 70), st.integers(-2, 9), st.integers(-5, 100),
       st.sampled_from([None, 1.5, "x", True]))
def test_fuzz_get_encoding_sizes(name, dim, n_heads, max_seq_len, junk):
    """Any sizes: either a working encoding or ValueError/TypeError; a junk option is always refused."""
    try:
        pe = posenc.get_encoding(name, dim=dim, n_heads=n_heads, max_seq_len=max_seq_len)
    except (ValueError, TypeError) as exc:
        assert str(exc)
    else:
        assert dim > 0 and n_heads > 0 and dim % n_heads == 0 and max_seq_len > 0
        t = min(4, max_seq_len)
        x = pe.embed(torch.zeros(1, t, dim), torch.arange(t))
        assert torch.isfinite(x).all()
    with pytest.raises((ValueError, TypeError)):
        posenc.get_encoding(name, dim=32, n_heads=4, not_an_option=junk)


MASK_DTYPES = [torch.bool, torch.float16, torch.bfloat16, torch.float32, torch.float64]
MODES = {"eager": None, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@st.composite
def edge_cases(draw):
    """Empty batches and sequences, 1-D/2-D/4-D masks of any float dtype, under no_grad or inference mode."""
    name = draw(st.sampled_from(NAMES))
    b = draw(st.sampled_from([0, 1, 2]))
    empty = draw(st.booleans())
    tk = 0 if empty else draw(st.integers(1, 8))
    tq = 0 if empty else draw(st.integers(1, tk))
    return dict(name=name, b=b, tq=tq, tk=tk, causal=draw(st.booleans()),
                mask=draw(st.sampled_from([None, "1d", "2d", "4d"])), mask_dtype=draw(st.sampled_from(MASK_DTYPES)),
                dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16])),
                mode=draw(st.sampled_from(list(MODES))), far=draw(st.sampled_from([0, 37, 10**6])),
                seed=draw(st.integers(0, 2**16)))


@given(edge_cases())
def test_fuzz_edge_inputs_agree_with_reference(case):
    g = torch.Generator().manual_seed(case["seed"])
    h, d, b, tq, tk, dtype = 2, 8, case["b"], case["tq"], case["tk"], case["dtype"]
    pe = posenc.get_encoding(case["name"], dim=h * d, n_heads=h, max_seq_len=64, causal=case["causal"]).eval()
    pe = pe.to(dtype)
    start = case["far"] if pe.extrapolates else 0
    k_pos = torch.arange(start, start + tk)
    q_pos = k_pos[tk - tq:]
    mask = None
    if case["mask"] is not None and tk:
        keep = torch.rand(tq, tk, generator=g) > 0.3
        keep[:, 0] = True  # every query keeps key 0 (visible under causal too)
        if case["mask"] == "1d":
            keep = keep.all(0) | (torch.arange(tk) == 0)  # (Tk,)
        elif case["mask"] == "4d":
            keep = keep[None, None]
        mask = keep if case["mask_dtype"] == torch.bool else \
            torch.zeros(keep.shape, dtype=case["mask_dtype"]).masked_fill(~keep, float("-inf"))
    mode = MODES[case["mode"]]
    with mode() if mode is not None else torch.enable_grad():
        q = torch.randn(b, h, tq, d, generator=g).to(dtype)
        k, v = torch.randn(b, h, tk, d, generator=g).to(dtype), torch.randn(b, h, tk, d, generator=g).to(dtype)
        try:
            q, k = pe.rotate(q, k, q_pos, k_pos)
        except ValueError as exc:  # documented refusals (xPos far from its centre) say what to do
            assert "center" in str(exc) or "max_seq_len" in str(exc), exc
            return
        kwargs = dict(q_pos=q_pos, k_pos=k_pos, causal=case["causal"], attn_mask=mask)
        ref = attend(q, k, v, pe, backend="reference", **kwargs)
        auto = attend(q, k, v, pe, **kwargs)
    assert ref.shape == auto.shape == (b, h, tq, d) and torch.isfinite(ref).all()
    tol = {torch.float32: 1e-4, torch.float64: 1e-6, torch.bfloat16: 6e-2}[dtype]
    torch.testing.assert_close(auto.float(), ref.float(), atol=tol, rtol=tol)
