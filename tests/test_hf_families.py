"""`patch_rotary(model)` on a tiny random model of every supported Hugging Face family: identical logits below and
above the training length, and identical greedy generation with the KV cache. Offline: models are built from configs.

The family list here is the README's table (`test_readme_lists_the_families`)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

from posenc.encodings.rope import RoPE
from posenc.hf import _outputs, _probe_positions, find_rotary_modules, from_hf_config, patch_rotary

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN, HEADS, ORIGINAL = 100, 64, 4, 32
SHORT, LONG = 16, 48  # below and above ORIGINAL (original_max_position_embeddings, or max_position_embeddings)
PROMPT, NEW = 26, 10  # greedy generation crosses ORIGINAL
TEXT = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=HEADS, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": ORIGINAL,
            "short_factor": [1.0 + 0.05 * i for i in range(4)], "long_factor": [1.0 + 0.5 * i for i in range(4)]}


def _llama_yarn():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **TEXT, max_position_embeddings=4 * ORIGINAL,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                         "original_max_position_embeddings": ORIGINAL}))


def _llama_partial():  # HF's default init ignores partial_rotary_factor: the whole head rotates
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **TEXT, max_position_embeddings=ORIGINAL, partial_rotary_factor=0.5))


def _gpt_neox():
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        **{k: v for k, v in TEXT.items() if k != "num_key_value_heads"}, max_position_embeddings=ORIGINAL,
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0, "partial_rotary_factor": 0.5}))


def _gptj():  # its sin/cos table has max_position_embeddings rows: HF itself cannot run past them
    return transformers.GPTJForCausalLM(transformers.GPTJConfig(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=HEADS, n_positions=2 * ORIGINAL, rotary_dim=8,
        bos_token_id=1, eos_token_id=2, pad_token_id=0))


def _gemma3():
    return transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        **TEXT, head_dim=16, max_position_embeddings=4 * ORIGINAL, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0}}))


def _phi3():
    return transformers.Phi3ForCausalLM(transformers.Phi3Config(
        **TEXT, max_position_embeddings=4 * ORIGINAL, original_max_position_embeddings=ORIGINAL,
        partial_rotary_factor=0.5, rope_parameters={**LONGROPE, "rope_type": "su"}))


def _llama_proportional():  # p-RoPE, as Gemma 4's global layers
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **TEXT, max_position_embeddings=ORIGINAL,
        rope_parameters={"rope_type": "proportional", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}))


def _deepseek_v3():  # MLA: the rotary module covers the qk_rope_head_dim slice; YaRN with DeepSeek's mscale
    return transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(
        **{**TEXT, "num_key_value_heads": HEADS}, max_position_embeddings=4 * ORIGINAL, kv_lora_rank=16,
        q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, n_routed_experts=4,
        num_experts_per_tok=2, n_group=1, topk_group=1, moe_intermediate_size=32, first_k_dense_replace=1,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": ORIGINAL}))


def _llama4():  # iRoPE: NoPE every 2nd layer with temperature, chunked attention on the RoPE layers, complex freqs
    return transformers.Llama4ForCausalLM(transformers.Llama4TextConfig(
        **{**TEXT, "num_hidden_layers": 4}, head_dim=16, max_position_embeddings=4 * ORIGINAL,
        intermediate_size_mlp=128, num_local_experts=2, num_experts_per_tok=1, moe_layers=[],
        no_rope_layer_interval=2, attention_chunk_size=16, attn_temperature_tuning=True, floor_scale=8, attn_scale=0.5,
        rope_parameters={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "rope_theta": 500000.0, "original_max_position_embeddings": ORIGINAL}))


def _ministral3():  # YaRN + llama_4_scaling_beta (a query scale in the attention, kept by patching)
    return transformers.Ministral3ForCausalLM(transformers.Ministral3Config(
        **TEXT, head_dim=16, max_position_embeddings=4 * ORIGINAL,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6, "beta_fast": 32.0, "beta_slow": 1.0,
                         "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": ORIGINAL,
                         "llama_4_scaling_beta": 0.5, "max_position_embeddings": 4 * ORIGINAL}))


VISION = dict(depth=1, num_heads=2, patch_size=2, spatial_merge_size=2, temporal_patch_size=1)


def _qwen2_vl():
    return transformers.Qwen2VLForConditionalGeneration(transformers.Qwen2VLConfig(
        text_config={**TEXT, "max_position_embeddings": ORIGINAL,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}},
        vision_config={**VISION, "embed_dim": 32, "hidden_size": HIDDEN, "mlp_ratio": 2},
        image_token_id=98, video_token_id=99, vision_start_token_id=97))


def _qwen3_vl():
    return transformers.Qwen3VLForConditionalGeneration(transformers.Qwen3VLConfig(
        text_config={**TEXT, "head_dim": 16, "max_position_embeddings": ORIGINAL,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True,
                                         "rope_theta": 10000.0}},
        vision_config={**VISION, "hidden_size": 32, "intermediate_size": 64, "out_hidden_size": HIDDEN,
                       "deepstack_visual_indexes": []},
        image_token_id=98, video_token_id=99, vision_start_token_id=97))


# family -> (builder, HF class, what posenc builds); the README's table is generated from this
FAMILIES = {
    "llama": (_llama_yarn, "LlamaForCausalLM", "`rope` (any scaling; here YaRN)"),
    "llama_partial": (_llama_partial, "LlamaForCausalLM + partial_rotary_factor",
                      "`rope` over the whole head (HF's default init ignores the factor)"),
    "llama_proportional": (_llama_proportional, "LlamaForCausalLM + rope_type proportional",
                           "`rope` with `proportional` (p-RoPE) frequencies"),
    "gpt_neox": (_gpt_neox, "GPTNeoXForCausalLM", "`rope` on the first rotary_dim channels (here dynamic NTK)"),
    "gptj": (_gptj, "GPTJForCausalLM", "`rope`, layout interleaved, on the first rotary_dim channels"),
    "gemma3": (_gemma3, "Gemma3ForCausalLM", "one `rope` per layer type (sliding 1e4, full 1e6 + linear)"),
    "phi3": (_phi3, "Phi3ForCausalLM", "`rope` with `longrope` (legacy \"su\"), partial"),
    "deepseek_v3": (_deepseek_v3, "DeepseekV3ForCausalLM",
                    "`rope` on the qk_rope_head_dim slice (`mla` for posenc's own attention)"),
    "llama4": (_llama4, "Llama4ForCausalLM", "`rope`, layout interleaved (complex freqs_cis); iRoPE layers stay HF's"),
    "ministral3": (_ministral3, "Ministral3ForCausalLM", "`rope` with YaRN and llama_4_scaling_beta"),
    "qwen2_vl": (_qwen2_vl, "Qwen2VLForConditionalGeneration", "`mrope` (sections)"),
    "qwen3_vl": (_qwen3_vl, "Qwen3VLForConditionalGeneration", "`mrope` with mrope_interleaved"),
}


def _sharpen(model) -> None:
    """Scale q/k projections so that positions matter (a random init attends almost uniformly)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("q_proj", "k_proj",
                                                                               "query_key_value",
                                                                               "kv_a_proj_with_mqa"):
                module.weight.mul_(6.0)


