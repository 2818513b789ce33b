"""PoPE (arXiv 2509.10534) against the paper's score written naively, x-transformers' PolarEmbedding (its phase
copied), a KV cache through posenc.Transformer, and the pitfalls of FRONTIER.md section 2."""

from __future__ import annotations

import math

import pytest
import torch
from x_transformers.attend import Attend
from x_transformers.x_transformers import PolarEmbedding, apply_polar_pos_emb

import posenc
from posenc import KVCache, Transformer, TransformerConfig, get_encoding
from posenc.encodings.pope import PoPE

DIM, HEADS, KV_HEADS, HEAD_DIM = 32, 4, 2, 8


def _pope(seed: int = 0, **kw) -> PoPE:
    torch.manual_seed(seed)
    return get_encoding("pope", dim=DIM, n_heads=HEADS, max_seq_len=64, **kw)


def _naive_attention(pe: PoPE, q, k, v, q_pos, k_pos, *, causal: bool) -> torch.Tensor:
    """The paper's score, one term at a time in float64, then a causal softmax: ``(B, H, Tq, d)``."""
    b, h, tq, d = q.shape
    kv, tk = k.shape[1], k.shape[2]
    delta = pe.offsets().detach().double()
    theta = [pe.base ** (-c / d) for c in range(d)]  # d frequencies over d
    sp = torch.nn.functional.softplus
    mq, mk = sp(q.double()), sp(k.double())
    out = torch.zeros(b, h, tq, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            j_kv = hi // (h // kv)
            scores = torch.full((tq, tk), -math.inf, dtype=torch.float64)
            for i in range(tq):
                for j in range(tk):
                    t, s = int(q_pos[i]), int(k_pos[j])
                    if causal and j > i + tk - tq:
                        continue
                    terms = (float(mq[bi, hi, i, c] * mk[bi, j_kv, j, c]) *
                             math.cos((t - s) * theta[c] - float(delta[hi, c])) for c in range(d))
                    scores[i, j] = sum(terms) / math.sqrt(d)
            out[bi, hi] = scores.softmax(-1) @ v[bi, j_kv].double()
    return out


# -- the paper's formula -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
def test_matches_the_papers_score_written_naively(causal):
    pe = _pope().double()
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, HEADS, 6, HEAD_DIM, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, KV_HEADS, 6, HEAD_DIM, generator=gen, dtype=torch.float64) for _ in range(2))
    pos = torch.tensor([0, 1, 2, 3, 9, 30])
    with torch.no_grad():
        q2, k2 = pe.rotate(q, k, pos, pos)
        got = posenc.attention(q2, k2, v, pe, q_pos=pos, k_pos=pos, causal=causal)  # default scale: 1/sqrt(d)
    assert q2.shape == (2, HEADS, 6, 2 * HEAD_DIM) and k2.shape == (2, KV_HEADS, 6, 2 * HEAD_DIM)
    assert got.shape == (2, HEADS, 6, HEAD_DIM)
    torch.testing.assert_close(got, _naive_attention(pe, q, k, v, pos, pos, causal=causal), atol=1e-12, rtol=0)


def test_scores_depend_on_the_distance_only_up_to_position_one_million():
    """Exact angles: the same q/k at positions shifted by 10^6 give the same scores, to float32 rounding of cos/sin."""
    pe = _pope()
    q, k = torch.randn(1, HEADS, 5, HEAD_DIM), torch.randn(1, HEADS, 5, HEAD_DIM)
    pos = torch.arange(5)
    with torch.no_grad():
        near = [t.double() for t in pe.rotate(q, k, pos, pos)]
        far = [t.double() for t in pe.rotate(q, k, pos + 10**6, pos + 10**6)]
    s_near = near[0] @ near[1].transpose(-1, -2)
    s_far = far[0] @ far[1].transpose(-1, -2)
    # each of the 2d products carries ~3 float32 roundings (cos/sin, the product, mu): |q'||k'| * 2d * 3 * 2^-24
    mu = torch.nn.functional.softplus(torch.cat((q, k)).double()).max()
    tol = float(mu * mu) * 2 * HEAD_DIM * 3 * 2.0**-24 * 4
    assert (s_near - s_far).abs().max() < tol
    assert torch.isfinite(far[0]).all() and torch.isfinite(far[1]).all()


