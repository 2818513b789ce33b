"""`patch_rotary(model)` on tiny random models of released 2026 families whose RoPE goes beyond one module per model:
per-layer theta with NoPE layers (GraniteSWA, Muse Spark), per-layer partial-rotary lists (Step 3.7), Gemma 4's
`proportional` with a per-layer-type head size, and Hunyuan's NTK-alpha. Each patched model must give the HF model's
outputs below and above the training length, and the same greedy tokens decoded one at a time with the KV cache.

Several of these families have no text-only ``*ForCausalLM`` class (Muse Spark, Step 3.7 ship only the multimodal
one), so the harness runs the text model and reads logits through the tied embedding, the same for every family.
Offline: models are built from configs."""

from __future__ import annotations

import pytest
import torch

from posenc.encodings.rope import RoPE
from posenc.hf import find_rotary_modules, from_hf_config, patch_rotary, to_hf_config

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN, HEADS, ORIGINAL = 100, 64, 4, 32
SHORT, LONG = 16, 48  # below and above ORIGINAL (max_position_embeddings)
PROMPT, NEW = 26, 10  # greedy decoding crosses ORIGINAL
TEXT = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=HEADS, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            max_position_embeddings=ORIGINAL)


def _granite_swa():  # one rotary module per distinct non-zero layer theta; theta 0 = NoPE
    from transformers.models.granite_swa import GraniteSWAConfig, GraniteSWAForCausalLM
    return GraniteSWAForCausalLM(GraniteSWAConfig(**TEXT, sliding_window=8,
                                                  layer_rope_theta=[10000.0, 0, 500000.0, 10000.0]))


def _muse_spark():  # default layer_rope_theta: every 4th layer from the last is NoPE with full attention
    from transformers.models.muse_spark.configuration_muse_spark import MuseSparkTextConfig
    from transformers.models.muse_spark.modeling_muse_spark import MuseSparkTextModel
    return MuseSparkTextModel(MuseSparkTextConfig(**TEXT, head_dim=16, sliding_window=8, moe_intermediate_size=32,
                                                  num_local_experts=2, num_experts_per_tok=1, moe_hidden_size=32,
                                                  mlp_layer_types=["dense"] * 4))


def _step3p7():  # per-layer rope_theta and partial_rotary_factors lists, folded per layer type by the config
    from transformers.models.step3p7.configuration_step3p7 import Step3p7TextConfig
    from transformers.models.step3p7.modeling_step3p7 import Step3p7TextModel
    return Step3p7TextModel(Step3p7TextConfig(**TEXT, head_dim=16, sliding_window=8,
                                              layer_types=["sliding_attention", "full_attention"] * 2,
                                              rope_theta=[10000.0, 1e6, 10000.0, 1e6],
                                              partial_rotary_factors=[1.0, 0.5, 1.0, 0.5],
                                              moe_intermediate_size=32, mlp_layer_types=["dense"] * 4))


def _gemma4():  # full-attention layers: proportional (p-RoPE, a quarter of the pairs turn) on global_head_dim = 32
    return transformers.Gemma4ForCausalLM(transformers.Gemma4TextConfig(
        **TEXT, head_dim=16, global_head_dim=32, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"] * 2, vocab_size_per_layer_input=VOCAB,
        hidden_size_per_layer_input=8))


def _hunyuan_dense():  # "dynamic" with alpha: static NTK-alpha (its factor is ignored)
    from transformers.models.hunyuan_v1_dense import HunYuanDenseV1Config, HunYuanDenseV1ForCausalLM
    return HunYuanDenseV1ForCausalLM(HunYuanDenseV1Config(
        **TEXT, head_dim=16, rope_parameters={"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0,
                                              "rope_theta": 10000.0}))


