"""M-RoPE layouts of released VL models beyond Qwen's: Ernie-4.5-VL patched by `patch_rotary` and equal end to end on
a tiny random model (logits below and above the training length, greedy tokens with the KV cache, 3-axis positions),
Hunyuan-VL's XD-RoPE refused with a reason the test shows on the HF module itself. Offline: models from configs."""

from __future__ import annotations

import pytest
import torch

from posenc.encodings.mrope import MRoPE
from posenc.encodings.videorope import videorope_axes
from posenc.hf import find_rotary_modules, from_hf_config, patch_rotary

transformers = pytest.importorskip("transformers")

VOCAB, ORIGINAL = 100, 32
SHORT, LONG, PROMPT, NEW = 16, 48, 26, 10  # below / above max_position_embeddings; generation crosses it
TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=ORIGINAL)


def _ernie(section=(3, 3, 2)):
    torch.manual_seed(0)
    config = transformers.Ernie4_5_VLMoeConfig(
        text_config={**TEXT, "moe_num_experts": 4, "moe_intermediate_size": [32, 32], "moe_k": 2,
                     "rope_parameters": {"rope_type": "default", "mrope_section": list(section),
                                         "rope_theta": 10000.0}},
        vision_config={"depth": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64})
    model = transformers.Ernie4_5_VLMoeForConditionalGeneration(config).eval()
    with torch.no_grad():  # sharper attention, so that positions matter (a random init attends almost uniformly)
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("q_proj", "k_proj"):
                module.weight.mul_(6.0)
    return model


def _hunyuan():
    torch.manual_seed(0)
    config = transformers.HunYuanVLConfig(
        text_config={**TEXT, "head_dim": 16,
                     "rope_parameters": {"rope_type": "dynamic", "factor": 1.0, "alpha": 1000.0,
                                         "mrope_section": [2, 2, 2, 2], "rope_theta": 10000.0}},
        vision_config={"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
                       "out_hidden_size": 64})
    return transformers.HunYuanVLForConditionalGeneration(config).eval()


def _tokens(length):
    return torch.randint(3, VOCAB - 4, (2, length), generator=torch.Generator().manual_seed(3))


def _axes3(length):  # three different axes per token: (time, height, width) = (p, p // 2, 3p mod T)
    p = torch.arange(length)
    return torch.stack((p, p // 2, (3 * p) % length))[:, None].expand(3, 2, length)


def _run(model):
    with torch.no_grad():
        out = {n: model(input_ids=_tokens(n)).logits for n in (SHORT, LONG)}
        out["axes3"] = model(input_ids=_tokens(LONG), position_ids=_axes3(LONG)).logits
        out["generated"] = model.generate(input_ids=_tokens(PROMPT), attention_mask=torch.ones(2, PROMPT,
                                          dtype=torch.long), max_new_tokens=NEW, min_new_tokens=NEW,
                                          do_sample=False, use_cache=True)
    return out


def test_ernie_vl_is_videorope_table_interleaved():
    pe = from_hf_config(_ernie().config.text_config)
    assert isinstance(pe, MRoPE) and pe.layout == "interleaved"
    assert pe.pair_axes == tuple(videorope_axes((2, 3, 3))) == (1, 2, 1, 2, 1, 2, 0, 0)


def test_ernie_vl_patched_end_to_end():
    model = _ernie()
    before = _run(model)
    assert (before["axes3"] - before[LONG]).abs().max() > 1e-3  # the three axes do reach the logits
    patch_rotary(model)
    assert find_rotary_modules(model) == []
    after = _run(model)
    # both sides: float32 cos/sin of float32-exact products (positions < 64), so logits agree to float32 rounding
    for key in (SHORT, LONG, "axes3"):
        diff = float((after[key] - before[key]).abs().max())
        assert diff <= 1e-5, (key, diff)
    assert torch.equal(after["generated"], before["generated"])


def test_ernie_vl_rotary_module_matches_cos_sin_exactly_in_float32():
    model = _ernie()
    hf = model.model.language_model.rotary_emb
    pos = _axes3(40)
    hf_cos, hf_sin = hf(torch.zeros(1, dtype=torch.bfloat16), pos)
    patch_rotary(model)
    ours_cos, ours_sin = model.model.language_model.rotary_emb(torch.zeros(1, dtype=torch.bfloat16), pos)
    assert ours_cos.dtype == hf_cos.dtype == torch.float32  # Ernie keeps float32 whatever x's dtype
    torch.testing.assert_close(ours_cos, hf_cos, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_sin, hf_sin, atol=1e-5, rtol=0)


def test_ernie_vl_refuses_half_layout_and_unequal_sections():
    model = _ernie()
    half = MRoPE(dim=64, n_heads=4, pair_axes=videorope_axes((2, 3, 3)))
    with pytest.raises(ValueError, match=r"pairs channels \(2i, 2i \+ 1\).*layout='interleaved'"):
        patch_rotary(model, half)
    config = {**TEXT, "model_type": "ernie4_5_vl_moe_text",
              "rope_parameters": {"rope_type": "default", "mrope_section": [4, 2, 2], "rope_theta": 1e4}}
    with pytest.raises(ValueError, match="height == width"):
        from_hf_config(config)


def test_hunyuan_vl_xd_rope_is_refused_and_why():
    model = _hunyuan()
    hf = model.model.language_model.rotary_emb
    pos = torch.tensor([0, 1, 2, 3])[:, None, None]  # one token at (position, width, height, image) = (0, 1, 2, 3)
    cos, _ = hf(torch.zeros(1), pos)
    f = cos.shape[-1] // 2
    # the reason: channels c and c + F (one rotate_half pair) get cosines of different axes
    assert not torch.allclose(cos[0, 0, :f], cos[0, 0, f:])
    with torch.no_grad():
        before = model(input_ids=_tokens(SHORT)).logits
    with pytest.raises(ValueError, match="XD-RoPE.*not a rotation of pairs"):
        patch_rotary(model)
    assert find_rotary_modules(model)[0][1] is hf  # nothing was replaced
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=_tokens(SHORT)).logits, before, atol=0, rtol=0)
    with pytest.raises(ValueError, match="4-axis M-RoPE"):
        from_hf_config(model.config.text_config)
    with pytest.raises(ValueError, match="XD-RoPE"):  # an encoding given by hand is refused too
        patch_rotary(model, MRoPE(dim=64, n_heads=4, mrope_section=[4, 2, 2]))
    assert find_rotary_modules(model)[0][1] is hf