def _build(family: str):
    torch.manual_seed(0)
    model = FAMILIES[family][0]().eval()
    _sharpen(model)
    return model


def _tokens(length: int) -> torch.Tensor:
    return torch.randint(3, VOCAB - 4, (2, length), generator=torch.Generator().manual_seed(3))


def _run(model) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = {f"logits_{n}": model(input_ids=_tokens(n)).logits for n in (SHORT, LONG)}
        out["generated"] = model.generate(input_ids=_tokens(PROMPT), attention_mask=torch.ones(2, PROMPT,
                                          dtype=torch.long), max_new_tokens=NEW, min_new_tokens=NEW,
                                          do_sample=False, use_cache=True)
    return out


def measure(family: str, model=None) -> dict[str, float | bool]:
    """Max |logits difference| before/after patch_rotary(model) at SHORT and LONG, and greedy generation equality."""
    model = _build(family) if model is None else model
    before = _run(model)
    patch_rotary(model)
    after = _run(model)
    return {"short": float((after["logits_16"] - before["logits_16"]).abs().max()),
            "long": float((after["logits_48"] - before["logits_48"]).abs().max()),
            "generation_equal": bool(torch.equal(after["generated"], before["generated"]))}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_patch_rotary_keeps_logits_and_generation(family):
    model = _build(family)
    assert find_rotary_modules(model)
    result = measure(family, model)
    assert result["short"] <= 1e-5 and result["long"] <= 1e-5, result
    assert result["generation_equal"], result
    assert find_rotary_modules(model) == []  # every text rotary module replaced: nothing of HF's computes positions
    with pytest.raises(TypeError, match="already patched"):
        patch_rotary(model)


