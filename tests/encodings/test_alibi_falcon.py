"""`alibi(falcon=True)` reproduces Falcon's ALiBi (transformers' build_alibi_tensor and FalconAttention) exactly.

Only transformers' public API: a model built from a config and called, module hooks to read its attention's
inputs and outputs, and the module-level ``build_alibi_tensor``; never a private method (transformers 5.25 removed
``FalconAttention._split_heads``, which an earlier version of this test called).
"""

from __future__ import annotations

import math

import pytest
import torch

import posenc
from posenc.encodings.alibi import ALiBi, alibi_slopes, falcon_alibi_slopes

transformers = pytest.importorskip("transformers")

H, HIDDEN = 4, 64
D = HIDDEN // H


def _falcon():
    # sdpa, Falcon's default (in transformers 5.24 the eager path added the ALiBi bias twice: once in
    # FalconAttention, once inside the mask FalconModel builds)
    config = transformers.FalconConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=H,
                                       alibi=True, new_decoder_architecture=False, multi_query=False,
                                       parallel_attn=True, bias=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    return transformers.FalconForCausalLM(config).eval()


@pytest.mark.parametrize("n_heads", [4, 6, 8, 12, 71])
def test_falcon_bias_equals_build_alibi_tensor_bit_for_bit(n_heads):
    from transformers.models.falcon.modeling_falcon import build_alibi_tensor

    t = 700  # past 256: bfloat16 rounds the key positions themselves
    pos = torch.arange(t)
    hf = build_alibi_tensor(torch.ones(1, t, dtype=torch.long), n_heads, torch.float32)  # (H, 1, T)
    hf = (hf / math.sqrt(D)).expand(n_heads, t, t)  # FalconModel: alibi / sqrt(head_dim), one row per key
    pe = ALiBi(dim=n_heads * D, n_heads=n_heads, causal=True, falcon=True)
    ours = pe.bias(pos, pos)
    causal = pos[:, None] >= pos[None]
    assert torch.equal(ours[:, causal], hf[:, causal])
    assert torch.equal(falcon_alibi_slopes(n_heads), alibi_slopes(n_heads).bfloat16())


def _attention_io(model, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 0's fused q/k/v projection ``(B, T, 3 * HIDDEN)`` and its attention output (after ``dense``)
    ``(B, T, HIDDEN)``, captured with forward hooks (public ``nn.Module`` API) during a public ``model(...)`` call."""
    attn = model.transformer.h[0].self_attention
    seen = {}
    hooks = [attn.query_key_value.register_forward_hook(lambda mod, args, out: seen.setdefault("qkv", out)),
             attn.dense.register_forward_hook(lambda mod, args, out: seen.setdefault("out", out))]
    try:
        with torch.no_grad():
            model(input_ids=input_ids)
    finally:
        for hook in hooks:
            hook.remove()
    return seen["qkv"], seen["out"]


def test_falcon_attention_matches_hf_and_the_paper_form_does_not():
    model = _falcon()
    attn = model.transformer.h[0].self_attention
    with torch.no_grad():  # sharper attention, so the bf16 rounding of Falcon's bias matters
        attn.query_key_value.weight.mul_(4.0)
    t = 300
    input_ids = torch.randint(0, 100, (1, t), generator=torch.Generator().manual_seed(4))
    qkv, want = _attention_io(model, input_ids)
    # Falcon-7B's fused layout (multi_query=False, new_decoder_architecture=False): per head, its query, key and value
    q, k, v = qkv.view(1, t, H, 3, D).unbind(3)  # each (B, T, H, D)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, T, D)
    pos = torch.arange(t)

    def run(pe):
        with torch.no_grad():
            out = posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True)  # (B, H, T, D)
            return attn.dense(out.transpose(1, 2).reshape(1, t, HIDDEN))  # Falcon's output projection

    exact = run(ALiBi(dim=HIDDEN, n_heads=H, causal=True, falcon=True))
    # the paper's form with Falcon's effective slopes m_h / sqrt(d): equal in exact arithmetic, not in bf16
    paper = run(ALiBi(dim=HIDDEN, n_heads=H, causal=True, slopes=(alibi_slopes(H) / math.sqrt(D)).tolist()))
    torch.testing.assert_close(exact, want, atol=1e-5, rtol=1e-5)
    assert (paper - want).abs().max() > 10 * (exact - want).abs().max()


def test_falcon_option_checks():
    with pytest.raises(ValueError, match="causal=True"):
        ALiBi(dim=64, n_heads=4, falcon=True)
    with pytest.raises(TypeError, match="falcon must be a bool"):
        ALiBi(dim=64, n_heads=4, causal=True, falcon=1)
