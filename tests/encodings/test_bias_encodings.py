"""The pure bias encodings (ALiBi, T5, KERPLE, FIRE, Sandwich, dynamic) against their papers' formulas and the
properties every relative bias must have: translation invariance, ``score_mod == bias``, clear errors, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import posenc
from posenc import get_encoding
from posenc.encodings.alibi import alibi_bias, alibi_slopes
from posenc.encodings.fire import fire_normalized_distance
from posenc.encodings.kerple import kerple_bias
from posenc.encodings.sandwich import sandwich_head_scales, sandwich_kernel
from posenc.encodings.t5 import t5_relative_position_bucket

NAMES = ["alibi", "t5", "kerple", "fire", "sandwich", "dynamic"]
TRANSLATION_INVARIANT = ["alibi", "t5", "kerple", "sandwich", "dynamic"]  # FIRE: only below its threshold L
TRAINABLE = ["t5", "kerple", "fire", "dynamic"]
DIM, HEADS = 32, 4


def _pe(name: str, *, causal: bool = False, n_heads: int = HEADS, **options) -> posenc.PositionalEncoding:
    return get_encoding(name, dim=8 * n_heads, n_heads=n_heads, causal=causal, **options)


def _grid_score_mod(pe, q_pos, k_pos, batch: int = 1):
    """Call ``pe.score_mod`` on broadcast index grids (no compilation), as FlexAttention would per element."""
    tq, tk = q_pos.shape[-1], k_pos.shape[-1]
    fn = pe.score_mod(q_pos, k_pos)
    b = torch.arange(batch)[:, None, None, None]
    h = torch.arange(pe.n_heads)[None, :, None, None]
    qi = torch.arange(tq)[None, None, :, None]
    ki = torch.arange(tk)[None, None, None, :]
    return fn(torch.zeros(batch, pe.n_heads, tq, tk), b, h, qi, ki)


# -- ALiBi ------------------------------------------------------------------------------------------------------------
def test_alibi_slopes_are_the_papers():
    # Press et al. 2022, section 3: geometric from 2^(-8/n) with ratio 2^(-8/n).
    assert alibi_slopes(8, dtype=torch.float64).tolist() == [2.0**-k for k in range(1, 9)]
    assert alibi_slopes(16, dtype=torch.float64).tolist() == pytest.approx([2.0 ** (-k / 2) for k in range(1, 17)],
                                                                           rel=1e-15)
    assert alibi_slopes(1, dtype=torch.float64).tolist() == [2.0**-8]
    # Not a power of two: the 8 slopes for 8 heads, then every other slope for 16 heads (2^-0.5, 2^-1.5, ...).
    twelve = alibi_slopes(12, dtype=torch.float64).tolist()
    assert twelve[:8] == [2.0**-k for k in range(1, 9)]
    assert twelve[8:] == pytest.approx([2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5], rel=1e-15)
    assert alibi_slopes(3, dtype=torch.float64).tolist() == [2.0**-4, 2.0**-8, 2.0**-2]
    assert alibi_slopes(5).dtype == torch.float32


def test_alibi_bias_hand_checked():
    q, k = torch.tensor([5]), torch.tensor([2, 5, 7])
    causal = _pe("alibi", causal=True, n_heads=8).bias(q, k)
    symmetric = _pe("alibi", causal=False, n_heads=8).bias(q, k)
    assert causal[0, 0].tolist() == [-1.5, 0.0, 1.0]  # -0.5 * (i - j)
    assert symmetric[0, 0].tolist() == [-1.5, 0.0, -1.0]  # -0.5 * |i - j|
    assert causal[7, 0].tolist() == [-3 / 256, 0.0, 2 / 256]
    # The option overrides the direction implied by `causal`.
    assert torch.equal(_pe("alibi", causal=True, n_heads=8, symmetric=True).bias(q, k), symmetric)
    torch.testing.assert_close(alibi_bias(q[:, None], k[None, :], alibi_slopes(8)), causal, rtol=0, atol=0)


def test_alibi_custom_slopes_and_exact_after_bfloat16_round_trip():
    pe = _pe("alibi", n_heads=2, slopes=[0.25, 0.75])
    assert pe.bias(torch.tensor([0]), torch.tensor([4]))[:, 0, 0].tolist() == [-1.0, -3.0]
    twelve = _pe("alibi", n_heads=12)
    exact = twelve.bias(torch.arange(6), torch.arange(6))
    twelve.to(torch.bfloat16).float()  # 2^-0.5 does not survive bf16; the slopes are rebuilt from exact values
    assert torch.equal(twelve.bias(torch.arange(6), torch.arange(6)), exact)


# -- T5 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rel", "bucket"), [
    (0, 0), (-1, 1), (-7, 7), (1, 17), (7, 23),
    (-8, 8),  # first logarithmic bucket: 8 + floor(log(8/8) / log(128/8) * 8)
    (-20, 10),  # 8 + floor(log(2.5) / log(16) * 8) = 8 + floor(2.64)
    (-127, 15), (-128, 15), (-10**6, 15), (128, 31), (10**6, 31),
])
def test_t5_buckets_bidirectional_hand_checked(rel, bucket):
    got = t5_relative_position_bucket(torch.tensor([rel]), bidirectional=True, num_buckets=32, max_distance=128)
    assert got.item() == bucket


@pytest.mark.parametrize(("rel", "bucket"), [
    (5, 0), (0, 0), (-1, 1), (-15, 15),
    (-16, 16),  # max_exact = 16 for causal buckets
    (-20, 17),  # 16 + floor(log(20/16) / log(128/16) * 16) = 16 + floor(1.72)
    (-127, 31), (-10**6, 31),
])
def test_t5_buckets_causal_hand_checked(rel, bucket):
    got = t5_relative_position_bucket(torch.tensor([rel]), bidirectional=False, num_buckets=32, max_distance=128)
    assert got.item() == bucket


def test_t5_bias_reads_the_table_by_bucket():
    pe = _pe("t5", causal=True)
    q, k = torch.arange(20, 24), torch.arange(24)
    buckets = t5_relative_position_bucket(k[None, :] - q[:, None], bidirectional=False)
    expected = pe.relative_attention_bias.weight[buckets].permute(2, 0, 1)  # (Tq, Tk, H) -> (H, Tq, Tk)
    assert torch.equal(pe.bias(q, k), expected)
    assert pe.bidirectional is False and _pe("t5").bidirectional is True
    assert _pe("t5", causal=True, bidirectional=True).bidirectional is True


# -- KERPLE -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["log", "power"])
def test_kerple_matches_paper_formula(variant):
    pe = _pe("kerple", variant=variant).double()
    r1, r2 = pe.coefficients()
    q, k = torch.tensor([0, 3, 9]), torch.tensor([0, 1, 4, 9, 12])
    bias = pe.bias(q, k)
    for h in range(HEADS):
        for a, i in enumerate(q.tolist()):
            for b, j in enumerate(k.tolist()):
                d = abs(i - j)
                want = -r1[h].item() * (math.log(1 + r2[h].item() * d) if variant == "log" else d ** r2[h].item())
                assert bias[h, a, b].item() == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_kerple_parameters_stay_positive_and_power_exponent_in_range():
    for variant in ("log", "power"):
        pe = _pe("kerple", variant=variant)
        with torch.no_grad():
            pe.r1_raw.fill_(-50.0)
            pe.r2_raw.copy_(torch.tensor([-50.0, 0.0, 50.0, 5.0]))
        r1, r2 = pe.coefficients()
        assert (r1 > 0).all() and (r2 > 0).all()
        if variant == "power":
            assert (r2 <= 2).all()
        assert torch.isfinite(pe.bias(torch.arange(10**6, 10**6 + 4), torch.arange(10**6 - 4, 10**6 + 4))).all()


def test_kerple_power_gradient_is_finite_at_zero_distance():
    r1, r2 = torch.tensor(0.5, requires_grad=True), torch.tensor(1.3, requires_grad=True)
    out = kerple_bias(torch.tensor([0.0, 2.0]), r1, r2, variant="power")
    out.sum().backward()
    assert out[0].item() == 0.0 and torch.isfinite(r2.grad) and torch.isfinite(r1.grad)
    assert r2.grad.item() == pytest.approx(-0.5 * 2**1.3 * math.log(2), rel=1e-6)


# -- FIRE -------------------------------------------------------------------------------------------------------------
def _fire_reference(pe, seq_len: int) -> torch.Tensor:
    """The paper's reference listing (Li et al. 2024, appendix), with ``pe``'s parameters, positions 0..T-1."""
    positions = torch.arange(seq_len, dtype=torch.float64)
    rel_distance = positions[:, None] - positions[None, :]
    threshold = torch.abs(pe.threshold_multiplier * pe.init_threshold)
    pos_normalizer = torch.max(positions, threshold)[:, None]
    rel_distance = torch.log(torch.abs(pe.c * rel_distance) + 1)
    pos_normalizer = torch.log(torch.abs(pe.c * pos_normalizer) + 1) + pe.eps
    return pe.mlp((rel_distance / pos_normalizer).unsqueeze(-1)).permute(2, 0, 1)  # (H, T, T)


@pytest.mark.parametrize("init_threshold", [512.0, 6.0])  # L above and inside the sequence (progressive regime)
def test_fire_matches_the_papers_reference_code(init_threshold):
    pe = _pe("fire", causal=True, init_threshold=init_threshold).double()
    with torch.no_grad():
        pe.c.fill_(0.3)
        pe.threshold_multiplier.fill_(1.5)
    ours = pe.bias(torch.arange(16), torch.arange(16))
    ref = _fire_reference(pe, 16)
    keep = torch.tril(torch.ones(16, 16, dtype=torch.bool))  # the paper's causal bias: keys at or before the query
    torch.testing.assert_close(ours[:, keep], ref[:, keep], rtol=1e-12, atol=1e-12)


def test_fire_interpolated_distance_stays_in_unit_interval():
    c, threshold = torch.tensor(0.1), torch.tensor(512.0)
    i = torch.tensor([0, 5, 511, 512, 4096, 10**6])[:, None]
    j = torch.tensor([0, 1, 300, 4000, 10**6])[None, :]
    causal = fire_normalized_distance(i, j, c=c, threshold=threshold)
    before = j <= i
    assert (causal[before] >= 0).all() and (causal[before] <= 1).all()
    signed = fire_normalized_distance(i, j, c=c, threshold=threshold, bidirectional=True)
    assert (signed.abs() <= 1).all() and (signed[~before] < 0).all()
    torch.testing.assert_close(signed[before], causal[before], rtol=0, atol=0)


def test_fire_bidirectional_agrees_with_causal_before_the_query_and_differs_after():
    torch.manual_seed(0)
    causal = _pe("fire", causal=True)
    bidir = _pe("fire", causal=False)
    bidir.load_state_dict(causal.state_dict())
    pos = torch.arange(12)
    a, b = causal.bias(pos, pos), bidir.bias(pos, pos)
    keep = torch.tril(torch.ones(12, 12, dtype=torch.bool))
    assert torch.equal(a[:, keep], b[:, keep])
    assert not torch.allclose(a[:, ~keep], b[:, ~keep])  # signed input: the future differs from the past


def test_fire_is_translation_invariant_only_below_threshold():
    pe = _pe("fire", causal=True, init_threshold=64.0)
    pos = torch.arange(10)
    torch.testing.assert_close(pe.bias(pos + 40, pos + 40), pe.bias(pos, pos), rtol=0, atol=1e-6)
    assert not torch.allclose(pe.bias(pos + 1000, pos + 1000), pe.bias(pos, pos), atol=1e-4)


# -- Sandwich ---------------------------------------------------------------------------------------------------------
def test_sandwich_matches_paper_formula():
    d_prime, n_heads = 6, 4
    pe = _pe("sandwich", n_heads=n_heads, sandwich_dim=d_prime)
    q, k = torch.tensor([0, 7, 300]), torch.tensor([0, 2, 7, 1000])
    bias = pe.bias(q, k)
    for h in range(n_heads):
        for a, i in enumerate(q.tolist()):
            for b, j in enumerate(k.tolist()):
                dot = sum(math.cos((i - j) / 10000 ** (2 * m / d_prime)) for m in range(1, d_prime // 2 + 1))
                want = (dot - d_prime / 2) / (8 * (h + 1) / n_heads)
                assert bias[h, a, b].item() == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert (bias <= 1e-6).all() and (bias[:, 0, 0] == 0).all() and (bias[:, 1, 2] == 0).all()  # 0 at i == j


def test_sandwich_kernel_is_the_sinusoidal_dot_product():
    d_prime = 16
    pos = torch.tensor([0, 3, 11, 250])
    i = torch.arange(1, d_prime // 2 + 1, dtype=torch.float64)
    angles = pos[:, None].double() / 10000 ** (2 * i / d_prime)
    emb = torch.cat((angles.sin(), angles.cos()), dim=-1)  # p_m with the paper's frequencies
    dots = emb @ emb.T - d_prime / 2
    torch.testing.assert_close(sandwich_kernel(pos[:, None] - pos[None, :], d_prime), dots, rtol=0, atol=1e-12)
    assert sandwich_head_scales(8, dtype=torch.float64).tolist() == [1 / n for n in range(1, 9)]


# -- dynamic ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("log_distance", [True, False])
def test_dynamic_is_its_mlp_of_signed_log_distance(log_distance):
    pe = _pe("dynamic", hidden=16, depth=3, log_distance=log_distance).double()
    q, k = torch.tensor([0, 4, 9]), torch.arange(10)
    d = (q[:, None] - k[None, :]).double()
    x = torch.sign(d) * torch.log(1 + d.abs()) if log_distance else d
    expected = pe.mlp(x.unsqueeze(-1)).permute(2, 0, 1)  # (H, Tq, Tk)
    torch.testing.assert_close(pe.bias(q, k), expected, rtol=1e-12, atol=1e-12)
    assert sum(isinstance(m, nn.Linear) for m in pe.mlp) == 4


# -- properties of every bias -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", TRANSLATION_INVARIANT)
def test_translation_invariance(name, causal):
    pe = _pe(name, causal=causal)
    q, k = torch.arange(3, 9), torch.arange(9)
    ref = pe.bias(q, k)
    for shift in (1, 1000, 10**6):
        torch.testing.assert_close(pe.bias(q + shift, k + shift), ref, rtol=0, atol=0)
    # Per-sequence positions: each row shifted differently gives the same bias in every row.
    shifts = torch.tensor([0, 17, 10**5])[:, None]
    batched = pe.bias(q + shifts, k + shifts)
    assert batched.shape == (3, HEADS, 6, 9)
    for row in batched:
        torch.testing.assert_close(row, ref, rtol=0, atol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_score_mod_equals_bias_on_index_grids(name, causal):
    pe = _pe(name, causal=causal)
    q_pos, k_pos = torch.arange(5, 12), torch.arange(12)  # KV-cache-like: the queries are the last 7 keys
    assert torch.equal(_grid_score_mod(pe, q_pos, k_pos)[0], pe.bias(q_pos, k_pos))
    # Per-sequence positions, e.g. packing or randomized positions (sorted, with gaps).
    g = torch.Generator().manual_seed(0)
    k_b = torch.sort(torch.randperm(64, generator=g)[:24].view(2, 12), dim=-1).values
    q_b = k_b[:, 5:]
    assert torch.equal(_grid_score_mod(pe, q_b, k_b, batch=2), pe.bias(q_b, k_b))
    # The closure adds to the incoming scores and keeps their dtype.
    fn = pe.score_mod(q_pos, k_pos)
    score = torch.full((), 2.0, dtype=torch.bfloat16)
    out = fn(score, torch.tensor(0), torch.tensor(1), torch.tensor(2), torch.tensor(3))
    assert out.dtype == torch.bfloat16
    assert out.item() == (score + pe.bias(q_pos, k_pos)[1, 2, 3].to(torch.bfloat16)).item()


@pytest.mark.parametrize("name", NAMES)
def test_bias_shapes_dtypes_and_batched_positions(name):
    pe = _pe(name)
    q, k = torch.arange(4), torch.arange(6)
    single = pe.bias(q, k)
    assert single.shape == (HEADS, 4, 6) and single.dtype == torch.float32
    mixed = pe.bias(q.expand(3, -1), k)  # (B, Tq) with (Tk,)
    assert mixed.shape == (3, HEADS, 4, 6)
    for row in mixed:
        assert torch.equal(row, single)
    pe.to(torch.bfloat16)
    assert pe.bias(q, k).dtype == torch.float32
    assert pe.double().bias(q, k).dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_packed_documents_attend_as_if_alone(name):
    """Positions restarting per document plus a block mask give each document exactly its stand-alone output."""
    pe = _pe(name, causal=True)
    lengths = [5, 3, 6]
    pos = torch.cat([torch.arange(n) for n in lengths])
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    t, d = pos.numel(), 8
    q, k, v = (torch.randn(1, HEADS, t, d) for _ in range(3))
    mask = doc[:, None] == doc[None, :]
    packed = posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True, attn_mask=mask, backend="reference")
    start = 0
    for n in lengths:
        sl = slice(start, start + n)
        alone = posenc.attention(q[:, :, sl], k[:, :, sl], v[:, :, sl], pe, q_pos=pos[sl], k_pos=pos[sl], causal=True,
                                 backend="reference")
        torch.testing.assert_close(packed[:, :, sl], alone, rtol=1e-5, atol=1e-6)
        start += n


@pytest.mark.parametrize("name", NAMES)
def test_decoding_one_query_at_a_time_equals_full_attention(name):
    pe = _pe(name, causal=True)
    t, d = 9, 8
    q, k, v = (torch.randn(2, HEADS, t, d) for _ in range(3))
    full = posenc.attention(q, k, v, pe, causal=True, backend="reference")
    for i in range(t):  # query i against keys 0..i, positions from the cache's point of view
        step = posenc.attention(q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], pe, q_pos=torch.tensor([i]),
                                k_pos=torch.arange(i + 1), causal=True, backend="reference")
        torch.testing.assert_close(step, full[:, :, i:i + 1], rtol=1e-5, atol=1e-6)


# -- bad input --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "error", "match"), [
    ({"num_buckets": 0}, ValueError, "num_buckets"),
    ({"num_buckets": -4}, ValueError, "num_buckets"),
    ({"num_buckets": 32.0}, TypeError, "num_buckets must be an int"),
    ({"num_buckets": 2, "bidirectional": True}, ValueError, "too small"),
    ({"num_buckets": 32, "max_distance": 16, "causal": True}, ValueError, "max_distance=16 must exceed"),
    ({"num_buckets": 32, "max_distance": 8, "bidirectional": True}, ValueError, "must exceed the 8 exact"),
    ({"bidirectional": "yes"}, TypeError, "bidirectional"),
])
def test_t5_rejects_bad_settings(options, error, match):
    with pytest.raises(error, match=match):
        _pe("t5", **options)


def test_t5_bucket_function_validates_too():
    with pytest.raises(ValueError, match="max_distance"):
        t5_relative_position_bucket(torch.tensor([1]), bidirectional=False, num_buckets=32, max_distance=10)
    with pytest.raises(TypeError, match="integer distances"):
        t5_relative_position_bucket(torch.tensor([1.0]), bidirectional=True)
    # A valid but unusual setting: 32 buckets saturating at 17 (just past the 16 causal exact buckets).
    out = t5_relative_position_bucket(-torch.arange(40), bidirectional=False, num_buckets=32, max_distance=17)
    assert out.max().item() == 31 and (out.diff() >= 0).all()


@pytest.mark.parametrize(("name", "options", "error", "match"), [
    ("alibi", {"slopes": [0.5, 0.25]}, ValueError, "4 positive numbers"),
    ("alibi", {"slopes": [0.5, 0.25, -1.0, 0.1]}, ValueError, "positive"),
    ("alibi", {"symmetric": 1}, TypeError, "symmetric"),
    ("kerple", {"variant": "cubic"}, ValueError, "variant must be one of"),
    ("fire", {"hidden": 0}, ValueError, "hidden must be an int >= 1"),
    ("fire", {"init_c": -0.1}, ValueError, "init_c must be a number > 0"),
    ("fire", {"init_threshold": 0}, ValueError, "init_threshold"),
    ("sandwich", {"sandwich_dim": 7}, ValueError, "must be even"),
    ("sandwich", {"base": 1.0}, ValueError, "base must be"),
    ("dynamic", {"depth": 0}, ValueError, "at least one hidden layer"),
    ("dynamic", {"hidden": 2.5}, TypeError, "hidden must be an int"),
    ("dynamic", {"log_distance": "yes"}, TypeError, "log_distance"),
    ("t5", {"buckets": 32}, TypeError, "unknown option"),
])
def test_bad_options_raise_clear_errors(name, options, error, match):
    with pytest.raises(error, match=match):
        _pe(name, **options)


@pytest.mark.parametrize("name", NAMES)
def test_bad_positions_raise_clear_errors(name):
    pe = _pe(name)
    with pytest.raises(TypeError, match="integer positions"):
        pe.bias(torch.arange(4.0), torch.arange(4))
    with pytest.raises(ValueError, match="non-negative"):
        pe.bias(torch.arange(4), torch.arange(-1, 3))
    with pytest.raises(ValueError, match="batch size"):
        pe.bias(torch.arange(4).expand(2, -1), torch.arange(4).expand(3, -1))
    with pytest.raises(ValueError, match=r"shape \(T,\) or \(B, T\)"):
        pe.score_mod(torch.zeros(1, 2, 3, dtype=torch.long), torch.arange(3))


# -- gradients --------------------------------------------------------------------------------------------------------
class _BiasOf(nn.Module):
    def __init__(self, pe):
        super().__init__()
        self.pe = pe

    def forward(self, q_pos, k_pos):
        return self.pe.bias(q_pos, k_pos)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", TRAINABLE)
def test_gradcheck_float64(name, causal):
    options = {"hidden": 4} if name in ("fire", "dynamic") else {}
    if name == "fire":
        options["init_threshold"] = 3.0  # some queries past L, so the threshold's gradient is exercised too
    pe = _pe(name, causal=causal, n_heads=2, **options).double()
    wrapper = _BiasOf(pe)
    names = [n for n, p in wrapper.named_parameters() if p.requires_grad]
    params = tuple(p.detach().clone().requires_grad_(True) for n, p in wrapper.named_parameters() if p.requires_grad)
    q_pos, k_pos = torch.arange(2, 7), torch.arange(7)

    def f(*ps):
        return torch.func.functional_call(wrapper, dict(zip(names, ps)), (q_pos, k_pos))

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)
    grads = torch.autograd.grad(f(*params).square().sum(), params, allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads), names


# -- FlexAttention (compiled: slow on CPU, the real check on a GPU) ---------------------------------------------------
# One compile per encoding (each takes ~30 s on CPU; FIRE's unrolled MLP longer), alternating the direction so both
# the causal and the bidirectional code paths run inside FlexAttention.
FLEX_CASES = [("alibi", True), ("t5", False), ("kerple", True), ("fire", False), ("sandwich", True), ("dynamic", False)]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("name", "causal"), FLEX_CASES)
def test_flex_attention_with_score_mod_equals_reference(name, causal):
    """The closure runs inside compiled FlexAttention (vmapped 0-d indices) and matches the reference backend;
    on a GPU the gradients (inputs and the encoding's parameters) match too."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    b, t, d = 2, (256 if cuda else 32), 16
    block_mask = None
    if causal:
        block_mask = flex.create_block_mask(lambda b_, h_, q_idx, kv_idx: q_idx >= kv_idx, None, None, t, t,
                                            device=device)
    g = torch.Generator().manual_seed(0)
    pos = torch.sort(torch.randperm(4 * t, generator=g)[: 2 * t].view(2, t), dim=-1).values.to(device)  # (B, T)
    pe = _pe(name, causal=causal).to(device)
    q, k, v = (torch.randn(b, HEADS, t, d, device=device, requires_grad=cuda) for _ in range(3))
    # On CPU FlexAttention is forward-only: with grad enabled, trainable tensors captured by the score_mod (T5's
    # table, FIRE's MLP, ...) make inductor's CPU lowering fail, so it runs under no_grad there.
    with torch.set_grad_enabled(cuda):
        out = torch.compile(flex.flex_attention, dynamic=False)(q, k, v, score_mod=pe.score_mod(pos, pos),
                                                                block_mask=block_mask)
        ref = posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=causal, backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if cuda:
        params = [p for p in pe.parameters() if p.requires_grad]
        grads = torch.autograd.grad(out.square().sum(), [q, k, v, *params])
        ref_grads = torch.autograd.grad(ref.square().sum(), [q, k, v, *params])
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
