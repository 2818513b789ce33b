"""check_hf_model: Hugging Face's own rotary code, built from a config (no weights, no download) or taken from a
tiny model, conforms to posenc's reference up to the float32-angle precision limit; a broken port is named."""

from __future__ import annotations

import json

import pytest

from posenc.testing import check_hf_model

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1, intermediate_size=64,
             vocab_size=100, max_position_embeddings=4096)


@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 500000.0},
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 1024},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "original_max_position_embeddings": 1024,
     "low_freq_factor": 1.0, "high_freq_factor": 4.0},
], ids=["default", "yarn", "llama3"])
def test_llama_rotary_conforms_up_to_float32_angles(rope):
    cfg = transformers.LlamaConfig(**SMALL, rope_parameters=rope)
    result = check_hf_model(cfg, dtypes=("float32",))
    assert result.conforms, result.table()
    assert result.verdict == "precision" and result.finding.hypothesis == "angles_float32"


def test_a_tiny_model_and_a_config_directory(tmp_path):
    cfg = transformers.LlamaConfig(**SMALL, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                                             "factor": 2.0})
    model = transformers.LlamaForCausalLM(cfg)
    assert check_hf_model(model, dtypes=("float32",)).conforms
    cfg.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    assert check_hf_model(tmp_path, dtypes=("float32",), max_position=2048).conforms


def test_a_port_that_drops_the_scaling_is_named():
    cfg = transformers.LlamaConfig(**SMALL, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0,
                                                             "factor": 4.0, "original_max_position_embeddings": 1024})
    model = transformers.LlamaForCausalLM(cfg)
    default = transformers.LlamaConfig(**SMALL, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model.model.rotary_emb = type(model.model.rotary_emb)(config=default)  # the port's silent fallback
    result = check_hf_model(model, dtypes=("float32",))
    assert result.finding.hypothesis == "scaling_ignored", result.diagnosis


def test_qwen_vl_mrope_blocked_and_interleaved():
    qwen2 = transformers.Qwen2VLConfig(text_config=dict(
        **SMALL, rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]}))
    result = check_hf_model(qwen2, dtypes=("float32",))
    assert result.kind == "mrope" and result.conforms, result.table()
    qwen3 = transformers.Qwen3VLConfig(text_config=dict(
        **SMALL, head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [6, 5, 5],
                                               "mrope_interleaved": True}))
    assert check_hf_model(qwen3, dtypes=("float32",)).conforms
    # Qwen3-VL's code read as if it were Qwen2-VL's blocked sections: named
    text = qwen3.get_text_config()
    text.rope_parameters = {**text.rope_parameters, "mrope_interleaved": False}
    from posenc.testing.hf import hf_rope_candidate
    fn, _, _ = hf_rope_candidate(qwen3)
    from posenc.testing import check_mrope
    result = check_mrope(fn, {"head_dim": 32, "rope_theta": 5e6, "mrope_section": [6, 5, 5]}, dtypes=("float32",))
    assert result.finding.hypothesis == "sections_order", result.diagnosis
