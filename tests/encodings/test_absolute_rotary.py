"""Absolute and rotary encodings against their papers' formulas and their defining properties."""

from __future__ import annotations

import math

import pytest
import torch

import posenc
from posenc import Transformer, TransformerConfig, get_encoding
from posenc.encodings.rope import apply_rope, permute_projection, rope_cos_sin, rope_frequencies, rope_permutation
from posenc.encodings.sinusoidal import sinusoidal_table


# -- sinusoidal --------------------------------------------------------------------------------------------------------
def test_sinusoidal_matches_paper_formula():
    dim, base = 10, 10000.0
    pos = torch.tensor([0, 1, 7, 513, 10**6])
    table = sinusoidal_table(pos, dim, base=base).double()
    for r, p in enumerate(pos.tolist()):
        for i in range(dim // 2):
            angle = p / base ** (2 * i / dim)  # Vaswani et al. 2017, section 3.5
            assert table[r, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-7)
            assert table[r, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-7)


def test_sinusoidal_odd_dim_and_custom_base():
    table = sinusoidal_table(torch.arange(5), 7, base=100.0)
    assert table.shape == (5, 7) and table.dtype == torch.float32
    assert table[3, 6].item() == pytest.approx(math.sin(3 / 100.0 ** (6 / 7)), abs=1e-6)


def test_sinusoidal_shift_is_a_fixed_linear_map():
    """PE(p + k) = M_k PE(p) with M_k block-diagonal rotations, the same for every p (the paper's motivation)."""
    dim, k = 16, 37
    pos = torch.arange(0, 500, 7)
    a, b = sinusoidal_table(pos, dim).double(), sinusoidal_table(pos + k, dim).double()
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    m = torch.zeros(dim, dim, dtype=torch.float64)  # block-diagonal: a rotation by k * w_i in each (sin, cos) pair
    for i, w in enumerate(inv_freq.tolist()):
        c, s = math.cos(k * w), math.sin(k * w)
        m[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[c, -s], [s, c]])  # [sin, cos] @ this = shifted pair
    torch.testing.assert_close(a @ m, b, atol=1e-6, rtol=0)  # one map, independent of p, explains every pair
    assert not torch.allclose(a, b, atol=1e-2)


def test_sinusoidal_is_exact_at_position_one_million():
    pos = torch.tensor([10**6, 10**6 + 1])
    got = sinusoidal_table(pos, 64).double()
    i = torch.arange(0, 64, 2, dtype=torch.float64)
    angles = pos.double()[:, None] / 10000.0 ** (i / 64)
    want = torch.stack((angles.sin(), angles.cos()), -1).flatten(-2)
    assert (got - want).abs().max() < 1e-7  # float32 rounding of the value only, no angle error


def test_scaled_sinusoidal_has_one_learned_gain():
    pe = get_encoding("scaled_sinusoidal", dim=16, n_heads=2)
    assert [n for n, _ in pe.named_parameters()] == ["gain"]
    x = torch.zeros(1, 5, 16)
    want = pe.gain.detach() * sinusoidal_table(torch.arange(5), 16)[None]
    torch.testing.assert_close(pe.embed(x, torch.arange(5)), want)


# -- learned and nope --------------------------------------------------------------------------------------------------
def test_learned_errors_past_its_table_and_interpolates():
    pe = get_encoding("learned", dim=8, n_heads=2, max_seq_len=10)
    x = torch.zeros(1, 3, 8)
    with pytest.raises(ValueError, match=r"max_seq_len=10.*interpolate_"):
        pe.embed(x, torch.tensor([8, 9, 10]))
    old = pe.weight.detach().clone()
    pe.interpolate_(19)
    assert pe.weight.shape == (19, 8) and pe.max_seq_len == 19
    torch.testing.assert_close(pe.weight[0], old[0])
    torch.testing.assert_close(pe.weight[-1], old[-1])
    torch.testing.assert_close(pe.weight[2], old[1])  # 19 rows over 10: new row 2j sits exactly on old row j
    torch.testing.assert_close(pe.weight[1], (old[0] + old[1]) / 2)
    assert pe.embed(x, torch.tensor([16, 17, 18])).shape == (1, 3, 8)
    with pytest.raises(ValueError, match="new_length"):
        pe.interpolate_(1)


def test_nope_encoder_is_exactly_permutation_equivariant():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind="encoder", vocab_size=30, dim=32, n_heads=4, encoding="nope")).eval()
    x = torch.randint(0, 30, (3, 12))
    perm = torch.randperm(12)
    torch.testing.assert_close(model(x[:, perm]), model(x)[:, perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["sinusoidal", "learned", "rope"])
def test_a_positional_encoding_breaks_permutation_equivariance(name):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind="encoder", vocab_size=30, dim=32, n_heads=4, encoding=name)).eval()
    with torch.no_grad():  # sharper attention than the 0.02 init, so order effects are far above rounding
        for p in model.parameters():
            p.mul_(10)
    x = torch.randint(0, 30, (3, 12))
    perm = torch.randperm(12)
    assert not torch.allclose(model(x[:, perm]), model(x)[:, perm], atol=1e-3)


