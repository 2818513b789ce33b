"""DeBERTa disentangled attention (``deberta``) against its naive float64 formula and Hugging Face's ``DebertaV2``.

The judge is the paper's score written naively: per pair, a relative index from DeBERTa-v2's log-bucket formula
evaluated in Python floats, the projected table rows gathered per pair, the three dot products and the softmax. The
peer is ``transformers``' ``DebertaV2`` (tiny random models built from configs, weights copied, public forwards only).

Hugging Face forms the score scale ``sqrt(d * factor)`` in float32; the head dims below make ``d * factor`` a perfect
square (d = 12 with c2p + p2c, d = 8 with one term), so that scale is exact and float64 results agree to rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import posenc
from posenc import KVCache, Positions, Transformer, TransformerConfig, get_encoding
from posenc.encodings.deberta import deberta_bucket_thresholds, deberta_log_bucket

transformers = pytest.importorskip("transformers")
from transformers.models.deberta_v2 import modeling_deberta_v2 as hf  # noqa: E402

F64 = torch.float64
SMALL = {"position_buckets": 8, "max_relative_positions": 32}  # log buckets from distance 5 on, saturated past 31


# -- the naive formula ---------------------------------------------------------------------------------------------
def naive_bucket(r: int, position_buckets: int, max_relative_positions: int) -> int:
    """DeBERTa-v2's ``make_log_bucket_position`` for one distance, in Python floats (as the authors' numpy code)."""
    if position_buckets <= 0:
        return max(-max_relative_positions, min(max_relative_positions, r))
    mid, a = position_buckets // 2, abs(r)
    if a <= mid:
        return r
    b = math.ceil(math.log(a / mid) / math.log((max_relative_positions - 1) / mid) * (mid - 1)) + mid
    return b if r > 0 else -b


def naive_index(r: int, span: int, **buckets) -> int:
    """``clamp(bucket(r) + S, 0, 2S - 1)``: the table row of distance ``r``."""
    return max(0, min(2 * span - 1, naive_bucket(r, **buckets) + span))


def naive_deberta(q, k, v, q_pos, k_pos, table, project_q, project_k, *, pos_att_type=("c2p", "p2c"),
                  convention="released", causal=False, attn_mask=None, buckets=None):
    """The paper's disentangled attention written out per pair (float64).

    ``A_ij = [q_i.k_j + q_i.K^r[delta(i,j)] + k_j.Q^r[delta'(i,j)]] / sqrt(d (1 + n_terms))`` with ``K^r = W_k R``,
    ``Q^r = W_q R``; ``delta'(i, j)`` is ``delta(i, j)`` ("released") or ``delta(j, i)`` ("paper").
    q (B, H, Tq, D); k, v (B, Hkv, Tk, D); positions (B, T); table (2S, dim) already normalised.
    """
    buckets = buckets or SMALL
    span = table.shape[0] // 2
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    kr = project_k(table).to(F64)  # (2S, Hkv, D)
    qr = project_q(table).to(F64)  # (2S, H, D)
    c2p_idx = torch.empty(b, tq, tk, dtype=torch.long)
    p2c_idx = torch.empty(b, tq, tk, dtype=torch.long)
    for n in range(b):
        for i in range(tq):
            for j in range(tk):
                r = int(q_pos[n, i]) - int(k_pos[n, j])
                c2p_idx[n, i, j] = naive_index(r, span, **buckets)
                p2c_idx[n, i, j] = naive_index(r if convention == "released" else -r, span, **buckets)
    ke = k.to(F64).repeat_interleave(h // hkv, dim=1)  # (B, H, Tk, D)
    ve = v.to(F64).repeat_interleave(h // hkv, dim=1)
    kre = kr.repeat_interleave(h // hkv, dim=1)  # (2S, H, D): each query head reads its kv group's W_k
    scores = torch.einsum("bhid,bhjd->bhij", q.to(F64), ke)
    if "c2p" in pos_att_type:
        k_pairs = kre[c2p_idx].permute(0, 3, 1, 2, 4)  # (B, Tq, Tk, H, D) -> (B, H, Tq, Tk, D): K^r per pair
        scores = scores + torch.einsum("bhid,bhijd->bhij", q.to(F64), k_pairs)
    if "p2c" in pos_att_type:
        q_pairs = qr[p2c_idx].permute(0, 3, 1, 2, 4)  # (B, H, Tq, Tk, D): Q^r per pair
        scores = scores + torch.einsum("bhjd,bhijd->bhij", ke, q_pairs)
    scores = scores / math.sqrt(d * (1 + len(pos_att_type)))
    allowed = torch.ones(b, 1, tq, tk, dtype=torch.bool)
    if causal:
        allowed &= torch.arange(tk) <= (tk - tq + torch.arange(tq))[:, None]
    if attn_mask is not None:
        allowed = allowed & attn_mask
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
    return probs @ ve


class Projections(nn.Module):
    """A layer's W_q / W_k (with bias, as DeBERTa's) and the LayerView that hands them to the encoding."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.w_q = nn.Linear(dim, heads * head_dim)
        self.w_k = nn.Linear(dim, kv_heads * head_dim)

    def project_q(self, x: Tensor) -> Tensor:  # (..., dim) -> (..., H, D)
        return self.w_q(x).unflatten(-1, (self.heads, self.head_dim))

    def project_k(self, x: Tensor) -> Tensor:  # (..., dim) -> (..., Hkv, D)
        return self.w_k(x).unflatten(-1, (self.kv_heads, self.head_dim))

    def view(self) -> posenc.LayerView:
        return posenc.LayerView(0, self.heads, self.kv_heads, self.head_dim, project_q=self.project_q,
                                project_k=self.project_k)


def _randomize(module: nn.Module, seed: int, scale: float = 0.5) -> None:
    """Seeded random values for every parameter (off the initialisation: zero biases would hide terms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


# -- buckets ---------------------------------------------------------------------------------------------------------
BUCKET_CONFIGS = [(256, 512), (8, 32), (4, 6), (4, 16), (7, 40), (3, 9), (2, 5), (64, 1024), (0, 16)]


@pytest.mark.parametrize("config", BUCKET_CONFIGS, ids=str)
def test_buckets_equal_the_float64_formula_at_every_distance(config):
    """Integer thresholds give the float64 formula's bucket at every distance up to well past saturation."""
    s, m = config
    pe = get_encoding("deberta", dim=16, n_heads=2, position_buckets=s, max_relative_positions=m)
    reach = 4 * m + 50
    rel = torch.arange(-reach, reach + 1)
    got = deberta_log_bucket(rel, pe.bucket_thresholds, position_buckets=s, max_relative_positions=m)
    span = pe.span
    want = torch.tensor([max(-span, min(span, naive_bucket(r, s, m))) for r in rel.tolist()])
    assert torch.equal(got, want)
    if s:  # the distance M - 1 reaches bucket 2 mid - 1 exactly (the closed form is an integer there)
        assert int(deberta_log_bucket(torch.tensor(m - 1), pe.bucket_thresholds, position_buckets=s,
                                      max_relative_positions=m)) == 2 * (s // 2) - 1
    far = [-(10**15), 10**15]  # bounded, no overflow
    assert deberta_log_bucket(torch.tensor(far), pe.bucket_thresholds, position_buckets=s,
                              max_relative_positions=m).tolist() == [max(-span, min(span, naive_bucket(r, s, m)))
                                                                     for r in far]


@pytest.mark.parametrize("config", [c for c in BUCKET_CONFIGS if c[0]], ids=str)
def test_buckets_equal_hugging_face_make_log_bucket_position(config):
    s, m = config
    rel = torch.arange(-4 * m, 4 * m + 1)
    pe = get_encoding("deberta", dim=16, n_heads=2, position_buckets=s, max_relative_positions=m)
    got = deberta_log_bucket(rel, pe.bucket_thresholds, position_buckets=s, max_relative_positions=m)
    want = hf.make_log_bucket_position(rel, s, m).long().clamp(-pe.span, pe.span)  # HF clamps the index later
    assert torch.equal(got, want)


def test_thresholds_are_monotone_and_start_at_mid():
    t = deberta_bucket_thresholds(256, 512)
    assert len(t) == 256 - 128 + 1 and t[0] == 128 and all(a <= b for a, b in zip(t, t[1:]))
    assert t[127 - 1] < 511 <= t[127]  # distance 511 = M - 1 is the last of bucket mid + 127 = 255


# -- against the naive formula on every backend -----------------------------------------------------------------
def _setup(*, heads=4, kv_heads=2, head_dim=6, seed=0, **options):
    dim = heads * head_dim
    pe = get_encoding("deberta", dim=dim, n_heads=heads, **{**SMALL, **options}).to(F64)
    _randomize(pe, seed)
    proj = Projections(dim, heads, kv_heads, head_dim).to(F64)
    _randomize(proj, seed + 1)
    return pe, proj


def _table(pe) -> Tensor:
    return pe.relative_table()  # (2S, dim), layer-normalised: the definition the naive formula receives


def _grads(out: Tensor, params: list[Tensor], seed: Tensor) -> list[Tensor]:
    """Gradients of ``(out * seed).sum()``; zeros for a parameter the output does not read (c2p alone reads no W_q)."""
    grads = torch.autograd.grad(out, params, seed, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("convention", ["released", "paper"])
@pytest.mark.parametrize("pos_att_type", [("c2p", "p2c"), ("c2p",), ("p2c",)], ids="+".join)
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_every_backend_equals_the_naive_formula_forward_and_gradients(pos_att_type, convention, causal,
                                                                    monkeypatch):
    """float64, GQA, per-sequence positions with an offset and gaps, distances past the log-bucket threshold and
    past saturation; the gradients of q, k, v, the table, its LayerNorm and the layer's W_q / W_k (through the
    projected table: chunked carries them as per-call tensors)."""
    monkeypatch.setattr(posenc.attention_settings, "CHUNK_ELEMENTS", 1)  # chunked in blocks of 4 rows
    pe, proj = _setup(pos_att_type=pos_att_type, p2c_convention=convention)
    b, tq, tk = 2, 9, 13
    g = torch.Generator().manual_seed(7)
    q = torch.randn(b, 4, tq, 6, generator=g, dtype=F64, requires_grad=True)
    k, v = (torch.randn(b, 2, tk, 6, generator=g, dtype=F64, requires_grad=True) for _ in range(2))
    k_pos = torch.stack((torch.arange(tk) * 3 + 5, torch.arange(tk)))  # gaps of 3: distances up to 36 > M = 32
    q_pos = k_pos[:, tk - tq:]
    mask = torch.ones(b, 1, 1, tk, dtype=torch.bool)
    mask[1, ..., :2] = False  # padding at the start of the second sequence
    params = [q, k, v, *pe.parameters(), *proj.parameters()]
    want = naive_deberta(q, k, v, q_pos, k_pos, _table(pe), proj.project_q, proj.project_k,
                         pos_att_type=pos_att_type, convention=convention, causal=causal, attn_mask=mask)
    seed = torch.randn(want.shape, generator=g, dtype=F64)
    want_grads = _grads(want, params, seed)
    for backend in ("reference", "dense", "chunked"):
        got = posenc.attention(q, k, v, pe, q_pos=q_pos, k_pos=k_pos, causal=causal, attn_mask=mask,
                               layer=proj.view(), backend=backend)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12, msg=backend)
        for p, gw, gg in zip(params, want_grads, _grads(got, params, seed)):
            torch.testing.assert_close(gg, gw, atol=1e-11, rtol=1e-11, msg=f"{backend} {tuple(p.shape)}")


def test_query_and_key_lengths_that_differ_equal_the_naive_formula():
    """Tq != Tk with explicit positions: a block of queries at the start, as Hugging Face aligns them."""
    pe, proj = _setup()
    g = torch.Generator().manual_seed(8)
    q = torch.randn(1, 4, 5, 6, generator=g, dtype=F64)
    k, v = (torch.randn(1, 2, 40, 6, generator=g, dtype=F64) for _ in range(2))
    q_pos, k_pos = torch.arange(5)[None], torch.arange(40)[None]
    want = naive_deberta(q, k, v, q_pos, k_pos, _table(pe), proj.project_q, proj.project_k)
    got = posenc.attention(q, k, v, pe, q_pos=q_pos[0], k_pos=k_pos[0], layer=proj.view())
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_the_default_table_equals_the_naive_formula_past_its_log_threshold():
    """The v2/v3 defaults (S = 256, M = 512): distances past 128 take log buckets, past 511 the edge rows."""
    pe, proj = _setup(heads=2, kv_heads=1, head_dim=4, position_buckets=256, max_relative_positions=512)
    g = torch.Generator().manual_seed(9)
    q = torch.randn(1, 2, 6, 4, generator=g, dtype=F64)
    k, v = (torch.randn(1, 1, 12, 4, generator=g, dtype=F64) for _ in range(2))
    k_pos = (torch.arange(12) * 97)[None]  # distances up to 1067
    q_pos = k_pos[:, ::2]
    want = naive_deberta(q, k, v, q_pos, k_pos, _table(pe), proj.project_q, proj.project_k,
                         buckets={"position_buckets": 256, "max_relative_positions": 512})
    got = posenc.attention(q, k, v, pe, q_pos=q_pos[0], k_pos=k_pos[0], layer=proj.view())
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


# -- pitfalls -------------------------------------------------------------------------------------------------------
def test_p2c_reads_the_opposite_direction_in_the_paper_and_the_same_as_c2p_in_the_released_code():
    """Paper (eq. 4, Algorithm 1): p2c reads Q^r[delta(j, i)]. The released code: Q^r[delta(i, j)]. They differ."""
    outs = {}
    for convention in ("released", "paper"):
        pe, proj = _setup(pos_att_type=("p2c",), p2c_convention=convention)
        g = torch.Generator().manual_seed(10)
        q = torch.randn(1, 4, 8, 6, generator=g, dtype=F64)
        k, v = (torch.randn(1, 2, 8, 6, generator=g, dtype=F64) for _ in range(2))
        pos = torch.arange(8)[None]
        outs[convention] = posenc.attention(q, k, v, pe, layer=proj.view())
        for judge in ("released", "paper"):
            want = naive_deberta(q, k, v, pos, pos, _table(pe), proj.project_q, proj.project_k,
                                 pos_att_type=("p2c",), convention=judge)
            assert torch.allclose(outs[convention], want, atol=1e-12, rtol=0) == (judge == convention)
    assert (outs["released"] - outs["paper"]).abs().max() > 1e-3


def test_the_score_scale_is_one_over_sqrt_3d():
    """A zero table without projection biases adds nothing: what is left is softmax(q k / sqrt(3 d))."""
    pe = get_encoding("deberta", dim=24, n_heads=4, layer_norm=False, **SMALL).to(F64)
    nn.init.zeros_(pe.rel_embeddings)
    proj = Projections(24, 4, 4, 6).to(F64)
    nn.init.zeros_(proj.w_q.bias)
    nn.init.zeros_(proj.w_k.bias)
    q, k, v = (torch.randn(2, 4, 7, 6, dtype=F64) for _ in range(3))
    want = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(3 * 6), dim=-1) @ v
    torch.testing.assert_close(posenc.attention(q, k, v, pe, layer=proj.view()), want, atol=1e-13, rtol=1e-13)
    pe_one = get_encoding("deberta", dim=24, n_heads=4, layer_norm=False, pos_att_type="c2p", **SMALL).to(F64)
    nn.init.zeros_(pe_one.rel_embeddings)
    want = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(2 * 6), dim=-1) @ v  # one position term: sqrt(2d)
    torch.testing.assert_close(posenc.attention(q, k, v, pe_one, layer=proj.view()), want, atol=1e-13, rtol=1e-13)


