"""Edges of posenc.hf that mutation testing (``make test-mutate``, group hf) found no test for: to_scaled keeps a
partial rotary width, GPT-J's export refuses every layout it cannot write, and the hints of config errors."""

import pytest
import torch

import posenc
from posenc import from_hf_config, to_hf_config, to_scaled


def test_to_scaled_keeps_the_rotary_width_of_a_partial_rope():
    pe = posenc.get_encoding("rope", dim=64, n_heads=4, rotary_dim=8, max_seq_len=128)
    scaled = to_scaled(pe, rope_type="linear", factor=2.0)
    assert (scaled.rotary_dim, scaled.layout, scaled.base) == (8, pe.layout, pe.base)
    q = torch.randn(1, 4, 5, 16)
    out, _ = scaled.rotate(q, q, torch.arange(5), torch.arange(5))
    assert torch.equal(out[..., 8:], q[..., 8:])  # the channels past rotary_dim stay as they were


@pytest.mark.parametrize("options", [{"layout": "half"}, {"layout": "interleaved", "base": 500000.0},
                                     {"layout": "interleaved", "scaling": {"rope_type": "linear", "factor": 2.0}}])
def test_gptj_export_refuses_what_gptj_cannot_hold(options):
    pe = posenc.get_encoding("rope", dim=64, n_heads=4, max_seq_len=128, **options)
    with pytest.raises(ValueError, match="GPT-J hard-codes interleaved pairs, base 10000 and no scaling"):
        to_hf_config(pe, model_type="gptj")


def test_a_quoted_number_in_a_config_says_to_unquote_it():
    config = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "rope_theta": "10000",
              "max_position_embeddings": 128}
    with pytest.raises(TypeError, match=r"rope_theta.*In config\.json write it without quotes\."):
        from_hf_config(config)
    with pytest.raises(TypeError, match=r"In config\.json write it without quotes\."):
        from_hf_config({**config, "rope_theta": 10000.0, "hidden_size": "64"})
