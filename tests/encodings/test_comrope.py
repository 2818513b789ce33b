"""ComRoPE (arXiv 2506.03737): against the official code's formula re-derived here (``Longin-Yu/ComRoPE``,
``model.py``: ``RoPESelfAttentionBase.get_rotation_matrix`` with ``ComRoPEAPAttention`` / ``ComRoPELDAttention``)
and against the paper's formula written naively (one float64 ``matrix_exp`` of the summed D x D generator); exactly
relative (``R(x)^T R(y) = R(y - x)``) on 1-3 axes; positions normalised to [0, 1]; KV-cache decoding; no_grad /
inference_mode / compile."""

from __future__ import annotations

import pytest
import torch

from posenc import KVCache, Positions, Transformer, TransformerConfig, get_encoding

DIM, HEADS, D = 48, 4, 12  # head_dim 12: blocks of 2 (6), 4 (3) or 6 (2)


def _comrope(**kw):
    return get_encoding("comrope", dim=DIM, n_heads=HEADS, max_seq_len=64, **kw)


def official_comrope(pe, positions, x):
    """The official rotation, re-derived from its source (not imported: it is not installed).

    ``freqs`` (heads, 1, nb, b, b) is our ``weight`` (rotation_heads = n_heads); ``positions`` (bs, len, axes)
    already normalised; ``x`` (bs, heads, len, D). Returns ``R @ x`` as ``forward`` computes ``Q = R Q``.
    """
    freqs = pe.weight.detach().double().unsqueeze(1)  # (heads, 1, nb, b, b)
    skew = freqs - freqs.transpose(-1, -2)
    nb, b = pe.n_blocks, pe.block_size
    axes = pe.n_axes
    if pe.variant == "ap":
        mask = torch.zeros(axes, nb, dtype=torch.float64)
        for i in range(axes):
            mask[i, i::axes] = 1.0
        a = skew.expand(-1, axes, -1, -1, -1) * mask.view(1, axes, nb, 1, 1)
    else:
        a = skew * pe.multiplier.detach().double().view(1, axes, nb, 1, 1)
    eye = torch.eye(b, dtype=torch.float64)
    pos = positions.unsqueeze(-1).unsqueeze(-1).unsqueeze(-1) * eye  # (bs, len, axes, 1, b, b)
    ln_r = torch.matmul(a, pos.unsqueeze(2)).sum(dim=3)  # (bs, len, heads, nb, b, b)
    r = torch.matrix_exp(ln_r)
    selector = torch.kron(torch.eye(nb, dtype=torch.bool), torch.ones(b, b, dtype=torch.bool))
    diag_r = torch.zeros(*r.shape[:3], D, D, dtype=torch.float64)
    diag_r[:, :, :, selector] = r.reshape(*r.shape[:3], -1)
    diag_r = diag_r.transpose(1, 2)  # (bs, heads, len, D, D)
    return torch.matmul(diag_r, x.unsqueeze(-1)).squeeze(-1)


def naive_dense(pe, set_index, coords):
    gen = pe.generators()[set_index].detach()  # (A, nb, b, b)
    total = torch.zeros(D, D, dtype=torch.float64)
    for k in range(pe.n_axes):
        total += float(coords[k]) * pe.position_scale * torch.block_diag(*gen[k])
    return torch.linalg.matrix_exp(total)


def rotation_matrix(pe, coords):
    eye = torch.eye(D, dtype=torch.float64).expand(1, 1, D, D)
    c = torch.as_tensor(coords).reshape(1, 1, -1).expand(1, D, -1)
    return pe.rotate_one(eye, c, "x")[0, 0].T


CASES = [("ap", 1, 2), ("ap", 2, 2), ("ap", 3, 4), ("ap", 2, 6), ("ld", 1, 2), ("ld", 2, 4), ("ld", 3, 6)]


@pytest.mark.parametrize(("variant", "axes", "block_size"), CASES)
def test_matches_the_official_code_re_derived(variant, axes, block_size):
    pe = _comrope(variant=variant, axes=axes, block_size=block_size, rotation_heads=HEADS, position_scale=1.0)
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(2, 9, axes, generator=g, dtype=torch.float64)  # normalised, as the reference's
    x = torch.randn(2, HEADS, 9, D, generator=g, dtype=torch.float64)
    got = pe.rotate_one(x, coords, "q")
    assert (got - official_comrope(pe, coords, x)).abs().max().item() < 1e-12  # measured ~1e-15


