"""`self_extend` (arXiv 2401.01325) against its definition: per-pair relative positions, plain RoPE in the window."""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc import Transformer, TransformerConfig
from posenc.encodings.rope import RoPE, rope_frequencies
from posenc.encodings.self_extend import SelfExtend, self_extend_positions

H, D, T = 2, 8, 40


def _qkv(b: int = 2):
    g = torch.Generator().manual_seed(0)
    return (3 * torch.randn(b, H, T, D, generator=g), 3 * torch.randn(b, H, T, D, generator=g),
            torch.randn(b, H, T, D, generator=g))


def _definition(q, k, v, pos, group: int, window: int, base: float = 10000.0):
    """softmax over j <= i of q_i . R(r_ij) k_j / sqrt(D), r_ij = i - j in the window, else the grouped distance
    floor(i/G) - floor(j/G) + W - floor(W/G); written with complex pairs (interleaved layout), not posenc's rotate."""
    i, j = pos[:, None], pos[None, :]
    grouped = torch.div(i, group, rounding_mode="floor") - torch.div(j, group, rounding_mode="floor") + \
        window - window // group
    r = torch.where(i - j < window, i - j, grouped).double()  # (T, T)
    theta = rope_frequencies(D, base)  # (D/2,)
    qz = torch.complex(q[..., 0::2].double(), q[..., 1::2].double())  # (B, H, T, D/2)
    kz = torch.complex(k[..., 0::2].double(), k[..., 1::2].double())
    phase = torch.polar(torch.ones_like(r)[..., None], r[..., None] * theta)  # (T, T, D/2)
    scores = torch.einsum("bhif,bhjf,ijf->bhij", qz, kz.conj(), phase).real / D ** 0.5
    scores = scores.masked_fill(j > i, float("-inf"))
    return (scores.softmax(-1) @ v.double()).float()


@pytest.mark.parametrize("group,window", [(4, 8), (3, 5), (8, 16), (2, 1)])
def test_self_extend_matches_its_definition(group, window):
    q, k, v = _qkv()
    pos = torch.arange(T) + 7
    pe = SelfExtend(dim=H * D, n_heads=H, group_size=group, neighbor_window=window, layout="interleaved")
    out = posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True)
    torch.testing.assert_close(out, _definition(q, k, v, pos, group, window), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("group,window", [(1, 4), (4, T)])
def test_self_extend_is_rope_when_nothing_is_grouped(group, window):
    q, k, v = _qkv()
    pos = torch.arange(T)
    pe = SelfExtend(dim=H * D, n_heads=H, group_size=group, neighbor_window=window)
    rope = RoPE(dim=H * D, n_heads=H)
    qr, kr = rope.rotate(q, k, pos, pos)
    torch.testing.assert_close(posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True),
                               posenc.attention(qr, kr, v, rope, q_pos=pos, k_pos=pos, causal=True),
                               atol=1e-5, rtol=1e-5)


def test_self_extend_keeps_relative_positions_within_the_bound():
    L, G, W = 10_000, 8, 512
    pos = torch.arange(L)
    qg, kg = self_extend_positions(pos[-1:], pos[:1], group_size=G, neighbor_window=W)
    assert int(qg - kg) == (L - 1) // G + W - W // G <= W + (L - W) // G + 1


def test_self_extend_model_decoding_equals_full_forward():
    cfg = TransformerConfig(kind="decoder", vocab_size=40, dim=16, n_layers=2, n_heads=2, max_seq_len=16,
                            encoding="self_extend", encoding_options={"group_size": 3, "neighbor_window": 4})
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    prompt = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=20)  # past max_seq_len, groups across the cache
        full = model(out)
    assert torch.equal(full[:, 4:-1].argmax(-1), out[:, 5:])
    with pytest.raises(ValueError, match="group_size"):
        SelfExtend(dim=16, n_heads=2, group_size=0)
