"""`mla` (DeepSeek's decoupled RoPE) against Hugging Face's DeepSeek-V3 attention, and its formulas."""

from __future__ import annotations

import math

import pytest
import torch

import posenc
from posenc.encodings.mla import MLARoPE, mla_softmax_scale

transformers = pytest.importorskip("transformers")

H, NOPE, ROPE, V, ORIGINAL = 4, 16, 8, 16, 32
YARN = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": ORIGINAL,
        "beta_fast": 32, "beta_slow": 1}


def _deepseek(rope_interleave: bool, rope_parameters: dict):
    config = transformers.DeepseekV3Config(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=H,
        num_key_value_heads=H, max_position_embeddings=4 * ORIGINAL, kv_lora_rank=16, q_lora_rank=None,
        qk_rope_head_dim=ROPE, qk_nope_head_dim=NOPE, v_head_dim=V, n_routed_experts=4, num_experts_per_tok=2,
        n_group=1, topk_group=1, moe_intermediate_size=32, first_k_dense_replace=1, rope_interleave=rope_interleave,
        rope_parameters=dict(rope_parameters), attn_implementation="eager")
    torch.manual_seed(0)
    return transformers.DeepseekV3ForCausalLM(config).eval()


@pytest.mark.parametrize("rope_interleave", [True, False])
@pytest.mark.parametrize("rope_parameters", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {**YARN, "mscale": 1.0, "mscale_all_dim": 1.0},  # DeepSeek-V3's: cos/sin unscaled, softmax x mscale^2
    {**YARN, "mscale": 1.0, "mscale_all_dim": 0.707},
], ids=["default", "yarn-v3", "yarn-mixed"])
def test_mla_attention_matches_deepseek_v3(rope_interleave, rope_parameters):
    """posenc.attention with `mla` on DeepSeek-V3's own (unrotated) q, k, v gives its attention output, at positions
    below and above original_max_position_embeddings."""
    from posenc.hf import mla_from_hf_config

    model = _deepseek(rope_interleave, rope_parameters)
    attn = model.model.layers[0].self_attn
    pe = mla_from_hf_config(model.config)
    assert (pe.qk_nope_head_dim, pe.qk_rope_head_dim) == (NOPE, ROPE)
    assert pe.rope.layout == ("interleaved" if rope_interleave else "half")
    assert pe.softmax_scale == pytest.approx(attn.scaling, rel=1e-12)
    with torch.no_grad():
        for module in (attn.q_proj, attn.kv_a_proj_with_mqa):
            module.weight.mul_(4.0)  # sharpen: positions must matter
    b, t = 2, 48
    hidden = torch.randn(b, t, 64, generator=torch.Generator().manual_seed(2))
    pos = torch.arange(t) + 3
    with torch.no_grad():
        cos_sin = model.model.rotary_emb(hidden, pos[None].expand(b, -1))
        want, _ = attn(hidden, position_embeddings=cos_sin, attention_mask=None)
        # DeepSeek-V3's projections, then posenc does the rest
        q = attn.q_proj(hidden).view(b, t, H, NOPE + ROPE).transpose(1, 2)  # (B, H, T, D)
        kv_nope, k_rope = attn.kv_a_proj_with_mqa(hidden).split([16, ROPE], dim=-1)
        kv = attn.kv_b_proj(attn.kv_a_layernorm(kv_nope)).view(b, t, H, NOPE + V).transpose(1, 2)
        k_nope, v = kv.split([NOPE, V], dim=-1)
        k = torch.cat((k_nope, k_rope[:, None].expand(-1, H, -1, -1)), dim=-1)  # one rope key shared by the heads
        q, k = pe.rotate(q, k, pos, pos)  # rotary encodings act before attention (and before a KV cache)
        out = posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=False)
        got = attn.o_proj(out.transpose(1, 2).reshape(b, t, H * V))
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_mla_rotates_only_the_last_channels_and_is_relative():
    pe = MLARoPE(dim=4 * 24, n_heads=4, qk_rope_head_dim=8)
    q, k = torch.randn(1, 4, 6, 24), torch.randn(1, 4, 6, 24)
    pos = torch.arange(6)
    q2, k2 = pe.rotate(q, k, pos, pos)
    torch.testing.assert_close(q2[..., :16], q[..., :16])
    torch.testing.assert_close(k2[..., :16], k[..., :16])
    assert not torch.allclose(q2[..., 16:], q[..., 16:])
    q3, k3 = pe.rotate(q, k, pos + 100, pos + 100)  # a shift changes no dot product
    torch.testing.assert_close(q3 @ k3.transpose(-1, -2), q2 @ k2.transpose(-1, -2), atol=1e-4, rtol=1e-4)
    assert pe.query_scale == 1.0 and pe.softmax_scale == 24 ** -0.5


def test_mla_softmax_scale_formula_and_errors():
    s = 40.0
    mscale = 0.1 * 1.0 * math.log(s) + 1.0
    assert mla_softmax_scale(192, {"rope_type": "yarn", "factor": s, "mscale_all_dim": 1.0}) == \
        pytest.approx(192 ** -0.5 * mscale ** 2)
    assert mla_softmax_scale(192, {"rope_type": "yarn", "factor": s}) == 192 ** -0.5
    assert mla_softmax_scale(192, None) == 192 ** -0.5
    with pytest.raises(ValueError, match="qk_rope_head_dim"):
        MLARoPE(dim=64, n_heads=4, qk_rope_head_dim=3)
