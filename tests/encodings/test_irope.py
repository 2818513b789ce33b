"""Llama 4's iRoPE pieces (`chunked_rope`, `nope_temperature`, `irope_config`) and Ministral 3's query scale,
against transformers' Llama4TextAttention, chunked mask and get_llama_4_attn_scale."""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc import Transformer, TransformerConfig
from posenc.encodings.irope import ChunkedRoPE, NoPETemperature, irope_config
from posenc.hf import from_hf_config
from posenc.rope_scaling import llama4_attn_temperature, llama_4_query_scale

transformers = pytest.importorskip("transformers")

H, D, CHUNK = 4, 16, 8


def _llama4_layers(use_rope: int):
    config = transformers.Llama4TextConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, intermediate_size_mlp=128, num_hidden_layers=1,
        num_attention_heads=H, num_key_value_heads=2, head_dim=D, max_position_embeddings=128, num_local_experts=2,
        num_experts_per_tok=1, moe_layers=[], no_rope_layers=[use_rope], attention_chunk_size=CHUNK,
        attn_temperature_tuning=True, floor_scale=4, attn_scale=0.5, use_qk_norm=False, attn_implementation="eager",
        rope_parameters={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "rope_theta": 500000.0, "original_max_position_embeddings": 32})
    torch.manual_seed(0)
    model = transformers.Llama4ForCausalLM(config).eval()
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        attn.q_proj.weight.mul_(4.0)
        attn.k_proj.weight.mul_(4.0)
    return model, attn


def _qkv(attn, hidden):
    b, t, _ = hidden.shape
    q = attn.q_proj(hidden).view(b, t, -1, D).transpose(1, 2)  # (B, H, T, D)
    k = attn.k_proj(hidden).view(b, t, -1, D).transpose(1, 2)  # (B, Hkv, T, D)
    v = attn.v_proj(hidden).view(b, t, -1, D).transpose(1, 2)
    return q, k, v


def _hidden(t: int = 40) -> torch.Tensor:
    return torch.randn(2, t, 64, generator=torch.Generator().manual_seed(5))


