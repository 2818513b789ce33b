"""Encodings with attention terms (shaw, transformer_xl, cope, tupe) against naive paper formulas.

Each naive reference below builds the paper's pairwise terms explicitly, as (B, H, Tq, Tk) or (B, Tq, Tk, D)
tensors, with plain loops or einsums; the attention terms, computed by the backends (``auto``, ``reference`` and
``chunked`` in blocks of query rows), must agree with them to 1e-5 in float32.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import posenc
from layer_inputs import attend
from posenc import Transformer, TransformerConfig, get_encoding
from posenc.encodings.cope import cope_positions
from posenc.encodings.transformer_xl import xl_position_logits

NAMES = ["shaw", "transformer_xl", "cope", "tupe"]
RELATIVE = ["shaw", "transformer_xl", "cope"]
B, H, HKV, D = 2, 4, 2, 8
DIM = H * D


def _encoding(name: str, *, causal: bool, dtype: torch.dtype = torch.float32, max_seq_len: int = 64, **options):
    pe = get_encoding(name, dim=DIM, n_heads=H, max_seq_len=max_seq_len, causal=causal, **options)
    with torch.no_grad():  # random, non-trivial parameters (some tables start at zero, as in the papers)
        for p in pe.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return pe.to(dtype)


def _qkv(tq: int, tk: int, *, dtype: torch.dtype = torch.float32, hkv: int = HKV):
    return (torch.randn(B, H, tq, D, dtype=dtype), torch.randn(B, hkv, tk, D, dtype=dtype),
            torch.randn(B, hkv, tk, D, dtype=dtype))


def _naive_mask(tq: int, tk: int, causal: bool, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """Bool (B|1, 1|H, Tq, Tk): True where query i (at key index tk - tq + i) may attend key j."""
    allowed = torch.ones(1, 1, tq, tk, dtype=torch.bool)
    if causal:
        for i in range(tq):
            allowed[..., i, tk - tq + i + 1:] = False
    if attn_mask is not None:
        allowed = allowed & attn_mask
    return allowed


def _softmax_rows(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return probs.nan_to_num(0.0)


def _expand(x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(H // x.shape[1], dim=1)


def _pairwise_pos(pos: torch.Tensor) -> torch.Tensor:
    return pos.unsqueeze(0) if pos.dim() == 1 else pos  # (B|1, T)


# -- naive references, straight from the papers ------------------------------------------------------------------------
def naive_shaw(pe, q, k, v, q_pos, k_pos, causal, attn_mask):
    """Shaw et al. eqs. (3)-(5): e_ij = (x_i W^Q)(x_j W^K + a^K_ij)^T / sqrt(d), z_i = sum_j a_ij (x_j W^V + a^V_ij)."""
    k, v = _expand(k), _expand(v)
    kk = pe.max_relative_position
    rel = _pairwise_pos(k_pos)[:, None, :] - _pairwise_pos(q_pos)[:, :, None]  # (B|1, Tq, Tk)  j - i
    idx = rel.clamp(-kk, kk) + kk
    a_k = pe.key_table[idx]  # (B|1, Tq, Tk, D): the paper's a^K_ij, materialized
    scores = (q @ k.transpose(-2, -1) + torch.einsum("bhid,bijd->bhij", q, a_k.expand(q.shape[0], -1, -1, -1)))
    probs = _softmax_rows(scores / math.sqrt(q.shape[-1]), _naive_mask(q.shape[2], k.shape[2], causal, attn_mask))
    out = probs @ v
    if pe.value_table is not None:
        a_v = pe.value_table[idx].expand(q.shape[0], -1, -1, -1)
        out = out + torch.einsum("bhij,bijd->bhid", probs, a_v)
    return out


def naive_transformer_xl(pe, q, k, v, q_pos, k_pos, causal, attn_mask):
    """Dai et al. eq. for A^rel_ij: (a) q.k + (b) q.W_R R_{i-j} + (c) u.k + (d) v.W_R R_{i-j}, all times 1/sqrt(d)."""
    k, v = _expand(k), _expand(v)
    bsz, heads, tq, d = q.shape
    dist = (_pairwise_pos(q_pos)[:, :, None] - _pairwise_pos(k_pos)[:, None, :]).double()  # (B|1, Tq, Tk)  i - j
    n = pe.rel_dim // 2
    freqs = torch.tensor([10000.0 ** (-2 * f / pe.rel_dim) for f in range(n)], dtype=torch.float64)
    ang = dist[..., None] * freqs
    r = torch.cat((ang.sin(), ang.cos()), dim=-1).to(q.dtype)  # (B|1, Tq, Tk, d_R): R_{i-j}
    wr = torch.einsum("hdr,bijr->bhijd", pe.w_r.view(heads, d, -1), r)  # (B|1, H, Tq, Tk, D): W_R R_{i-j}
    u = pe.content_bias[None, :, None, :]
    vb = pe.position_bias[None, :, None, :]
    term_a = q @ k.transpose(-2, -1)
    term_b = torch.einsum("bhid,bhijd->bhij", q, wr.expand(bsz, -1, -1, -1, -1))
    term_c = (u @ k.transpose(-2, -1)).expand(-1, -1, tq, -1)
    term_d = torch.einsum("xhid,bhijd->bhij", vb.expand(1, -1, tq, -1), wr).expand(bsz, -1, -1, -1)
    scores = (term_a + term_b + term_c + term_d) / math.sqrt(d)
    return _softmax_rows(scores, _naive_mask(tq, k.shape[2], causal, attn_mask)) @ v


def naive_cope(pe, q, k, v, q_pos, k_pos, causal, attn_mask):
    """Golovneva et al. eqs. (3)-(5) with loops: g_ij = sigmoid(q_i.k_j), p_ij = sum_{t=j}^{i} g_it, interpolated e."""
    k, v = _expand(k), _expand(v)
    bsz, heads, tq, d = q.shape
    tk = k.shape[2]
    allowed = _naive_mask(tq, tk, causal, attn_mask).expand(bsz, heads, tq, tk)
    logits = (q @ k.transpose(-2, -1)) / math.sqrt(d)
    gates = torch.sigmoid(logits.masked_fill(~allowed, float("-inf")))
    top = pe.npos_max - 1
    scores = torch.empty_like(logits)
    for b in range(bsz):
        for h in range(heads):
            for i in range(tq):
                qi = tk - tq + i  # the query's key index
                for j in range(tk):
                    if causal and j > qi:  # masked: the paper defines no position here
                        scores[b, h, i, j] = float("-inf")
                        continue
                    if j <= qi:
                        p, table = gates[b, h, i, j:qi + 1].sum(), pe.pos_table
                    else:
                        p, table = gates[b, h, i, qi:j + 1].sum(), pe.future_table
                    p = p.clamp(max=top)
                    lo, hi = int(math.floor(p.item())), int(math.ceil(p.item()))
                    w = p - lo
                    e = (1 - w) * table[lo] + w * table[hi]
                    scores[b, h, i, j] = logits[b, h, i, j] + q[b, h, i] @ e
    return _softmax_rows(scores, allowed) @ v


def naive_tupe(pe, q, k, v, q_pos, k_pos, causal, attn_mask):
    """Ke et al. eq. (5): a_ij = (x_i W^Q)(x_j W^K)^T / sqrt(2d) + (p_i U^Q)(p_j U^K)^T / sqrt(2d), p layer-normed."""
    k, v = _expand(k), _expand(v)
    bsz, heads, tq, d = q.shape

    def proj(pos, u):
        p = pe.table[pos]  # (B|1?, T, dim)
        if pe.layer_norm:
            p = torch.nn.functional.layer_norm(p, (pe.dim,), pe.ln_weight, pe.ln_bias)
        out = p @ u.t()
        out = out.unsqueeze(0) if out.dim() == 2 else out
        return out.view(out.shape[0], out.shape[1], heads, d).transpose(1, 2)  # (B|1, H, T, D)

    positional = proj(q_pos, pe.u_q) @ proj(k_pos, pe.u_k).transpose(-2, -1)  # (B|1, H, Tq, Tk): explicit T x T
    scores = (q @ k.transpose(-2, -1) + positional) / math.sqrt(2 * d)
    return _softmax_rows(scores, _naive_mask(tq, k.shape[2], causal, attn_mask)) @ v


NAIVE = {"shaw": naive_shaw, "transformer_xl": naive_transformer_xl, "cope": naive_cope, "tupe": naive_tupe}


# -- fused == naive ----------------------------------------------------------------------------------------------------
@pytest.fixture
def small_chunks(monkeypatch):
    """``chunked`` in its smallest blocks (TERMS_MIN_ROWS = 4 rows with terms): 36 queries are nine blocks."""
    monkeypatch.setattr(importlib.import_module("posenc.attention_settings"), "CHUNK_ELEMENTS", 1)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("name", NAMES)
def test_terms_match_naive_paper_formula(name, causal):
    pe = _encoding(name, causal=causal)
    tq = tk = 7
    q, k, v = _qkv(tq, tk)
    pos = torch.tensor([[3, 4, 5, 6, 7, 8, 9], [0, 1, 2, 0, 1, 2, 3]])  # (B, T): an offset and a packed sequence
    with torch.no_grad():
        expected = NAIVE[name](pe, q, k, v, pos, pos, causal, None)
    for backend in ("auto", "reference", "chunked"):
        out = attend(q, k, v, pe, q_pos=pos, k_pos=pos, causal=causal, backend=backend)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("name", NAMES)
def test_chunked_blocks_match_naive_paper_formula(name, causal, small_chunks):
    pe = _encoding(name, causal=causal)
    q, k, v = _qkv(36, 40)  # Tq < Tk: the queries are the last 36 keys; blocks of 16, 16 and 4 rows
    k_pos = torch.stack((torch.arange(2, 42), torch.arange(40) % 23))  # (B, Tk): an offset, then two documents
    q_pos = k_pos[:, 4:]
    with torch.no_grad():
        expected = NAIVE[name](pe, q, k, v, q_pos, k_pos, causal, None)
        out = attend(q, k, v, pe, q_pos=q_pos, k_pos=k_pos, causal=causal, backend="chunked")
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_attend_with_padding_mask_and_shared_positions(name):
    pe = _encoding(name, causal=False)
    q, k, v = _qkv(5, 6)
    pos_q, pos_k = torch.arange(1, 6), torch.arange(6)
    keep = torch.ones(B, 1, 1, 6, dtype=torch.bool)
    keep[0, ..., 4:] = False  # padding at the end of the first sequence
    keep[1, ..., 0] = False
    out = attend(q, k, v, pe, q_pos=pos_q, k_pos=pos_k, attn_mask=keep)
    with torch.no_grad():
        expected = NAIVE[name](pe, q, k, v, pos_q, pos_k, False, keep)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # an additive float mask with the same meaning gives the same result
    additive = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(attend(q, k, v, pe, q_pos=pos_q, k_pos=pos_k, attn_mask=additive), out)


@pytest.mark.parametrize("name", NAMES)
def test_fully_masked_rows_give_zeros_and_finite_gradients(name):
    pe = _encoding(name, causal=False)
    q, k, v = _qkv(4, 4)
    q.requires_grad_(True)
    keep = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    keep[..., 2, :] = False
    out = attend(q, k, v, pe, attn_mask=keep)
    assert torch.all(out[:, :, 2] == 0)
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_shaw_key_term_only_matches_naive():
    pe = _encoding("shaw", causal=True, value_term=False, max_relative_position=2)
    assert pe.value_table is None
    q, k, v = _qkv(6, 6)
    pos = torch.arange(6)
    out = attend(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True)
    with torch.no_grad():
        torch.testing.assert_close(out, naive_shaw(pe, q, k, v, pos, pos, True, None), atol=1e-5, rtol=1e-5)


def test_shaw_distances_past_k_share_the_outer_embedding():
    pe = _encoding("shaw", causal=False, max_relative_position=2)
    q, k, v = _qkv(1, 2)
    near = attend(q, k, v, pe, q_pos=torch.tensor([0]), k_pos=torch.tensor([3, 40]))
    far = attend(q, k, v, pe, q_pos=torch.tensor([0]), k_pos=torch.tensor([2, 900]))
    torch.testing.assert_close(near, far)  # both keys sit at clipped distance +2


# -- KV cache, translation invariance ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_kv_cache_query_subset_equals_full(name):
    pe = _encoding(name, causal=True)
    q, k, v = _qkv(9, 9)
    pos = torch.arange(5, 14)
    full = attend(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True)
    for start in (8, 6, 3):  # one new token, then chunks (prefill + chunked decoding)
        part = attend(q[:, :, start:], k, v, pe, q_pos=pos[start:], k_pos=pos, causal=True)
        torch.testing.assert_close(part, full[:, :, start:], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("name", RELATIVE)
def test_relative_encodings_are_translation_invariant(name, causal):
    pe = _encoding(name, causal=causal)
    q, k, v = _qkv(6, 6)
    pos = torch.tensor([0, 1, 2, 4, 5, 9])
    base = attend(q, k, v, pe, q_pos=pos, k_pos=pos, causal=causal)
    for shift in (1, 37, 10**6):
        moved = attend(q, k, v, pe, q_pos=pos + shift, k_pos=pos + shift, causal=causal)
        torch.testing.assert_close(moved, base, atol=2e-5, rtol=1e-5)


def test_tupe_is_absolute_not_translation_invariant():
    pe = _encoding("tupe", causal=False)
    q, k, v = _qkv(5, 5)
    pos = torch.arange(5)
    assert not torch.allclose(attend(q, k, v, pe, q_pos=pos, k_pos=pos),
                              attend(q, k, v, pe, q_pos=pos + 3, k_pos=pos + 3))


# -- Transformer-XL: the two exact paths -------------------------------------------------------------------------------
def test_transformer_xl_gather_and_factored_paths_agree():
    pe = _encoding("transformer_xl", causal=False)
    qv = torch.randn(B, H, 5, D)
    sparse_q = torch.tensor([[0, 7, 90, 1000, 1001], [4, 5, 6, 7, 8]])  # (B, Tq), many distinct distances
    for q_pos, k_pos in ((torch.arange(3, 8), torch.arange(6)), (sparse_q, torch.tensor([2, 50, 51, 700, 999]))):
        gather = xl_position_logits(qv, pe.w_r, q_pos, k_pos, method="gather")
        factored = xl_position_logits(qv, pe.w_r, q_pos, k_pos, method="factored")
        auto = xl_position_logits(qv, pe.w_r, q_pos, k_pos, method="auto")
        torch.testing.assert_close(factored, gather, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(auto, gather, atol=2e-5, rtol=1e-5)


def test_transformer_xl_sparse_positions_match_naive():
    pe = _encoding("transformer_xl", causal=True)
    q, k, v = _qkv(4, 6)
    q_pos, k_pos = torch.tensor([300, 2000, 2001, 9000]), torch.tensor([0, 17, 300, 2000, 2001, 9000])
    assert int((q_pos[:, None] - k_pos).max() - (q_pos[:, None] - k_pos).min()) + 1 > 4 + 6  # "auto" factors
    out = attend(q, k, v, pe, q_pos=q_pos, k_pos=k_pos, causal=True)  # many distinct distances: factored
    with torch.no_grad():
        expected = naive_transformer_xl(pe, q, k, v, q_pos, k_pos, True, None)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# -- CoPE --------------------------------------------------------------------------------------------------------------
def test_cope_positions_count_gates():
    gates = torch.tensor([[[0.5, 1.0, 0.0, 0.25]]]).expand(1, 4, 4).clone()  # (1, Tq=4, Tk=4), same row for each i
    past, future = cope_positions(gates, causal=False)
    # query 3: p_3j = sum_{t=j}^{3} g_3t
    torch.testing.assert_close(past[0, 3], torch.tensor([1.75, 1.25, 0.25, 0.25]))
    # query 0: p_0j = sum_{t=0}^{j} g_0t for keys after it
    torch.testing.assert_close(future[0, 0], torch.tensor([0.0, 1.5, 1.5, 1.75]))
    assert torch.all(past.triu(1) == 0) and torch.all(future.tril(0) == 0)


def test_cope_matches_x_transformers():
    xt = pytest.importorskip("x_transformers.x_transformers")
    from x_transformers.attend import Attend

    npos = 5
    pe = _encoding("cope", causal=True, npos_max=npos)
    peer = xt.CoPE(dim=D, heads=H, max_pos=npos)
    with torch.no_grad():
        peer.pos_emb.copy_(pe.pos_table)
    peer_attend = Attend(causal=True, cope=peer, flash=False)
    q, k, v = _qkv(7, 7, hkv=H)  # x-transformers groups kv heads differently; compare without GQA
    q = q * 3  # larger logits so gates spread over (0, 1) and positions reach the clamp
    with torch.no_grad():
        expected, _ = peer_attend(q, k, v)
        expected_tail, _ = peer_attend(q[:, :, 4:], k, v)  # bottom-right causal alignment with fewer queries
    torch.testing.assert_close(attend(q, k, v, pe, causal=True), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attend(q[:, :, 4:], k, v, pe, causal=True), expected_tail, atol=1e-5,
                               rtol=1e-5)


def test_cope_built_causal_refuses_bidirectional_attention():
    pe = get_encoding("cope", dim=DIM, n_heads=H, causal=True)
    assert pe.future_table is None
    q, k, v = _qkv(3, 3)
    with pytest.raises(ValueError, match="causal=False"):
        attend(q, k, v, pe, causal=False)


# -- TUPE --------------------------------------------------------------------------------------------------------------
def test_tupe_position_channels_equal_explicit_positional_bias():
    pe = _encoding("tupe", causal=False, layer_norm=False)
    pos = torch.arange(6)
    pq, pk = pe.position_channels(pos, "q"), pe.position_channels(pos, "k")  # (1, H, T, D)
    p = pe.table[pos]
    for h in range(H):
        uq, uk = pe.u_q[h * D:(h + 1) * D], pe.u_k[h * D:(h + 1) * D]  # rows of head h
        torch.testing.assert_close(pq[0, h] @ pk[0, h].t(), (p @ uq.t()) @ (p @ uk.t()).t(), atol=1e-5, rtol=1e-5)


def test_tupe_rejects_positions_past_its_table():
    pe = get_encoding("tupe", dim=DIM, n_heads=H, max_seq_len=8)
    q, k, v = _qkv(2, 2)
    with pytest.raises(ValueError, match="max_seq_len=8"):
        attend(q, k, v, pe, q_pos=torch.tensor([6, 8]), k_pos=torch.tensor([6, 8]))


# -- gradients ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_parameters_float64(name, causal, small_chunks):
    options = {"npos_max": 4} if name == "cope" else {"max_relative_position": 2} if name == "shaw" else {}
    heads, head_dim = 2, 4  # tiny, so gradcheck perturbs few parameters
    pe = get_encoding(name, dim=heads * head_dim, n_heads=heads, max_seq_len=4, causal=causal, **options)
    with torch.no_grad():
        for p in pe.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    pe = pe.double()
    q = torch.randn(1, heads, 3, head_dim, dtype=torch.float64)
    k, v = torch.randn(2, 1, 1, 4, head_dim, dtype=torch.float64).unbind(0)  # (1, Hkv=1, 4, D) each: GQA too
    q_pos, k_pos = torch.tensor([1, 2, 3]), torch.arange(4)
    params = tuple(pe.parameters())
    for backend in ("reference", "chunked"):  # chunked: checkpointed blocks, recomputed in the backward pass

        def run_params(*_, backend=backend):  # gradcheck perturbs the parameters in place; the terms read them
            return attend(q, k, v, pe, q_pos=q_pos, k_pos=k_pos, causal=causal, backend=backend)

        assert torch.autograd.gradcheck(run_params, params, eps=1e-6, atol=1e-5, fast_mode=True)
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]

        def run_inputs(qq, kk, vv, backend=backend):
            return attend(qq, kk, vv, pe, q_pos=q_pos, k_pos=k_pos, causal=causal, backend=backend)

        assert torch.autograd.gradcheck(run_inputs, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


# -- model and options -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_inside_transformer_decoder_cache_equals_full(name):
    cfg = TransformerConfig(kind="decoder", encoding=name, dim=DIM, n_heads=H, n_kv_heads=HKV, n_layers=2,
                            max_seq_len=32)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.pe.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    tokens = torch.randint(0, cfg.vocab_size, (2, 8))
    with torch.no_grad():
        full = model(tokens)
        cache = posenc.KVCache()
        steps = [model(tokens[:, :5], cache=cache)] + [model(tokens[:, t:t + 1], cache=cache) for t in range(5, 8)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert posenc.explain(torch.zeros(1, H, 2, D), torch.zeros(1, H, 2, D), torch.zeros(1, H, 2, D),
                          model.pe, causal=True).startswith("dense")


@pytest.mark.parametrize(("name", "options", "error", "match"), [
    ("shaw", {"max_relative_position": 0}, ValueError, "clipping distance"),
    ("shaw", {"max_relative_position": 2.5}, TypeError, "max_relative_position .* must be an int; got float"),
    ("shaw", {"value_term": "yes"}, TypeError, "value_term"),
    ("shaw", {"init_std": -1.0}, ValueError, "init_std"),
    ("transformer_xl", {"rel_dim": 7}, ValueError, "even"),
    ("transformer_xl", {"method": "shift"}, ValueError, "method"),
    ("cope", {"npos_max": 1}, ValueError, "npos_max"),
    ("cope", {"init_std": float("nan")}, ValueError, "init_std"),
    ("tupe", {"layer_norm": 1}, TypeError, "layer_norm"),
    ("tupe", {"init_std": -0.1}, ValueError, "init_std"),
    ("shaw", {"clip": 4}, TypeError, "unknown option"),
])
def test_bad_options_raise_clear_errors(name, options, error, match):
    with pytest.raises(error, match=match):
        get_encoding(name, dim=DIM, n_heads=H, **options)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_head_dim_or_heads_raise(name):
    pe = get_encoding(name, dim=DIM, n_heads=H)
    q, k, v = torch.randn(1, H, 3, D + 2), torch.randn(1, H, 3, D + 2), torch.randn(1, H, 3, D + 2)
    with pytest.raises(ValueError, match="head_dim"):
        attend(q, k, v, pe, q_pos=torch.arange(3), k_pos=torch.arange(3))
    q, k, v = _qkv(3, 3, hkv=3)
    with pytest.raises(ValueError, match="multiple"):
        attend(q, k, v, pe, q_pos=torch.arange(3), k_pos=torch.arange(3))
