"""FoPE (arXiv 2412.17739) against its Fourier-series formula written naively, vLLM's FourierRotaryEmbedding
(re-derived below from its source: vLLM is not installed), a KV cache, and the pitfalls of FRONTIER.md section 2."""

from __future__ import annotations

import math

import pytest
import torch

from posenc import KVCache, Transformer, TransformerConfig, get_encoding
from posenc.encodings.fope import CLIPPED, FoPE
from posenc.encodings.rope import apply_rope, rope_cos_sin, rope_frequencies
from posenc.kernels import fast_rotate

# head_dim 16 (F = 8 pairs), max_seq_len 64: theta_i = 10000^(-i/8) > 2 pi / 64 for i = 0, 1, 2 -> M = 3 kept, 5 clipped
DIM, HEADS, KV_HEADS, HEAD_DIM, MAX_LEN, KEPT = 64, 4, 2, 16, 64, 3


def _fope(seed: int = 0, **kw) -> FoPE:
    torch.manual_seed(seed)
    kw.setdefault("init_factor", 0.5)  # visible mixing, so a wrong table index cannot hide behind the identity
    return get_encoding("fope", dim=DIM, n_heads=HEADS, max_seq_len=MAX_LEN, **kw)


def _naive(pe: FoPE, x: torch.Tensor, pos: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """The paper's formula, one number at a time in float64: x ``(B, H, T, D)`` at positions ``(T,)`` or ``(B, T)``."""
    b, h, t, d = x.shape
    f, m = pe.rotary_dim // 2, pe.n_kept
    theta = [pe.base ** (-2 * i / pe.rotary_dim) for i in range(f)]
    slots = pe.cos_coef.shape[0]
    coef_cos, coef_sin = pe.cos_coef.detach().double(), pe.sin_coef.detach().double()
    out = x.double().clone()
    for bi in range(b):
        for hi in range(h):
            kv = hi // (h // kv_heads)  # this head's kv head (grouped-query: repeat_interleave)
            group = range(kv * slots // kv_heads, (kv + 1) * slots // kv_heads) if slots > 1 else range(1)
            c_cos = sum(coef_cos[s] for s in group) / len(group)  # the group's mean, (M, M)
            c_sin = sum(coef_sin[s] for s in group) / len(group)
            for ti in range(t):
                p = int(pos[ti] if pos.dim() == 1 else pos[bi, ti])
                for di in range(f):
                    if di < m:
                        c = sum(math.cos(p * theta[mm]) * float(c_cos[mm, di]) for mm in range(m))
                        s = sum(math.sin(p * theta[mm]) * float(c_sin[mm, di]) for mm in range(m))
                    else:
                        c, s = 1.0, 1.0 if pe.clipped == "phase45" else 0.0
                    i, j = (di, di + f) if pe.layout == "half" else (2 * di, 2 * di + 1)
                    a_, b_ = float(x[bi, hi, ti, i]), float(x[bi, hi, ti, j])
                    out[bi, hi, ti, i] = a_ * c - b_ * s
                    out[bi, hi, ti, j] = b_ * c + a_ * s
    return out


# -- the formula -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("clipped", CLIPPED)
@pytest.mark.parametrize("separate_heads", [True, False])
def test_matches_naive_fourier_series(layout, clipped, separate_heads):
    pe = _fope(layout=layout, clipped=clipped, separate_heads=separate_heads).double()
    assert pe.n_kept == KEPT
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, HEADS, 5, HEAD_DIM, generator=gen, dtype=torch.float64)
    k = torch.randn(2, KV_HEADS, 5, HEAD_DIM, generator=gen, dtype=torch.float64)
    pos = torch.tensor([[0, 1, 2, 9, 40], [3, 70, 71, 500, 1000]])  # per sequence, past max_seq_len too
    with torch.no_grad():
        q2, k2 = pe.rotate(q, k, pos, pos)
    # float64 tables from exact angles: only float64 rounding (~1e-16 per term) separates the two
    torch.testing.assert_close(q2, _naive(pe, q, pos, KV_HEADS), atol=1e-12, rtol=0)
    torch.testing.assert_close(k2, _naive(pe, k, pos, KV_HEADS), atol=1e-12, rtol=0)


def test_float32_at_position_one_million():
    """Angles are exact; only the float32 cos/sin (2^-24 relative each) and the float32 mixing remain."""
    pe = _fope()
    q = torch.randn(1, HEADS, 3, HEAD_DIM)
    k = torch.randn(1, KV_HEADS, 3, HEAD_DIM)
    pos = torch.tensor([10**6, 10**6 + 1, 10**6 + 7])
    with torch.no_grad():
        q2, k2 = pe.rotate(q, k, pos, pos)
    want_q, want_k = _naive(pe, q, pos, KV_HEADS), _naive(pe, k, pos, KV_HEADS)
    # per output: sum over M terms of |table| <= sum |C| each rounded at 2^-24, then |x| times it, twice (a, b)
    c_max = float(max(pe.cos_coef.detach().abs().sum(1).max(), pe.sin_coef.detach().abs().sum(1).max()))
    tol = 4 * (KEPT + 2) * 2.0**-24 * c_max * float(max(q.abs().max(), k.abs().max()))
    assert (q2.double() - want_q).abs().max() < tol
    assert (k2.double() - want_k).abs().max() < tol


# -- vLLM ------------------------------------------------------------------------------------------------------------
def _rotate_neox(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _vllm_fope(positions, query, key, cos_coef, sin_coef, *, head_size, rotary_dim, max_pos, base, pad_sin,
               sep_head=True):
    """vLLM's ``FourierRotaryEmbedding.forward_native`` re-derived from its source
    (vllm/model_executor/layers/rotary_embedding/fope.py; ``pad_sin=1.0`` at commit c215d1e, ``0.0`` at 151a2c7).

    ``query`` ``(T, H * D)``, ``key`` ``(T, Hkv * D)``, coefficients ``(Hkv, M, M)``. Its cache is built in float32
    from float32 frequencies for positions ``0 .. max_pos - 1`` and indexed by position.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim))
    inv_freq = inv_freq[inv_freq > 2.0 * torch.pi / max_pos]
    t = torch.arange(max_pos, dtype=torch.float)
    freqs = torch.einsum("j,i -> ji", t, inv_freq)  # (max_pos, M)
    if sep_head:
        hkv = cos_coef.shape[0]
        pos_cos = freqs.cos().unsqueeze(0).expand(hkv, -1, -1)
        pos_sin = freqs.sin().unsqueeze(0).expand(hkv, -1, -1)
        sin = torch.einsum("htD, hDd -> thd", pos_sin, sin_coef.float())
        cos = torch.einsum("htD, hDd -> thd", pos_cos, cos_coef.float())
    else:
        sin = torch.einsum("tD, Dd -> td", freqs.sin(), sin_coef[0].float())
        cos = torch.einsum("tD, Dd -> td", freqs.cos(), cos_coef[0].float())
    sin = torch.nn.functional.pad(sin, (0, head_size // 2 - sin.size(-1)), value=pad_sin)
    cos = torch.nn.functional.pad(cos, (0, head_size // 2 - cos.size(-1)), value=1.0)
    cache = torch.cat((torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)), dim=-1)
    cos, sin = cache.index_select(0, positions.flatten()).chunk(2, dim=-1)
    query = query.unflatten(-1, (-1, head_size))
    key = key.unflatten(-1, (-1, head_size))
    need_reshape = cos.dim() == 3
    if need_reshape:  # (T, Hkv, D) tables: query heads grouped by kv head through a view
        query_shape, key_shape = query.shape, key.shape
        cos, sin = cos.flatten(0, 1), sin.flatten(0, 1)
        query = query.view(cos.size(0), -1, query.size(-1))
        key = key.view(cos.size(0), -1, key.size(-1))
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    query = query * cos + _rotate_neox(query) * sin
    key = key * cos + _rotate_neox(key) * sin
    if need_reshape:
        query, key = query.view(query_shape), key.view(key_shape)
    return query, key


@pytest.mark.parametrize("clipped,pad_sin", [("phase45", 1.0), ("passthrough", 0.0)])
@pytest.mark.parametrize("separate_heads", [True, False])
def test_matches_vllm_fourier_rotary_embedding(clipped, pad_sin, separate_heads):
    gen = torch.Generator().manual_seed(5)
    hkv = KV_HEADS if separate_heads else 1
    cos_coef = torch.eye(KEPT) + 0.5 * torch.randn(hkv, KEPT, KEPT, generator=gen)  # a checkpoint's (Hkv, M, M)
    sin_coef = torch.eye(KEPT) + 0.5 * torch.randn(hkv, KEPT, KEPT, generator=gen)
    pe = _fope(clipped=clipped, separate_heads=separate_heads)
    pe.load_kv_head_coefficients(cos_coef, sin_coef)
    t = 9
    positions = torch.tensor([0, 1, 2, 5, 17, 33, 48, 62, 63])
    query = torch.randn(t, HEADS * HEAD_DIM, generator=gen)
    key = torch.randn(t, KV_HEADS * HEAD_DIM, generator=gen)
    want_q, want_k = _vllm_fope(positions, query, key, cos_coef, sin_coef, head_size=HEAD_DIM, rotary_dim=HEAD_DIM,
                                max_pos=MAX_LEN, base=10000.0, pad_sin=pad_sin, sep_head=separate_heads)
    q = query.view(1, t, HEADS, HEAD_DIM).transpose(1, 2)  # (T, H*D) -> (1, H, T, D)
    k = key.view(1, t, KV_HEADS, HEAD_DIM).transpose(1, 2)
    with torch.no_grad():
        q2, k2 = pe.rotate(q, k, positions, positions)
    # vLLM forms t * theta in float32 (theta rounded too): up to 63 * 2^-24 rad at position 63, times sum |C| |x|
    scale = float(max(cos_coef.abs().sum(1).max(), sin_coef.abs().sum(1).max())) * float(query.abs().max())
    tol = 2 * (64 * 2.0**-24 + (KEPT + 2) * 2.0**-24) * scale
    assert (q2[0].transpose(0, 1) - want_q).abs().max() < tol
    assert (k2[0].transpose(0, 1) - want_k).abs().max() < tol


def test_vllm_conventions_differ_only_on_the_clipped_pairs():
    """The two conventions are really different encodings: the kept pairs agree, the clipped ones do not."""
    pe_a, pe_b = _fope(clipped="phase45"), _fope(clipped="passthrough")
    q, k = torch.randn(1, HEADS, 4, HEAD_DIM), torch.randn(1, KV_HEADS, 4, HEAD_DIM)
    pos = torch.arange(4)
    with torch.no_grad():
        qa, _ = pe_a.rotate(q, k, pos, pos)
        qb, _ = pe_b.rotate(q, k, pos, pos)
    f = HEAD_DIM // 2
    kept = list(range(KEPT)) + list(range(f, f + KEPT))
    torch.testing.assert_close(qa[..., kept], qb[..., kept], atol=0, rtol=0)
    clipped = [c for c in range(HEAD_DIM) if c not in kept]
    torch.testing.assert_close(qb[..., clipped], q[..., clipped], atol=0, rtol=0)  # passthrough: untouched
    a, b = q[..., KEPT:f], q[..., f + KEPT:]
    torch.testing.assert_close(qa[..., KEPT:f], a - b)  # phase45: (a, b) -> (a - b, b + a) at every position
    torch.testing.assert_close(qa[..., f + KEPT:], b + a)


# -- FRONTIER pitfalls -------------------------------------------------------------------------------------------------
def test_kept_frequencies_complete_a_period_within_the_training_length():
    pe = _fope()
    theta = rope_frequencies(HEAD_DIM)
    assert pe.n_kept == int((theta > 2 * math.pi / MAX_LEN).sum()) == KEPT
    assert theta[KEPT - 1] > 2 * math.pi / MAX_LEN >= theta[KEPT]
    assert pe.cos_coef.shape == (HEADS, KEPT, KEPT)
    assert _fope(num_inv_freq=5).n_kept == 5  # vLLM's num_inv_freq overrides the floor


def test_identity_coefficients_are_rope_on_the_kept_pairs():
    """C = I with pass-through clipping: RoPE on the kept pairs, the identity on the others (FoPE's special case)."""
    pe = _fope(clipped="passthrough", init_factor=0.0)
    q, k = torch.randn(2, HEADS, 6, HEAD_DIM), torch.randn(2, KV_HEADS, 6, HEAD_DIM)
    pos = torch.arange(6)
    theta = rope_frequencies(HEAD_DIM)
    theta[KEPT:] = 0  # zero frequency: cos 1, sin 0
    cos, sin = rope_cos_sin(pos, theta)
    with torch.no_grad():
        q2, k2 = pe.rotate(q, k, pos, pos)
    torch.testing.assert_close(q2, apply_rope(q, cos, sin), atol=1e-6, rtol=0)
    torch.testing.assert_close(k2, apply_rope(k, cos, sin), atol=1e-6, rtol=0)


def test_fast_rotate_declines_fope_tables():
    """FoPE's tables are per head (4-D): the fused CPU kernel takes none, and fast_rotate says so with None."""
    pe = _fope()
    pos = torch.arange(4)
    base_cos, base_sin = rope_cos_sin(pos, pe.inv_freq())
    cos, sin = pe.fourier_cos_sin(base_cos[None], base_sin[None], KV_HEADS)
    assert cos.shape == (1, KV_HEADS, 4, HEAD_DIM // 2)
    with torch.no_grad():
        assert fast_rotate(torch.randn(1, KV_HEADS, 4, HEAD_DIM), None, cos.detach(), sin.detach(),
                           layout="half") is None


# -- a model: decoding, modes, compile ---------------------------------------------------------------------------------
def _model(**options) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(kind="decoder", vocab_size=50, dim=DIM, n_layers=2, n_heads=HEADS, n_kv_heads=KV_HEADS,
                            max_seq_len=MAX_LEN, encoding="fope", encoding_options={"init_factor": 0.5, **options})
    return Transformer(cfg).eval()


@pytest.mark.parametrize("clipped", CLIPPED)
def test_prefill_then_decode_equals_full_forward(clipped):
    model = _model(clipped=clipped).double()
    x = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(x)
        cache = KVCache()
        steps = [model(x[:, :7], cache=cache)] + [model(x[:, i:i + 1], cache=cache) for i in range(7, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-10, rtol=0)


def test_no_grad_inference_mode_and_grad_agree():
    model = _model()
    x = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(4))
    out = model(x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), out, atol=0, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), out, atol=0, rtol=0)
    out.float().logsumexp(-1).mean().backward()
    pe = model.pe
    assert pe.cos_coef.grad is not None and pe.cos_coef.grad.abs().sum() > 0
    assert pe.sin_coef.grad is not None and pe.sin_coef.grad.abs().sum() > 0


def test_torch_compile_equals_eager():
    pe = _fope()
    q, k = torch.randn(2, HEADS, 5, HEAD_DIM), torch.randn(2, KV_HEADS, 5, HEAD_DIM)
    pos = torch.arange(3, 8)
    with torch.no_grad():
        want = pe.rotate(q, k, pos, pos)
        got = torch.compile(pe.rotate, fullgraph=True)(q, k, pos, pos)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)  # Inductor may reorder the float32 sums


# -- validation --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options,match", [
    ({"clipped": "ones"}, "clipped must be one of"),
    ({"num_inv_freq": 0}, "num_inv_freq"),
    ({"num_inv_freq": 9}, "num_inv_freq"),
    ({"init_factor": -1.0}, "init_factor"),
    ({"init_factor": float("nan")}, "init_factor"),
    ({"separate_heads": "yes"}, "separate_heads"),
])
def test_bad_options_are_refused(options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        get_encoding("fope", dim=DIM, n_heads=HEADS, max_seq_len=MAX_LEN, **options)


def test_too_short_training_length_is_refused():
    with pytest.raises(ValueError, match="no frequency completes a period"):
        get_encoding("fope", dim=DIM, n_heads=HEADS, max_seq_len=4)


def test_loading_wrong_coefficients_changes_nothing():
    pe = _fope()
    before = pe.cos_coef.detach().clone(), pe.sin_coef.detach().clone()
    with pytest.raises(ValueError, match=r"\(Hkv, 3, 3\)"):
        pe.load_kv_head_coefficients(torch.eye(KEPT)[None].repeat(2, 1, 1), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="must divide the slots"):
        pe.load_kv_head_coefficients(torch.zeros(3, KEPT, KEPT), torch.zeros(3, KEPT, KEPT))
    with pytest.raises(TypeError, match="floating tensor"):
        pe.load_kv_head_coefficients([[1.0]], torch.zeros(KEPT, KEPT))
    torch.testing.assert_close(pe.cos_coef.detach(), before[0], atol=0, rtol=0)
    torch.testing.assert_close(pe.sin_coef.detach(), before[1], atol=0, rtol=0)


def test_kv_heads_must_divide_the_heads():
    pe = _fope()
    with pytest.raises(ValueError, match="kv heads must divide"):
        pe.rotate(torch.randn(1, HEADS, 2, HEAD_DIM), torch.randn(1, 3, 2, HEAD_DIM), torch.arange(2), torch.arange(2))


def test_convert_rope_layout_keeps_outputs():
    """FoPE's tables are per pair, so switching the pair layout with permuted q/k weights changes no output."""
    from posenc.model import convert_rope_layout

    model = _model().double()
    x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        before = model(x)
        convert_rope_layout(model, "interleaved")
        after = model(x)
    assert model.pe.layout == "interleaved"
    torch.testing.assert_close(after, before, atol=1e-12, rtol=0)


# -- the picture -------------------------------------------------------------------------------------------------------
def test_fourier_picture_data_is_the_first_heads_table():
    from posenc import viz

    pe = _fope()
    assert "fourier" in viz.applicable_kinds(pe)
    data = viz.fourier_data(pe, length=10, offset=5)
    pos = torch.arange(5, 15)
    for d in range(HEAD_DIM // 2):  # a unit input on pair d's first channel (half layout) comes back as cos'_d(p)
        x = torch.zeros(1, HEADS, 10, HEAD_DIM)
        x[..., d] = 1.0
        with torch.no_grad():
            q2, _ = pe.rotate(x, torch.zeros(1, HEADS, 10, HEAD_DIM), pos, pos)
        torch.testing.assert_close(data.waves[:, d], q2[0, 0, :, d], atol=1e-6, rtol=0)  # head 0, channel d = cos'_d
    assert (data.waves[:, KEPT:] == 1).all()  # clipped pairs: flat
    torch.testing.assert_close(data.coefficients, pe.cos_coef.detach().abs().mean(0), atol=0, rtol=0)
    assert "fourier" not in viz.applicable_kinds(get_encoding("rope", dim=DIM, n_heads=HEADS))


def test_equal_diagonal_coefficients_keep_scores_relative_and_mixing_does_not():
    """C^cos = C^sin diagonal: each pair is a scaled rotation, so q_t . k_s depends on t - s only; mixing breaks it."""
    q, k = torch.randn(1, HEADS, 1, HEAD_DIM, dtype=torch.float64), torch.randn(1, KV_HEADS, 1, HEAD_DIM,
                                                                                   dtype=torch.float64)

    def score(pe, t, s):
        with torch.no_grad():
            q2, _ = pe.rotate(q, k, torch.tensor([t]), torch.tensor([t]))
            _, k2 = pe.rotate(q, k, torch.tensor([s]), torch.tensor([s]))
        return (q2[:, ::2] * k2).sum(-1).flatten()  # query heads 0, 2 against their kv heads 0, 1

    diagonal = _fope().double()
    scale = torch.diag_embed(torch.rand(HEADS, KEPT, dtype=torch.float64) + 0.5)
    diagonal.load_kv_head_coefficients(scale, scale)
    torch.testing.assert_close(score(diagonal, 9, 4), score(diagonal, 30, 25), atol=1e-12, rtol=0)
    mixed = _fope().double()  # init_factor 0.5: off-diagonal mixing
    assert (score(mixed, 9, 4) - score(mixed, 30, 25)).abs().max() > 1e-3


def test_queries_of_another_length_than_their_shared_positions_are_refused():
    pe = _fope()
    pos = torch.arange(5)
    with pytest.raises(ValueError, match="q_pos"):
        pe.rotate(torch.randn(1, HEADS, 7, HEAD_DIM), torch.randn(1, KV_HEADS, 5, HEAD_DIM), pos, pos)
