"""Edges of posenc.hf that mutation testing (``make test-mutate``, group hf) found no test for: to_scaled keeps a
partial rotary width, GPT-J's export refuses every layout it cannot write, and the hints of config errors."""

import pytest
import torch

import posenc
from posenc import from_hf_config, to_hf_config, to_scaled
from posenc.hf import patch_rotary


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


# -- surviving mutants of the seed-2 sample (hf) ----------------------------------------------------------------------
QWEN_VL = {"model_type": "qwen2_vl", "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 128}


def _tiny_llama(max_len=32):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max_len)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def test_a_config_bool_written_as_a_string_is_named_with_its_type():
    with pytest.raises(TypeError, match=r"mrope_interleaved'\] must be true or false \(a bool\); got str 'false'\. "
                                        r"In config\.json write false"):
        from_hf_config({**QWEN_VL, "rope_scaling": {"mrope_section": [2, 3, 3], "mrope_interleaved": "false"}})


def test_a_rope_dict_that_is_not_a_dict_is_named_with_its_type():
    with pytest.raises(ValueError, match=r"rope_parameters/rope_scaling must be a dict; got list\."):
        from_hf_config({**QWEN_VL, "rope_scaling": [1.0, 2.0]})


def test_an_interleaved_rope_is_refused_by_the_llama_export_with_the_way_out():
    pe = posenc.get_encoding("rope", dim=64, n_heads=4, layout="interleaved")
    with pytest.raises(ValueError, match=r"this rope uses layout='interleaved'\. Hint: posenc\.convert_rope_layout\("
                                         r"model, 'half'\) \(permutes q/k weights, same outputs\)"):
        to_hf_config(pe)


def test_mrope_keeps_the_configs_section():
    pe = from_hf_config({**QWEN_VL, "rope_scaling": {"mrope_section": [4, 2, 2], "rope_type": "default"}})
    assert tuple(pe.mrope_section) == (4, 2, 2)


def test_mla_interleaves_by_default_as_deepseek_v3():
    from posenc.hf import mla_from_hf_config

    config = {"model_type": "deepseek_v3", "hidden_size": 64, "num_attention_heads": 4, "head_dim": 8,
              "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "max_position_embeddings": 128}
    assert mla_from_hf_config(config).rope.layout == "interleaved"  # rope_interleave left out: HF's default


def test_a_llama_rotary_module_is_found_with_its_style():
    from posenc.hf import find_rotary_modules

    found = find_rotary_modules(_tiny_llama())
    assert [(name, style) for name, _, style in found] == [("model.rotary_emb", "llama")]


def test_a_single_rope_module_refuses_a_dict_of_encodings():
    rope = posenc.get_encoding("rope", dim=32, n_heads=2)
    with pytest.raises(ValueError, match=r"'model\.rotary_emb' \(LlamaRotaryEmbedding\) has a single RoPE; got a dict "
                                         r"of encodings per layer type \['full_attention'\]"):
        patch_rotary(_tiny_llama(), {"full_attention": rope})


def test_changed_frequencies_are_refused_and_the_message_adds_no_note_for_float32_buffers():
    model = _tiny_llama()
    with torch.no_grad():
        model.model.rotary_emb.inv_freq.mul_(1.01)  # not what the config gives
    with pytest.raises(ValueError, match=r"by \S+ at positions < 31: the model computes RoPE in a way posenc does not "
                                         r"reproduce; not patched\.$"):
        patch_rotary(model)


def test_gptj_is_probed_below_its_table_length():
    transformers = pytest.importorskip("transformers")
    model = transformers.GPTJForCausalLM(transformers.GPTJConfig(
        vocab_size=50, n_embd=32, n_layer=1, n_head=2, n_positions=20, rotary_dim=8)).eval()  # 20 < 64 probe rows
    tokens = torch.randint(0, 50, (1, 12))
    with torch.no_grad():
        before = model(input_ids=tokens).logits
        patch_rotary(model)
        torch.testing.assert_close(model(input_ids=tokens).logits, before, rtol=1e-5, atol=1e-5)


# -- surviving mutants of the seed-3 sample (hf) ----------------------------------------------------------------------
LLAMA = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 128}


def test_log_n_scaling_is_refused_because_hf_rotates_q_and_k_alike():
    rope = posenc.get_encoding("rope", dim=32, n_heads=2, scaling={"rope_type": "default", "logn": True})
    with pytest.raises(ValueError, match=r"log-n scaling multiplies queries only, but HF applies one \(cos, sin\) to "
                                         r"both q and k; remove 'logn' from the scaling\."):
        patch_rotary(_tiny_llama(), rope)