def _hunyuan_moe():  # the MoE model's rotary reads alpha the same way
    from transformers.models.hunyuan_v1_moe import HunYuanMoEV1Config, HunYuanMoEV1ForCausalLM
    return HunYuanMoEV1ForCausalLM(HunYuanMoEV1Config(
        **TEXT, head_dim=16, num_experts=2, moe_topk=1, moe_intermediate_size=32,
        rope_parameters={"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0, "rope_theta": 10000.0}))


def _deepseek_v4():
    """K = V (one kv projection, rotated once), the attention output de-rotated with (cos, -sin) of the same table,
    RoPE on the trailing half of each head in interleaved pairs, one cos/sin per pair; `main` (sliding layers) at
    1e4, `compress` (the compressors and indexer of the compressed layers) at 1.6e5 with YaRN."""
    from transformers.models.deepseek_v4 import DeepseekV4Config, DeepseekV4ForCausalLM
    return DeepseekV4ForCausalLM(DeepseekV4Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, moe_intermediate_size=32, num_hidden_layers=3, num_attention_heads=HEADS,
        num_key_value_heads=1, head_dim=32, partial_rotary_factor=0.5, q_lora_rank=32, num_experts_per_tok=2,
        n_routed_experts=4, n_shared_experts=1, max_position_embeddings=ORIGINAL,
        layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8}, sliding_window=8,
        o_groups=2, o_lora_rank=16, index_n_heads=2, index_head_dim=16, index_topk=4, num_nextn_predict_layers=0,
        hc_mult=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters={"main": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                         "compress": {"rope_type": "yarn", "rope_theta": 160000.0, "partial_rotary_factor": 0.5,
                                      "factor": 4.0, "original_max_position_embeddings": 8}}))


FAMILIES = {"granite_swa": _granite_swa, "muse_spark": _muse_spark, "step3p7": _step3p7, "gemma4": _gemma4,
            "hunyuan_v1_dense": _hunyuan_dense, "hunyuan_v1_moe": _hunyuan_moe, "deepseek_v4": _deepseek_v4}


SHARPENED = ("q_proj", "k_proj", "q_b_proj", "kv_proj")  # DeepSeek-V4: q_b_proj, and kv_proj for its K = V


def _build(family: str):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    with torch.no_grad():  # scale q/k so that positions matter (a random init attends almost uniformly)
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in SHARPENED:
                module.weight.mul_(6.0)
    return model


def _logits(model, input_ids, cache=None):
    out = model(input_ids=input_ids, cache=cache, use_cache=cache is not None)
    if hasattr(out, "logits"):
        return out.logits
    return out.last_hidden_state @ model.get_input_embeddings().weight.T  # text models: the tied head


def _tokens(length: int) -> torch.Tensor:
    return torch.randint(3, VOCAB - 4, (2, length), generator=torch.Generator().manual_seed(3))


def _greedy(model) -> torch.Tensor:
    """PROMPT tokens, then NEW greedy tokens decoded one at a time with a DynamicCache (positions from the cache)."""
    ids = _tokens(PROMPT)
    cache = transformers.DynamicCache(config=model.config)
    logits = _logits(model, ids, cache)
    for _ in range(NEW):
        step = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        ids = torch.cat((ids, step), dim=1)
        logits = _logits(model, step, cache)
    return ids


def _run(model) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {"short": _logits(model, _tokens(SHORT)), "long": _logits(model, _tokens(LONG)),
                "generated": _greedy(model)}


def measure(family: str) -> dict[str, float | bool]:
    """Max |logits difference| of the patched model against HF's at SHORT and LONG, greedy tokens equal, and the
    largest |logit| (what the difference is relative to)."""
    model = _build(family)
    before = _run(model)
    patch_rotary(model)
    after = _run(model)
    return {"short": float((after["short"] - before["short"]).abs().max()),
            "long": float((after["long"] - before["long"]).abs().max()),
            "scale": float(before["long"].abs().max()),
            "generation_equal": bool(torch.equal(after["generated"], before["generated"]))}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_patch_rotary_keeps_logits_and_generation(family):
    """posenc's cos/sin agree with HF's to float32 rounding of the frequencies (HF forms ``base ** (2i/d)`` in
    float32, posenc in float64): a relative error ~1e-7 per frequency, times positions < 48, moves an angle by
    ~5e-6, and the logits by that times |q||k| / sqrt(d) — about 1e-5 of the largest logit here (Muse Spark's
    normalised queries times 5.47 are the sharpest). A real change (another base, a missed NoPE layer) moves them
    by O(1)."""
    result = measure(family)
    tolerance = 1e-5 * max(1.0, result["scale"])
    assert result["short"] <= tolerance and result["long"] <= tolerance, result
    assert result["generation_equal"], result


def test_granite_swa_rotaries_keep_their_config_and_theta():
    """GraniteSWA looks up each layer's cos/sin by ``rotary_embs[i].config.rope_parameters["rope_theta"]``: the
    replacements keep the module's config, and each computes its own theta (a NoPE layer has no module)."""
    model = _build("granite_swa")
    patch_rotary(model)
    thetas = sorted(m.config.rope_parameters["rope_theta"] for m in model.model.rotary_embs)
    assert thetas == [10000.0, 500000.0]
    assert [m.encoding.base for m in model.model.rotary_embs] == thetas
    assert find_rotary_modules(model) == []


def test_gemma4_full_attention_is_proportional_on_the_global_head():
    """The full-attention encoding has Gemma 4's global head size and p-RoPE frequencies: pairs (i, i + 16) of the
    32-channel head, the first int(0.25 * 32 // 2) = 4 turning at 1e6^(-2i/32), the other 12 at frequency 0."""
    model = _build("gemma4")
    patch_rotary(model)
    full = model.model.rotary_emb.encodings["full_attention"].encoding
    assert (full.head_dim, full.rotary_dim, full.layout) == (32, 32, "half")
    want = torch.tensor([1e6 ** (-2 * i / 32) if i < 4 else 0.0 for i in range(16)], dtype=torch.float64)
    torch.testing.assert_close(full.inv_freq(), want, rtol=1e-6, atol=0)
    assert model.model.rotary_emb.encodings["sliding_attention"].encoding.head_dim == 16


def test_hunyuan_ntk_alpha_is_static_ntk_and_exports_back():
    """Hunyuan's "dynamic" + alpha is ``base * alpha^(d/(d-2))`` at every length: posenc's `ntk` with factor alpha,
    and to_hf_config writes it back as Hunyuan's dict (transformers has no static NTK otherwise)."""
    config = {"model_type": "hunyuan_v1_dense", "num_attention_heads": 4, "head_dim": 16,
              "max_position_embeddings": ORIGINAL,
              "rope_parameters": {"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0, "rope_theta": 10000.0}}
    pe = from_hf_config(config)
    assert pe.scaling["rope_type"] == "ntk" and pe.scaling["factor"] == 1000.0
    base = 10000.0 * 1000.0 ** (16 / 14)
    want = torch.tensor([base ** (-2 * i / 16) for i in range(8)], dtype=torch.float64)
    torch.testing.assert_close(pe.inv_freq(), want, rtol=1e-6, atol=0)
    out = to_hf_config(pe, model_type="hunyuan_v1_dense")
    assert out["rope_parameters"]["rope_type"] == "dynamic" and out["rope_parameters"]["alpha"] == 1000.0
    again = from_hf_config(out)
    torch.testing.assert_close(again.inv_freq(), pe.inv_freq())
    with pytest.raises(ValueError, match="no Hugging Face equivalent"):  # other families: still no static NTK
        to_hf_config(pe)


@pytest.mark.parametrize(("model_type", "params", "match"), [
    ("llama", {"rope_type": "dynamic", "alpha": 4.0, "factor": 2.0}, "Hunyuan's NTK-alpha"),
    ("hunyuan_v1_dense", {"rope_type": "linear", "alpha": 4.0, "factor": 2.0}, "Hunyuan's NTK-alpha"),
    ("hunyuan_v1_dense", {"rope_type": "dynamic", "alpha": 0.5}, "alpha must be >= 1"),
])
def test_alpha_outside_hunyuan_dynamic_is_refused(model_type, params, match):
    config = {"model_type": model_type, "num_attention_heads": 4, "head_dim": 16, "max_position_embeddings": 32,
              "rope_parameters": params}
    with pytest.raises(ValueError, match=match):
        from_hf_config(config)


def test_from_hf_config_types_alpha():
    config = {"model_type": "hunyuan_v1_dense", "num_attention_heads": 4, "head_dim": 16,
              "max_position_embeddings": 32, "rope_parameters": {"rope_type": "dynamic", "alpha": "1000"}}
    with pytest.raises(TypeError, match="alpha"):
        from_hf_config(config)
    assert isinstance(from_hf_config({**config, "rope_parameters": {"rope_type": "dynamic", "alpha": 1000}}), RoPE)


def test_deepseek_v4_per_pair_rotaries_are_interleaved_and_used_by_the_output_rotation():
    """DeepSeek-V4's rotary modules (the model's and each compressor's / indexer's) hand out one cos/sin per pair for
    ``main`` and ``compress``; posenc builds interleaved encodings of the model's rotary width, and the model then
    runs on them: q/k, the K = V entries and the conjugate rotation of the output all read the patched table, so
    another ``compress`` base changes the logits (a module left unpatched would not)."""
    model = _build("deepseek_v4")
    found = find_rotary_modules(model)
    assert len(found) == 4 and {style for _, _, style in found} == {"layer_pairs"}
    ids = _tokens(LONG)
    with torch.no_grad():
        before = _logits(model, ids)
    config = model.config
    main = from_hf_config(config, layer_type="main", rotary_dim=16)
    assert (main.layout, main.rotary_dim, main.head_dim) == ("interleaved", 16, 32)
    other = RoPE(dim=main.dim, n_heads=main.n_heads, max_seq_len=main.max_seq_len, base=1000.0, layout="interleaved",
                 rotary_dim=16)
    patch_rotary(model, {"main": main, "compress": other})
    assert find_rotary_modules(model) == []
    with torch.no_grad():
        after = _logits(model, ids)
    assert float((after - before).abs().max()) > 1e-3
    half = RoPE(dim=main.dim, n_heads=main.n_heads, max_seq_len=main.max_seq_len, base=1e4, rotary_dim=16)
    with pytest.raises(ValueError, match="layout='interleaved'"):
        patch_rotary(_build("deepseek_v4"), {"main": half, "compress": half})


# -- per-layer RoPE for posenc's own Transformer: hf_layer_config ---------------------------------------------------
def _stack_encodings(config, fields):
    from posenc import Transformer, TransformerConfig
    cfg = TransformerConfig(vocab_size=VOCAB, dim=HEADS * 16, n_layers=config.num_hidden_layers, n_heads=HEADS,
                            max_seq_len=ORIGINAL, **fields)
    model = Transformer(cfg)
    stack = model.decoder if model.decoder is not None else model.encoder
    return stack.encodings()


def test_granite_swa_layer_config_gives_each_layer_its_theta_and_nope():
    """layer_rope_theta [1e4, 0, 5e5, 1e4]: posenc's Transformer gets rope at 1e4 on layers 0 and 3, NoPE on layer
    1 and rope at 5e5 on layer 2, and each RoPE layer's cos/sin are those of the HF rotary module of its theta."""
    from posenc.hf import hf_layer_config
    model = _build("granite_swa")
    fields = hf_layer_config(model.config)
    assert fields["encoding"] == "rope" and fields["encoding_options"]["base"] == 10000.0
    assert sorted(fields["layer_encodings"]) == [1, 2] and fields["layer_encodings"][1] == {"encoding": "nope"}
    layers = _stack_encodings(model.config, fields)
    assert [type(pe).__name__ for pe in layers] == ["RoPE", "NoPE", "RoPE", "RoPE"]
    pos = torch.arange(LONG)[None]
    hf = {m.config.rope_parameters["rope_theta"]: m for m in model.model.rotary_embs}
    for i in (0, 2, 3):
        cos, sin = hf[layers[i].base](torch.zeros(1), pos)  # (1, T, head_dim), cat(f, f)
        ours_cos, ours_sin = layers[i].cos_sin(pos[0])  # (T, head_dim / 2)
        torch.testing.assert_close(ours_cos, cos[0, :, :8], rtol=0, atol=1e-5)
        torch.testing.assert_close(ours_sin, sin[0, :, :8], rtol=0, atol=1e-5)


def test_muse_spark_layer_config_and_a_theta_its_model_ignores():
    from transformers.models.muse_spark.configuration_muse_spark import MuseSparkTextConfig

    from posenc.hf import hf_layer_config
    config = _build("muse_spark").config  # default: every 4th layer from the last is NoPE
    fields = hf_layer_config(config)
    assert fields["layer_encodings"] == {3: {"encoding": "nope"}}
    assert fields["encoding_options"]["base"] == 500000.0
    odd = MuseSparkTextConfig(**{**TEXT, "head_dim": 16}, layer_rope_theta=[500000.0, 10000.0, 500000.0, 0])
    with pytest.raises(ValueError, match="applies the global rope_theta"):
        hf_layer_config(odd)


STEP = {"model_type": "step3p7_text", "num_attention_heads": HEADS, "head_dim": 16, "num_hidden_layers": 4,
        "max_position_embeddings": ORIGINAL, "layer_types": ["sliding_attention", "full_attention"] * 2}


def test_step3p7_lists_per_layer_and_per_type_agree():
    """Step 3.7's config.json lists give each layer its base and rotary width; the HF config built from them (one
    dict per layer type) gives the same layers."""
    from transformers.models.step3p7.configuration_step3p7 import Step3p7TextConfig

    from posenc.hf import hf_layer_config
    raw = {**STEP, "rope_theta": [10000.0, 1e6, 10000.0, 1e6], "partial_rotary_factors": [1.0, 0.5, 1.0, 0.5]}
    fields = hf_layer_config(raw)
    assert fields["encoding_options"]["rotary_dim"] == 16 and fields["encoding_options"]["base"] == 10000.0
    assert sorted(fields["layer_encodings"]) == [1, 3]
    assert fields["layer_encodings"][1]["rotary_dim"] == 8 and fields["layer_encodings"][1]["base"] == 1e6
    hf = Step3p7TextConfig(**{k: v for k, v in raw.items() if k != "model_type"}, vocab_size=VOCAB, hidden_size=HIDDEN,
                           intermediate_size=128, num_key_value_heads=2, moe_intermediate_size=32,
                           mlp_layer_types=["dense"] * 4)
    assert hf_layer_config(hf) == fields
    layers = _stack_encodings(hf, fields)
    assert [pe.rotary_dim for pe in layers] == [16, 8, 16, 8]


def test_step3p7_lists_that_disagree_within_a_layer_type_are_refused():
    """transformers would take the first full-attention layer's values for layer 3 too: refused, nothing built."""
    from posenc.hf import hf_layer_config
    raw = {**STEP, "rope_theta": [10000.0, 1e6, 10000.0, 2e6], "partial_rotary_factors": [1.0, 0.5, 1.0, 0.5]}
    with pytest.raises(ValueError, match=r"'full_attention' layers \[1, 3\] have different"):
        hf_layer_config(raw)
    with pytest.raises(ValueError, match="3 entries"):
        hf_layer_config({**STEP, "rope_theta": [1e4, 1e6, 1e4]})
    with pytest.raises(TypeError, match=r"rope_theta\[1\]"):
        hf_layer_config({**STEP, "rope_theta": [1e4, "1e6", 1e4, 1e6]})


def test_gemma4_layer_config_needs_one_head_size():
    from posenc.hf import hf_layer_config
    with pytest.raises(ValueError, match="different head sizes"):
        hf_layer_config(_build("gemma4").config)
    same = transformers.Gemma4TextConfig(
        **TEXT, head_dim=16, global_head_dim=16, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"] * 2, vocab_size_per_layer_input=VOCAB,
        hidden_size_per_layer_input=8)
    fields = hf_layer_config(same)
    full = fields["layer_encodings"][1]
    assert full["scaling"]["rope_type"] == "proportional" and full["base"] == 1e6
    assert sorted(fields["layer_encodings"]) == [1, 3]


def test_readme_lists_the_released_families():
    import re
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- hf-released:begin -->\n(.*?)<!-- hf-released:end -->", readme, re.S)
    assert block, "README.md needs the <!-- hf-released:begin/end --> table"
    names = re.findall(r"^\| `([a-z0-9_]+)` \|", block.group(1), re.M)
    assert sorted(names) == sorted(FAMILIES)


def test_layer_config_of_plain_and_deepseek_v4_configs():
    """One RoPE for every layer of a plain config; DeepSeek-V4's RoPE keyed by kind is refused with the reason."""
    from posenc.hf import hf_layer_config
    plain = {"num_attention_heads": 4, "head_dim": 16, "num_hidden_layers": 3, "max_position_embeddings": 32,
             "rope_theta": 5e5}
    assert hf_layer_config(plain) == {"encoding": "rope", "layer_encodings": {},
                                      "encoding_options": {"base": 5e5, "layout": "half", "rotary_dim": 16,
                                                           "scaling": None}}
    with pytest.raises(ValueError, match="DeepSeek-V4 keys its RoPE by kind"):
        hf_layer_config(_build("deepseek_v4").config)