def test_only_distances_matter_and_far_ones_share_the_edge_rows():
    pe, proj = _setup()
    q = torch.randn(1, 4, 6, 6, dtype=F64)
    k, v = (torch.randn(1, 2, 6, 6, dtype=F64) for _ in range(2))
    pos = torch.arange(6)
    base = posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, layer=proj.view())
    shifted = posenc.attention(q, k, v, pe, q_pos=pos + 10**6, k_pos=pos + 10**6, layer=proj.view())
    torch.testing.assert_close(shifted, base, atol=1e-13, rtol=1e-13)
    # keys 10**4 and 10**9 before every query are all past saturation (M = 32): the same rows, the same output
    near = posenc.attention(q, k, v, pe, q_pos=pos + 10**4, k_pos=pos, layer=proj.view())
    far = posenc.attention(q, k, v, pe, q_pos=pos + 10**9, k_pos=pos, layer=proj.view())
    torch.testing.assert_close(far, near, atol=1e-13, rtol=1e-13)


# -- against Hugging Face DebertaV2 ---------------------------------------------------------------------------------
def _hf_config(**overrides) -> transformers.DebertaV2Config:
    options = dict(vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                   max_position_embeddings=64, relative_attention=True, pos_att_type=["p2c", "c2p"],
                   norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False, type_vocab_size=0,
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **SMALL)
    options.update(overrides)
    return transformers.DebertaV2Config(**options)