def test_config_sizes_below_one_are_refused():
    with pytest.raises(ValueError, match=r"from_hf_config: num_attention_heads must be an int >= 1; got 0\."):
        from_hf_config({**LLAMA, "num_attention_heads": 0})


def test_mrope_probe_positions_differ_per_axis():
    from posenc.hf import _probe_positions

    pos = _probe_positions(torch.nn.Module(), "mrope", torch.device("cpu"))  # no length limit: 64 positions
    p = torch.arange(64)
    assert torch.equal(pos, torch.stack((p, p // 2, (3 * p) % 64))[:, None])  # (3, 1, T): time, height, width
    assert _probe_positions(torch.nn.Module(), "llama", torch.device("cpu")).shape == (1, 64)


def test_axial_rope_is_pointed_to_posencs_own():
    with pytest.raises(ValueError, match=r"rope_type 'axial' \(2-D vision RoPE\) is not the 1-D `rope` encoding; use "
                                         r"posenc's `axial_rope`"):
        from_hf_config({**LLAMA, "rope_scaling": {"rope_type": "axial"}})


@pytest.mark.parametrize("fraction", [0, 0.0, 1.5])
def test_partial_rotary_factor_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(ValueError, match=rf"partial_rotary_factor must be in \(0, 1\]; got {fraction!r}\."):
        from_hf_config({**LLAMA, "partial_rotary_factor": fraction})


def test_a_model_with_only_unknown_rotary_modules_names_them():
    class FooRotaryEmbedding(torch.nn.Module):  # no inv_freq: not one posenc knows
        pass

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), FooRotaryEmbedding())
    with pytest.raises(TypeError, match=r"found no text rotary module posenc can replace in Sequential \(1: "
                                        r"FooRotaryEmbedding\)"):
        patch_rotary(model)


def test_a_per_layer_type_export_has_the_hidden_size():
    full = posenc.get_encoding("rope", dim=64, n_heads=4, max_seq_len=128)
    sliding = posenc.get_encoding("rope", dim=64, n_heads=4, max_seq_len=128, base=1000.0)
    config = to_hf_config({"full_attention": full, "sliding_attention": sliding})
    assert (config["num_attention_heads"], config["head_dim"], config["hidden_size"]) == (4, 16, 64)


# -- surviving mutants of the seed-4 sample (hf) ----------------------------------------------------------------------


def _tiny_gptj():
    transformers = pytest.importorskip("transformers")
    return transformers.GPTJForCausalLM(transformers.GPTJConfig(
        vocab_size=50, n_embd=32, n_layer=1, n_head=2, n_positions=20, rotary_dim=8)).eval()


def test_gptj_refuses_a_half_split_rope_with_its_pairing():
    rope = posenc.get_encoding("rope", dim=32, n_heads=2, rotary_dim=8, layout="half")
    with pytest.raises(ValueError, match=r"pairs channels with pairs \(2i, 2i \+ 1\) \(layout='interleaved'\); the "
                                         r"encoding uses layout='half'"):
        patch_rotary(_tiny_gptj(), rope)


def test_log_n_export_says_where_qwen_keeps_it():
    rope = posenc.get_encoding("rope", dim=64, n_heads=4, scaling={"rope_type": "default", "logn": True})
    with pytest.raises(ValueError, match=r"no log-n query scaling; remove 'logn' from the scaling \(Qwen-1's "
                                         r"use_logn_attn lives in its own modeling code\)\."):
        to_hf_config(rope)


def test_yarn_without_a_factor_stretches_to_max_position_embeddings():
    pe = from_hf_config({**LLAMA, "rope_scaling": {"rope_type": "yarn", "original_max_position_embeddings": 32}})
    assert pe.scaling["factor"] == pytest.approx(128 / 32)


def test_mla_keeps_the_configs_base():
    from posenc.hf import mla_from_hf_config

    config = {"model_type": "deepseek_v3", "hidden_size": 64, "num_attention_heads": 4, "head_dim": 8,
              "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "max_position_embeddings": 128, "rope_theta": 50000.0}
    assert mla_from_hf_config(config).rope.base == 50000.0


def test_patch_rotary_says_when_there_is_no_rotary_module_at_all():
    with pytest.raises(TypeError, match=r"found no text rotary module posenc can replace in Linear \(no "
                                        r"\*RotaryEmbedding module\)"):
        patch_rotary(torch.nn.Linear(2, 2))


def test_a_model_with_a_known_and_an_unknown_rotary_module_is_not_patched():
    class FooRotaryEmbedding(torch.nn.Module):
        pass

    model = torch.nn.Sequential(_tiny_llama(), FooRotaryEmbedding())
    with pytest.raises(TypeError, match=r"^patch_rotary: Sequential also has rotary modules posenc does not know how "
                                        r"to replace: \[\('1', 'FooRotaryEmbedding'\)\]"):
        patch_rotary(model)
    assert not any(type(m).__name__.startswith("Posenc") for m in model.modules())


def test_the_multimodal_replacement_scales_attention_by_one():
    from posenc.hf import PosencMultimodalRotaryEmbedding

    mrope = from_hf_config({**QWEN_VL, "rope_scaling": {"mrope_section": [4, 2, 2], "rope_type": "default"}})
    assert PosencMultimodalRotaryEmbedding(mrope).attention_scaling == 1.0  # as Qwen2-VL's own (default RoPE)


def test_gemma3_per_layer_type_frequencies_are_checked_and_named():
    transformers = pytest.importorskip("transformers")
    model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=64, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0}})).eval()
    rotary = model.model.rotary_emb
    with torch.no_grad():
        rotary.full_attention_inv_freq.mul_(1.01)  # not what the config gives
    with pytest.raises(ValueError, match=r"differ from 'model\.rotary_emb' \(Gemma3RotaryEmbedding, "
                                         r"layer_type='full_attention'\)"):
        patch_rotary(model)


