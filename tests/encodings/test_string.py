"""STRING (arXiv 2502.02562): the paper's formula written naively (float64 matrix exponentials of the summed
generators), S = 0 is RoPE exactly, exact relativity on 1-3 axes with integer and continuous coordinates, KV-cache
decoding through the model, no_grad / inference_mode / torch.compile. STRING has no official code."""

from __future__ import annotations

import pytest
import torch

from posenc import KVCache, Positions, Transformer, TransformerConfig, get_encoding

DIM, HEADS, D = 48, 4, 12  # head_dim 12: 6 pairs split over 1, 2 or 3 axes


def _string(**kw):
    return get_encoding("string", dim=DIM, n_heads=HEADS, max_seq_len=64, **kw)


def _perturb(pe, seed=0, std=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pe.weight.add_(std * torch.randn(pe.weight.shape, generator=g))
    return pe


def _naive_rope_generator(axis_freqs, d, axis):
    """RoPE's generator of one axis as a (D, D) matrix, half layout: pair i = (i, i + D/2)."""
    a = len(axis_freqs)
    m = d // (2 * a)
    gen = torch.zeros(d, d, dtype=torch.float64)
    for k in range(a):
        if k != axis:
            continue
        for j in range(m):
            i = k * m + j
            gen[i + d // 2, i] = axis_freqs[k][j]  # d/dt (x_a, x_b) = theta (-x_b, x_a)
            gen[i, i + d // 2] = -axis_freqs[k][j]
    return gen


def naive_cayley(pe, set_index, coords):
    """R(r) = exp(sum_k r_k P^T D_k P), P = (I - S)(I + S)^{-1}, all (D, D) float64, written from the paper."""
    w = pe.weight[set_index].detach().double()
    s = w - w.T
    eye = torch.eye(D, dtype=torch.float64)
    p = (eye - s) @ torch.linalg.inv(eye + s)
    a = pe.n_axes
    m = D // (2 * a)
    freqs = [[pe.base ** (-j / m) for j in range(m)] for _ in range(a)]
    total = sum(float(coords[k]) * pe.position_scale * (p.T @ _naive_rope_generator(freqs, D, k) @ p)
                for k in range(a))
    return torch.linalg.matrix_exp(total)


def naive_circulant(pe, set_index, coords):
    """R(r) = exp(sum_k r_k (C_k - C_k^T)), C_k[i, j] = c_k[(i - j) mod D], built entry by entry."""
    c = pe.weight[set_index].detach().double()  # (A, D)
    total = torch.zeros(D, D, dtype=torch.float64)
    for k in range(pe.n_axes):
        circ = torch.zeros(D, D, dtype=torch.float64)
        for i in range(D):
            for j in range(D):
                circ[i, j] = c[k, (i - j) % D]
        total += float(coords[k]) * pe.position_scale * (circ - circ.T)
    return torch.linalg.matrix_exp(total)


def rotation_matrix(pe, coords):
    """R(r) of head 0 read off the encoding: rotate the basis vectors, all at coordinates r."""
    eye = torch.eye(D, dtype=torch.float64).expand(1, 1, D, D)
    c = torch.as_tensor(coords).reshape(1, 1, -1).expand(1, D, -1)
    return pe.rotate_one(eye, c, "x")[0, 0].T  # column t = R e_t


@pytest.mark.parametrize("variant", ["cayley", "circulant"])
@pytest.mark.parametrize("axes", [1, 2, 3])
def test_matches_the_paper_formula_written_naively(variant, axes):
    pe = _perturb(_string(axes=axes, variant=variant, rotation_heads=2, **({"base": 100.0} if axes > 1 else {})))
    naive = naive_cayley if variant == "cayley" else naive_circulant
    g = torch.Generator().manual_seed(1)
    coords = torch.cat((torch.randint(-5, 40, (1, 5, axes)).double(), torch.rand(1, 4, axes, generator=g) * 30), 1)
    x = torch.randn(1, HEADS, 9, D, generator=g, dtype=torch.float64)
    got = pe.rotate_one(x, coords, "q")
    worst = 0.0
    for h in range(HEADS):
        for t in range(9):
            ref = naive(pe, h * 2 // HEADS, coords[0, t]) @ x[0, h, t]
            worst = max(worst, (got[0, h, t] - ref).abs().max().item())
    assert worst < 1e-11, worst  # measured ~1e-14: float64 products, one matrix_exp against a closed form


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_s_zero_is_rope_exactly(layout):
    string, rope = _string(layout=layout), get_encoding("rope", dim=DIM, n_heads=HEADS, max_seq_len=64, layout=layout)
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, HEADS, 7, D, generator=g), torch.randn(2, 2, 7, D, generator=g)
    for start in (0, 10**6, 2**40):
        pos = torch.arange(start, start + 7)
        for a, b in zip(string.rotate(q, k, pos, pos), rope.rotate(q, k, pos, pos), strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    # and through the model: same weights but the encoding's, same logits
    torch.manual_seed(0)
    m_string = Transformer(TransformerConfig(kind="decoder", vocab_size=30, dim=DIM, n_layers=2, n_heads=HEADS,
                                             n_kv_heads=2, max_seq_len=64, encoding="string",
                                             encoding_options={"layout": layout})).eval()
    m_rope = Transformer(TransformerConfig(kind="decoder", vocab_size=30, dim=DIM, n_layers=2, n_heads=HEADS,
                                           n_kv_heads=2, max_seq_len=64, encoding="rope",
                                           encoding_options={"layout": layout})).eval()
    state = {n: t for n, t in m_string.state_dict().items() if not n.startswith("pe.")}
    m_rope.load_state_dict(state, strict=False)
    x = torch.randint(0, 30, (2, 12))
    torch.testing.assert_close(m_string(x), m_rope(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", ["cayley", "circulant"])
@pytest.mark.parametrize("axes", [1, 2, 3])
def test_exactly_relative_for_integer_and_continuous_coordinates(variant, axes):
    pe = _perturb(_string(axes=axes, variant=variant))
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        x, y, s = (torch.rand(axes, generator=g, dtype=torch.float64) * 50 for _ in range(3))
        lhs = rotation_matrix(pe, x).T @ rotation_matrix(pe, y)
        torch.testing.assert_close(lhs, rotation_matrix(pe, y - x), atol=1e-12, rtol=0)
        xi, yi = x.round().long(), y.round().long()
        shifted = rotation_matrix(pe, xi + 7).T @ rotation_matrix(pe, yi + 7)
        torch.testing.assert_close(shifted, rotation_matrix(pe, xi).T @ rotation_matrix(pe, yi), atol=1e-12, rtol=0)
        r = rotation_matrix(pe, s)
        torch.testing.assert_close(r.T @ r, torch.eye(D, dtype=torch.float64), atol=1e-13, rtol=0)


@pytest.mark.parametrize("variant", ["cayley", "circulant"])
def test_orthogonal_and_finite_at_position_one_million(variant):
    pe = _perturb(_string(variant=variant))
    r = rotation_matrix(pe, torch.tensor([10**6]))
    torch.testing.assert_close(r.T @ r, torch.eye(D, dtype=torch.float64), atol=1e-12, rtol=0)
    # float32 queries at 10**6: the rotation is the float64 one rounded, no worse than float32 arithmetic
    x = torch.randn(1, HEADS, 3, D)
    pos = torch.full((3,), 10**6)
    torch.testing.assert_close(pe.rotate_one(x, pos).double(), pe.rotate_one(x.double(), pos), atol=2e-6, rtol=0)


def _video_table(frames=3, rows=2, cols=2):
    t, y, x = torch.meshgrid(torch.arange(frames), torch.arange(rows), torch.arange(cols), indexing="ij")
    table = torch.stack((t * 0.37, (y + 0.5) / rows, (x + 0.5) / cols), -1).reshape(-1, 3)  # time stamps, [0, 1]
    return table.double()


@pytest.mark.parametrize("variant", ["cayley", "circulant"])
def test_prefill_then_decode_equals_the_full_forward_on_continuous_3d_coordinates(variant):
    torch.manual_seed(0)
    cfg = TransformerConfig(kind="decoder", vocab_size=30, dim=48, n_layers=2, n_heads=4, n_kv_heads=2,
                            max_seq_len=64, encoding="string",
                            encoding_options={"axes": 3, "variant": variant, "position_scale": 3.0})
    model = Transformer(cfg).eval()
    _perturb(model.pe, std=0.3)
    table = _video_table()
    x = torch.randint(0, 30, (2, table.shape[0]))
    full = model(x, positions=Positions(coordinates=table))
    cache = KVCache()
    steps = [model(x[:, :5], positions=Positions(coordinates=table), cache=cache)]
    steps += [model(x[:, i:i + 1], cache=cache) for i in range(5, x.shape[1])]  # the cache keeps the table
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=2e-5, rtol=1e-4)


def test_no_grad_inference_mode_and_compile_agree():
    pe = _perturb(_string(axes=2))
    coords = torch.rand(2, 6, 2) * 9
    q, k = torch.randn(2, HEADS, 6, D), torch.randn(2, 2, 6, D)
    eager = pe.rotate(q, k, coords, coords)
    with torch.no_grad():
        torch.testing.assert_close(pe.rotate(q, k, coords, coords), eager)
    with torch.inference_mode():
        torch.testing.assert_close(pe.rotate(q, k, coords, coords), eager)
    compiled = torch.compile(lambda a, b, c: pe.rotate(a, b, c, c), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, coords), eager, atol=1e-6, rtol=1e-6)


def test_options_are_validated():
    with pytest.raises(ValueError, match="variant must be one of"):
        _string(variant="householder")
    with pytest.raises(ValueError, match="split evenly over axes=3"):
        get_encoding("string", dim=32, n_heads=4, axes=3)  # head_dim 8: 4 pairs over 3 axes
    with pytest.raises(ValueError, match="axes must be 1, 2 or 3"):
        _string(axes=4)
    with pytest.raises(ValueError, match="rotation_heads must be a positive divisor"):
        _string(rotation_heads=3)
    with pytest.raises(ValueError, match="position_scale must be a finite number > 0"):
        _string(position_scale=0.0)
    with pytest.raises(ValueError, match="must divide the number of key/value heads"):
        _string(rotation_heads=4).rotate_one(torch.randn(1, 2, 3, D), torch.arange(3), "k")


@pytest.mark.parametrize(("variant", "layout"), [("cayley", "half"), ("cayley", "interleaved"), ("circulant", "half")])
def test_generator_matrices_commute_and_exponentiate_to_the_rotation(variant, layout):
    pe = _perturb(_string(axes=3, variant=variant, layout=layout, position_scale=0.5))
    gens = pe.generator_matrices()
    assert gens.shape == (3, D, D)
    torch.testing.assert_close(gens, -gens.transpose(-1, -2), atol=1e-15, rtol=0)  # P^T D P: rounding only
    for i in range(3):
        for j in range(3):
            torch.testing.assert_close(gens[i] @ gens[j], gens[j] @ gens[i], atol=1e-14, rtol=0)
    r = torch.tensor([1.5, -2.0, 7.25], dtype=torch.float64)
    expected = torch.linalg.matrix_exp((r[:, None, None] * gens).sum(0))
    torch.testing.assert_close(rotation_matrix(pe, r), expected, atol=1e-13, rtol=0)
    with pytest.raises(ValueError, match=r"set_index must be an int in \[0, 1\)"):
        pe.generator_matrices(1)


@pytest.mark.parametrize(("name", "options"), [("string", {"axes": 3}), ("liere", {"axes": 2}),
                                               ("comrope", {"axes": 3, "variant": "ld"})])
def test_a_plain_sequence_lies_on_the_last_axis(name, options):
    """No coordinates: token p sits at (0, .., 0, p), as a 1 x T grid does for axial_rope."""
    pe = get_encoding(name, dim=DIM, n_heads=HEADS, max_seq_len=64, **options)
    a = pe.n_axes
    x = torch.randn(2, HEADS, 5, D)
    pos = torch.arange(3, 8)
    coords = torch.zeros(1, 5, a, dtype=torch.long)
    coords[0, :, -1] = pos
    torch.testing.assert_close(pe.rotate_one(x, pos), pe.rotate_one(x, coords), atol=0, rtol=0)
    torch.testing.assert_close(pe.rotate_one(x, pos), pe.rotate_one(x, coords.double()), atol=1e-6, rtol=1e-6)