def _hf_attention(seed: int, **overrides) -> hf.DisentangledSelfAttention:
    torch.manual_seed(seed)
    att = hf.DisentangledSelfAttention(_hf_config(**overrides)).to(F64).eval()
    _randomize(att, seed, scale=0.3)
    return att


def _view_of(att: hf.DisentangledSelfAttention) -> posenc.LayerView:
    h, d = att.num_attention_heads, att.attention_head_size
    return posenc.LayerView(0, h, h, d, project_q=lambda x: att.query_proj(x).unflatten(-1, (h, d)),
                            project_k=lambda x: att.key_proj(x).unflatten(-1, (h, d)))


def _posenc_of(att: hf.DisentangledSelfAttention, config, *, table: Tensor) -> posenc.PositionalEncoding:
    """posenc's encoding with HF's options and relative table (``layer_norm=False``: HF's layer passes the table
    already normalised by its encoder), and HF's own position projections when ``share_att_key=False``."""
    pe = get_encoding("deberta", dim=config.hidden_size, n_heads=config.num_attention_heads,
                      pos_att_type=tuple(config.pos_att_type), position_buckets=config.position_buckets,
                      max_relative_positions=config.max_relative_positions, share_att_key=config.share_att_key,
                      layer_norm=False).to(F64)
    with torch.no_grad():
        pe.rel_embeddings.copy_(table)
        if not config.share_att_key:
            for name in ("pos_key_proj", "pos_query_proj"):
                if getattr(pe, name) is not None:
                    getattr(pe, name).load_state_dict(getattr(att, name).state_dict())
    return pe