# -- surviving mutants of the seed-5 sample (hf) ----------------------------------------------------------------------
GPTJ = {"model_type": "gptj", "n_embd": 4096, "n_head": 16, "n_positions": 2048, "rotary_dim": 64}


def test_an_interleaved_mrope_export_says_to_build_it_half_split():
    mrope = posenc.get_encoding("mrope", dim=64, n_heads=4, layout="interleaved")
    with pytest.raises(ValueError, match=r"Qwen2-VL / Qwen3-VL pair channels with rotate_half; the mrope encoding "
                                         r"uses layout='interleaved'\. Hint: build it with layout='half'\."):
        to_hf_config(mrope)


def test_exported_factor_lists_are_json_lists():
    rope = posenc.get_encoding("rope", dim=64, n_heads=4, max_seq_len=128, scaling={
        "rope_type": "longrope", "short_factor": (1.0,) * 8, "long_factor": (2.0,) * 8,
        "original_max_position_embeddings": 32, "factor": 4.0})
    params = to_hf_config(rope)["rope_parameters"]
    assert params["short_factor"] == [1.0] * 8 and params["long_factor"] == [2.0] * 8


def test_gptj_takes_an_explicit_rotary_dim_over_the_configs():
    assert from_hf_config(GPTJ).rotary_dim == 64
    assert from_hf_config(GPTJ, rotary_dim=32).rotary_dim == 32


def test_longrope_without_a_factor_stretches_to_max_position_embeddings():
    pe = from_hf_config({**LLAMA, "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 8,
                                                   "long_factor": [2.0] * 8, "original_max_position_embeddings": 32}})
    assert pe.scaling["factor"] == pytest.approx(128 / 32)


def test_mla_needs_head_dim_equal_to_the_rope_part():
    from posenc.hf import mla_from_hf_config

    config = {"model_type": "deepseek_v3", "hidden_size": 64, "num_attention_heads": 4, "head_dim": 16,
              "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "max_position_embeddings": 128}
    with pytest.raises(ValueError, match=r"expected head_dim = qk_rope_head_dim = 8 in the config \(as "
                                         r"DeepseekV3Config sets it\); got an encoding of head_dim 16\."):
        mla_from_hf_config(config)


def test_to_scaled_back_to_default_drops_the_models_scaling_option():
    model = posenc.Transformer(posenc.TransformerConfig(
        vocab_size=11, dim=16, n_heads=2, n_layers=1, encoding="rope", max_seq_len=32,
        encoding_options={"scaling": {"rope_type": "linear", "factor": 2.0}}))
    to_scaled(model, rope_type="default", inplace=True)
    assert "scaling" not in model.cfg.encoding_options