# -- layouts HF lacks: vLLM's formulas re-derived from its source (vllm/model_executor/layers/rotary_embedding/) -------
def _vllm_interleaved_id_list(a, b, c, force_last=False):
    """``MRotaryEmbeddingInterleaved.get_mrope_interleaved_id_list`` (openpangu_rope.py), as written there."""
    if force_last:
        a -= 1
    counts = {0: a, 1: b, 2: c}
    placed = {k: 0 for k in counts}
    rem = counts.copy()
    seq, last = [], None
    for _ in range(a + b + c):
        cands = [k for k in rem if rem[k] > 0 and k != last]
        if not cands:
            cands = [k for k in rem if rem[k] > 0]
        try:
            best = min(cands, key=lambda k: (placed[k] / counts[k], k))
        except KeyError:
            best = 0
        seq.append(best)
        placed[best] += 1
        rem[best] -= 1
        last = best
    if force_last:
        seq.append(0)
    return seq


def _vllm_cos_sin_cache(rotary_dim, max_pos, base):
    """``RotaryEmbedding._compute_cos_sin_cache`` (base.py): ``(max_pos, rotary_dim)`` = cat(cos, sin), float32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim))
    freqs = torch.einsum("i,j -> ij", torch.arange(max_pos, dtype=torch.float), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


def _vllm_apply(x, cos, sin, is_neox_style):
    """``apply_rotary_emb_torch`` (common.py): x ``(N, H, D)``, cos/sin ``(N, D / 2)``."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    if is_neox_style:
        x1, x2 = torch.chunk(x, 2, dim=-1)
    else:
        x1, x2 = x[..., ::2], x[..., 1::2]
    o1, o2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    return torch.cat((o1, o2), dim=-1) if is_neox_style else torch.stack((o1, o2), dim=-1).flatten(-2)


def _vllm_openpangu(positions, query, section, base, is_neox_style=True):
    """``MRotaryEmbeddingInterleaved.forward``: positions ``(3, N)``, query ``(N, H, D)``."""
    d = query.shape[-1]
    mrope_dim = _vllm_interleaved_id_list(*section, force_last=True) * 2
    cos_sin = _vllm_cos_sin_cache(d, 256, base)[positions]  # (3, N, D)
    cos_sin = torch.cat([m[mrope_dim[i]] for i, m in enumerate(cos_sin.split([1] * len(mrope_dim), dim=-1))], -1)
    cos, sin = cos_sin.chunk(2, dim=-1)
    return _vllm_apply(query, cos, sin, is_neox_style)