def _heads(x: Tensor, h: int) -> Tensor:
    return x.unflatten(-1, (h, -1)).transpose(1, 2)  # (B, T, H*D) -> (B, H, T, D)


def _posenc_attention(att, pe, query_states, hidden_states, **kwargs) -> Tensor:
    h = att.num_attention_heads
    q = _heads(att.query_proj(query_states), h)
    k, v = _heads(att.key_proj(hidden_states), h), _heads(att.value_proj(hidden_states), h)
    out = posenc.attention(q, k, v, pe, layer=_view_of(att), **kwargs)  # (B, H, Tq, D)
    return out.transpose(1, 2).flatten(2)  # (B, Tq, H*D)


@pytest.mark.parametrize("share_att_key", [True, False])
@pytest.mark.parametrize("pos_att_type", [["p2c", "c2p"], ["c2p"], ["p2c"]], ids="+".join)
def test_equals_hugging_face_disentangled_self_attention(pos_att_type, share_att_key):
    """One ``DisentangledSelfAttention.forward`` against ``posenc.attention`` with its projections and table;
    T = 40 reaches the log buckets (S = 8: past distance 4) and their saturation (M = 32)."""
    dim = 24 if len(pos_att_type) == 2 else 16  # head dim 12 or 8: HF's float32 sqrt(d * factor) is exact
    config = _hf_config(hidden_size=dim, pos_att_type=pos_att_type, share_att_key=share_att_key)
    att = _hf_attention(1, hidden_size=dim, pos_att_type=pos_att_type, share_att_key=share_att_key)
    g = torch.Generator().manual_seed(2)
    table = torch.randn(2 * SMALL["position_buckets"], dim, generator=g, dtype=F64)
    x = torch.randn(2, 40, dim, generator=g, dtype=F64)
    mask = torch.ones(2, 1, 40, 40, dtype=torch.bool)
    want, _ = att(x, mask, rel_embeddings=table)
    pe = _posenc_of(att, config, table=table)
    for backend in ("reference", "dense", "chunked"):
        got = _posenc_attention(att, pe, x, x, backend=backend)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12, msg=backend)