def _float32_rotary(model, cast):
    """``cast`` with its rotary buffers back in float32: what ``from_pretrained(..., dtype=torch.bfloat16)`` gives
    (only ``model.to(torch.bfloat16)`` rounds inv_freq)."""
    for name, module, _ in find_rotary_modules(model):
        for n, b in module.named_buffers(recurse=False):
            setattr(cast.get_submodule(name), n, b.clone())
    return cast


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_patch_rotary_after_model_to_bfloat16(family):
    """model.to(torch.bfloat16) rounds the rotary's inv_freq (GPT-J: its sin/cos table) to bfloat16, and HF's cos/sin
    then differ from the config's by up to 0.03 at position 64: patch_rotary used to refuse and blame the model. It
    recognises the rounding, checks against the float32 frequencies and patches with the config's exact ones."""
    model = _build(family)
    found = find_rotary_modules(model)
    cast = copy.deepcopy(model).to(torch.bfloat16)
    patch_rotary(cast)
    assert find_rotary_modules(cast) == []
    x = torch.zeros(1)
    for name, module, style in found:  # the patched cos/sin are the float32 model's (the config's frequencies)
        pos = _probe_positions(module, style, torch.device("cpu"))
        for layer_type in getattr(module, "layer_types", None) or [None]:
            want = _outputs(module, style, x, pos, layer_type if style == "layer_types" else None)
            got = _outputs(cast.get_submodule(name), style, x, pos, layer_type if style == "layer_types" else None)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, atol=1e-5, rtol=0)  # float32 cos/sin, angles < 64 rad
    reference = _float32_rotary(model, copy.deepcopy(model).to(torch.bfloat16))
    tokens = _tokens(SHORT)
    with torch.no_grad():
        ours, theirs = cast(input_ids=tokens).logits.float(), reference(input_ids=tokens).logits.float()
    # bfloat16 logits: the two cos/sin agree in float32 and may round apart by one bfloat16 ulp (2^-8 relative)
    torch.testing.assert_close(ours, theirs, atol=4 * 2.0 ** -8 * float(theirs.abs().max()), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patch_rotary_refuses_a_rotary_off_by_1e_3(dtype):
    """The exactness check is exact: a rotary whose cos/sin are off by 1e-3 (its attention scale, or its
    frequencies) is refused and the model left as it was, in float32 and after a bfloat16 cast alike."""
    model = _build("llama").to(dtype)
    model.model.rotary_emb.attention_scaling *= 1 + 1e-3  # cos/sin off by ~1e-3
    with pytest.raises(ValueError, match=r"cos/sin differ from 'model.rotary_emb' \(LlamaRotaryEmbedding\) by 0.001"):
        patch_rotary(model)
    assert type(model.model.rotary_emb).__name__ == "LlamaRotaryEmbedding"
    if dtype == torch.float32:
        model = _build("llama")
        with torch.no_grad():
            model.model.rotary_emb.inv_freq.mul_(1 + 1e-3)  # angles off by 1e-3 relative: 0.06 rad at position 63
        with pytest.raises(ValueError, match="differ"):
            patch_rotary(model)
    else:  # a bfloat16 inv_freq that is not the rounding of the config's: the message says so
        model = _build("llama").to(dtype)
        with torch.no_grad():
            model.model.rotary_emb.inv_freq.mul_(1.05)
        with pytest.raises(ValueError, match="is not the bfloat16 rounding of what the config gives"):
            patch_rotary(model)


def test_gemma3_refuses_a_single_encoding_and_takes_one_per_layer_type():
    model = _build("gemma3")
    with pytest.raises(ValueError, match="one RoPE per layer type"):
        patch_rotary(model, from_hf_config(model.config, layer_type="full_attention"))
    with pytest.raises(ValueError, match="differ"):  # the probe check catches swapped layer types
        _check_swapped_layer_types(model)
    assert type(model.model.rotary_emb).__name__ == "Gemma3RotaryEmbedding"
    tokens = _tokens(LONG)
    with torch.no_grad():
        before = model(input_ids=tokens).logits
    encodings = {t: from_hf_config(model.config, layer_type=t) for t in ("sliding_attention", "full_attention")}
    assert encodings["sliding_attention"].base == 1e4 and encodings["full_attention"].base == 1e6
    patch_rotary(model, encodings)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=tokens).logits, before, atol=1e-5, rtol=0)