# -- x-transformers ----------------------------------------------------------------------------------------------------
def test_matches_x_transformers_polar_embedding():
    """x-transformers 2.31.10: PolarEmbedding(dim_head, heads) with our phase copied into its learned_bias,
    apply_polar_pos_emb on q and (with the bias) on k, and its Attend at scale dim_head^-0.5."""
    pe = _pope()
    peer = PolarEmbedding(HEAD_DIM, HEADS)
    with torch.no_grad():
        peer.learned_bias.copy_(pe.phase[:, None, :])  # (H, 1, d) -- the same clamp to [-2 pi, 0] on both sides
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, HEADS, 7, HEAD_DIM, generator=gen) for _ in range(3))
    pos = torch.arange(7)
    freqs, bias = peer(pos)
    qx, kx = apply_polar_pos_emb(q, freqs), apply_polar_pos_emb(k, freqs + bias)
    want, _ = Attend(causal=True, scale=HEAD_DIM ** -0.5)(qx, kx, v)
    with torch.no_grad():
        q2, k2 = pe.rotate(q, k, pos, pos)
        got = posenc.attention(q2, k2, v, pe, q_pos=pos, k_pos=pos, causal=True)
    # scores: the phase sits on q here and on k there; only t - s - delta enters, so the products agree
    s_peer, s_ours = qx @ kx.transpose(-1, -2), q2 @ k2.transpose(-1, -2)
    assert (s_peer - s_ours).abs().max() < 1e-5  # float32: x-transformers forms t * theta in float32
    assert (want - got).abs().max() < 1e-5


def test_x_transformers_keys_equal_ours_rotated_by_the_phase():
    """Per channel, x-transformers' key is ours turned by delta: the two place the same offset on opposite sides."""
    pe = _pope()
    peer = PolarEmbedding(HEAD_DIM, HEADS)
    with torch.no_grad():
        peer.learned_bias.copy_(pe.phase[:, None, :])
    k = torch.randn(1, HEADS, 4, HEAD_DIM)
    pos = torch.arange(4)
    freqs, bias = peer(pos)
    kx = apply_polar_pos_emb(k, freqs + bias)  # mu [cos(s theta + delta), sin(s theta + delta)]
    with torch.no_grad():
        _, k2 = pe.rotate(k, k, pos, pos)  # mu [cos(s theta), sin(s theta)]
    delta = pe.offsets().detach()[:, None]  # (H, 1, d)
    c, s = k2[..., :HEAD_DIM], k2[..., HEAD_DIM:]
    turned = torch.cat((c * delta.cos() - s * delta.sin(), s * delta.cos() + c * delta.sin()), dim=-1)
    assert (turned - kx).abs().max() < 1e-5


# -- the contract amendment: width 2d, scale 1/sqrt(d) -----------------------------------------------------------------
def test_declares_twice_the_width_and_keeps_the_scale_of_d():
    pe = _pope()
    assert pe.rotated_width(HEAD_DIM) == 2 * HEAD_DIM
    q, k, v = torch.randn(1, HEADS, 5, HEAD_DIM), torch.randn(1, HEADS, 5, HEAD_DIM), torch.randn(1, HEADS, 5, HEAD_DIM)
    pos = torch.arange(5)
    with torch.no_grad():
        q2, k2 = pe.rotate(q, k, pos, pos)
        default = posenc.attention(q2, k2, v, pe, q_pos=pos, k_pos=pos, causal=True)
        by_d = posenc.attention(q2, k2, v, pe, q_pos=pos, k_pos=pos, causal=True, scale=HEAD_DIM ** -0.5)
        by_2d = posenc.attention(q2, k2, v, pe, q_pos=pos, k_pos=pos, causal=True, scale=(2 * HEAD_DIM) ** -0.5)
    torch.testing.assert_close(default, by_d, atol=0, rtol=0)
    assert (default - by_2d).abs().max() > 1e-3  # the width's own scale would be a different model