def test_equals_hugging_face_at_the_v3_defaults_past_distance_128():
    """position_buckets = 256, max_relative_positions = 512, T = 300: distances up to 299 take log buckets."""
    dim, t = 24, 300
    config = _hf_config(position_buckets=256, max_relative_positions=512)
    att = _hf_attention(3, position_buckets=256, max_relative_positions=512)
    g = torch.Generator().manual_seed(4)
    table = torch.randn(512, dim, generator=g, dtype=F64)
    x = torch.randn(1, t, dim, generator=g, dtype=F64)
    want, _ = att(x, torch.ones(1, 1, t, t, dtype=torch.bool), rel_embeddings=table)
    got = _posenc_attention(att, _posenc_of(att, config, table=table), x, x)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_equals_hugging_face_with_fewer_queries_than_keys_where_its_forward_allows():
    """HF's ``query_states`` of another length than the keys: its forward runs with c2p alone (with p2c it raises,
    see the next test); HF aligns the queries at positions 0 .. Tq - 1, posenc takes them as explicit positions."""
    config = _hf_config(hidden_size=16, pos_att_type=["c2p"])
    att = _hf_attention(5, hidden_size=16, pos_att_type=["c2p"])
    g = torch.Generator().manual_seed(6)
    table = torch.randn(16, 16, generator=g, dtype=F64)
    x, xq = torch.randn(2, 30, 16, generator=g, dtype=F64), torch.randn(2, 7, 16, generator=g, dtype=F64)
    want, _ = att(x, torch.ones(2, 1, 7, 30, dtype=torch.bool), query_states=xq, rel_embeddings=table)
    got = _posenc_attention(att, _posenc_of(att, config, table=table), xq, x, q_pos=torch.arange(7),
                            k_pos=torch.arange(30))
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def _naive_p2c(k_heads: Tensor, qr: Tensor, tq: int, **buckets) -> Tensor:
    """The p2c term ``k_j . Q^r[delta(i, j)] / sqrt(d * factor)`` (factor 2: p2c alone), queries at 0 .. Tq-1."""
    span = qr.shape[0] // 2
    tk = k_heads.shape[1]
    idx = torch.tensor([[naive_index(i - j, span, **buckets) for j in range(tk)] for i in range(tq)])  # (Tq, Tk)
    q_pairs = qr[idx]  # (Tq, Tk, BH, D)
    return torch.einsum("njd,ijnd->nij", k_heads, q_pairs) / math.sqrt(k_heads.shape[-1] * 2)  # (BH, Tq, Tk)