# -- randomized --------------------------------------------------------------------------------------------------------
def test_randomized_positions_are_sorted_distinct_samples_while_training():
    pe = get_encoding("randomized", dim=16, n_heads=2, max_seq_len=32, base="rope", max_positions=100)
    pe.generator = torch.Generator().manual_seed(0)
    pe.train()
    pos = pe.make_positions(64, 20)
    assert pos.shape == (64, 20) and pos.dtype == torch.long
    assert (pos[:, 1:] > pos[:, :-1]).all() and pos.min() >= 0 and pos.max() < 100
    assert len({tuple(r) for r in pos.tolist()}) > 60  # a fresh sample per sequence
    counts = torch.bincount(pos.flatten(), minlength=100).double()
    assert counts.min() > 0  # every position in [0, L) gets used, not just the first T
    pe.eval()
    torch.testing.assert_close(pe.make_positions(4, 20, offset=3), torch.arange(3, 23))


@pytest.mark.parametrize("base", ["sinusoidal", "learned", "rope", "nope"])
def test_randomized_wraps_any_encoding(base):
    torch.manual_seed(0)
    cfg = TransformerConfig(kind="encoder", vocab_size=30, dim=32, n_heads=4, max_seq_len=16, encoding="randomized",
                            encoding_options={"base": base, "max_positions": 256})
    model = Transformer(cfg).train()
    x = torch.randint(0, 30, (2, 16))
    out = model(x)
    assert out.shape == (2, 16, 30) and torch.isfinite(out).all()
    assert model.pe.inner.name == base
    with pytest.raises(ValueError, match="max_positions"):
        get_encoding("randomized", dim=32, n_heads=4, max_seq_len=64, max_positions=10)


