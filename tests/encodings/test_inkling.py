"""Inkling's relative-logit bias (``inkling``) against its formula written naively, x-transformers'
``RelativeProjPositionalBias`` and Hugging Face's ``InklingForCausalLM``, with weights copied.

- the naive reference loops over (batch, head, query, key) in float64: ``r_i = W_r x_i``, ``bias_ij = sum_c r_ic
  P[c, pos_i - pos_j]`` inside ``[0, rel_extent)`` (else 0), ``logit_ij = tau_i (q_i . k_j * scale + bias_ij)``;
- x-transformers 2.31.10: its bias module alone (float64, to rounding) and its ``Attention`` end to end (whose
  softmax runs in float32 whatever the input dtype, hence a float32-sized tolerance there);
- transformers 5.25.0: a tiny random ``InklingForCausalLM`` (no download) whose attention modules are given a
  ``forward`` that does everything Inkling does (projections, short convolutions, QK-norm, its cache, its masks, its
  ``1/d`` scale) through the module's public attributes, except the relative bias and the log-scaling, which come
  from ``posenc.attention`` with this encoding. Logits and greedy tokens must equal HF's eager path.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import posenc
import posenc.attention_settings as settings
from posenc import KVCache, Positions, Transformer, TransformerConfig
from posenc.encodings.inkling import InklingRelativeBias, inkling_log_scale, inkling_relative_bias

B, H, HKV, D = 2, 4, 2, 8
DIM = H * D
EPS32 = torch.finfo(torch.float32).eps


def _pe(*, causal: bool = True, dtype: torch.dtype = torch.float64, seed: int = 0, **options) -> InklingRelativeBias:
    """An encoding with random, non-trivial parameters (profiles of unit scale, so the bias matters)."""
    pe = posenc.get_encoding("inkling", dim=DIM, n_heads=H, causal=causal, **options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pe.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (DIM**-0.5 if p.dim() == 2 and p.shape[1] == DIM else 1.0))
    return pe.to(dtype)


def _naive(pe: InklingRelativeBias, x, q, k, v, q_pos, k_pos, *, causal: bool, scale: float):
    """The formula, one (b, h, i, j) at a time, float64; differentiable (for the gradient comparison).

    ``x`` ``(B, Tk, dim)`` is the layer input of every key; the queries are the last ``Tq`` keys.
    """
    tq, tk = q.shape[2], k.shape[2]
    rep = q.shape[1] // k.shape[1]
    r = nn.functional.linear(x, pe.r_proj.weight, pe.r_proj.bias).view(x.shape[0], tk, H, pe.d_rel)  # (B, Tk, H, d)
    profiles, extent = pe.profiles, pe.rel_extent
    out = []
    for b in range(q.shape[0]):
        heads = []
        for h in range(H):
            rows = []
            for i in range(tq):
                pi = int(q_pos[b, i])
                tau = 1.0
                if pe.log_scaling_n_floor is not None:
                    tau = 1.0 + pe.log_scaling_alpha * math.log(max((pi + 1) / pe.log_scaling_n_floor, 1.0))
                logits = []
                for j in range(tk):
                    d = pi - int(k_pos[b, j])
                    bias = (r[b, tk - tq + i, h] * profiles[:, d]).sum() if 0 <= d < extent else q.new_zeros(())
                    logit = tau * ((q[b, h, i] * k[b, h // rep, j]).sum() * scale + bias)
                    if causal and j > tk - tq + i:  # by index, bottom-right aligned, as posenc.attention
                        logit = logit + float("-inf")
                    logits.append(logit)
                probs = torch.softmax(torch.stack(logits), 0)
                rows.append(probs @ v[b, h // rep])
            heads.append(torch.stack(rows))
        out.append(torch.stack(heads))
    return torch.stack(out)  # (B, H, Tq, D)


def _inputs(tq: int, tk: int, *, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, tk, DIM, generator=g, dtype=dtype)
    q = torch.randn(B, H, tq, D, generator=g, dtype=dtype)
    k, v = (torch.randn(B, HKV, tk, D, generator=g, dtype=dtype) for _ in range(2))
    return x, q, k, v


# keys with gaps and a second sequence that starts late: distances are not index differences, some are past
# rel_extent=4, some inside it
K_POS = torch.tensor([[0, 1, 2, 5, 6, 9, 10, 11, 20], [7, 8, 9, 10, 11, 12, 13, 14, 15]])


@pytest.mark.parametrize("log_scaling", [None, 3], ids=["plain", "log_scaling"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_equals_the_naive_formula_on_every_backend_forward_and_gradients(causal, log_scaling, monkeypatch):
    monkeypatch.setattr(settings, "CHUNK_ELEMENTS", 1)  # chunked in blocks of TERMS_MIN_ROWS rows
    monkeypatch.setattr(settings, "TERMS_MIN_ROWS", 2)
    pe = _pe(causal=causal, d_rel=3, rel_extent=4, r_bias=True, log_scaling_n_floor=log_scaling,
             log_scaling_alpha=0.7)
    tq, tk = 6, 9
    x, q, k, v = _inputs(tq, tk)
    q_pos = K_POS[:, tk - tq:]
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    layer = posenc.LayerView(0, H, HKV, D)
    params = (pe.r_proj.weight, pe.r_proj.bias, pe.profiles)
    want = _naive(pe, x, q, k, v, q_pos, K_POS, causal=causal, scale=D**-0.5)
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, (q, k, v, *params), g)
    for backend in ("reference", "dense", "chunked"):
        feats = pe.features(x, K_POS, layer=layer)
        got = posenc.attention(q, k, v, pe, q_pos=q_pos, k_pos=K_POS, causal=causal, features=feats, layer=layer,
                               backend=backend)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12, msg=lambda m, b=backend: f"{b}: {m}")
        for name, a, b in zip(("q", "k", "v", "W_r", "b_r", "P"), torch.autograd.grad(got, (q, k, v, *params), g),
                              want_grads):
            torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11, msg=lambda m, n=name, be=backend: f"{be} {n}: {m}")


def test_bias_is_the_queries_curve_read_at_each_distance_and_zero_outside():
    """``(r_i . P)[d]`` at ``d = 0`` and ``d = rel_extent - 1``; exactly 0 at ``d < 0`` and ``d >= rel_extent``."""
    g = torch.Generator().manual_seed(2)
    r = torch.randn(1, 2, 1, 3, generator=g, dtype=torch.float64)  # one query, two heads
    profiles = torch.randn(3, 5, generator=g, dtype=torch.float64)
    k_pos = torch.tensor([12, 10, 9, 8, 6, 5, 3])  # distances -2, 0, 1, 2, 4, 5, 7 from position 10
    bias = inkling_relative_bias(r, profiles, torch.tensor([10]), k_pos)  # (1, 2, 1, 7)
    curve = (r @ profiles)[0, :, 0]  # (2, 5)
    torch.testing.assert_close(bias[0, :, 0, 1:5], curve[:, [0, 1, 2, 4]], atol=0, rtol=0)
    assert bias[0, :, 0, [0, 5, 6]].eq(0).all()  # a future key, and keys rel_extent (5) or more back


def test_keys_past_rel_extent_are_seen_without_bias_not_masked():
    """Every key 10 or more back with rel_extent=4: plain attention (a masked key would get no weight instead);
    with log-scaling, plain attention at the scale ``tau_i / sqrt(d)``."""
    x, q, k, v = _inputs(2, 5)
    q_pos, k_pos = torch.tensor([30, 31]), torch.arange(5) + 10
    layer = posenc.LayerView(0, H, HKV, D)
    plain = posenc.attention(q, k, v, None, q_pos=q_pos, k_pos=k_pos, backend="reference")
    pe = _pe(rel_extent=4)
    got = posenc.attention(q, k, v, pe, q_pos=q_pos, k_pos=k_pos, features=pe.features(x, k_pos, layer=layer),
                           layer=layer)
    torch.testing.assert_close(got, plain, atol=1e-14, rtol=0)
    assert not torch.allclose(got, posenc.attention(q, k, v, None, q_pos=q_pos, k_pos=k_pos, attn_mask=torch.tensor(
        [True, False, True, False, True])))  # a masked key would change it: the keys count
    pe = _pe(rel_extent=4, log_scaling_n_floor=8, log_scaling_alpha=0.3)
    tau = 1 + 0.3 * math.log(32 / 8)  # position 31: (31 + 1) / 8
    got = posenc.attention(q[:, :, 1:], k, v, pe, q_pos=q_pos[1:], k_pos=k_pos,
                           features=pe.features(x, k_pos, layer=layer), layer=layer)
    want = posenc.attention(q[:, :, 1:], k, v, None, q_pos=q_pos[1:], k_pos=k_pos, scale=tau * D**-0.5)
    torch.testing.assert_close(got, want, atol=1e-14, rtol=0)
    near = posenc.attention(q, k, v, pe, q_pos=torch.tensor([11, 12]), k_pos=k_pos,
                            features=pe.features(x, k_pos, layer=layer), layer=layer)
    assert not torch.allclose(near, posenc.attention(q, k, v, None, q_pos=torch.tensor([11, 12]), k_pos=k_pos))


def test_log_scale_is_one_up_to_n_floor_and_logarithmic_after_in_float64():
    pos = torch.tensor([0, 6, 7, 8, 63, 10**6, 2**40])
    tau = inkling_log_scale(pos, n_floor=8, alpha=0.1)
    assert tau.dtype == torch.float64
    assert tau[:3].eq(1.0).all()  # (pos + 1) / n_floor <= 1: no scaling
    want = [1 + 0.1 * math.log((p + 1) / 8) for p in (8, 63, 10**6, 2**40)]
    torch.testing.assert_close(tau[3:], torch.tensor(want, dtype=torch.float64), atol=0, rtol=4 * 2**-52)
    # 2**40 + 1 is exact in float64; in float32 it would round to 2**40
    assert inkling_log_scale(torch.tensor([2**40]), n_floor=1, alpha=1.0) > 1 + math.log(2**40)


def test_bias_depends_only_on_distances_and_log_scaling_on_query_positions():
    x, q, k, v = _inputs(3, 7)
    layer = posenc.LayerView(0, H, HKV, D)
    plain, scaled = _pe(rel_extent=6), _pe(rel_extent=6, log_scaling_n_floor=2)
    for pe, same in ((plain, True), (scaled, False)):
        outs = [posenc.attention(q, k, v, pe, q_pos=torch.arange(4, 7) + s, k_pos=torch.arange(7) + s, causal=True,
                                 features=pe.features(x, torch.arange(7), layer=layer), layer=layer)
                for s in (0, 1000)]
        assert torch.allclose(outs[0], outs[1], atol=1e-13, rtol=0) == same


# -- x-transformers ----------------------------------------------------------------------------------------------------
def _xt_pair(*, causal: bool, d_rel: int = 4, extent: int = 5):
    from x_transformers.x_transformers import Attention

    torch.manual_seed(3)
    xt = Attention(dim=DIM, heads=H, dim_head=D, causal=causal, use_rel_proj_pos_bias=True,
                   rel_proj_num_distance_basis=d_rel, rel_proj_max_dist=extent).double().eval()
    rel = xt.rel_proj_pos_bias
    with torch.no_grad():
        rel.distance_bank.normal_()  # off its 0.02 init, so the bias matters
    pe = posenc.get_encoding("inkling", dim=DIM, n_heads=H, causal=causal, d_rel=d_rel, rel_extent=extent,
                             r_bias=True).double()  # x-transformers' projection has a bias
    with torch.no_grad():
        pe.r_proj.weight.copy_(rel.to_distance_weights[0].weight)
        pe.r_proj.bias.copy_(rel.to_distance_weights[0].bias)
        pe.profiles.copy_(rel.distance_bank)
    return xt, pe


@pytest.mark.parametrize("keys", [9, 13], ids=["self", "longer_keys"])
def test_bias_equals_x_transformers_relative_proj_positional_bias(keys):
    """Its queries are the last ``n`` of ``seq_len_k`` keys (``pos_q = arange(n) + seq_len_k - n``), as here."""
    xt, pe = _xt_pair(causal=True)
    n = 9
    x = torch.randn(B, n, DIM, dtype=torch.float64)
    want = xt.rel_proj_pos_bias(x, seq_len_k=keys)  # (B, H, n, keys)
    r = pe.features(x, torch.arange(n), layer=posenc.LayerView(0, H, H, D))["r"]
    got = inkling_relative_bias(r, pe.profiles, torch.arange(n) + keys - n, torch.arange(keys))
    torch.testing.assert_close(got, want, atol=1e-15, rtol=1e-14)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_attention_equals_x_transformers_attention_end_to_end(causal):
    """x-transformers' ``Attention(use_rel_proj_pos_bias=True)``: its q/k/v/out projections, our attention.

    Its softmax runs in float32 (``Attend``: ``softmax(dtype=float32)`` unless qk_norm), so probabilities carry float32
    rounding (relative ``eps32``) into outputs of size ``|v| * |W_out|``; the tolerance is a few times that.
    """
    xt, pe = _xt_pair(causal=causal)
    t = 11
    x = torch.randn(B, t, DIM, dtype=torch.float64)
    with torch.no_grad():
        want = xt(x)

    def heads(y):
        return y.view(B, t, H, D).transpose(1, 2)  # (B, T, H*D) -> (B, H, T, D)

    layer = posenc.LayerView(0, H, H, D)
    out = posenc.attention(heads(xt.to_q(x)), heads(xt.to_k(x)), heads(xt.to_v(x)), pe, causal=causal,
                           features=pe.features(x, torch.arange(t), layer=layer), layer=layer)
    got = xt.to_out(out.transpose(1, 2).reshape(B, t, H * D))
    torch.testing.assert_close(got, want, atol=16 * EPS32 * float(want.abs().max()), rtol=0)
    no_bias = copy.deepcopy(pe)
    with torch.no_grad():
        no_bias.profiles.zero_()
    out0 = posenc.attention(heads(xt.to_q(x)), heads(xt.to_k(x)), heads(xt.to_v(x)), no_bias, causal=causal,
                            features=no_bias.features(x, torch.arange(t), layer=layer), layer=layer)
    assert (xt.to_out(out0.transpose(1, 2).reshape(B, t, H * D)) - want).abs().max() > 1e-2  # the bias mattered


# -- Hugging Face InklingForCausalLM -----------------------------------------------------------------------------------
def _hf_config(**overrides):
    from transformers import InklingTextConfig

    options = dict(vocab_size=61, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                   head_dim=16, swa_num_attention_heads=2, swa_num_key_value_heads=2, swa_head_dim=8,
                   sliding_window_size=6, d_rel=4, rel_extent=5, log_scaling_n_floor=4, log_scaling_alpha=0.5,
                   layer_types=["hybrid_sliding", "hybrid", "hybrid_sliding"], mlp_layer_types=["dense"] * 3,
                   intermediate_size=48, initializer_range=0.2, logits_mup_width_multiplier=1.0, pad_token_id=0,
                   bos_token_id=1, eos_token_id=2)
    return InklingTextConfig(**{**options, **overrides}, attn_implementation="eager")


def _encoding_of(module, config) -> InklingRelativeBias:
    """The layer's bias as this encoding: Inkling's sliding layers take rel_extent = the window and no log-scaling."""
    pe = posenc.get_encoding("inkling", dim=config.hidden_size, n_heads=module.num_heads, causal=True,
                             d_rel=config.d_rel, rel_extent=module.rel_extent,
                             log_scaling_n_floor=None if module.is_sliding else config.log_scaling_n_floor,
                             log_scaling_alpha=config.log_scaling_alpha)
    with torch.no_grad():
        pe.r_proj.weight.copy_(module.r_proj.weight)
        pe.profiles.copy_(module.rel_logits_proj.proj)
    return pe


def _posenc_forward(module, pe: InklingRelativeBias, backend: str):
    """``InklingAttention.forward`` with the bias, the log-scaling and the attention from ``posenc.attention``.

    Everything else is the module's own, through its public attributes and the cache's public methods, line for
    line as in transformers 5.25's ``InklingAttention.forward``.
    """

    def forward(hidden_states, attention_mask, conv_mask=None, cache=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, module.head_dim)
        q = module.q_proj(hidden_states)
        k = module.k_sconv(module.k_proj(hidden_states), cache=cache, conv_mask=conv_mask)
        v = module.v_sconv(module.v_proj(hidden_states), cache=cache, conv_mask=conv_mask)
        q = module.q_norm(q.view(hidden_shape)).transpose(1, 2)  # (B, H, Tq, D), QK-norm
        k = module.k_norm(k.view(hidden_shape)).transpose(1, 2)
        v = v.view(hidden_shape).transpose(1, 2)
        tq = q.shape[2]
        if cache is not None:
            kv_length, kv_offset = cache.get_mask_sizes(tq, module.layer_idx)
            q_offset = cache.get_query_offset(module.layer_idx)
            k, v = cache.update(k, v, module.layer_idx, kwargs=kwargs)
        else:
            kv_length, q_offset, kv_offset = k.shape[2], 0, 0
        k_pos = torch.arange(kv_length, device=q.device) + kv_offset
        q_pos = torch.arange(tq, device=q.device) + q_offset
        layer = posenc.LayerView(module.layer_idx, module.num_heads, module.num_key_value_heads, module.head_dim)
        r = pe.features(hidden_states, q_pos, layer=layer)["r"]  # (B, H, Tq, d_rel)
        # HF caches no relative states: only the queries' own are read, so earlier keys' entries may be anything
        r = torch.cat((r.new_zeros(*r.shape[:2], k.shape[2] - tq, r.shape[3]), r), dim=2)  # (B, H, Tk, d_rel)
        out = posenc.attention(q, k, v, pe, q_pos=q_pos, k_pos=k_pos, attn_mask=attention_mask,
                               scale=module.scaling, features={"r": r}, layer=layer, backend=backend)
        out = out.transpose(1, 2).reshape(*input_shape, -1)  # (B, H, Tq, D) -> (B, Tq, H*D)
        return module.o_proj(out), None

    return forward


def _hf_pair(backend: str = "auto", **overrides):
    from transformers import InklingForCausalLM

    torch.manual_seed(0)
    hf = InklingForCausalLM(_hf_config(**overrides)).eval()
    ours = copy.deepcopy(hf)
    for layer in ours.model.layers:
        module = layer.self_attn
        module.forward = _posenc_forward(module, _encoding_of(module, ours.config), backend)
    return hf, ours


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("backend", ["dense", "chunked"])
def test_equals_hf_inkling_for_causal_lm_logits(backend, monkeypatch):
    """14 tokens: past the sliding window (6) and rel_extent (5), log-scaling from position 4 in the full layer."""
    monkeypatch.setattr(settings, "CHUNK_ELEMENTS", 1)
    hf, ours = _hf_pair(backend)
    tokens = torch.randint(3, 61, (2, 14), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want, got = hf(tokens).logits, ours(tokens).logits
    # float32 end to end: a few dozen roundings of size eps32 * |logit| (measured: 1.2e-6 at |logit| <= 3.6)
    torch.testing.assert_close(got, want, atol=64 * EPS32 * float(want.abs().max()), rtol=0)
    base = copy.deepcopy(hf)
    for layer in base.model.layers:
        nn.init.zeros_(layer.self_attn.rel_logits_proj.proj)
    assert (base(tokens).logits - want).abs().max() > 0.1  # the bias matters in this model


@pytest.mark.filterwarnings("ignore")
def test_greedy_tokens_equal_hf_inkling_for_causal_lm_with_its_cache_and_padding():
    """Prefill then decode through HF's cache (sliding layers drop keys), a left-padded row: same tokens and logits."""
    hf, ours = _hf_pair()
    prompt = torch.randint(3, 61, (2, 5), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0
    runs = [model.generate(prompt, attention_mask=mask, max_new_tokens=10, do_sample=False, output_logits=True,
                           return_dict_in_generate=True) for model in (hf, ours)]
    want, got = torch.stack(runs[0].logits), torch.stack(runs[1].logits)  # (steps, B, vocab)
    torch.testing.assert_close(got, want, atol=64 * EPS32 * float(want.abs().max()), rtol=0)
    top2 = want.topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 100 * EPS32 * float(want.abs().max())  # no near-tie decides a token
    assert torch.equal(runs[1].sequences, runs[0].sequences)


def test_hf_log_scaling_matters_and_is_ours(monkeypatch):
    """Without log-scaling in ours but with it in HF the logits differ: the equality above is not vacuous for tau."""
    hf, _ = _hf_pair()
    _, ours = _hf_pair(log_scaling_n_floor=None)
    ours.load_state_dict(hf.state_dict())
    tokens = torch.randint(3, 61, (1, 12), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert (ours(tokens).logits - hf(tokens).logits).abs().max() > 0.1


# -- posenc.Transformer ------------------------------------------------------------------------------------------------
def _model(**options) -> Transformer:
    torch.manual_seed(7)
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=30, dim=DIM, n_heads=H, n_kv_heads=HKV,
                                          n_layers=2, max_seq_len=64, encoding="inkling",
                                          encoding_options={"d_rel": 4, "rel_extent": 5, **options}))
    with torch.no_grad():
        for pe in model.decoder.encodings():
            pe.profiles.normal_()
    return model.eval()


