"""RoPE context-extension scalings: agreement with transformers' ROPE_INIT_FUNCTIONS, the papers' formulas, a peer
library (rotary-embedding-torch), exact KV-cache behaviour of the length-dependent methods, log-n scaling, errors
and the ``posenc rope-scaling`` command."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from posenc import KVCache, Transformer, TransformerConfig, get_encoding
from posenc.cli import main
from posenc.encodings.rope import RoPE, rope_cos_sin, rope_frequencies
from posenc.rope_scaling import (
    SCALING_METHODS,
    band_report,
    logn_scale,
    resolve_scaling,
    scaled_inv_freq,
    yarn_correction_range,
)

# -- agreement with transformers ---------------------------------------------------------------------------------------
HEAD_DIMS = (64, 80, 128)
BASES = (10000.0, 500000.0)
FACTORS = (2.0, 4.0, 8.0)
ORIGINALS = (2048, 8192)
PARTIALS = (1.0, 0.5)
GRID = list(itertools.product(HEAD_DIMS, BASES, FACTORS, ORIGINALS, PARTIALS))


def _longrope_lists(n: int, factor: float) -> tuple[list[float], list[float]]:
    i = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    return (1.0 + 0.1 * i).tolist(), (1.0 + (factor - 1.0) * i**2).tolist()


def _hf_case(rope_type: str, head_dim: int, base: float, factor: float, original: int, partial: float,
             extra: dict) -> tuple[dict, dict]:
    """(transformers rope_parameters, posenc scaling dict) for one grid point."""
    rotary_dim = int(head_dim * partial)
    params: dict = {"rope_type": rope_type, "rope_theta": base, "partial_rotary_factor": partial}
    if rope_type in ("linear", "dynamic", "yarn", "llama3"):
        params["factor"] = factor
    if rope_type in ("yarn", "longrope", "llama3"):
        params["original_max_position_embeddings"] = original
    if rope_type == "llama3":
        params.update(low_freq_factor=1.0, high_freq_factor=4.0)
    if rope_type == "longrope":
        params["short_factor"], params["long_factor"] = _longrope_lists(rotary_dim // 2, factor)
        params["factor"] = factor
    params.update(extra)
    ours = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if rope_type == "dynamic":  # transformers stretches past max_position_embeddings
        ours["original_max_position_embeddings"] = original
    return params, ours


EXTRAS = {
    "linear": [{}],
    "dynamic": [{}],
    "yarn": [{}, {"beta_fast": 16.0, "beta_slow": 2.0, "truncate": False}, {"mscale": 0.707, "mscale_all_dim": 1.0},
             {"attention_factor": 1.5}],
    "longrope": [{}, {"attention_factor": 1.25}],
    "llama3": [{}, {"low_freq_factor": 2.0, "high_freq_factor": 8.0}],
}


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return transformers.LlamaConfig, ROPE_INIT_FUNCTIONS


@pytest.mark.parametrize("rope_type", sorted(EXTRAS))
def test_inv_freq_and_attention_scale_match_transformers(hf, rope_type):
    llama_config, init_functions = hf
    assert rope_type in init_functions and rope_type in SCALING_METHODS
    checked = 0
    for (head_dim, base, factor, original, partial), extra in itertools.product(GRID, EXTRAS[rope_type]):
        params, ours = _hf_case(rope_type, head_dim, base, factor, original, partial, extra)
        max_len = original if rope_type == "dynamic" else int(original * factor)
        config = llama_config(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                              max_position_embeddings=max_len, rope_parameters=dict(params))
        rotary_dim = int(head_dim * partial)
        resolved = resolve_scaling(ours, max_seq_len=max_len)
        seq_lens = [None, original * 3 + 5] if SCALING_METHODS[rope_type].length_dependent else [None]
        for seq_len in seq_lens:
            want_freq, want_scale = init_functions[rope_type](config, "cpu", seq_len=seq_len)
            got_freq, got_scale = scaled_inv_freq(rotary_dim, base, resolved, seq_len=seq_len)
            assert got_freq.dtype == torch.float64 and got_freq.shape == (rotary_dim // 2,)
            torch.testing.assert_close(got_freq.float(), want_freq.float(), rtol=2e-6, atol=0,
                                       msg=lambda m, p=params, s=seq_len: f"{p} seq_len={s}: {m}")
            assert got_scale == pytest.approx(float(want_scale), rel=1e-6), (params, seq_len)
            checked += 1
    assert checked >= len(GRID)


def test_rope_encoding_uses_scaled_frequencies_and_scale(hf):
    """The encoding's cos/sin are the scaled frequencies times the attention scale (YaRN at 4x, partial rotary)."""
    llama_config, init_functions = hf
    params = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
              "partial_rotary_factor": 0.5}
    config = llama_config(hidden_size=128, num_attention_heads=4, max_position_embeddings=256,
                          rope_parameters=dict(params))
    inv_freq, scale = init_functions["yarn"](config, "cpu")
    pe = RoPE(dim=128, n_heads=4, max_seq_len=256, rotary_fraction=0.5, scaling=params)
    pos = torch.arange(300)
    cos, sin = pe.cos_sin(pos)
    angles = pos[:, None].double() * inv_freq.double()
    torch.testing.assert_close(cos, (angles.cos() * scale).float(), atol=2e-5, rtol=0)
    torch.testing.assert_close(sin, (angles.sin() * scale).float(), atol=2e-5, rtol=0)