@pytest.mark.parametrize(("variant", "axes", "block_size"), CASES)
def test_matches_the_paper_formula_written_naively(variant, axes, block_size):
    pe = _comrope(variant=variant, axes=axes, block_size=block_size, rotation_heads=2)
    g = torch.Generator().manual_seed(1)
    coords = torch.cat((torch.randint(0, 64, (1, 4, axes)).double(), torch.rand(1, 3, axes, generator=g) * 64), 1)
    x = torch.randn(1, HEADS, 7, D, generator=g, dtype=torch.float64)
    got = pe.rotate_one(x, coords, "q")
    worst = max((got[0, h, t] - naive_dense(pe, h * 2 // HEADS, coords[0, t]) @ x[0, h, t]).abs().max().item()
                for h in range(HEADS) for t in range(7))
    # torch's matrix_exp of one 12 x 12 against ours of its 2 x 2 .. 6 x 6 blocks (different scaling and
    # squaring): measured up to 3e-11 with exponents of norm ~10, i.e. ~1e3 float64 ulps of the result
    assert worst < 1e-10, worst


@pytest.mark.parametrize(("variant", "axes", "block_size"), CASES)
def test_exactly_relative(variant, axes, block_size):
    pe = _comrope(variant=variant, axes=axes, block_size=block_size, position_scale=1.0)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        x, y = (torch.rand(axes, generator=g, dtype=torch.float64) * 4 - 2 for _ in range(2))
        lhs = rotation_matrix(pe, x).T @ rotation_matrix(pe, y)
        torch.testing.assert_close(lhs, rotation_matrix(pe, y - x), atol=1e-12, rtol=0)


def test_positions_normalised_to_unit_interval_and_orthogonal_at_one_million():
    pe = _comrope(axes=2)
    assert pe.position_scale == 1 / 64
    unit = _comrope(axes=2, position_scale=1.0)
    unit.load_state_dict(pe.state_dict())
    x = torch.randn(1, HEADS, 5, D, dtype=torch.float64)
    pos = torch.arange(5)
    plain = torch.stack((torch.zeros(5), pos / 64), -1).double().unsqueeze(0)  # (0, p / max_seq_len)
    torch.testing.assert_close(pe.rotate_one(x, pos), unit.rotate_one(x, plain))
    r = rotation_matrix(pe, torch.tensor([0, 10**6]))
    err = (r.T @ r - torch.eye(D, dtype=torch.float64)).abs().max().item()
    assert err < 1e-9, err


@pytest.mark.parametrize("variant", ["ap", "ld"])
def test_prefill_then_decode_equals_the_full_forward_on_continuous_3d_coordinates(variant):
    torch.manual_seed(0)
    cfg = TransformerConfig(kind="decoder", vocab_size=30, dim=DIM, n_layers=2, n_heads=HEADS, n_kv_heads=2,
                            max_seq_len=64, encoding="comrope",
                            encoding_options={"axes": 3, "variant": variant, "block_size": 2, "rotation_heads": 2,
                                              "position_scale": 1.0})
    model = Transformer(cfg).eval()
    t, y, x_ = torch.meshgrid(torch.arange(3), torch.arange(2), torch.arange(2), indexing="ij")
    table = torch.stack((t / 3, (y + 0.5) / 2, (x_ + 0.5) / 2), -1).reshape(-1, 3).float()
    table = torch.cat((torch.full((1, 3), 0.5), table), 0)  # the reference's CLS at 0.5
    tokens = torch.randint(0, 30, (2, table.shape[0]))
    full = model(tokens, positions=Positions(coordinates=table))
    cache = KVCache()
    steps = [model(tokens[:, :5], positions=Positions(coordinates=table), cache=cache)]
    steps += [model(tokens[:, i:i + 1], cache=cache) for i in range(5, tokens.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=2e-5, rtol=1e-4)


def test_no_grad_inference_mode_and_compile_agree():
    pe = _comrope(axes=2, variant="ld", block_size=4, position_scale=1.0)
    coords = torch.rand(2, 6, 2)
    q, k = torch.randn(2, HEADS, 6, D), torch.randn(2, 2, 6, D)
    eager = pe.rotate(q, k, coords, coords)
    with torch.no_grad():
        torch.testing.assert_close(pe.rotate(q, k, coords, coords), eager)
    with torch.inference_mode():
        torch.testing.assert_close(pe.rotate(q, k, coords, coords), eager)
    compiled = torch.compile(lambda a, b, c: pe.rotate(a, b, c, c), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, coords), eager, atol=1e-6, rtol=1e-6)


def test_options_are_validated():
    with pytest.raises(ValueError, match="variant must be 'ap'"):
        _comrope(variant="mixed")
    with pytest.raises(ValueError, match="must be a multiple of 2"):
        _comrope(axes=2, block_size=4)  # 3 blocks over 2 axes
    with pytest.raises(ValueError, match="block_size must divide head_dim=12"):
        _comrope(block_size=5)
    with pytest.raises(ValueError, match="init_std must be a finite number > 0"):
        _comrope(init_std=-1.0)


@pytest.mark.parametrize(("variant", "axes", "block_size"), CASES)
def test_generator_matrices_commute_and_exponentiate_to_the_rotation(variant, axes, block_size):
    pe = _comrope(variant=variant, axes=axes, block_size=block_size, position_scale=1.0)
    gens = pe.generator_matrices()
    for i in range(axes):
        for j in range(axes):
            torch.testing.assert_close(gens[i] @ gens[j], gens[j] @ gens[i], atol=1e-13, rtol=0)
    r = torch.rand(axes, dtype=torch.float64) * 2
    expected = torch.linalg.matrix_exp((r[:, None, None] * gens).sum(0))
    torch.testing.assert_close(rotation_matrix(pe, r), expected, atol=1e-12, rtol=0)


def test_the_axis_partition_is_rebuilt_after_to_empty():
    """``model.to("meta")`` then ``to_empty`` leaves non-persistent buffers uninitialised (the full suite caught a
    flaky meta round trip): the axis partition is derived, so it is rebuilt on every move."""
    pe = get_encoding("comrope", dim=64, n_heads=4, axes=2, variant="ap")
    expected = pe.partition.clone()
    pe.to("meta")
    pe.to_empty(device="cpu")
    assert torch.equal(pe.partition, expected)
    assert expected.sum(0).eq(1).all()  # each block belongs to exactly one axis