def _check_swapped_layer_types(model) -> None:
    """The exactness check patch_rotary(model) runs, on encodings built for the wrong layer types."""
    from posenc.hf import PosencLayerTypeRotaryEmbedding, _check_same

    config = model.config
    new = PosencLayerTypeRotaryEmbedding({"sliding_attention": from_hf_config(config, layer_type="full_attention"),
                                          "full_attention": from_hf_config(config, layer_type="sliding_attention")})
    _check_same("model.rotary_emb", model.model.rotary_emb, new, "layer_types", "full_attention", exact=True)


def test_llama_partial_rotary_needs_the_module_width():
    model = _build("llama_partial")
    pe = from_hf_config(model.config)
    assert pe.rotary_dim == 8  # what the config says ...
    with pytest.raises(ValueError, match="rotary width"):  # ... but LlamaRotaryEmbedding rotates all 16 channels
        patch_rotary(model, pe)
    patch_rotary(model, from_hf_config(model.config, rotary_dim=16))


def test_gptj_from_hf_config_and_layout():
    model = _build("gptj")
    pe = from_hf_config(model.config)
    assert (pe.head_dim, pe.rotary_dim, pe.layout, pe.base) == (16, 8, "interleaved", 10000.0)
    dict_pe = from_hf_config({"model_type": "gptj", "n_embd": 4096, "n_head": 16, "n_positions": 2048,
                              "rotary_dim": 64})
    assert (dict_pe.head_dim, dict_pe.rotary_dim, dict_pe.layout) == (256, 64, "interleaved")
    with pytest.raises(ValueError, match="pairs \\(2i, 2i \\+ 1\\)"):
        patch_rotary(model, RoPE(dim=HIDDEN, n_heads=HEADS, rotary_dim=8))
    patch_rotary(model.transformer, pe)  # the inner model works as well
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=_tokens(SHORT)).logits).all()


def test_patch_rotary_names_what_it_found():
    with pytest.raises(TypeError, match="found no text rotary module.*no \\*RotaryEmbedding"):
        patch_rotary(torch.nn.Linear(2, 2))

    class OddRotaryEmbedding(torch.nn.Module):
        pass

    model = _build("llama")
    model.model.extra = OddRotaryEmbedding()
    with pytest.raises(TypeError, match="OddRotaryEmbedding"):
        patch_rotary(model)
    assert type(model.model.rotary_emb).__name__ == "LlamaRotaryEmbedding"  # nothing patched


