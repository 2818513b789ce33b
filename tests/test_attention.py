"""posenc.attention: the SDPA path against the explicit-softmax reference, GQA, KV-cache alignment, masks."""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc import get_encoding


def _qkv(b=2, h=4, hkv=4, tq=7, tk=7, d=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, h, tq, d, generator=g, dtype=dtype), torch.randn(b, hkv, tk, d, generator=g, dtype=dtype),
            torch.randn(b, hkv, tk, d, generator=g, dtype=dtype))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hkv", [4, 2, 1])
def test_sdpa_equals_reference(causal, hkv):
    q, k, v = _qkv(hkv=hkv)
    torch.testing.assert_close(posenc.attention(q, k, v, causal=causal, backend="sdpa"),
                               posenc.attention(q, k, v, causal=causal, backend="reference"), atol=1e-5, rtol=1e-5)


def test_reference_is_the_textbook_formula():
    q, k, v = _qkv(h=1, hkv=1, tq=3, tk=3)
    s = q @ k.transpose(-1, -2) / 8**0.5
    s = s.masked_fill(torch.ones(3, 3, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(posenc.attention(q, k, v, causal=True, backend="reference"), s.softmax(-1) @ v)


def test_causal_mask_is_bottom_right_aligned_for_kv_cache():
    q, k, v = _qkv(tq=7, tk=7)
    full = posenc.attention(q, k, v, causal=True)
    last = posenc.attention(q[:, :, -3:], k, v, causal=True)  # the last 3 queries against all 7 keys
    torch.testing.assert_close(last, full[:, :, -3:], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_bool_and_float_masks(backend):
    q, k, v = _qkv()
    keep = torch.rand(2, 1, 7, 7, generator=torch.Generator().manual_seed(1)) > 0.3
    keep[..., 0] = True  # no empty rows
    additive = torch.zeros(2, 1, 7, 7).masked_fill(~keep, float("-inf"))
    a = posenc.attention(q, k, v, attn_mask=keep, backend=backend)
    b = posenc.attention(q, k, v, attn_mask=additive, backend=backend)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a, posenc.attention(q, k, v, attn_mask=keep, backend="reference"), atol=1e-5, rtol=1e-5)


def test_rope_then_attention_is_shift_invariant():
    pe = get_encoding("rope", dim=32, n_heads=4)
    q, k, v = _qkv()
    pos = torch.arange(7)
    out = posenc.attention(*pe.rotate(q, k, pos, pos), v, pe, causal=True)
    shifted = posenc.attention(*pe.rotate(q, k, pos + 5000, pos + 5000), v, pe, causal=True)
    torch.testing.assert_close(out, shifted, atol=1e-5, rtol=1e-4)


def test_explain_names_the_backend_and_why():
    q, k, v = _qkv()
    assert posenc.explain(q, k, v).startswith("sdpa")
    assert "requested" in posenc.explain(q, k, v, backend="reference")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_close_to_reference(dtype):
    q, k, v = _qkv(dtype=dtype)
    got = posenc.attention(q, k, v, causal=True).float()
    want = posenc.attention(q.float(), k.float(), v.float(), causal=True, backend="reference")
    torch.testing.assert_close(got, want, atol=3e-2, rtol=3e-2)