@pytest.mark.parametrize("wrapper", ["randomized", "sinks"])
def test_wrappers_declare_the_width_of_what_they_wrap(wrapper):
    pe = get_encoding(wrapper, dim=DIM, n_heads=HEADS, base="pope")
    assert pe.rotated_width(HEAD_DIM) == 2 * HEAD_DIM


def test_frequencies_are_over_d_not_d_over_2():
    pe = _pope()
    theta = pe.inv_freq()
    assert theta.shape == (HEAD_DIM,)
    torch.testing.assert_close(theta, torch.tensor([10000.0 ** (-c / HEAD_DIM) for c in range(HEAD_DIM)],
                                                   dtype=torch.float64), atol=0, rtol=1e-15)


def test_phase_is_clamped_to_minus_two_pi_and_zero():
    pe = _pope()
    with torch.no_grad():
        pe.phase.copy_(torch.linspace(-10, 3, HEADS * HEAD_DIM).view(HEADS, HEAD_DIM))
    delta = pe.offsets()
    assert delta.min() >= -2 * math.pi and delta.max() <= 0
    assert delta.min() == -2 * math.pi and delta.max() == 0  # both ends reached: a clamp, not a squashing


def test_default_phase_starts_inside_the_interval_where_it_has_a_gradient():
    """x-transformers starts the phase at 0, the clamp's edge: one-sided derivative there, and none once a step
    takes it above 0. The default here draws U(-2 pi, 0); zeros stay available."""
    pe = _pope()
    assert pe.phase_init == "uniform"
    assert (pe.phase > -2 * math.pi).all() and (pe.phase < 0).all()
    stuck = _pope(phase_init="zeros")
    with torch.no_grad():
        stuck.phase.add_(0.1)  # one step upwards
    q, k = torch.randn(1, HEADS, 3, HEAD_DIM), torch.randn(1, HEADS, 3, HEAD_DIM)
    q2, k2 = stuck.rotate(q, k, torch.arange(3), torch.arange(3))
    (q2 @ k2.transpose(-1, -2)).sum().backward()
    assert stuck.phase.grad.abs().max() == 0  # the pitfall the default avoids


def test_keys_carry_no_phase_so_grouped_query_heads_share_them():
    pe = _pope()
    k = torch.randn(1, KV_HEADS, 4, HEAD_DIM)
    pos = torch.arange(4)
    with torch.no_grad():
        _, k_a = pe.rotate(torch.randn(1, HEADS, 4, HEAD_DIM), k, pos, pos)
        pe.phase.uniform_(-2 * math.pi, 0)
        _, k_b = pe.rotate(torch.randn(1, HEADS, 4, HEAD_DIM), k, pos, pos)
    torch.testing.assert_close(k_a, k_b, atol=0, rtol=0)


# -- a model: decoding, modes, compile ---------------------------------------------------------------------------------
def _model(**options) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(kind="decoder", vocab_size=50, dim=DIM, n_layers=2, n_heads=HEADS, n_kv_heads=KV_HEADS,
                            max_seq_len=64, encoding="pope", encoding_options=options)
    return Transformer(cfg).eval()


def test_prefill_then_decode_equals_full_forward_and_caches_2d_keys():
    model = _model().double()
    x = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(x)
        cache = KVCache()
        steps = [model(x[:, :6], cache=cache)] + [model(x[:, i:i + 1], cache=cache) for i in range(6, 11)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-10, rtol=0)
    layer = cache.layers[0]
    assert layer.k.shape[-1] == 2 * HEAD_DIM and layer.v.shape[-1] == HEAD_DIM  # rotated keys, d-wide values


