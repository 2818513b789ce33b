"""Bad input gets a ValueError/TypeError that says what was expected, what came in, and what to do."""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc import Transformer, TransformerConfig, get_encoding


def test_unknown_encoding_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown encoding 'rop'.*Did you mean 'rope'"):
        get_encoding("rop", dim=32, n_heads=4)
    with pytest.raises(ValueError, match="Available: .*sinusoidal"):
        get_encoding("zzzz", dim=32, n_heads=4)
    with pytest.raises(ValueError, match="Did you mean"):
        TransformerConfig(encoding="sinusodial") and Transformer(TransformerConfig(encoding="sinusodial"))


def test_unknown_option_lists_the_accepted_ones():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['bse'\].*'base'"):
        get_encoding("rope", dim=32, n_heads=4, bse=10.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 30, "n_heads": 4}, "not divisible"),
    ({"dim": 0, "n_heads": 1}, "dim must be an int >= 1"),
    ({"dim": 32.0, "n_heads": 4}, "must be an int"),
])
def test_bad_sizes(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        get_encoding("sinusoidal", **kwargs)


def test_odd_head_dim_for_rope():
    with pytest.raises(ValueError, match=r"even.*head_dim=5.*partial RoPE"):
        get_encoding("rope", dim=20, n_heads=4)
    assert get_encoding("rope", dim=20, n_heads=4, rotary_dim=4).rotary_dim == 4
    with pytest.raises(ValueError, match="layout"):
        get_encoding("rope", dim=32, n_heads=4, layout="neox")
    with pytest.raises(ValueError, match="rotary_fraction"):
        get_encoding("rope", dim=32, n_heads=4, rotary_fraction=1.5)


def test_positions_past_a_learned_table():
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=10, dim=16, n_heads=2, max_seq_len=8,
                                          encoding="learned"))
    with pytest.raises(ValueError, match=r"position 8 is past max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_non_integer_and_misshapen_positions():
    pe = get_encoding("rope", dim=32, n_heads=4)
    q = torch.randn(1, 4, 5, 8)
    with pytest.raises(TypeError, match=r"q_pos must hold integer positions.*float32"):
        pe.rotate(q, q, torch.arange(5.0), torch.arange(5))
    with pytest.raises(ValueError, match="4 positions on its last axis but the sequence has 5"):
        pe.rotate(q, q, torch.arange(4), torch.arange(4))
    with pytest.raises(ValueError, match="non-negative"):
        pe.rotate(q, q, torch.arange(-1, 4), torch.arange(5))
    with pytest.raises(ValueError, match="batch size 3"):
        pe.rotate(q, q, torch.zeros(3, 5, dtype=torch.long), torch.arange(5))


def test_wrong_ranks_shapes_dtypes_for_attention():
    q = torch.randn(2, 4, 5, 8)
    with pytest.raises(ValueError, match=r"q must have shape \(B, H, T, D\).*transpose"):
        posenc.attention(q[0], q, q)
    with pytest.raises(TypeError, match="share a dtype"):
        posenc.attention(q, q.double(), q)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        posenc.attention(q, q[:, :3], q[:, :3])
    with pytest.raises(ValueError, match="head_dim"):
        posenc.attention(q, q[..., :4], q)
    with pytest.raises(ValueError, match="does not broadcast"):
        posenc.attention(q, q, q, attn_mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        posenc.attention(q, q, q, backend="fast")
    with pytest.raises(ValueError, match=r"Tq <= Tk"):
        posenc.attention(q, q[:, :, :3], q[:, :, :3], causal=True)
    with pytest.raises(TypeError, match="PositionalEncoding"):
        posenc.attention(q, q, q, "rope")


def test_rope_rejects_wrong_head_dim_and_rank():
    pe = get_encoding("rope", dim=32, n_heads=4)
    with pytest.raises(ValueError, match="head_dim 16 but the encoding was built for head_dim=8"):
        pe.rotate(torch.randn(1, 4, 5, 16), torch.randn(1, 4, 5, 16), torch.arange(5), torch.arange(5))
    with pytest.raises(ValueError, match="4 dims"):
        pe.rotate(torch.randn(4, 5, 8), torch.randn(4, 5, 8), torch.arange(5), torch.arange(5))


def test_model_input_errors():
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=10, dim=16, n_heads=2))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size=10\)"):
        model(torch.tensor([[1, 2, 10]]))
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"tokens\[None\]"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="kind must be one of"):
        TransformerConfig(kind="seq2seq")
    with pytest.raises(ValueError, match="n_kv_heads"):
        TransformerConfig(n_heads=4, n_kv_heads=3)


def test_register_rejects_bad_names_and_duplicates():
    with pytest.raises(ValueError, match="lowercase"):
        posenc.register("RoPE")
    with pytest.raises(ValueError, match="already registered"):
        @posenc.register("rope")
        class Other(posenc.PositionalEncoding):
            """Another rope."""
