"""Hugging Face interop: configs load into `rope`, posenc's RoPE swaps into a tiny random LlamaForCausalLM with
identical logits, and `to_scaled` turns a trained posenc model's rope into a scaled one. Offline: no downloads."""

from __future__ import annotations

import inspect

import pytest
import torch

from posenc import Transformer, TransformerConfig
from posenc.encodings.rope import RoPE, rope_frequencies
from posenc.hf import PosencRotaryEmbedding, from_hf_config, patch_rotary, to_scaled

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN, HEADS, LAYERS, ORIGINAL = 100, 64, 4, 2, 32
HEAD_DIM = HIDDEN // HEADS
SEQ = 48  # past ORIGINAL, so dynamic grows and longrope switches to its long factors

ROPE_PARAMETERS = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    "longrope": {"rope_type": "longrope", "original_max_position_embeddings": ORIGINAL, "factor": 4.0,
                 "short_factor": [1.0 + 0.05 * i for i in range(HEAD_DIM // 2)],
                 "long_factor": [1.0 + 0.5 * i for i in range(HEAD_DIM // 2)]},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": ORIGINAL // 2},
}


def _llama(rope_type: str, seed: int = 0):
    params = {**ROPE_PARAMETERS[rope_type], "rope_theta": 10000.0}
    max_len = ORIGINAL if rope_type in ("default", "linear", "dynamic") else 4 * ORIGINAL
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128,
                                      num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                                      max_position_embeddings=max_len, rope_parameters=params,
                                      attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharpen attention so that the positions matter (the random init is nearly uniform)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
            layer.self_attn.k_proj.weight.mul_(6.0)
    return model


def _logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits


def _tokens(length: int = SEQ) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("rope_type", sorted(ROPE_PARAMETERS))
def test_patch_rotary_keeps_logits(rope_type):
    model = _llama(rope_type)
    tokens = _tokens()
    before = _logits(model, tokens)
    pe = from_hf_config(model.config)
    assert (pe.scaling is None) == (rope_type == "default")
    if pe.scaling is not None:
        assert pe.scaling["rope_type"] == rope_type
    patch_rotary(model, pe)
    assert isinstance(model.model.rotary_emb, PosencRotaryEmbedding)
    torch.testing.assert_close(_logits(model, tokens), before, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
def test_patched_length_dependent_decoding_matches_hf_kv_cache(rope_type):
    """Token-by-token decoding with HF's own cache: HF's rope and posenc's give the same logits, and both keep cached
    keys at the frequencies of their step (so they differ from a full forward past the training length)."""
    tokens = _tokens(42)
    prefill = 28

    def decode(model) -> torch.Tensor:
        # transformers 5 calls the cache argument `cache`, 4.x `past_key_values`
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        with torch.no_grad():
            out = model(input_ids=tokens[:, :prefill], use_cache=True)
            cache, logits = getattr(out, name), [out.logits]
            for t in range(prefill, tokens.shape[1]):
                out = model(input_ids=tokens[:, t:t + 1], use_cache=True, **{name: cache})
                cache = getattr(out, name)
                logits.append(out.logits)
        return torch.cat(logits, dim=1)

    hf_steps = decode(_llama(rope_type))
    model = _llama(rope_type)
    patch_rotary(model, from_hf_config(model.config))
    ours = decode(model)
    torch.testing.assert_close(ours, hf_steps, atol=2e-5, rtol=1e-4)
    # up to the training length nothing grows: the same as a full forward of those tokens
    short = _logits(_llama(rope_type), tokens[:, :ORIGINAL])
    torch.testing.assert_close(ours[:, :ORIGINAL], short, atol=2e-5, rtol=1e-4)
    # a full forward of all 42 tokens rotates every key with the length-44 frequencies instead
    full = _logits(_llama(rope_type), tokens)
    assert (ours[:, ORIGINAL:] - full[:, ORIGINAL:]).abs().max() > 1e-3


def test_swapping_another_method_changes_logits():
    model = _llama("default")
    tokens = _tokens()
    before = _logits(model, tokens)
    yarn = from_hf_config({**model.config.to_dict(), "max_position_embeddings": 4 * ORIGINAL,
                           "rope_parameters": {"rope_type": "yarn", "factor": 4.0,
                                               "original_max_position_embeddings": ORIGINAL}})
    after = _logits(patch_rotary(model, yarn), tokens)
    assert torch.isfinite(after).all()
    assert (after - before).abs().max() > 1e-2
    # still a language model over the same vocabulary: similar scale of logits
    assert 0.5 < after.std() / before.std() < 2.0


# -- from_hf_config ----------------------------------------------------------------------------------------------------
def test_from_hf_config_dicts():
    llama31 = {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 131072,
               "rope_theta": 500000.0, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                        "original_max_position_embeddings": 8192,
                                                        "rope_type": "llama3"}}
    pe = from_hf_config(llama31)
    assert (pe.head_dim, pe.rotary_dim, pe.base, pe.layout) == (128, 128, 500000.0, "half")
    assert pe.scaling["rope_type"] == "llama3" and pe.scaling["original_max_position_embeddings"] == 8192

    legacy = {"hidden_size": 256, "num_attention_heads": 4, "max_position_embeddings": 2048,
              "rope_scaling": {"type": "linear", "factor": 4.0}}
    pe = from_hf_config(legacy)
    torch.testing.assert_close(pe.inv_freq(), rope_frequencies(64) / 4.0)

    partial = {"hidden_size": 256, "num_attention_heads": 4, "max_position_embeddings": 2048,
               "partial_rotary_factor": 0.5, "rope_theta": 25000.0, "rope_scaling": None}
    pe = from_hf_config(partial)
    assert (pe.rotary_dim, pe.base, pe.scaling) == (32, 25000.0, None)

    explicit_head_dim = {"hidden_size": 5120, "num_attention_heads": 32, "head_dim": 128,
                         "max_position_embeddings": 1024}
    assert from_hf_config(explicit_head_dim).head_dim == 128

    phi3 = {"hidden_size": 3072, "num_attention_heads": 32, "max_position_embeddings": 131072,
            "original_max_position_embeddings": 4096,
            "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48}}
    pe = from_hf_config(phi3)
    assert pe.scaling["factor"] == 32.0 and pe.scaling["original_max_position_embeddings"] == 4096

    qwen_yarn = {"hidden_size": 1024, "num_attention_heads": 16, "max_position_embeddings": 32768,
                 "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
    assert from_hf_config(qwen_yarn).attention_scale == pytest.approx(0.1 * torch.tensor(4.0).log().item() + 1)


def test_from_hf_config_object_with_partial_rotary_matches_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(hidden_size=128, num_attention_heads=2, max_position_embeddings=256,
                                      rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                                       "original_max_position_embeddings": 64,
                                                       "partial_rotary_factor": 0.5})
    pe = from_hf_config(config)
    inv_freq, scale = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    assert pe.rotary_dim == 32
    torch.testing.assert_close(pe.inv_freq().float(), inv_freq, rtol=2e-6, atol=0)
    assert pe.attention_scale == pytest.approx(scale)


@pytest.mark.parametrize("config,message", [
    ({"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 32,
      "rope_scaling": {"type": "linear", "factor": 0.5}}, "factor must be a number >= 1"),
    ({"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 32,
      "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 3, "long_factor": [1.0] * 8}}, "length 3"),
    ({"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 32,
      "rope_parameters": {"rope_type": "axial"}}, "axial"),
    ({"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 32,
      "rope_parameters": {"rope_type": "yarn", "factor": 2.0, "mrope_section": [2, 3, 3]}}, "mrope"),
    ({"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 32,
      "rope_parameters": {"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "default"}}},
     "layer_type"),
    ({"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 32,
      "rope_scaling": {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 16}}, "dynamic"),
    ({"hidden_size": 64, "max_position_embeddings": 32}, "num_attention_heads"),
])
def test_from_hf_config_invalid_raises(config, message):
    with pytest.raises(ValueError, match=message):
        from_hf_config(config)


BASE = {"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 32}


@pytest.mark.parametrize(("config", "error", "words"), [
    # a quoted number used to be parsed by float(): "1e6" became a base silently
    ({**BASE, "rope_theta": "1e6"}, TypeError, ["rope_theta must be a number", "'1e6'"]),
    ({**BASE, "rope_parameters": {"rope_type": "default", "rope_theta": "10000"}}, TypeError,
     ["rope_parameters['rope_theta'] must be a number", "'10000'"]),
    ({**BASE, "partial_rotary_factor": "0.5"}, TypeError, ["partial_rotary_factor must be a number"]),
    ({**BASE, "rope_parameters": {"rope_type": "linear", "factor": "4"}}, TypeError, ["['factor'] must be a number"]),
    ({**BASE, "rope_parameters": {"rope_type": "longrope", "short_factor": ["1"] * 8, "long_factor": [1.0] * 8,
                                  "original_max_position_embeddings": 16}}, TypeError, ["short_factor", "numbers"]),
    ({**BASE, "rope_parameters": {"rope_type": "yarn", "factor": 2.0,
                                  "original_max_position_embeddings": 16.0}}, TypeError,
     ["original_max_position_embeddings'] must be an int"]),
    # hidden_size // num_attention_heads used to drop the remainder: 100 // 3 = 33 per head, 1 channel lost
    ({**BASE, "hidden_size": 100, "num_attention_heads": 3}, ValueError,
     ["hidden_size 100 is not divisible by num_attention_heads 3", "set head_dim"]),
    ({**BASE, "num_attention_heads": "4"}, TypeError, ["num_attention_heads must be an int", "'4'"]),
    ({**BASE, "head_dim": 16.0}, TypeError, ["head_dim must be an int"]),
    # "false" is a non-empty string: bool("false") is True, so it used to switch Qwen3-VL's interleaving on
    ({**BASE, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": "false"}},
     TypeError, ["mrope_interleaved'] must be true or false", "\"false\""]),
    ({**BASE, "rope_parameters": {"rope_type": "yarn", "factor": 2.0, "truncate": "false"}}, TypeError,
     ["['truncate'] must be true or false"]),
    ({**BASE, "rope_parameters": {"rope_type": "default", "mrope_section": [2, "3", 3]}}, TypeError,
     ["mrope_section'] must be a list of ints"]),
])
def test_from_hf_config_refuses_values_of_the_wrong_type(config, error, words):
    with pytest.raises(error) as info:
        from_hf_config(config)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_from_hf_config_bools_are_real_bools():
    qwen = {**BASE, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}}
    assert from_hf_config({**qwen, "rope_parameters": {**qwen["rope_parameters"], "mrope_interleaved": False}}
                          ).mrope_interleaved is False
    assert from_hf_config({**qwen, "rope_parameters": {**qwen["rope_parameters"], "mrope_interleaved": True}}
                          ).mrope_interleaved is True
    from posenc.hf import mla_from_hf_config
    deepseek = {**BASE, "num_attention_heads": 4, "head_dim": 8, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8}
    assert mla_from_hf_config({**deepseek, "rope_interleave": False}).rope.layout == "half"
    with pytest.raises(TypeError, match="rope_interleave must be true or false"):
        mla_from_hf_config({**deepseek, "rope_interleave": "false"})


@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen3_vl_text", "qwen3_vl_moe_text", "qwen3_5_text",
                                        "qwen3_omni_moe_text"])
def test_qwen3_vl_family_interleaves_mrope_without_the_flag(model_type):
    """Qwen3-VL's text rotary interleaves t/h/w whatever the dict says; its *text* config (what patch_rotary reads
    from the rotary module) is model_type "qwen3_vl_text", so the rule must hold for the family, not one name."""
    config = {**BASE, "model_type": model_type,
              "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}}
    assert from_hf_config(config).mrope_interleaved is True


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen2_vl_text", None])
def test_qwen2_vl_mrope_stays_blocked(model_type):
    config = {**BASE, "model_type": model_type,
              "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}}
    assert from_hf_config(config).mrope_interleaved is False


def test_qwen3_vl_text_config_object_is_interleaved():
    text = transformers.Qwen3VLConfig(text_config={"hidden_size": 64, "num_attention_heads": 4, "head_dim": 16,
                                                   "num_key_value_heads": 2, "max_position_embeddings": 32,
                                                   "rope_parameters": {"rope_type": "default",
                                                                       "mrope_section": [2, 3, 3]}}).get_text_config()
    assert text.model_type == "qwen3_vl_text"
    assert from_hf_config(text).mrope_interleaved is True


@pytest.mark.parametrize("rope_type", ["longrope", "yarn", "llama3"])
def test_phi3_top_level_original_length_wins_over_the_nested_one(rope_type):
    """transformers' standardize_rope_params gives Phi-3's top-level original_max_position_embeddings priority over
    the one inside rope_scaling; so must posenc (the nested one would change every long-factor switch and ratio)."""
    nested = {"rope_type": rope_type, "original_max_position_embeddings": 2048}
    if rope_type == "longrope":
        nested.update(short_factor=[1.0] * 48, long_factor=[2.0] * 48)
    else:
        nested["factor"] = 8.0
    config = {"hidden_size": 3072, "num_attention_heads": 32, "max_position_embeddings": 131072,
              "original_max_position_embeddings": 4096, "rope_scaling": nested}
    pe = from_hf_config(config)
    assert pe.scaling["original_max_position_embeddings"] == 4096
    if rope_type == "longrope":
        assert pe.scaling["factor"] == 131072 / 4096
        hf = transformers.Phi3Config(hidden_size=3072, num_attention_heads=32, max_position_embeddings=131072,
                                     original_max_position_embeddings=4096, rope_parameters=dict(nested))
        assert hf.rope_parameters["original_max_position_embeddings"] == 4096  # what transformers itself uses
        assert from_hf_config(hf).scaling["original_max_position_embeddings"] == 4096


def test_from_hf_config_layer_type():
    config = {"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 32,
              "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    full = from_hf_config(config, layer_type="full_attention")
    assert full.base == 1e6 and full.scaling["factor"] == 8.0
    assert from_hf_config(config, layer_type="sliding_attention").scaling is None


def test_patch_rotary_rejects_mismatches():
    model = _llama("default")
    with pytest.raises(ValueError, match="rotate_half"):
        patch_rotary(model, RoPE(dim=HIDDEN, n_heads=HEADS, layout="interleaved"))
    with pytest.raises(ValueError, match="rotary width"):
        patch_rotary(model, RoPE(dim=HIDDEN, n_heads=2))
    with pytest.raises(ValueError, match="log-n"):
        patch_rotary(model, RoPE(dim=HIDDEN, n_heads=HEADS, scaling={"rope_type": "default", "logn": True}))
    with pytest.raises(TypeError, match="rotary_emb"):
        patch_rotary(torch.nn.Linear(2, 2), RoPE(dim=HIDDEN, n_heads=HEADS))
    from posenc import get_encoding

    with pytest.raises(TypeError, match="rope"):
        patch_rotary(model, get_encoding("xpos", dim=HIDDEN, n_heads=HEADS, layout="half"))


# -- to_scaled ---------------------------------------------------------------------------------------------------------
def _posenc_model(max_len: int = 16) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(kind="decoder", vocab_size=50, dim=32, n_layers=2, n_heads=4, max_seq_len=max_len,
                            encoding="rope")
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for block in model.decoder.blocks:
            block.attn.q_proj.weight.mul_(8.0)
            block.attn.k_proj.weight.mul_(8.0)
    return model


def test_to_scaled_linear_is_position_interpolation(tmp_path):
    model = _posenc_model()
    scaled = to_scaled(model, rope_type="linear", factor=4.0)
    assert model.pe.scaling is None and model.cfg.encoding_options == {}  # the trained model is untouched
    assert scaled.pe.scaling["original_max_position_embeddings"] == 16
    assert scaled.cfg.encoding_options["scaling"]["rope_type"] == "linear"
    tokens = torch.randint(0, 50, (2, 12))
    pos = torch.arange(12)
    with torch.no_grad():
        # PI: the scaled model at positions 4p sees exactly what the trained model saw at positions p
        torch.testing.assert_close(scaled(tokens, positions=4 * pos), model(tokens, positions=pos),
                                   atol=1e-5, rtol=1e-4)
        assert (scaled(tokens) - model(tokens)).abs().max() > 1e-3
    scaled.save(tmp_path / "scaled.pt")
    loaded = Transformer.load(tmp_path / "scaled.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), scaled(tokens))


def test_to_scaled_encoding_and_back():
    pe = RoPE(dim=32, n_heads=4, max_seq_len=64, base=500000.0)
    yarn = to_scaled(pe, rope_type="yarn", factor=8.0)
    assert yarn is not pe and pe.scaling is None
    assert (yarn.base, yarn.layout, yarn.rotary_dim) == (pe.base, pe.layout, pe.rotary_dim)
    assert yarn.scaling["original_max_position_embeddings"] == 64
    back = to_scaled(yarn, rope_type="default")
    assert back.scaling is None
    torch.testing.assert_close(back.cos_sin(torch.arange(100)), pe.cos_sin(torch.arange(100)))
    same = to_scaled(pe, rope_type="ntk", factor=2.0, inplace=True)
    assert same is pe and pe.scaling["rope_type"] == "ntk"
    torch.testing.assert_close(pe.cos_sin(torch.arange(10)), to_scaled(back, rope_type="ntk", factor=2.0).cos_sin(
        torch.arange(10)))
    with pytest.raises(ValueError, match="factor"):
        to_scaled(pe, rope_type="linear", factor=0.1)
    with pytest.raises(TypeError, match="Transformer or a RoPE"):
        to_scaled(torch.nn.Linear(2, 2), rope_type="linear", factor=2.0)
    other = Transformer(TransformerConfig(dim=32, n_heads=4, encoding="sinusoidal"))
    with pytest.raises(ValueError, match="scalings apply to 'rope'"):
        to_scaled(other, rope_type="linear", factor=2.0)


# -- to_hf_config: the way back ----------------------------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from posenc.encodings.mrope import MRoPE  # noqa: E402
from posenc.hf import HF_ROPE_TYPES, to_hf_config  # noqa: E402


@st.composite
def _encodings(draw):
    rope_type = draw(st.sampled_from(HF_ROPE_TYPES))
    head_dim = draw(st.sampled_from([16, 32, 64, 80]))
    n_heads = draw(st.sampled_from([1, 2, 4]))
    fraction = 1.0 if rope_type == "proportional" else draw(st.sampled_from([1.0, 0.5, 0.25]))
    rotary = int(head_dim * fraction)
    base = draw(st.sampled_from([10000.0, 500000.0, 1e6]))
    original = draw(st.sampled_from([64, 256, 4096]))
    factor = draw(st.sampled_from([1.0, 2.0, 4.0, 8.0]))
    scaling = {"rope_type": rope_type, "original_max_position_embeddings": original}
    if rope_type == "default":
        scaling = None
    elif rope_type in ("linear", "dynamic", "llama3"):
        scaling["factor"] = factor
        if rope_type == "llama3":
            scaling.update(low_freq_factor=1.0, high_freq_factor=draw(st.sampled_from([2.0, 4.0])))
    elif rope_type == "yarn":
        scaling.update(factor=factor, beta_fast=draw(st.sampled_from([32.0, 16.0])),
                       truncate=draw(st.booleans()))
        if draw(st.booleans()):
            scaling["attention_factor"] = 1.25
    elif rope_type == "longrope":
        scaling.update(factor=factor, short_factor=[1.0 + 0.01 * i for i in range(rotary // 2)],
                       long_factor=[1.0 + 0.3 * i for i in range(rotary // 2)])
    else:  # proportional
        scaling = {"rope_type": "proportional", "partial_rotary_factor": draw(st.sampled_from([0.25, 0.5, 1.0])),
                   "factor": factor}
    return RoPE(dim=n_heads * head_dim, n_heads=n_heads, max_seq_len=4 * original, base=base, rotary_dim=rotary,
                scaling=scaling)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_encodings())
def test_to_hf_config_round_trips_every_type(pe):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = to_hf_config(pe)
    back = from_hf_config(config)
    assert (back.n_heads, back.head_dim, back.rotary_dim, back.base, back.layout) == \
        (pe.n_heads, pe.head_dim, pe.rotary_dim, pe.base, pe.layout)
    def used(scaling):  # linear and proportional do not read the training length (posenc keeps it for log-n)
        if scaling is not None and scaling["rope_type"] in ("linear", "proportional"):
            return {k: v for k, v in scaling.items() if k != "original_max_position_embeddings"}
        return scaling

    assert used(back.scaling) == used(pe.scaling)
    assert back.attention_scale == pe.attention_scale
    long = None if pe.scaling is None else 3 * pe.scaling["original_max_position_embeddings"]
    for seq_len in (None, long):
        torch.testing.assert_close(back.inv_freq(seq_len=seq_len), pe.inv_freq(seq_len=seq_len), rtol=0, atol=0)
    # and transformers reads the same numbers from it
    hf_config = transformers.LlamaConfig(**config)
    rope_type = config["rope_parameters"]["rope_type"]
    if rope_type == "default":
        want, scale = rope_frequencies(pe.rotary_dim, pe.base), 1.0
    else:
        want, scale = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu", seq_len=long)
    torch.testing.assert_close(pe.inv_freq(seq_len=long).float(), want.float(), rtol=2e-6, atol=0)
    assert float(scale) == pytest.approx(pe.attention_scale, rel=1e-6)


def test_to_hf_config_layer_types_mrope_gptj_and_refusals():
    gemma = {"sliding_attention": RoPE(dim=64, n_heads=4, max_seq_len=128, base=1e4),
             "full_attention": RoPE(dim=64, n_heads=4, max_seq_len=128, base=1e6,
                                    scaling={"rope_type": "linear", "factor": 8.0})}
    config = to_hf_config(gemma)
    assert config["rope_parameters"]["full_attention"]["rope_type"] == "linear"
    for layer_type, pe in gemma.items():
        back = from_hf_config(config, layer_type=layer_type)
        assert back.base == pe.base and back.scaling == pe.scaling

    qwen3 = MRoPE(dim=64, n_heads=4, base=1e6, mrope_section=[2, 3, 3], mrope_interleaved=True)
    back = from_hf_config(to_hf_config(qwen3))
    assert isinstance(back, MRoPE) and back.mrope_section == (2, 3, 3) and back.mrope_interleaved

    gptj = RoPE(dim=64, n_heads=4, layout="interleaved", rotary_dim=8, max_seq_len=64)
    back = from_hf_config(to_hf_config(gptj, model_type="gptj"))
    assert (back.layout, back.rotary_dim, back.head_dim) == ("interleaved", 8, 16)

    with pytest.raises(ValueError, match="convert_rope_layout"):
        to_hf_config(gptj)
    with pytest.raises(ValueError, match="no Hugging Face equivalent"):
        to_hf_config(RoPE(dim=64, n_heads=4, scaling={"rope_type": "ntk", "factor": 2.0}))
    with pytest.raises(ValueError, match="log-n"):
        to_hf_config(RoPE(dim=64, n_heads=4, scaling={"rope_type": "default", "logn": True}))
    with pytest.raises(ValueError, match="different"):
        to_hf_config({"a": RoPE(dim=64, n_heads=4), "b": RoPE(dim=64, n_heads=2)})
    with pytest.raises(TypeError, match="rope"):
        from posenc import get_encoding

        to_hf_config(get_encoding("alibi", dim=64, n_heads=4))