def test_no_grad_inference_mode_and_grad_agree():
    model = _model()
    x = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(4))
    out = model(x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), out, atol=0, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), out, atol=0, rtol=0)
    out.float().logsumexp(-1).mean().backward()
    assert model.pe.phase.grad is not None and model.pe.phase.grad.abs().sum() > 0


def test_torch_compile_equals_eager():
    pe = _pope()
    q, k = torch.randn(2, HEADS, 5, HEAD_DIM), torch.randn(2, KV_HEADS, 5, HEAD_DIM)
    pos = torch.arange(3, 8)
    with torch.no_grad():
        want = pe.rotate(q, k, pos, pos)
        got = torch.compile(pe.rotate, fullgraph=True)(q, k, pos, pos)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)  # Inductor may fuse the float32 products differently


# -- validation --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options,match", [
    ({"base": 1.0}, "base must be"),
    ({"base": float("inf")}, "base must be"),
    ({"phase_init": "normal"}, "phase_init must be one of"),
])
def test_bad_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        get_encoding("pope", dim=DIM, n_heads=HEADS, **options)


def test_bad_inputs_are_refused():
    pe = _pope()
    q, k = torch.randn(1, HEADS, 3, HEAD_DIM), torch.randn(1, KV_HEADS, 3, HEAD_DIM)
    with pytest.raises(ValueError, match="non-negative"):
        pe.rotate(q, k, torch.tensor([-1, 0, 1]), torch.arange(3))
    with pytest.raises(ValueError, match="n_heads=4"):
        pe.rotate(torch.randn(1, 3, 3, HEAD_DIM), k, torch.arange(3), torch.arange(3))
    with pytest.raises(ValueError, match="head_dim"):
        pe.rotate(torch.randn(1, HEADS, 3, 6), k, torch.arange(3), torch.arange(3))


# -- the picture -------------------------------------------------------------------------------------------------------
def test_phases_picture_data_matches_the_formula():
    from posenc import viz

    pe = _pope()
    assert "phases" in viz.applicable_kinds(pe)
    data = viz.phases_data(pe, max_distance=20)
    theta = pe.inv_freq()
    delta = pe.offsets().detach().double()
    n = torch.arange(21, dtype=torch.float64)
    want = torch.cos(n[None, :, None] * theta - delta[:, None, :]).mean(-1)  # (H, N): (1/d) sum_c cos(n theta - delta)
    torch.testing.assert_close(data.score.double(), want, atol=1e-6, rtol=0)
    torch.testing.assert_close(data.no_offset, torch.cos(n[:, None] * theta).mean(-1), atol=1e-12, rtol=0)
    assert "phases" not in viz.applicable_kinds(get_encoding("rope", dim=DIM, n_heads=HEADS))


def test_a_models_forward_forms_the_angles_once_for_every_layer(monkeypatch):
    """The model binds PoPE to each forward's validated positions: the layers share one angle table, unchecked."""
    import posenc.encodings.pope as pope_module

    calls = []
    real = pope_module.exact_angles
    monkeypatch.setattr(pope_module, "exact_angles", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    model = _model()
    x = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        bound = model(x)
    assert len(calls) == 1  # two layers, one table
    monkeypatch.setattr(pope_module, "exact_angles", real)
    with torch.no_grad():  # the same numbers as unbound calls, layer by layer
        model.pe.bind = lambda positions: model.pe  # (instance attribute: this model only)
        torch.testing.assert_close(model(x), bound, atol=0, rtol=0)


def test_keys_of_another_length_than_their_shared_positions_are_refused():
    pe = _pope()
    pos = torch.arange(5)
    with pytest.raises(ValueError, match="k_pos"):
        pe.rotate(torch.randn(1, HEADS, 5, HEAD_DIM), torch.randn(1, KV_HEADS, 7, HEAD_DIM), pos, pos)
