"""Edges of the conformance kit that mutation testing (``make test-mutate``, group testing) found no test for: a
partial-rotary Hugging Face model (the unrotated channels), a result named after the model it checked, exported
tables in the interleaved layout."""

import pytest
import torch

import posenc
from posenc.testing import check_hf_model, check_rope
from posenc.testing.hf import hf_rope_candidate
from posenc.testing.rope import table_candidate

transformers = pytest.importorskip("transformers")


def test_a_partial_rotary_hf_model_passes_its_unrotated_channels_through():
    cfg = transformers.PhiConfig(hidden_size=128, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64,
                                 vocab_size=100, max_position_embeddings=4096, partial_rotary_factor=0.5)
    fn, _, kind = hf_rope_candidate(cfg)
    assert kind == "rope"
    q, k = torch.randn(1, 4, 6, 32), torch.randn(1, 4, 6, 32)
    q2, k2 = fn(q, k, torch.arange(6))
    assert q2.shape == q.shape and k2.shape == k.shape
    assert torch.equal(q2[..., 16:], q[..., 16:]) and torch.equal(k2[..., 16:], k[..., 16:])
    assert not torch.allclose(q2[..., :16], q[..., :16])
    result = check_hf_model(cfg, dtypes=("float32",), max_position=4096)
    assert result.conforms, result.table()
    assert result.target == "phi (config)"  # the model type, and what was checked: a config


def test_a_result_is_named_by_the_target_given():
    cfg = transformers.LlamaConfig(hidden_size=128, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64,
                                   vocab_size=100, max_position_embeddings=4096)
    assert check_hf_model(cfg, dtypes=("float32",), max_position=4096, target="my port").target == "my port"


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_exported_tables_conform_in_their_own_layout(layout):
    pe = posenc.get_encoding("rope", dim=64, n_heads=4, max_seq_len=4096, layout=layout)
    positions = torch.arange(4096)
    cos, sin = pe.cos_sin(positions)  # (N, D/2): one per pair
    spread = (lambda t: torch.cat((t, t), -1)) if layout == "half" else (lambda t: t.repeat_interleave(2, -1))
    for c, s in ((cos, sin), (spread(cos), spread(sin))):  # one per pair, or one per channel as its consumer holds
        fn = table_candidate(c, s, positions, rotary_dim=16, layout=layout)
        result = check_rope(fn, {"rope_theta": 10000.0, "head_dim": 16}, layout=layout, dtypes=("float32",),
                            max_position=4095)
        assert result.conforms, result.table()