@pytest.mark.parametrize("split", [[13], [6, 1, 1, 5], [1] * 13])
def test_prefill_then_decode_equals_the_full_forward(split):
    model = _model(log_scaling_n_floor=3, log_scaling_alpha=0.5)
    x = torch.randint(0, 30, (B, 13), generator=torch.Generator().manual_seed(8))
    pos = torch.arange(13) + 100  # far positions: tau > 1 everywhere
    full = model(x, positions=pos)
    cache, outs, start = KVCache(), [], 0
    for n in split:
        outs.append(model(x[:, start:start + n], positions=pos[start:start + n], cache=cache))
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.layers[0].features["r"].shape == (B, H, 13, 4)


def test_packed_segments_equal_separate_forwards():
    model = _model(log_scaling_n_floor=2)
    a, b = (torch.randint(0, 30, (1, n), generator=torch.Generator().manual_seed(9 + n)) for n in (7, 6))
    pos = torch.cat((torch.arange(7), torch.arange(6)))[None]
    seg = torch.tensor([[0] * 7 + [1] * 6])
    packed = model(torch.cat((a, b), 1), positions=Positions(pos=pos, segment_ids=seg))
    torch.testing.assert_close(packed[:, :7], model(a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 7:], model(b), atol=1e-5, rtol=1e-5)
    cache = KVCache()  # and decoding the second document after the packed prefix
    model(torch.cat((a, b[:, :3]), 1), positions=Positions(pos=pos[:, :10], segment_ids=seg[:, :10]), cache=cache)
    steps = [model(b[:, i:i + 1], cache=cache) for i in range(3, 6)]
    torch.testing.assert_close(torch.cat(steps, 1), packed[:, 10:], atol=1e-5, rtol=1e-5)