# -- rope --------------------------------------------------------------------------------------------------------------
def _naive_rope_interleaved(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Su et al. 2021 eq. (34) written out with Python floats, pair (2i, 2i+1) at angle p * base^(-2i/d)."""
    out = x.clone().double()
    d = x.shape[-1]
    for t, p in enumerate(pos.tolist()):
        for i in range(d // 2):
            a = p * base ** (-2 * i / d)
            x0, x1 = x[..., t, 2 * i].double(), x[..., t, 2 * i + 1].double()
            out[..., t, 2 * i] = x0 * math.cos(a) - x1 * math.sin(a)
            out[..., t, 2 * i + 1] = x1 * math.cos(a) + x0 * math.sin(a)
    return out


def test_rope_interleaved_matches_paper_formula():
    pe = get_encoding("rope", dim=16, n_heads=2, layout="interleaved")
    x = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    pos = torch.tensor([0, 3, 4, 100, 12345])
    got, _ = pe.rotate(x, x, pos, pos)
    torch.testing.assert_close(got, _naive_rope_interleaved(x, pos), atol=1e-12, rtol=0)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("shift", [1, 1000, 10**6])
def test_rope_scores_depend_only_on_offset(layout, shift):
    pe = get_encoding("rope", dim=64, n_heads=4, layout=layout)
    q, k = torch.randn(1, 4, 6, 16), torch.randn(1, 4, 6, 16)
    pos = torch.tensor([0, 1, 2, 5, 9, 30])
    qa, ka = pe.rotate(q, k, pos, pos)
    qb, kb = pe.rotate(q, k, pos + shift, pos + shift)
    torch.testing.assert_close(qa @ ka.transpose(-1, -2), qb @ kb.transpose(-1, -2), atol=2e-5, rtol=1e-5)


def test_rope_angles_are_exact_at_one_million():
    inv_freq = rope_frequencies(64, 10000.0)
    cos, sin = rope_cos_sin(torch.tensor([10**6]), inv_freq)
    angles = 10**6 * (10000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    assert (cos.double() - angles.cos()).abs().max() < 1e-7
    assert (sin.double() - angles.sin()).abs().max() < 1e-7


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_partial_rotation_leaves_the_rest(layout):
    pe = get_encoding("rope", dim=64, n_heads=4, layout=layout, rotary_fraction=0.5)
    assert pe.rotary_dim == 8
    x = torch.randn(2, 4, 7, 16)
    out, _ = pe.rotate(x, x, torch.arange(7), torch.arange(7))
    torch.testing.assert_close(out[..., 8:], x[..., 8:], atol=0, rtol=0)
    assert not torch.allclose(out[..., :8], x[..., :8])


def test_rope_per_sequence_positions_and_cache_growth():
    pe = get_encoding("rope", dim=32, n_heads=2, max_seq_len=8)
    x = torch.randn(3, 2, 5, 16)
    pos = torch.tensor([[0, 1, 2, 3, 4], [10, 11, 12, 13, 14], [0, 1, 0, 1, 2]])  # offsets and packing
    out, _ = pe.rotate(x, x, pos, pos)
    for b in range(3):
        one, _ = pe.rotate(x[b:b + 1], x[b:b + 1], pos[b], pos[b])
        torch.testing.assert_close(out[b:b + 1], one)
    assert pe._cos.shape[0] >= 15  # grew on demand
    far = pe.rotate(x, x, pos + 200_000, pos + 200_000)[0]  # beyond the cache limit: computed directly
    direct = apply_rope(x, *rope_cos_sin(pos + 200_000, pe.inv_freq()), layout="half")
    torch.testing.assert_close(far, direct)


@pytest.mark.parametrize("rotary_dim", [None, 8])
def test_layout_permutation_round_trip(rotary_dim):
    perm = rope_permutation(16, rotary_dim=rotary_dim, src="half", dst="interleaved")
    back = rope_permutation(16, rotary_dim=rotary_dim, src="interleaved", dst="half")
    torch.testing.assert_close(perm[back], torch.arange(16))
    x = torch.randn(2, 3, 5, 16)
    pos = torch.arange(5)
    half = get_encoding("rope", dim=48, n_heads=3, layout="half", rotary_dim=rotary_dim)
    inter = get_encoding("rope", dim=48, n_heads=3, layout="interleaved", rotary_dim=rotary_dim)
    rotated_half, _ = half.rotate(x, x, pos, pos)
    rotated_inter, _ = inter.rotate(x[..., perm], x[..., perm], pos, pos)
    torch.testing.assert_close(rotated_inter, rotated_half[..., perm])


@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
@pytest.mark.parametrize("rotary_fraction", [None, 0.5])
def test_converting_layout_leaves_model_outputs_unchanged(kind, rotary_fraction):
    torch.manual_seed(0)
    opts = {"layout": "half"} | ({"rotary_fraction": rotary_fraction} if rotary_fraction else {})
    cfg = TransformerConfig(kind=kind, vocab_size=50, dim=64, n_heads=4, n_kv_heads=2, encoding="rope",
                            encoding_options=opts)
    model = Transformer(cfg).eval()
    x = torch.randint(0, 50, (2, 9))
    args = (x, x[:, :5]) if kind == "encoder_decoder" else (x,)
    before = model(*args)
    posenc.convert_rope_layout(model, "interleaved")
    assert model.pe.layout == "interleaved" and model.cfg.encoding_options["layout"] == "interleaved"
    torch.testing.assert_close(model(*args), before, atol=1e-5, rtol=1e-5)
    posenc.convert_rope_layout(model, "half")
    torch.testing.assert_close(model(*args), before, atol=1e-5, rtol=1e-5)


def test_permute_projection_checks_shape():
    with pytest.raises(ValueError, match="n_heads \\* head_dim"):
        permute_projection(torch.randn(30, 8), n_heads=4, head_dim=8)


def test_rope_low_precision_rotation_runs_in_float32():
    pe = get_encoding("rope", dim=64, n_heads=4)
    x = torch.randn(1, 4, 9, 16)
    pos = torch.arange(50_000, 50_009)
    ref, _ = pe.rotate(x.double(), x.double(), pos, pos)
    got, _ = pe.rotate(x.bfloat16(), x.bfloat16(), pos, pos)
    # one bfloat16 rounding of the input and one of the output; no error from the angle
    assert (got.double() - ref).abs().max() < 4 * 2**-8 * x.abs().max()


# -- xpos --------------------------------------------------------------------------------------------------------------
def test_xpos_scores_are_relative_and_decay():
    pe = get_encoding("xpos", dim=64, n_heads=4, max_seq_len=256)
    q = torch.ones(1, 1, 1, 16).expand(1, 4, 1, 16)
    k = torch.ones(1, 1, 1, 16).expand(1, 4, 1, 16)
    def score(n, m):
        qa, _ = pe.rotate(q, k, torch.tensor([n]), torch.tensor([m]))
        _, ka = pe.rotate(q, k, torch.tensor([n]), torch.tensor([m]))
        return (qa @ ka.transpose(-1, -2)).squeeze()
    torch.testing.assert_close(score(100, 90), score(10, 0), atol=1e-5, rtol=1e-5)
    i = torch.arange(0, 16, 2, dtype=torch.float64)
    zeta = (i / 16 + 0.4) / 1.4
    # with q = k = 1 and zero rotation angle contribution removed, the decay factor is zeta^(d/512) per pair
    n, m = 40, 0
    qa, ka = pe.rotate(q.double(), k.double(), torch.tensor([n]), torch.tensor([m]))
    ratio = (qa[0, 0, 0].norm() * ka[0, 0, 0].norm())
    q_norm = (2 * (zeta ** ((n - pe.center) / 512)) ** 2).sum().sqrt()
    k_norm = (2 * (zeta ** (-(m - pe.center) / 512)) ** 2).sum().sqrt()
    want = q_norm * k_norm
    assert ratio.item() == pytest.approx(want.item(), rel=1e-9)


def test_xpos_refuses_to_overflow():
    pe = get_encoding("xpos", dim=32, n_heads=2, max_seq_len=64)
    x = torch.randn(1, 2, 2, 16)
    with pytest.raises(ValueError, match="center="):
        pe.rotate(x, x, torch.tensor([10**6, 10**6 + 1]), torch.tensor([10**6, 10**6 + 1]))