def test_hugging_face_swaps_the_bucket_arguments_of_p2c_when_query_and_key_lengths_differ():
    """``build_rpos(query_layer, key_layer, relative_pos, position_buckets, max_relative_positions)`` is called with
    ``(..., self.max_relative_positions, self.position_buckets)``, so for Tq != Tk the p2c buckets are made with
    ``bucket_size = 32, max_position = 8`` instead of ``(8, 32)``. The p2c term does not depend on the queries, so by
    the paper (one delta for both terms, as the authors' own code builds it) a query at position i gets the same p2c
    row whatever Tq is. The naive float64 formula judges: HF's Tq == Tk path and posenc equal it with the signature's
    order; HF's Tq != Tk rows equal it only with the arguments swapped. (HF's Tq != Tk path also keeps all Tk query
    rows, without the authors' ``pos_index`` row selection, so its forward cannot add it to c2p: RuntimeError.)"""
    config = _hf_config(hidden_size=16, pos_att_type=["p2c"])
    att = _hf_attention(7, hidden_size=16, pos_att_type=["p2c"])
    g = torch.Generator().manual_seed(8)
    table = torch.randn(16, 16, generator=g, dtype=F64)
    x, xq = torch.randn(1, 20, 16, generator=g, dtype=F64), torch.randn(1, 3, 16, generator=g, dtype=F64)
    h = att.num_attention_heads
    key_layer = att.transpose_for_scores(att.key_proj(x), h)  # (B*H, Tk, D), HF's layout
    qr = att.query_proj(table).unflatten(-1, (h, -1))  # (2S, H, D)
    right = _naive_p2c(key_layer, qr, 20, **SMALL)  # (BH, Tk, Tk): every key position as a query position
    swapped = _naive_p2c(key_layer, qr, 20, position_buckets=32, max_relative_positions=8)
    assert (right - swapped).abs().max() > 1e-3  # distances 6 .. 19 are bucketed differently
    with torch.no_grad():
        same = att.disentangled_attention_bias(att.transpose_for_scores(att.query_proj(x), h), key_layer, None,
                                               table, 2)  # Tq == Tk
        other = att.disentangled_attention_bias(att.transpose_for_scores(att.query_proj(xq), h), key_layer, None,
                                                table, 2)  # Tq = 3 != Tk = 20
    torch.testing.assert_close(same, right, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(other, swapped, atol=1e-12, rtol=1e-12)
    # posenc, 3 queries: with zero queries the logits are the p2c term alone, so the output is softmax(p2c) @ v
    pe = _posenc_of(att, config, table=table)
    k, v = _heads(att.key_proj(x), h), _heads(att.value_proj(x), h)  # (1, H, Tk, D)
    got = posenc.attention(torch.zeros(1, h, 3, 8, dtype=F64), k, v, pe, q_pos=torch.arange(3),
                           k_pos=torch.arange(20), layer=_view_of(att))
    torch.testing.assert_close(got[0], torch.softmax(right[:, :3], dim=-1) @ v[0], atol=1e-12, rtol=1e-12)


def test_a_whole_hugging_face_model_with_posenc_attention_swapped_in():
    """``DebertaV2Model.forward`` (embeddings, 2 layers, the encoder's shared table and its LayerNorm) with every
    layer's ``attention.self`` replaced by posenc's attention over that layer's own projections and one posenc
    encoding holding the copied table and LayerNorm: the same hidden states at every unpadded position."""
    torch.manual_seed(11)
    config = _hf_config()
    model = transformers.DebertaV2Model(config).to(F64).eval()
    _randomize(model, 12, scale=0.3)
    ids = torch.randint(0, 50, (2, 37))
    mask = torch.ones(2, 37, dtype=torch.long)
    mask[1, 30:] = 0  # padding
    want = model(input_ids=ids, attention_mask=mask).last_hidden_state
    pe = get_encoding("deberta", dim=24, n_heads=2, **SMALL, layer_norm_eps=config.layer_norm_eps).to(F64)
    with torch.no_grad():
        pe.rel_embeddings.copy_(model.encoder.rel_embeddings.weight)
        pe.norm.load_state_dict(model.encoder.LayerNorm.state_dict())

    class PosencSelfAttention(nn.Module):
        def __init__(self, att):
            super().__init__()
            self.att = att

        def forward(self, hidden_states, attention_mask, output_attentions=False, query_states=None,
                    relative_pos=None, rel_embeddings=None):
            xq = hidden_states if query_states is None else query_states
            return _posenc_attention(self.att, pe, xq, hidden_states, attn_mask=attention_mask.bool()), None

    for layer in model.encoder.layer:
        layer.attention.self = PosencSelfAttention(layer.attention.self)
    got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=1e-11, rtol=1e-11)


