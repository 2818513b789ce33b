"""``posenc.Positions``: one positions object per forward, validated once at the model's boundary."""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc import KVCache, Positions, Transformer, TransformerConfig


def _decoder(encoding: str = "rope") -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(kind="decoder", vocab_size=30, dim=32, n_heads=4, n_layers=2,
                                         encoding=encoding, max_seq_len=32)).eval()


def test_of_and_validate():
    assert Positions.of(None) == Positions()
    pos = torch.arange(4)
    assert Positions.of(pos).pos is pos
    p = Positions(pos=pos + 2).validate(4, batch=3)
    assert p.validated and p.max_pos == 5 and p.structure == {}
    with pytest.raises(TypeError, match="posenc.Positions"):
        Positions.of([0, 1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        Positions(pos=pos - 1).validate(4)
    with pytest.raises(ValueError, match="4 positions on its last axis but the sequence has 5"):
        Positions(pos=pos).validate(5)
    with pytest.raises(ValueError, match="segment_ids"):
        Positions(pos=pos, segment_ids=torch.zeros(4, dtype=torch.long)).validate(4)


@pytest.mark.parametrize("encoding", ["rope", "alibi"])
def test_packed_documents_with_segment_ids_equal_separate_runs(encoding):
    model = _decoder(encoding)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(0, 30, (5,), generator=g), torch.randint(0, 30, (4,), generator=g)
    packed = model(torch.cat((a, b))[None], positions=Positions(
        pos=torch.cat((torch.arange(5), torch.arange(4)))[None],  # positions restart per document
        segment_ids=torch.tensor([[0] * 5 + [1] * 4])))
    torch.testing.assert_close(packed[:, :5], model(a[None]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 5:], model(b[None]), atol=1e-5, rtol=1e-5)


def test_segment_ids_through_a_kv_cache_continue_the_last_segment():
    model = _decoder()
    x = torch.randint(0, 30, (1, 8), generator=torch.Generator().manual_seed(2))
    seg = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])
    full = model(x, positions=Positions(pos=pos, segment_ids=seg))
    cache = KVCache()
    steps = [model(x[:, :5], positions=Positions(pos=pos[:, :5], segment_ids=seg[:, :5]), cache=cache)]
    steps += [model(x[:, i:i + 1], positions=pos[:, i:i + 1], cache=cache) for i in range(5, 8)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_attention_takes_validated_positions():
    pe = posenc.get_encoding("alibi", dim=32, n_heads=4, causal=True)
    q, k, v = (torch.randn(1, 4, 6, 8) for _ in range(3))
    pos = torch.arange(6)
    expected = posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True)
    p = Positions(pos=pos).validate(6)
    torch.testing.assert_close(posenc.attention(q, k, v, pe.bind(p), positions=p, causal=True), expected)
    with pytest.raises(ValueError, match="not both"):
        posenc.attention(q, k, v, pe, q_pos=pos, positions=p)
    with pytest.raises(ValueError, match="non-negative"):  # not validated: checked here as q_pos / k_pos are
        posenc.attention(q, k, v, pe, positions=Positions(pos=pos - 1), causal=True)


def test_encodings_declare_what_they_read():
    reads = {name: posenc.get_encoding(name, dim=32, n_heads=4).reads for name in posenc.registered_names()}
    assert reads["axial_rope"] == reads["mrope"] == ("coordinates",)
    assert reads["hierarchical"] == ("coordinates", "token_ids")
    assert reads["spd"] == reads["laplacian"] == ("adjacency",)
    assert reads["rope"] == reads["alibi"] == ()