def test_one_instance_per_layer_with_profiles_shared_by_the_heads():
    model = _model()
    encodings = model.decoder.encodings()
    assert len({id(pe) for pe in encodings}) == 2
    assert encodings[0].profiles.shape == (4, 5)  # (d_rel, rel_extent): one bank per layer, as in HF
    assert encodings[0].r_proj.weight.shape == (H * 4, DIM)  # r per head
    assert not torch.equal(encodings[0].profiles, encodings[1].profiles)


def test_rel_extent_defaults_to_max_seq_len_up_to_1024():
    assert posenc.get_encoding("inkling", dim=DIM, n_heads=H, max_seq_len=64).rel_extent == 64
    assert posenc.get_encoding("inkling", dim=DIM, n_heads=H, max_seq_len=4096).rel_extent == 1024


def test_chunked_blocks_shrink_when_rel_extent_outgrows_the_keys(monkeypatch):
    """The queries' curves ``(rows, rel_extent)`` count in a block's memory: fewer rows per block for a long extent."""
    from layer_inputs import prepare
    from posenc.chunked import chunk_rows

    monkeypatch.setattr(settings, "CHUNK_ELEMENTS", 2**16)
    monkeypatch.setattr(settings, "TERMS_MIN_ROWS", 1)
    q = torch.randn(1, H, 64, D)
    rows = [chunk_rows(prepare(q, q, q, _pe(dtype=torch.float32, rel_extent=e), causal=True)) for e in (16, 1024)]
    assert rows[1] * 3 <= rows[0]


