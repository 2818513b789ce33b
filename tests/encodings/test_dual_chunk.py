"""`dual_chunk` (arXiv 2402.17463) against the reference code's rule, written independently of posenc's rotate."""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc import Transformer, TransformerConfig
from posenc.backends import prepare_call
from posenc.encodings.dual_chunk import DualChunkAttention, dual_chunk_relative_positions
from posenc.encodings.rope import RoPE, rope_frequencies

H, D, T = 2, 8, 45


def _qkv():
    g = torch.Generator().manual_seed(0)
    return (3 * torch.randn(2, H, T, D, generator=g), 3 * torch.randn(2, H, T, D, generator=g),
            torch.randn(2, H, T, D, generator=g))


def _reference_positions(t: int, chunk_size: int, local_window: int) -> torch.Tensor:
    """ChunkLlama's rule, pair by pair: (query position, key position) by chunk distance, causal pairs only."""
    c = chunk_size - local_window
    r = torch.zeros(t, t, dtype=torch.long)
    for i in range(t):
        for j in range(i + 1):
            k = j % c
            if i // c == j // c:
                q = i % c
            elif i // c - j // c == 1:
                q = min(i % c + c, chunk_size)  # qc_t: successive chunk
            else:
                q = min(c - 1 + c, chunk_size)  # qc_t at chunk_len - 1: inter chunk
            r[i, j] = q - k if i // c != j // c else i - j
    return r


@pytest.mark.parametrize("chunk_size,local_window", [(12, 4), (9, 0), (10, 3), (6, 5)])
def test_dual_chunk_matches_the_reference_rule(chunk_size, local_window):
    q, k, v = _qkv()
    pos = torch.arange(T)
    r = _reference_positions(T, chunk_size, local_window)
    causal = pos[:, None] >= pos[None]
    got = dual_chunk_relative_positions(pos[:, None], pos[None], chunk_size=chunk_size, local_window=local_window)
    assert torch.equal(got[causal], r[causal])
    assert int(got[causal].max()) <= chunk_size
    # attention through q_i . R(r_ij) k_j with complex pairs (interleaved layout)
    theta = rope_frequencies(D)
    qz = torch.complex(q[..., 0::2].double(), q[..., 1::2].double())
    kz = torch.complex(k[..., 0::2].double(), k[..., 1::2].double())
    phase = torch.polar(torch.ones(T, T, D // 2, dtype=torch.float64), r.double()[..., None] * theta)
    scores = torch.einsum("bhif,bhjf,ijf->bhij", qz, kz.conj(), phase).real / D ** 0.5
    scores = scores.masked_fill(~causal, -torch.inf)
    want = (scores.softmax(-1) @ v.double()).float()
    pe = DualChunkAttention(dim=H * D, n_heads=H, chunk_size=chunk_size, local_window=local_window,
                            layout="interleaved")
    torch.testing.assert_close(posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True), want,
                               atol=2e-5, rtol=1e-4)


def test_causal_dual_chunk_rotates_for_keys_in_later_chunks_only_when_a_query_sees_one():
    """Causal attention over increasing positions never sees a key in a later chunk (no mirrored rotations); packed
    documents, whose positions restart, do, and get the mirrored rule (checked against the rule pair by pair)."""
    q, k, v = _qkv()
    pe = DualChunkAttention(dim=H * D, n_heads=H, chunk_size=12, local_window=4, layout="interleaved")
    pos = torch.arange(T)
    assert not prepare_call(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True).terms.mirrored
    assert prepare_call(q, k, v, pe, q_pos=pos, k_pos=pos, causal=False).terms.mirrored
    packed = torch.cat((torch.arange(20), torch.arange(T - 20)))  # a query at 0 sees a key at 19, two chunks later
    assert prepare_call(q, k, v, pe, q_pos=packed, k_pos=packed, causal=True).terms.mirrored
    r = dual_chunk_relative_positions(packed[:, None], packed[None], chunk_size=12, local_window=4)  # (T, T)
    qz = torch.complex(q[..., 0::2].double(), q[..., 1::2].double())
    kz = torch.complex(k[..., 0::2].double(), k[..., 1::2].double())
    phase = torch.polar(torch.ones(T, T, D // 2, dtype=torch.float64), r.double()[..., None] * rope_frequencies(D))
    scores = torch.einsum("bhif,bhjf,ijf->bhij", qz, kz.conj(), phase).real / D ** 0.5
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -torch.inf)
    want = (scores.softmax(-1) @ v.double()).float()
    torch.testing.assert_close(posenc.attention(q, k, v, pe, q_pos=packed, k_pos=packed, causal=True), want,
                               atol=2e-5, rtol=1e-4)


def test_dual_chunk_is_rope_within_one_chunk_and_mirrors_without_a_mask():
    q, k, v = _qkv()
    pos = torch.arange(T)
    pe = DualChunkAttention(dim=H * D, n_heads=H, chunk_size=T + 5, local_window=5)
    rope = RoPE(dim=H * D, n_heads=H)
    qr, kr = rope.rotate(q, k, pos, pos)
    for causal in (True, False):
        torch.testing.assert_close(posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=causal),
                                   posenc.attention(qr, kr, v, rope, q_pos=pos, k_pos=pos, causal=causal),
                                   atol=1e-5, rtol=1e-5)
    r = dual_chunk_relative_positions(pos[:, None], pos[None], chunk_size=12, local_window=4)
    assert torch.equal(r, -r.T)  # the bidirectional extension is antisymmetric


def test_dual_chunk_model_decoding_equals_full_forward_and_checks():
    cfg = TransformerConfig(kind="decoder", vocab_size=40, dim=16, n_layers=2, n_heads=2, max_seq_len=16,
                            encoding="dual_chunk", encoding_options={"chunk_size": 8, "local_window": 3})
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    prompt = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=25)
        full = model(out)
    assert torch.equal(full[:, 4:-1].argmax(-1), out[:, 5:])
    with pytest.raises(ValueError, match="local_window must be smaller"):
        DualChunkAttention(dim=16, n_heads=2, chunk_size=4, local_window=4)
    default = DualChunkAttention(dim=16, n_heads=2, max_seq_len=4096)
    assert (default.chunk_size, default.local_window) == (3072, 256)  # ChunkLlama's defaults
