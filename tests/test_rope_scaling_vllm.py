"""RoPE scalings that only vLLM implements (transformers has no Grok-1 or TeleChat3): posenc's ``yarn_log``,
``theta_scale`` and ``telechat3_yarn`` against vLLM's formulas, re-derived here from its source
(``vllm/model_executor/layers/rotary_embedding/grok1_scaling_rope.py``, ``telechat3_scaling_rope.py``,
``yarn_scaling_rope.py`` and ``common.py``; vLLM is not installed), and their export to Hugging Face configs where
transformers can express them."""

from __future__ import annotations

import math

import pytest
import torch

from posenc.encodings.rope import RoPE
from posenc.hf import from_hf_config, to_hf_config
from posenc.rope_scaling import resolve_scaling, scaled_inv_freq

HEAD_DIM, ORIGINAL, FACTOR = 64, 64, 4.0


# -- vLLM's formulas, re-derived (float64 here; vLLM forms them in float32) -----------------------------------------
def _vllm_correction_range(beta_fast, beta_slow, dim, base, original):
    """common.yarn_find_correction_range: the pair index where a pair turns ``beta`` times within ``original``,
    floored / ceiled, clamped to [0, dim - 1]."""
    def index(turns):
        return dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(base))
    return max(math.floor(index(beta_fast)), 0), min(math.ceil(index(beta_slow)), dim - 1)