def test_nope_temperature_matches_llama4_nope_layer():
    model, attn = _llama4_layers(use_rope=0)
    hidden = _hidden()
    pos = torch.arange(hidden.shape[1])
    pe = NoPETemperature(dim=H * D, n_heads=H, attn_scale=0.5, floor_scale=4)
    with torch.no_grad():
        want, _ = attn(hidden, position_embeddings=None, attention_mask=None)  # eager, no mask: bidirectional
        q, k, v = _qkv(attn, hidden)
        q, k = pe.rotate(q, k, pos, pos)
        out = posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=False)
        got = attn.o_proj(out.transpose(1, 2).reshape(2, hidden.shape[1], H * D))
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_chunked_rope_matches_llama4_rope_layer_with_hf_chunked_mask():
    from transformers.masking_utils import chunked_causal_mask_function

    model, attn = _llama4_layers(use_rope=1)
    hidden = _hidden()
    t = hidden.shape[1]
    pos = torch.arange(t)
    rope = from_hf_config(model.config)
    assert rope.layout == "interleaved"
    pe = ChunkedRoPE(dim=H * D, n_heads=H, causal=True, attention_chunk_size=CHUNK, base=rope.base,
                     layout=rope.layout, scaling=dict(rope.scaling), max_seq_len=rope.max_seq_len)
    allowed = chunked_causal_mask_function(CHUNK, torch.zeros(1, dtype=torch.long))(
        torch.zeros(1, dtype=torch.long), None, pos[:, None], pos[None, :])  # (T, T) bool
    hf_mask = torch.zeros(t, t).masked_fill(~allowed, float("-inf"))[None, None]
    with torch.no_grad():
        freqs_cis = model.model.rotary_emb(hidden, pos[None].expand(2, -1))
        want, _ = attn(hidden, position_embeddings=freqs_cis, attention_mask=hf_mask)
        q, k, v = _qkv(attn, hidden)
        q, k = pe.rotate(q, k, pos, pos)
        out = posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True)
        got = attn.o_proj(out.transpose(1, 2).reshape(2, t, H * D))
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    # the bias is exactly the chunk structure, dense and FlexAttention forms alike
    bias = pe.bias(pos, pos)[0]
    assert torch.equal(bias == 0, (pos[:, None] // CHUNK) == (pos[None] // CHUNK))
    mod = pe.score_mod(pos, pos)
    assert mod(torch.tensor(1.0), 0, 0, torch.tensor(9), torch.tensor(7)).item() == float("-inf")
    assert mod(torch.tensor(1.0), 0, 0, torch.tensor(9), torch.tensor(8)).item() == 1.0


def test_query_scale_formulas_match_transformers():
    from transformers.models.ministral3.modeling_ministral3 import get_llama_4_attn_scale

    pos = torch.tensor([0, 1, 7, 8, 31, 32, 33, 100, 10**6])
    want = get_llama_4_attn_scale(pos[None].float(), 0.1, 32).reshape(-1).float()  # (1, 1, T, 1) -> (T,)
    torch.testing.assert_close(llama_4_query_scale(pos, 0.1, 32), want, rtol=1e-6, atol=0)
    # Llama4TextAttention: log1p(floor((p + 1) / floor_scale)) * attn_scale + 1
    want = torch.log1p(torch.floor((pos.float() + 1.0) / 8192)) * 0.1 + 1.0
    torch.testing.assert_close(llama4_attn_temperature(pos, attn_scale=0.1, floor_scale=8192), want, rtol=1e-6,
                               atol=0)
    assert llama4_attn_temperature(torch.tensor([8190]), floor_scale=8192).item() == 1.0
    with pytest.raises(ValueError, match="floor_scale"):
        llama4_attn_temperature(pos, floor_scale=0)


def test_rope_llama_4_scaling_beta_scales_queries_only():
    pe = posenc.get_encoding("rope", dim=32, n_heads=2, max_seq_len=16,
                             scaling={"rope_type": "default", "llama_4_scaling_beta": 0.5})
    plain = posenc.get_encoding("rope", dim=32, n_heads=2, max_seq_len=16)
    q, k = torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4, 16)
    pos = torch.tensor([0, 15, 16, 40])
    (q1, k1), (q0, k0) = pe.rotate(q, k, pos, pos), plain.rotate(q, k, pos, pos)
    torch.testing.assert_close(k1, k0)
    torch.testing.assert_close(q1, q0 * llama_4_query_scale(pos, 0.5, 16)[:, None])
    with pytest.raises(ValueError, match="llama_4_scaling_beta"):
        posenc.get_encoding("rope", dim=32, n_heads=2, scaling={"rope_type": "default", "llama_4_scaling_beta": -1})


def test_irope_transformer_layers_decoding_and_save(tmp_path):
    cfg = TransformerConfig(kind="decoder", vocab_size=50, dim=32, n_layers=4, n_heads=4, max_seq_len=64,
                            **irope_config(4, attention_chunk_size=6, floor_scale=4, attn_scale=0.5,
                                           layout="interleaved", base=500000.0))
    assert sorted(cfg.layer_encodings) == [3]
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    assert isinstance(model.pe, ChunkedRoPE) and isinstance(model.decoder.layer_pe["3"], NoPETemperature)
    prompt = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=12)
        full = model(out)
        # greedy decoding with the KV cache picks what the full forward ranks first, across chunk boundaries
        assert torch.equal(full[:, prompt.shape[1] - 1:-1].argmax(-1), out[:, prompt.shape[1]:])
    model.save(tmp_path / "irope.pt")
    loaded = Transformer.load(tmp_path / "irope.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(out), full)
    with pytest.raises(ValueError, match="layer_encodings"):
        TransformerConfig(n_layers=2, layer_encodings={5: {"encoding": "nope"}})
    with pytest.raises(ValueError, match="token embeddings"):
        Transformer(TransformerConfig(n_layers=2, dim=32, layer_encodings={1: {"encoding": "sinusoidal"}}))
