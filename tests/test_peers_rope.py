"""RoPE and xPos against the peer libraries (the ``peers`` extra): Hugging Face transformers' ``rotate_half``
(half layout), x-transformers and rotary-embedding-torch (interleaved layout)."""

from __future__ import annotations

import pytest
import torch

from posenc import get_encoding

B, H, T, D = 2, 4, 13, 32


def _qk(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, H, T, D, generator=g, dtype=dtype), torch.randn(B, H, T, D, generator=g, dtype=dtype)


@pytest.mark.parametrize("rotary_dim", [D, 16])
@pytest.mark.parametrize("base", [10000.0, 500000.0])
def test_rope_half_layout_equals_hugging_face(rotary_dim, base):
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    q, k = _qk()
    pos = torch.arange(100, 100 + T).expand(B, T)  # (B, T) as HF's position_ids
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    freqs = pos[..., None].double() * inv_freq.double()  # HF's formula, angles in double for a fair comparison
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().float(), emb.sin().float()
    q_rot, k_rot = llama.apply_rotary_pos_emb(q[..., :rotary_dim], k[..., :rotary_dim], cos, sin)
    want_q = torch.cat((q_rot, q[..., rotary_dim:]), -1)  # partial rotary as GPT-NeoX / Phi slice it
    want_k = torch.cat((k_rot, k[..., rotary_dim:]), -1)
    pe = get_encoding("rope", dim=H * D, n_heads=H, base=base, layout="half", rotary_dim=rotary_dim)
    got_q, got_k = pe.rotate(q, k, pos, pos)
    torch.testing.assert_close(got_q, want_q, atol=2e-5, rtol=1e-5)  # HF's float32 inv_freq vs our float64
    torch.testing.assert_close(got_k, want_k, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("rotary_dim", [D, 16])
def test_rope_interleaved_equals_rotary_embedding_torch(rotary_dim):
    ret = pytest.importorskip("rotary_embedding_torch")
    q, _ = _qk()
    peer = ret.RotaryEmbedding(dim=rotary_dim)  # interleaved pairs, rotates the first `dim` channels
    want = peer.rotate_queries_or_keys(q)  # positions 0 .. T-1 along dim -2
    pe = get_encoding("rope", dim=H * D, n_heads=H, layout="interleaved", rotary_dim=rotary_dim)
    got, _ = pe.rotate(q, q, torch.arange(T), torch.arange(T))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rotary_dim", [D, 16])
def test_rope_interleaved_equals_x_transformers(rotary_dim):
    xt = pytest.importorskip("x_transformers.x_transformers")
    q, _ = _qk()
    pos = torch.arange(7, 7 + T)
    freqs, scale = xt.RotaryEmbedding(rotary_dim)(pos)
    want = xt.apply_rotary_pos_emb(q, freqs, scale)
    pe = get_encoding("rope", dim=H * D, n_heads=H, layout="interleaved", rotary_dim=rotary_dim)
    got, _ = pe.rotate(q, q, pos, pos)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_xpos_equals_x_transformers():
    xt = pytest.importorskip("x_transformers.x_transformers")
    q, k = _qk(torch.float64)
    pos = torch.arange(T)
    freqs, scale = xt.RotaryEmbedding(D, use_xpos=True, scale_base=512)(pos)
    want_q = xt.apply_rotary_pos_emb(q.float(), freqs, scale)
    want_k = xt.apply_rotary_pos_emb(k.float(), freqs, scale**-1)
    # x-transformers centres the scale at (max position + 1) // 2 of the call; posenc takes the centre as an option
    pe = get_encoding("xpos", dim=H * D, n_heads=H, layout="interleaved", center=T // 2)
    got_q, got_k = pe.rotate(q.float(), k.float(), pos, pos)
    torch.testing.assert_close(got_q, want_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_k, want_k, atol=1e-5, rtol=1e-5)