# -- in posenc.Transformer ------------------------------------------------------------------------------------------
def _model(kind="decoder", **options) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(kind=kind, vocab_size=30, dim=32, n_heads=4, n_kv_heads=2, n_layers=2,
                                         encoding="deberta", encoding_options={**SMALL, **options})).eval()


@pytest.mark.parametrize("convention", ["released", "paper"])
@pytest.mark.parametrize("split", [[12], [5, 1, 1, 5], [1] * 12])
def test_prefill_then_decode_equals_the_full_forward(split, convention):
    model = _model(p2c_convention=convention)
    x = torch.randint(0, 30, (2, 12))
    full = model(x)
    cache, outs, start = KVCache(), [], 0
    for n in split:
        outs.append(model(x[:, start:start + n], cache=cache))
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_packed_segments_equal_separate_forwards(kind):
    model = _model(kind)
    a, b = torch.randint(0, 30, (1, 7)), torch.randint(0, 30, (1, 9))
    pos = torch.cat((torch.arange(7), torch.arange(9)))[None]
    seg = torch.tensor([[0] * 7 + [1] * 9])
    packed = model(torch.cat((a, b), 1), positions=Positions(pos=pos, segment_ids=seg))
    torch.testing.assert_close(packed[:, :7], model(a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 7:], model(b), atol=1e-5, rtol=1e-5)
    if kind == "decoder":  # decoding on after a packed prefill continues the second document
        cache = KVCache()
        model(torch.cat((a, b[:, :5]), 1), positions=Positions(pos=pos[:, :12], segment_ids=seg[:, :12]), cache=cache)
        steps = [model(b[:, i:i + 1], cache=cache) for i in range(5, 9)]
        torch.testing.assert_close(torch.cat(steps, 1), packed[:, 12:], atol=1e-5, rtol=1e-5)