# -- the papers' formulas, independent of any library ------------------------------------------------------------------
def _theta(d: int, base: float) -> list[float]:
    return [base ** (-2 * i / d) for i in range(d // 2)]


@pytest.mark.parametrize("factor", [2.0, 4.0, 16.0])
def test_linear_is_position_interpolation(factor):
    got, scale = scaled_inv_freq(64, 10000.0, resolve_scaling({"rope_type": "linear", "factor": factor},
                                                               max_seq_len=512))
    assert scale == 1.0
    torch.testing.assert_close(got, torch.tensor(_theta(64, 10000.0), dtype=torch.float64) / factor)
    # rotating position s*p with PI equals rotating position p without it
    plain = RoPE(dim=64, n_heads=1, max_seq_len=512)
    pi = RoPE(dim=64, n_heads=1, max_seq_len=512, scaling={"rope_type": "linear", "factor": factor})
    x = torch.randn(1, 1, 20, 64, dtype=torch.float64)
    pos = torch.arange(20)
    torch.testing.assert_close(pi.rotate_one(x, (pos * factor).long()), plain.rotate_one(x, pos))


@pytest.mark.parametrize("d,factor", [(64, 4.0), (128, 8.0), (32, 2.0)])
def test_ntk_base_formula(d, factor):
    got, _ = scaled_inv_freq(d, 10000.0, {"rope_type": "ntk", "factor": factor})
    new_base = 10000.0 * factor ** (d / (d - 2))
    torch.testing.assert_close(got, torch.tensor(_theta(d, new_base), dtype=torch.float64))
    assert got[0].item() == 1.0  # the fastest pair is untouched ...
    assert got[-1].item() == pytest.approx(_theta(d, 10000.0)[-1] / factor, rel=1e-12)  # ... the slowest is / s


def test_ntk_matches_rotary_embedding_torch():
    rotary_embedding_torch = pytest.importorskip("rotary_embedding_torch")
    peer = rotary_embedding_torch.RotaryEmbedding(64, theta=10000, theta_rescale_factor=4.0)
    got, _ = scaled_inv_freq(64, 10000.0, {"rope_type": "ntk", "factor": 4.0})
    torch.testing.assert_close(got.float(), peer.freqs.detach().float(), rtol=2e-6, atol=0)


def test_dynamic_base_formula():
    d, s, original = 64, 4.0, 2048
    params = {"rope_type": "dynamic", "factor": s, "original_max_position_embeddings": original}
    for seq_len in (None, 1, original):  # up to the training length: plain RoPE
        got, _ = scaled_inv_freq(d, 10000.0, params, seq_len=seq_len)
        torch.testing.assert_close(got, torch.tensor(_theta(d, 10000.0), dtype=torch.float64))
    for seq_len in (original + 1, 3 * original, 4 * original):
        got, _ = scaled_inv_freq(d, 10000.0, params, seq_len=seq_len)
        new_base = 10000.0 * (s * seq_len / original - (s - 1)) ** (d / (d - 2))
        torch.testing.assert_close(got, torch.tensor(_theta(d, new_base), dtype=torch.float64))


@pytest.mark.parametrize("factor", [2.0, 4.0, 32.0])
def test_yarn_against_paper(factor):
    """arXiv 2309.00071: sqrt(1/t) = 0.1 ln s + 1; pairs turning > beta_fast times within L are kept, < beta_slow
    times are divided by s, the rest lie in between."""
    d, base, original = 128, 10000.0, 4096
    got, scale = scaled_inv_freq(d, base, resolve_scaling(
        {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original}, max_seq_len=original))
    assert scale == pytest.approx(0.1 * math.log(factor) + 1, rel=1e-12)
    theta = _theta(d, base)
    kinds = set()
    for i, (new, old) in enumerate(zip(got.tolist(), theta)):
        turns = original * old / (2 * math.pi)
        if turns >= 32:
            assert new == pytest.approx(old, rel=1e-12), i
            kinds.add("kept")
        elif turns <= 1:
            assert new == pytest.approx(old / factor, rel=1e-12), i
            kinds.add("interpolated")
        else:
            assert old / factor <= new * (1 + 1e-12) and new <= old * (1 + 1e-12), i
    assert kinds == {"kept", "interpolated"}
    # the ramp edges are where a pair turns beta times: d ln(L / (2 pi beta)) / (2 ln base), floored / ceiled
    low, high = yarn_correction_range(d, base, original, 32.0, 1.0, True)
    assert (low, high) == (math.floor(d * math.log(original / (64 * math.pi)) / (2 * math.log(base))),
                           math.ceil(d * math.log(original / (2 * math.pi)) / (2 * math.log(base))))


def test_yarn_mscale_variants():
    base = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096}
    _, both = scaled_inv_freq(64, 10000.0, resolve_scaling({**base, "mscale": 0.707, "mscale_all_dim": 0.707},
                                                           max_seq_len=4096))
    assert both == pytest.approx(1.0)  # DeepSeek-V2's config: the ratio cancels
    _, ratio = scaled_inv_freq(64, 10000.0, resolve_scaling({**base, "mscale": 1.0, "mscale_all_dim": 0.5},
                                                            max_seq_len=4096))
    assert ratio == pytest.approx((0.1 * math.log(40) + 1) / (0.05 * math.log(40) + 1))
    _, fixed = scaled_inv_freq(64, 10000.0, resolve_scaling({**base, "attention_factor": 1.7}, max_seq_len=4096))
    assert fixed == 1.7
    with pytest.raises(ValueError, match="ambiguous"):  # transformers silently ignores this mscale
        scaled_inv_freq(64, 10000.0, resolve_scaling({**base, "mscale": 0.707}, max_seq_len=4096))


def test_longrope_formula():
    d, original, factor = 32, 4096, 8.0
    short, long = _longrope_lists(d // 2, factor)
    params = resolve_scaling({"rope_type": "longrope", "short_factor": short, "long_factor": long,
                              "original_max_position_embeddings": original, "factor": factor}, max_seq_len=original)
    theta = _theta(d, 10000.0)
    for seq_len, lam in ((None, short), (original, short), (original + 1, long)):
        got, scale = scaled_inv_freq(d, 10000.0, params, seq_len=seq_len)
        assert got.tolist() == pytest.approx([t / f for t, f in zip(theta, lam)], rel=1e-12)
        assert scale == pytest.approx(math.sqrt(1 + math.log(factor) / math.log(original)))
    # a missing factor is max_seq_len / original (Phi-3 sets max_position_embeddings = 32 * original)
    implied = resolve_scaling({"rope_type": "longrope", "short_factor": short, "long_factor": long,
                               "original_max_position_embeddings": 4096}, max_seq_len=131072)
    assert implied["factor"] == 32.0


def test_llama3_band_edges():
    """Meta's llama 3.1 rule with its published parameters: factor 8, low 1, high 4, original 8192, base 500000."""
    d, base, s, original = 128, 500000.0, 8.0, 8192
    got, scale = scaled_inv_freq(d, base, resolve_scaling(
        {"rope_type": "llama3", "factor": s, "original_max_position_embeddings": original}, max_seq_len=original))
    assert scale == 1.0
    seen = set()
    for new, old in zip(got.tolist(), _theta(d, base)):
        wavelength = 2 * math.pi / old
        if wavelength < original / 4:
            want, kind = old, "high"
        elif wavelength > original / 1:
            want, kind = old / s, "low"
        else:
            a = (original / wavelength - 1) / (4 - 1)
            want, kind = (1 - a) * old / s + a * old, "mid"
        assert new == pytest.approx(want, rel=1e-12)
        seen.add(kind)
    assert seen == {"high", "mid", "low"}


# -- length-dependent methods and the KV cache -------------------------------------------------------------------------
def _decoder(scaling: dict | None, max_len: int = 16, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    options = {} if scaling is None else {"scaling": scaling}
    cfg = TransformerConfig(kind="decoder", vocab_size=50, dim=32, n_layers=2, n_heads=4, max_seq_len=max_len,
                            encoding="rope", encoding_options=options)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # sharpen attention so that positions matter (the tiny init makes it nearly uniform)
        for block in model.decoder.blocks:
            block.attn.q_proj.weight.mul_(8.0)
            block.attn.k_proj.weight.mul_(8.0)
    return model


def _decode_token_by_token(model: Transformer, tokens: torch.Tensor, prefill: int) -> torch.Tensor:
    cache = KVCache()
    outs = [model(tokens[:, :prefill], cache=cache)]
    for t in range(prefill, tokens.shape[1]):
        outs.append(model(tokens[:, t:t + 1], cache=cache))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("scaling", [
    {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    {"rope_type": "yarn", "factor": 4.0, "logn": True},  # also an attention scale, and log-n on queries only
], ids=lambda s: s["rope_type"] + ("+logn" if s.get("logn") else ""))
def test_static_scaling_kv_cache_equals_full_forward(scaling):
    """Static scalings (every method but dynamic/longrope) share one frequency table: decoding is exact."""
    model = _decoder(scaling)
    tokens = torch.randint(0, 50, (2, 26))  # well past max_seq_len=16
    with torch.no_grad():
        full = model(tokens)
        step = _decode_token_by_token(model, tokens, prefill=5)
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-4)


def _dynamic_reference(pe: RoPE, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefill: int) -> torch.Tensor:
    """Causal attention where the keys/queries of the prefill use length ``prefill`` and token t (decoded alone)
    uses length t + 1: the documented rule, written out with the explicit dynamic-NTK base."""
    d, s, original = pe.rotary_dim, pe.scaling["factor"], pe.scaling["original_max_position_embeddings"]
    t_all = q.shape[2]
    lengths = [prefill] * prefill + list(range(prefill + 1, t_all + 1))

    def rotated(x: torch.Tensor, t: int) -> torch.Tensor:
        length = max(lengths[t], original)
        base = pe.base * (s * length / original - (s - 1)) ** (d / (d - 2))
        cos, sin = rope_cos_sin(torch.tensor([t]), rope_frequencies(d, base), dtype=torch.float64)
        x1, x2 = x[..., t:t + 1, : d // 2], x[..., t:t + 1, d // 2:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    qr = torch.cat([rotated(q, t) for t in range(t_all)], dim=2)
    kr = torch.cat([rotated(k, t) for t in range(t_all)], dim=2)
    scores = qr @ kr.transpose(-1, -2) / math.sqrt(d)
    mask = torch.ones(t_all, t_all, dtype=torch.bool).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def test_dynamic_kv_cache_follows_documented_rule():
    pe = get_encoding("rope", dim=16, n_heads=1, max_seq_len=8, causal=True,
                      scaling={"rope_type": "dynamic", "factor": 2.0})
    q, k, v = (torch.randn(1, 1, 20, 16, dtype=torch.float64) for _ in range(3))
    prefill = 6
    # decode through the encoding's own hooks: rotate each call, cache rotated keys
    pos = torch.arange(prefill)
    qr, kr = pe.rotate(q[:, :, :prefill], k[:, :, :prefill], pos, pos)
    scores = qr @ kr.transpose(-1, -2) / 4.0
    outs = [scores.masked_fill(~torch.ones(prefill, prefill, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
            @ v[:, :, :prefill]]
    cached = kr
    for t in range(prefill, 20):
        pos = torch.tensor([t])
        qt, kt = pe.rotate(q[:, :, t:t + 1], k[:, :, t:t + 1], pos, pos)
        cached = torch.cat((cached, kt), dim=2)
        outs.append((qt @ cached.transpose(-1, -2) / 4.0).softmax(-1) @ v[:, :, : t + 1])
    torch.testing.assert_close(torch.cat(outs, dim=2), _dynamic_reference(pe, q, k, v, prefill))


def test_dynamic_model_decoding_equals_full_forward_up_to_training_length_only():
    model = _decoder({"rope_type": "dynamic", "factor": 4.0}, max_len=16)
    tokens = torch.randint(0, 50, (1, 26))
    with torch.no_grad():
        step = _decode_token_by_token(model, tokens, prefill=8)
        full = model(tokens)
        short = model(tokens[:, :16])
    # within the training length the frequencies never change: identical
    torch.testing.assert_close(step[:, :16], short, atol=1e-5, rtol=1e-4)
    # past it, each decoded key keeps the frequencies of its own step, the full forward uses length 30 for all
    assert (step[:, 16:] - full[:, 16:]).abs().max() > 1e-3
    assert torch.isfinite(step).all()


def test_longrope_switches_by_call_length():
    n = 4
    scaling = {"rope_type": "longrope", "short_factor": [1.0] * n, "long_factor": [2.0, 3.0, 4.0, 5.0],
               "original_max_position_embeddings": 8, "factor": 4.0}
    pe = RoPE(dim=8, n_heads=1, max_seq_len=8, scaling=scaling)
    theta = rope_frequencies(8)
    for seq_len, lam in ((5, torch.ones(n, dtype=torch.float64)), (12, torch.tensor([2.0, 3, 4, 5]).double())):
        pos = torch.tensor([3])
        want = rope_cos_sin(pos, theta / lam, dtype=torch.float64, scale=pe.attention_scale)
        got = pe.cos_sin(pos, dtype=torch.float64, seq_len=seq_len)
        torch.testing.assert_close(got, want)
    # rotate() takes the length from the largest position among q and k
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 12, 8, dtype=torch.float64)
    qr, _ = pe.rotate(q, k, torch.tensor([3]), torch.arange(12))
    torch.testing.assert_close(qr, pe.rotate_one(q, torch.tensor([3]), seq_len=12))
    assert not torch.allclose(qr, pe.rotate_one(q, torch.tensor([3]), seq_len=8))


# -- log-n -------------------------------------------------------------------------------------------------------------
def test_logn_scales_queries_only_beyond_training_length():
    train = 16
    pe = RoPE(dim=32, n_heads=2, max_seq_len=train, scaling={"rope_type": "default", "logn": True})
    plain = RoPE(dim=32, n_heads=2, max_seq_len=train)
    q, k = torch.randn(2, 2, 40, 16), torch.randn(2, 2, 40, 16)
    pos = torch.arange(40)
    q1, k1 = pe.rotate(q, k, pos, pos)
    q0, k0 = plain.rotate(q, k, pos, pos)
    torch.testing.assert_close(k1, k0)
    want = torch.tensor([max(1.0, math.log(p + 1) / math.log(train)) for p in range(40)])
    torch.testing.assert_close(q1, q0 * want[:, None])
    assert (want[:train] == 1).all() and (want[train:] > 1).all()
    torch.testing.assert_close(logn_scale(torch.tensor([[15, 255]]), 16), torch.tensor([[1.0, 2.0]]))
    # per-sequence positions (B, T) broadcast over heads
    bpos = torch.stack((pos, pos + 100))
    qb, _ = pe.rotate(q, k, bpos, bpos)
    torch.testing.assert_close(qb[1], plain.rotate(q, k, bpos, bpos)[0][1] * logn_scale(pos + 100, train)[:, None])


# -- the encoding option -----------------------------------------------------------------------------------------------
def test_no_scaling_keeps_plain_rope_numbers():
    plain = RoPE(dim=64, n_heads=4, max_seq_len=128)
    default = RoPE(dim=64, n_heads=4, max_seq_len=128, scaling={"type": "default"})
    assert default.scaling is None
    pos = torch.arange(200)
    torch.testing.assert_close(default.cos_sin(pos), plain.cos_sin(pos), rtol=0, atol=0)
    torch.testing.assert_close(plain.inv_freq(), rope_frequencies(16))


def test_legacy_type_and_hf_keys_accepted():
    pe = RoPE(dim=64, n_heads=4, max_seq_len=128, base=500000.0,
              scaling={"type": "linear", "factor": 2.0, "rope_theta": 500000.0, "partial_rotary_factor": 1.0})
    assert pe.scaling["rope_type"] == "linear"
    torch.testing.assert_close(pe.inv_freq(), rope_frequencies(16, 500000.0) / 2)


def test_scaled_rope_state_dict_and_device_roundtrip():
    pe = RoPE(dim=32, n_heads=2, max_seq_len=16, scaling={"rope_type": "yarn", "factor": 4.0})
    other = RoPE(dim=32, n_heads=2, max_seq_len=16, scaling={"rope_type": "yarn", "factor": 4.0})
    other.load_state_dict(pe.state_dict())
    pos = torch.arange(64)
    torch.testing.assert_close(other.cos_sin(pos), pe.cos_sin(pos))
    torch.testing.assert_close(pe.to(torch.float64).cos_sin(pos), other.cos_sin(pos))


def test_saved_model_keeps_scaling(tmp_path):
    model = _decoder({"rope_type": "yarn", "factor": 4.0})
    model.save(tmp_path / "m.pt")
    loaded = Transformer.load(tmp_path / "m.pt").eval()
    assert loaded.pe.scaling == model.pe.scaling
    tokens = torch.randint(0, 50, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens))


BAD = [
    ({"rope_type": "yarn", "factor": 0.5}, "factor must be a number >= 1"),
    ({"rope_type": "linear"}, "missing required key"),
    ({"rope_type": "lineer", "factor": 2.0}, "unknown rope_type"),
    ({"factor": 2.0}, "needs 'rope_type'"),
    ({"rope_type": "yarn", "type": "linear", "factor": 2.0}, "disagree"),
    ({"rope_type": "linear", "factor": 2.0, "beta_fast": 3}, "unknown key"),
    ({"rope_type": "yarn", "factor": 4.0, "beta_fast": 1.0, "beta_slow": 2.0}, "beta_fast"),
    ({"rope_type": "yarn", "factor": 4.0, "truncate": "yes"}, "truncate must be a bool"),
    ({"rope_type": "yarn", "factor": 4.0, "attention_factor": -1.0}, "attention_factor must be a number > 0"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}, "high_freq_factor"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 3, "long_factor": [2.0] * 4}, "length 3"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0, 2.0, 0.0, 2.0]}, "positive"),
    ({"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 1}, "int >= 2"),
    ({"rope_type": "linear", "factor": 2.0, "logn": 1}, "logn must be a bool"),
    ({"rope_type": "linear", "factor": 2.0, "rope_theta": 20000.0}, "rope_theta"),
    ({"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
]


@pytest.mark.parametrize("scaling,message", BAD, ids=[m for _, m in BAD])
def test_invalid_scaling_raises(scaling, message):
    with pytest.raises(ValueError, match=message):
        RoPE(dim=32, n_heads=4, max_seq_len=64, scaling=scaling)


def test_a_scaling_value_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="factor must be a number; got str '2'"):
        RoPE(dim=32, n_heads=4, max_seq_len=64, scaling={"rope_type": "linear", "factor": "2"})


def test_scaling_must_be_a_dict():
    with pytest.raises(TypeError, match="must be a dict"):
        RoPE(dim=32, n_heads=4, scaling="yarn")


# -- band report and CLI -----------------------------------------------------------------------------------------------
def test_band_report_regimes():
    rows, scale = band_report(128, 10000.0, resolve_scaling({"rope_type": "yarn", "factor": 4.0},
                                                            max_seq_len=4096))
    regimes = [r.regime for r in rows]
    assert regimes[0] == "extrapolate" and regimes[-1] == "interpolate" and "blend" in regimes
    assert regimes == sorted(regimes, key=["extrapolate", "blend", "interpolate"].index)  # fast -> slow
    assert all(r.scaled_wavelength == pytest.approx(r.wavelength * r.stretch) for r in rows)
    assert scale == pytest.approx(0.1 * math.log(4) + 1)


def test_cli_prints_bands_and_scale(capsys):
    assert main(["rope-scaling", "--type", "yarn", "--factor", "4", "--original-max", "4096", "--head-dim", "64"]) == 0
    out = capsys.readouterr().out
    assert "wavelength" in out and "extrapolate" in out and "interpolate" in out and "blend" in out
    assert f"attention scale: {0.1 * math.log(4) + 1:.6g}" in out
    for name in SCALING_METHODS:
        assert f"  {name} " in out
    assert len([line for line in out.splitlines() if line.strip().split(" ")[0].isdigit()]) == 32


def test_cli_generated_flags_and_errors(capsys):
    assert main(["rope-scaling", "--type", "llama3", "--factor", "8", "--original-max", "8192", "--base", "500000",
                 "--low-freq-factor", "1", "--high-freq-factor", "4"]) == 0
    assert "llama3" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # out of the flag's stated range: a usage error
        main(["rope-scaling", "--type", "yarn", "--factor", "0.5"])
    assert exc.value.code == 2 and "--factor: expected a finite number [1, " in capsys.readouterr().err


def test_cli_plot_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bands.png"
    assert main(["rope-scaling", "--type", "dynamic", "--factor", "4", "--original-max", "1024", "--head-dim", "32",
                 "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plot_without_matplotlib_names_viz_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["rope-scaling", "--type", "yarn", "--plot", str(tmp_path / "x.png")]) == 1
    assert "posenc[viz]" in capsys.readouterr().err


# -- p-RoPE (proportional) ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head_dim,fraction,factor", [(64, 0.25, 1.0), (128, 0.5, 1.0), (80, 0.75, 2.0),
                                                      (64, 1.0, 1.0), (64, 0.0, 1.0)])
def test_proportional_matches_transformers_and_the_paper(hf, head_dim, fraction, factor):
    """p-RoPE (arXiv 2410.06205): the fastest ``p * d/2`` pairs keep ``base^(-2i/d)`` (exponents over the whole head),
    the slowest get frequency 0; Hugging Face's ``proportional`` (Gemma 4) computes the same numbers."""
    llama_config, init_functions = hf
    params = {"rope_type": "proportional", "rope_theta": 10000.0, "partial_rotary_factor": fraction, "factor": factor}
    config = llama_config(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                          max_position_embeddings=64, rope_parameters=dict(params))
    want, want_scale = init_functions["proportional"](config, "cpu")
    pe = RoPE(dim=2 * head_dim, n_heads=2, max_seq_len=64, scaling=params)
    assert pe.rotary_dim == head_dim  # the whole head is paired (i, i + d/2), unlike rotary_fraction
    got = pe.inv_freq()
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-6, atol=0)
    assert want_scale == pe.attention_scale == 1.0
    kept = int(fraction * head_dim // 2)
    paper = [10000.0 ** (-2 * i / head_dim) / factor if i < kept else 0.0 for i in range(head_dim // 2)]
    torch.testing.assert_close(got, torch.tensor(paper, dtype=torch.float64), rtol=1e-12, atol=0)
    # the zeroed pairs are not rotated at any position: their channels pass through
    q = torch.randn(1, 2, 5, head_dim)
    rotated, _ = pe.rotate(q, q, torch.arange(1000, 1005), torch.arange(1000, 1005))
    still = torch.cat((torch.arange(kept, head_dim // 2), torch.arange(head_dim // 2 + kept, head_dim)))
    torch.testing.assert_close(rotated[..., still], q[..., still])


def test_proportional_is_not_partial_rotary():
    p = RoPE(dim=128, n_heads=2, scaling={"rope_type": "proportional", "partial_rotary_factor": 0.5})
    partial = RoPE(dim=128, n_heads=2, rotary_fraction=0.5)
    assert (p.rotary_dim, partial.rotary_dim) == (64, 32)
    assert not torch.allclose(p.inv_freq()[:16], partial.inv_freq())  # exponents over d, not over p * d
    with pytest.raises(ValueError, match="partial_rotary_factor must be in"):
        RoPE(dim=128, n_heads=2, scaling={"rope_type": "proportional", "partial_rotary_factor": 1.5})