def test_phi3_su_alias_is_longrope():
    config = {"hidden_size": 3072, "num_attention_heads": 32, "max_position_embeddings": 131072,
              "original_max_position_embeddings": 4096,
              "rope_scaling": {"type": "su", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48}}
    assert from_hf_config(config).scaling["rope_type"] == "longrope"
    phi3_yarn = {**config, "model_type": "phi3", "rope_scaling": {**config["rope_scaling"], "type": "yarn"}}
    assert from_hf_config(phi3_yarn).scaling["rope_type"] == "longrope"  # Phi3Config maps it too


def _readme_rows() -> list[str]:
    return [f"| `{name}` | {hf} | {what} |" for name, (_, hf, what) in FAMILIES.items()]


def test_readme_lists_the_families():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- hf-families:begin -->\n(.*?)<!-- hf-families:end -->", readme, re.S)
    assert block, "README.md needs the <!-- hf-families:begin/end --> table"
    rows = [line for line in block.group(1).splitlines() if line.startswith("| `")]
    assert rows == _readme_rows(), "\n" + "\n".join(_readme_rows())


# -- Qwen2-VL / Qwen2.5-VL / Qwen3-VL position ids and multimodal rotary ---------------------------------------------
MERGE = 2  # spatial_merge_size of the tiny configs


def _hf_rope_index(model_cls, config, layout, *, tokens_per_second=None, timestamps=False):
    """HF's own get_rope_index for a layout [("text", n) | ("image", (t, h, w)) | ("video", (t, h, w), seconds)]
    of unmerged grids; it reads only the config, so no weights are built. ``timestamps``: one text token before each
    video frame, as Qwen3-VL's processor writes them."""
    import functools
    import types

    ids, kinds, images, videos, seconds = [], [], [], [], []
    for part in layout:
        if part[0] == "text":
            ids += [5] * part[1]
            kinds += [0] * part[1]
        else:
            t, h, w = part[1]
            frames = t if timestamps and part[0] == "video" else 1
            for _ in range(frames):
                if frames > 1 or (timestamps and part[0] == "video"):
                    ids.append(5)
                    kinds.append(0)
                n = t * h * w // MERGE ** 2 // frames
                ids += [98 if part[0] == "image" else 99] * n
                kinds += [1 if part[0] == "image" else 2] * n
            (images if part[0] == "image" else videos).append(list(part[1]))
            if part[0] == "video":
                seconds.append(part[2])
    fake = types.SimpleNamespace(config=config)
    fake.get_vision_position_ids = functools.partial(model_cls.get_vision_position_ids, fake)
    kwargs = {"second_per_grid_ts": torch.tensor(seconds)} if tokens_per_second is not None and seconds else {}
    pos, _ = model_cls.get_rope_index(
        fake, torch.tensor([ids]), torch.tensor([kinds]), image_grid_thw=torch.tensor(images) if images else None,
        video_grid_thw=torch.tensor(videos) if videos else None, **kwargs)
    return pos[:, 0].T  # (T, 3)