def _vllm_ramp(low, high, n):
    """common.yarn_linear_ramp_mask."""
    if low == high:
        high += 0.001
    return ((torch.arange(n, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)


def _vllm_grok_inv_freq(method, dim, base, factor, original, *, beta_fast=32, beta_slow=1, extrapolation=1.0):
    """Grok1ScalingRotaryEmbedding._compute_inv_freq for extra_method ``method``."""
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    extrapolated, interpolated = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    low, high = _vllm_correction_range(beta_fast, beta_slow, dim, base, original)
    mask = (1 - _vllm_ramp(low, high, dim // 2)) * extrapolation
    if method == "yarn":
        return interpolated * (1 - mask) + extrapolated * mask
    if method == "yarn_log":
        return torch.exp(torch.log(extrapolated) * mask + torch.log(interpolated) * (1.0 - mask))
    assert method == "theta_scale"
    new_base = base ** (math.log(original * factor / (2 * math.pi)) / math.log(original / (2 * math.pi)))
    return 1.0 / new_base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def _vllm_telechat3(dim, base, factor, original, *, attn_factor=1.0):
    """TeleChat3RoPEScaledRotaryEmbedding: YaRNScalingRotaryEmbedding's frequencies, mscale 0.07 ln s + 1."""
    inv_freq = _vllm_grok_inv_freq("yarn", dim, base, factor, original)  # the same linear YaRN blend, truncated
    mscale = (1.0 if factor <= 1 else 0.07 * math.log(factor) + 1.0) * attn_factor
    return inv_freq, mscale


@pytest.mark.parametrize("base", [10000.0, 500000.0])
@pytest.mark.parametrize("extrapolation", [1.0, 0.5])
def test_yarn_log_is_groks_geometric_blend(base, extrapolation):
    params = resolve_scaling({"rope_type": "yarn_log", "factor": FACTOR, "extrapolation_factor": extrapolation,
                              "original_max_position_embeddings": ORIGINAL}, max_seq_len=4 * ORIGINAL)
    ours, scale = scaled_inv_freq(HEAD_DIM, base, params)
    want = _vllm_grok_inv_freq("yarn_log", HEAD_DIM, base, FACTOR, ORIGINAL, extrapolation=extrapolation)
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=0)  # the same float64 arithmetic up to exp/log rounding
    assert scale == 1.0  # vLLM computes Grok's mscale but leaves it out of the cos/sin cache
    linear = _vllm_grok_inv_freq("yarn", HEAD_DIM, base, FACTOR, ORIGINAL, extrapolation=extrapolation)
    inside = (want - linear).abs() > 1e-9 * want  # the band pairs, where geometric and linear means differ
    assert inside.any() and (ours[inside] < linear[inside]).all()  # geometric mean < arithmetic mean


@pytest.mark.parametrize("base", [10000.0, 1e6])
def test_theta_scale_is_groks_base_change(base):
    params = resolve_scaling({"rope_type": "theta_scale", "factor": FACTOR,
                              "original_max_position_embeddings": ORIGINAL}, max_seq_len=4 * ORIGINAL)
    ours, scale = scaled_inv_freq(HEAD_DIM, base, params)
    torch.testing.assert_close(ours, _vllm_grok_inv_freq("theta_scale", HEAD_DIM, base, FACTOR, ORIGINAL),
                               rtol=1e-12, atol=0)
    assert scale == 1.0


@pytest.mark.parametrize(("factor", "attn_factor"), [(4.0, 1.0), (16.0, 0.9), (1.0, 1.0)])
def test_telechat3_yarn_is_yarn_with_its_mscale(factor, attn_factor):
    params = resolve_scaling({"rope_type": "telechat3_yarn", "factor": factor, "attn_factor": attn_factor,
                              "original_max_position_embeddings": ORIGINAL}, max_seq_len=4 * ORIGINAL)
    ours, scale = scaled_inv_freq(HEAD_DIM, 10000.0, params)
    want, want_scale = _vllm_telechat3(HEAD_DIM, 10000.0, factor, ORIGINAL, attn_factor=attn_factor)
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=0)
    assert scale == pytest.approx(want_scale, rel=1e-15)


def _vllm_scores(q, k, inv_freq, mscale, pos):
    """vLLM's path in float32: a cos/sin cache over positions (times mscale), neox rotation of q and k, q . k."""
    freqs = pos.float()[:, None] * inv_freq.float()[None]  # (T, D/2)
    cos, sin = freqs.cos() * mscale, freqs.sin() * mscale

    def rotate(x):  # apply_rotary_emb_torch, is_neox_style=True
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return rotate(q) @ rotate(k).transpose(-1, -2)


@pytest.mark.parametrize("rope_type", ["yarn_log", "theta_scale", "telechat3_yarn"])
def test_attention_scores_match_vllm_below_and_above_the_training_length(rope_type):
    """q . k after posenc's rotation equals vLLM's at positions 0 .. 4 * ORIGINAL - 1. Both form cos/sin in float32
    from angles up to ~255 rad, whose float32 spacing is 1.5e-5: each of the 32 pair terms of a score (|q_i k_i| of a
    few units) moves by ~1e-5 x its size, so scores agree to ~1e-3 at worst (1.3e-4 measured); a real change of
    frequencies moves them by O(10)."""
    length = 4 * ORIGINAL
    pe = RoPE(dim=4 * HEAD_DIM, n_heads=4, max_seq_len=length,
              scaling={"rope_type": rope_type, "factor": FACTOR, "original_max_position_embeddings": ORIGINAL})
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, length, HEAD_DIM, generator=gen), torch.randn(1, 4, length, HEAD_DIM, generator=gen)
    pos = torch.arange(length)
    rq, rk = pe.rotate(q, k, pos, pos)
    ours = rq @ rk.transpose(-1, -2)
    if rope_type == "telechat3_yarn":
        inv_freq, mscale = _vllm_telechat3(HEAD_DIM, 10000.0, FACTOR, ORIGINAL)
    else:
        inv_freq, mscale = _vllm_grok_inv_freq(rope_type, HEAD_DIM, 10000.0, FACTOR, ORIGINAL), 1.0
    want = _vllm_scores(q, k, inv_freq, mscale, pos)
    torch.testing.assert_close(ours, want, rtol=0, atol=2e-3)
    plain = _vllm_scores(q, k, _vllm_grok_inv_freq("yarn", HEAD_DIM, 10000.0, 1.0, ORIGINAL), 1.0, pos)
    assert float((ours - plain).abs().max()) > 1.0  # the scaling matters at these lengths


def test_export_to_hf_where_transformers_can_express_it():
    """theta_scale is plain RoPE at a new base, telechat3_yarn is HF's yarn with attention_factor = 0.07 ln s + 1;
    both come back from from_hf_config with the same frequencies and scale. yarn_log has no HF form: refused."""
    kw = dict(dim=4 * HEAD_DIM, n_heads=4, max_seq_len=4 * ORIGINAL)
    scaling = {"factor": FACTOR, "original_max_position_embeddings": ORIGINAL}
    theta = RoPE(**kw, scaling={"rope_type": "theta_scale", **scaling})
    out = to_hf_config(theta)
    assert out["rope_parameters"]["rope_type"] == "default"
    assert out["rope_theta"] == out["rope_parameters"]["rope_theta"] > 10000.0
    back = from_hf_config(out)
    torch.testing.assert_close(back.inv_freq(), theta.inv_freq(), rtol=1e-12, atol=0)

    tele = RoPE(**kw, scaling={"rope_type": "telechat3_yarn", **scaling})
    out = to_hf_config(tele)
    assert out["rope_parameters"]["rope_type"] == "yarn"
    assert out["rope_parameters"]["attention_factor"] == pytest.approx(0.07 * math.log(FACTOR) + 1)
    back = from_hf_config(out)
    torch.testing.assert_close(back.inv_freq(), tele.inv_freq(), rtol=1e-12, atol=0)
    assert back.attention_scale == pytest.approx(tele.attention_scale, rel=1e-15)

    with pytest.raises(ValueError, match="geometrically"):
        to_hf_config(RoPE(**kw, scaling={"rope_type": "yarn_log", **scaling}))


def test_hf_yarn_export_checks_transformers_numbers():
    """The exported telechat3 dict, read by transformers' own yarn, gives posenc's frequencies and scale."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    tele = RoPE(dim=4 * HEAD_DIM, n_heads=4, max_seq_len=4 * ORIGINAL,
                scaling={"rope_type": "telechat3_yarn", "factor": FACTOR, "original_max_position_embeddings": ORIGINAL})
    config = transformers.LlamaConfig(**to_hf_config(tele), vocab_size=10)
    inv_freq, scale = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    torch.testing.assert_close(inv_freq.double(), tele.inv_freq(), rtol=1e-6, atol=0)  # HF: float32 pow
    assert scale == pytest.approx(tele.attention_scale, rel=1e-12)


@pytest.mark.parametrize(("params", "match"), [
    ({"rope_type": "yarn_log", "factor": 4.0, "extrapolation_factor": 1.5}, "extrapolation_factor must be in"),
    ({"rope_type": "yarn_log", "factor": 4.0, "beta_fast": 1.0, "beta_slow": 32.0}, "must exceed"),
    ({"rope_type": "theta_scale", "factor": 4.0, "original_max_position_embeddings": 4}, "L0 > 2 pi"),
    ({"rope_type": "telechat3_yarn", "factor": 4.0, "attn_factor": 0.0}, "attn_factor"),
    ({"rope_type": "telechat3_yarn", "factor": 0.5}, "factor"),
])
def test_bad_parameters_are_refused(params, match):
    with pytest.raises(ValueError, match=match):
        RoPE(dim=64, n_heads=1, max_seq_len=256, scaling=params)