def _vllm_bailing(positions, query, section, base, is_neox_style):
    """``BailingMRotaryEmbedding.select_cos_sin`` + ``forward_native``: positions ``(3, N)``."""
    d = query.shape[-1]
    spatial = section[1] + section[2]
    cos, sin = _vllm_cos_sin_cache(d, 256, base)[positions].chunk(2, dim=-1)  # (3, N, D / 2) each
    mask = (torch.arange(spatial) % 2 == 0).unsqueeze(0)
    cos = torch.cat((torch.where(mask, cos[1, :, :spatial], cos[2, :, :spatial]), cos[0, :, spatial:]), dim=-1)
    sin = torch.cat((torch.where(mask, sin[1, :, :spatial], sin[2, :, :spatial]), sin[0, :, spatial:]), dim=-1)
    return _vllm_apply(query, cos, sin, is_neox_style)


def _positions(n=40):
    g = torch.Generator().manual_seed(4)
    return torch.randint(0, 200, (3, n), generator=g)


@pytest.mark.parametrize("section", [(2, 3, 3), (16, 24, 24), (24, 20, 20), (1, 5, 2), (10, 0, 6)])
def test_openpangu_axes_equal_vllm_id_list(section):
    from posenc.encodings.mrope import openpangu_axes

    assert openpangu_axes(section) == _vllm_interleaved_id_list(*section, force_last=True)


@pytest.mark.parametrize("base", [10000.0, 1e6])
def test_openpangu_from_config_equals_vllm_rotation(base):
    section = (4, 6, 6)  # head_dim 32
    config = {"model_type": "openpangu_vl_text", "num_attention_heads": 2, "hidden_size": 64,
              "max_position_embeddings": 256,
              "rope_parameters": {"rope_type": "default", "rope_theta": base, "mrope_section": list(section),
                                  "mrope_interleaved": True}}
    pe = from_hf_config(config)
    assert pe.layout == "half" and not pe.qwen_layout  # not Qwen3-VL's round robin
    pos = _positions()
    q = torch.randn(pos.shape[1], 2, 32, generator=torch.Generator().manual_seed(5))
    ref = _vllm_openpangu(pos, q, section, base)  # (N, H, D) float32
    ours = pe.rotate_one(q.transpose(0, 1)[None], pos.T[None])[0].transpose(0, 1)
    # vLLM forms angles in float32 (|angle| < 200): error < 200 * 2^-24 per angle, |q| < 5
    torch.testing.assert_close(ours, ref, atol=5 * 200 * 2.0**-23, rtol=0)
    qwen3 = from_hf_config({**config, "model_type": "qwen3_vl_text"})
    assert qwen3.pair_axes != pe.pair_axes  # the pitfall: same config keys, another layout


@pytest.mark.parametrize("is_neox_style", [True, False])
def test_bailing_table_equals_vllm_rotation(is_neox_style):
    from posenc.encodings.mrope import bailing_axes

    section = (4, 6, 6)
    pe = MRoPE(dim=64, n_heads=2, base=1e6, pair_axes=bailing_axes(section),
               layout="half" if is_neox_style else "interleaved")
    pos = _positions()
    q = torch.randn(pos.shape[1], 2, 32, generator=torch.Generator().manual_seed(6))
    ref = _vllm_bailing(pos, q, section, 1e6, is_neox_style)
    ours = pe.rotate_one(q.transpose(0, 1)[None], pos.T[None])[0].transpose(0, 1)
    torch.testing.assert_close(ours, ref, atol=5 * 200 * 2.0**-23, rtol=0)
    assert bailing_axes(section) == videorope_axes(section)  # Bailing's table is VideoRoPE's


def test_bailing_config_is_refused_with_a_recipe():
    config = {"model_type": "bailing_moe_v3_vl", "num_attention_heads": 2, "hidden_size": 64,
              "max_position_embeddings": 256,
              "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]}}
    with pytest.raises(ValueError, match=r"Bailing's M-RoPE.*bailing_axes\(\[4, 6, 6\]\)"):
        from_hf_config(config)
    with pytest.raises(ValueError, match="needs height == width"):
        from posenc.encodings.mrope import bailing_axes

        bailing_axes([4, 5, 7])