def _segments(layout, *, tokens_per_second=None, split_frames=False):
    out = []
    for part in layout:
        if part[0] == "text":
            out.append(part[1])
            continue
        t, h, w = part[1]
        if part[0] == "video" and split_frames:  # Qwen3-VL: a timestamp, then one grid per frame
            out += [1, (1, h // MERGE, w // MERGE)] * t
        elif part[0] == "video" and tokens_per_second is not None:
            out.append((t, h // MERGE, w // MERGE, tokens_per_second * part[2]))
        else:
            out.append((t, h // MERGE, w // MERGE))
    return out


LAYOUTS = [
    [("text", 3), ("image", (1, 4, 4)), ("text", 4)],
    [("text", 2), ("video", (3, 4, 2), 2.0), ("text", 3), ("image", (1, 2, 6)), ("text", 1)],
    [("video", (5, 2, 2), 0.5), ("text", 2), ("video", (2, 4, 4), 1.0), ("text", 2)],
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mrope_position_ids_match_hf_get_rope_index(layout):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    from posenc.encodings.mrope import mrope_position_ids

    vision = {"spatial_merge_size": MERGE}
    qwen2 = transformers.Qwen2VLConfig(vision_config=vision)
    hf = _hf_rope_index(Qwen2VLModel, qwen2, layout)
    torch.testing.assert_close(mrope_position_ids(_segments(layout), vision_advance="max_hw"), hf, rtol=0, atol=0)
    if not any(p[0] == "video" for p in layout):  # images: the original rule is the same
        torch.testing.assert_close(mrope_position_ids(_segments(layout)), hf, rtol=0, atol=0)
    qwen25 = transformers.Qwen2_5_VLConfig(vision_config={**vision, "tokens_per_second": 25})
    hf = _hf_rope_index(Qwen2_5_VLModel, qwen25, layout, tokens_per_second=25)
    ours = mrope_position_ids(_segments(layout, tokens_per_second=25), vision_advance="max_hw")
    torch.testing.assert_close(ours, hf, rtol=0, atol=0)
    qwen3 = transformers.Qwen3VLConfig(vision_config=vision)
    hf = _hf_rope_index(Qwen3VLModel, qwen3, layout, timestamps=True)
    torch.testing.assert_close(mrope_position_ids(_segments(layout, split_frames=True), vision_advance="max_hw"), hf,
                               rtol=0, atol=0)


def test_text_after_a_video_differs_between_the_rules():
    from posenc.encodings.mrope import mrope_position_ids

    segments = [1, (4, 1, 2), 1]  # 4 frames of 1 x 2: time ids reach 1 + 3 = 4
    assert mrope_position_ids(segments)[-1].tolist() == [5, 5, 5]  # Qwen2-VL's original: 1 + largest id
    assert mrope_position_ids(segments, vision_advance="max_hw")[-1].tolist() == [3, 3, 3]  # transformers 5
    spaced = mrope_position_ids([1, (3, 1, 1, 50.0)])
    assert spaced[1:, 0].tolist() == [1, 51, 101]
    with pytest.raises(ValueError, match="vision_advance"):
        mrope_position_ids([1], vision_advance="next")
    with pytest.raises(ValueError, match="time_interval"):
        mrope_position_ids([(1, 2, 2, -1.0)])


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_patched_vl_model_with_an_image_keeps_logits_and_mrope_matches_hf_rotary(family):
    """With pixels: the 3-axis position ids reach the rotary module; posenc's `mrope` table reproduces it."""
    from posenc.encodings.mrope import mrope_position_ids

    model = _build(family)
    ids = torch.tensor([[5, 6, 97] + [98] * 4 + [7, 8, 9, 10]])
    kinds = (ids == 98).int()
    grid = torch.tensor([[1, 4, 4]])
    inputs = dict(input_ids=ids, pixel_values=torch.randn(16, 12, generator=torch.Generator().manual_seed(1)),
                  image_grid_thw=grid, mm_token_type_ids=kinds)
    with torch.no_grad():
        before = model(**inputs).logits
        pos, _ = model.model.get_rope_index(ids, kinds, image_grid_thw=grid)  # (3, 1, T)
        hf_cos, hf_sin = model.model.language_model.rotary_emb(torch.zeros(1), pos)
    coords = mrope_position_ids([3, (1, 2, 2), 4])
    torch.testing.assert_close(coords, pos[:, 0].T, rtol=0, atol=0)
    pe = from_hf_config(model.config.text_config)
    cos, sin = pe.cos_sin(coords)
    torch.testing.assert_close(torch.cat((cos, cos), -1), hf_cos[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat((sin, sin), -1), hf_sin[0], atol=1e-6, rtol=0)
    patch_rotary(model)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, before, atol=1e-5, rtol=0)