# -- validation --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("option", "value", "error"), [
    ("d_rel", 0, ValueError), ("d_rel", 2.0, TypeError), ("rel_extent", 0, ValueError),
    ("rel_extent", True, TypeError), ("log_scaling_n_floor", 0, ValueError), ("log_scaling_n_floor", 4.5, TypeError),
    ("log_scaling_alpha", -0.1, ValueError), ("log_scaling_alpha", float("nan"), ValueError),
    ("r_bias", 1, TypeError), ("init_std", -1.0, ValueError),
])
def test_bad_options_are_refused_with_a_clear_error(option, value, error):
    with pytest.raises(error, match=f"inkling: {option}"):
        posenc.get_encoding("inkling", dim=DIM, n_heads=H, **{option: value})


def test_bad_features_are_refused_with_a_clear_error():
    pe = _pe(d_rel=3)
    layer = posenc.LayerView(0, H, H, D)
    q = torch.randn(1, H, 4, D, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"layer input x of shape \(B, T, dim=32\)"):
        pe.features(torch.randn(1, 4, DIM + 1), torch.arange(4), layer=layer)
    with pytest.raises(ValueError, match="built for n_heads=4 but the layer has 2 heads"):
        pe.features(torch.randn(1, 4, DIM), torch.arange(4), layer=posenc.LayerView(0, 2, 2, D))
    with pytest.raises(KeyError, match="'r'"):
        posenc.attention(q, q, q, pe)
    with pytest.raises(ValueError, match=r"features\['r'\] must have shape"):
        posenc.attention(q, q, q, pe, features={"r": torch.zeros(1, H, 4, 5, dtype=torch.float64)})