def test_one_table_per_stack_by_default_and_one_per_layer_on_request():
    shared = _model()
    assert len({id(pe) for pe in shared.decoder.encodings()}) == 1 and not shared.decoder.pe.per_layer
    per_layer = _model(per_layer=True)
    encodings = per_layer.decoder.encodings()
    assert len({id(pe) for pe in encodings}) == 2 and all(pe.per_layer for pe in encodings)


def test_chunked_carries_the_table_terms_gradients_to_the_layers_projections(monkeypatch):
    """The model's gradients (the layers' q_proj / k_proj through the projected table, the table, its LayerNorm)
    are the same on chunked, in blocks of 4 rows, as on the reference backend."""
    monkeypatch.setattr(posenc.attention_settings, "CHUNK_ELEMENTS", 1)
    x = torch.randint(0, 30, (2, 10))
    grads = {}
    for backend in ("reference", "chunked"):
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(kind="encoder", vocab_size=30, dim=32, n_heads=4, n_kv_heads=2,
                                              n_layers=2, encoding="deberta", encoding_options=SMALL,
                                              attention_backend=backend)).double()
        model(x).logsumexp(-1).mean().backward()
        grads[backend] = {n: p.grad for n, p in model.named_parameters()}
    assert grads["chunked"].keys() == grads["reference"].keys()
    for n, g in grads["reference"].items():
        torch.testing.assert_close(grads["chunked"][n], g, atol=1e-12, rtol=1e-12, msg=n)
    assert grads["chunked"]["decoder.pe.rel_embeddings"].abs().max() > 0  # (an encoder-only stack is named decoder)


# -- options and errors -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "error", "match"), [
    ({"pos_att_type": ("c2p", "p2p")}, ValueError, "p2p"),
    ({"pos_att_type": ()}, ValueError, "non-empty"),
    ({"pos_att_type": ("c2p", "c2p")}, ValueError, "repeats"),
    ({"pos_att_type": 3}, TypeError, "pos_att_type"),
    ({"position_buckets": 1}, ValueError, "position_buckets"),
    ({"position_buckets": -1}, ValueError, "position_buckets"),
    ({"position_buckets": 2.0}, TypeError, "position_buckets"),
    ({"position_buckets": 256, "max_relative_positions": 129}, ValueError, "max_relative_positions - 1"),
    ({"max_relative_positions": 0, "position_buckets": 0}, ValueError, "max_relative_positions"),
    ({"p2c_convention": "hf"}, ValueError, "released"),
    ({"share_att_key": 1}, TypeError, "share_att_key"),
    ({"per_layer": "yes"}, TypeError, "per_layer"),
    ({"layer_norm_eps": 0.0}, ValueError, "layer_norm_eps"),
    ({"init_std": float("nan")}, ValueError, "init_std"),
])
def test_bad_options_are_clear_errors(options, error, match):
    with pytest.raises(error, match=match):
        get_encoding("deberta", dim=16, n_heads=2, **options)


def test_hf_style_pos_att_type_string_and_canonical_order():
    pe = get_encoding("deberta", dim=16, n_heads=2, pos_att_type="p2c|c2p")
    assert pe.pos_att_type == ("c2p", "p2c") and pe.score_factor == 3


def test_a_call_without_the_layers_projections_is_a_clear_error():
    pe = get_encoding("deberta", dim=16, n_heads=2, **SMALL)
    q = torch.randn(1, 2, 3, 8)
    with pytest.raises(ValueError, match="layer="):
        posenc.attention(q, q, q, pe)
    with pytest.raises(ValueError, match="project_q/project_k"):
        posenc.attention(q, q, q, pe, layer=posenc.LayerView(0, 2, 2, 8))
    bad = posenc.LayerView(0, 2, 2, 8, project_q=lambda x: x.unflatten(-1, (4, 4)),
                           project_k=lambda x: x.unflatten(-1, (2, 8)))
    with pytest.raises(ValueError, match=r"project_q must map \(\.\.\., dim\) to \(\.\.\., 2, 8\)"):
        posenc.attention(q, q, q, pe, layer=bad)
    own = get_encoding("deberta", dim=16, n_heads=2, share_att_key=False, **SMALL)
    assert not own.reads_layer and posenc.attention(q, q, q, own).shape == q.shape  # its own projections
