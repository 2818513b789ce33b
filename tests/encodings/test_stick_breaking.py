"""Stick-breaking attention (``stick_breaking``) against its paper formula as a naive float64 loop.

The loop breaks each query's stick key by key, nearest first, exactly as the paper describes it (products, not logs,
in float64). A second reference transcribes the formulation of the reference repository's tests
(``shawntan/stickbreaking-attention``: ``sb_ref.stickbreaking`` with ``cum_weight = tril(-1)`` and the diagonal
masked unless ``attend_current``), whose kernels need triton and a GPU and are not installed here. Every FRONTIER
pitfall has a test: log space only, the diagonal convention, an ordinary KV cache, masked keys breaking nothing.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import posenc
from posenc import KVCache, Positions, Transformer, TransformerConfig, get_encoding
from posenc.encodings.stick_breaking import breaking_order, stick_breaking_weights

B, H, HKV, D, T = 2, 4, 2, 8, 12
DIM = H * D
BACKENDS = ["reference", "dense", "chunked"]


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(posenc.attention_settings, "CHUNK_ELEMENTS", 1)  # chunked in blocks of 4 rows


def _encoding(*, causal: bool = True, **options) -> posenc.PositionalEncoding:
    pe = get_encoding("stick_breaking", dim=DIM, n_heads=H, max_seq_len=64, causal=causal, **options)
    with torch.no_grad():  # the learned remainder starts at zero: off it, so that a wrong head or sign shows
        for p in pe.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(9), dtype=p.dtype))
    return pe.double()


def _qkv(tq: int = T, tk: int = T, *, hkv: int = HKV, seed: int = 1, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, tq, D, generator=g, dtype=torch.float64) * scale
    k, v = (torch.randn(B, hkv, tk, D, generator=g, dtype=torch.float64) for _ in range(2))
    return q, k, v


def _naive(q, k, v, *, causal: bool, attend_current: bool = False, allowed=None, remainder: str = "none",
           vector=None):
    """The stick-breaking process, one query and one key at a time, in float64 products.

    Keys are visited in breaking order (nearest first; the earlier key first on a tie), skipping keys that are
    masked or after the query (causal) and the query's own key unless ``attend_current``.
    """
    tq, tk = q.shape[2], k.shape[2]
    ke, ve = (x.repeat_interleave(H // x.shape[1], 1) for x in (k, v))
    z = q @ ke.transpose(-2, -1) / math.sqrt(D)  # (B, H, Tq, Tk)
    out = torch.zeros(B, H, tq, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for r in range(tq):
                i = tk - tq + r  # the query's key index
                keys = sorted(range(tk), key=lambda j, i=i: (abs(j - i), j))  # i, i-1, i+1, i-2, ...
                stick = torch.ones((), dtype=torch.float64)
                for j in keys:
                    if (causal and j > i) or (j == i and not attend_current):
                        continue
                    if allowed is not None and not allowed[b if allowed.shape[0] > 1 else 0, 0, r, j]:
                        continue
                    beta = torch.sigmoid(z[b, h, r, j])
                    out[b, h, r] += stick * beta * ve[b, h, j]
                    stick = stick * (1 - beta)
                if remainder == "learned":
                    out[b, h, r] += stick * vector[h]
                elif remainder == "value":
                    out[b, h, r] += stick * ve[b, h, i]
    return out


def _reference_repo(q, k, v, *, attend_current: bool):
    """The reference repository's test formulation (``ref_fwd``: ``sb_ref.stickbreaking`` plus ``rem * v``), for
    equal-length causal self-attention: ``mask`` is True where a key is *not* seen, ``cum_weight = tril(-1)`` sums
    each key's ``log(1 - beta)`` into every earlier key's weight."""
    t = q.shape[2]
    ke, ve = (x.repeat_interleave(H // x.shape[1], 1) for x in (k, v))
    logits = q @ ke.transpose(-2, -1) / math.sqrt(D)
    mask = torch.ones(t, t).triu(1 if attend_current else 0).bool()
    cum_weight = torch.ones(t, t, dtype=torch.float64).tril(-1)
    log_z = F.logsigmoid(logits).masked_fill(mask, -1e5)
    log_beta = F.logsigmoid(-logits).masked_fill(mask, 0)
    att = (log_z + torch.einsum("bhij,jk->bhik", log_beta, cum_weight)).exp()
    return att @ ve + (1 - att.sum(-1))[..., None] * ve


# -- the formula -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("remainder", ["none", "learned", "value"])
@pytest.mark.parametrize("attend_current", [False, True])
@pytest.mark.parametrize("hkv", [H, HKV], ids=["mha", "gqa"])
def test_causal_equals_the_naive_loop_forward_and_gradients_on_every_backend(hkv, attend_current, remainder,
                                                                            small_chunks):
    pe = _encoding(attend_current=attend_current, remainder=remainder)
    q, k, v = (x.requires_grad_() for x in _qkv(tq=9, tk=T, hkv=hkv))
    vector = pe.remainder_vector if remainder == "learned" else None
    want = _naive(q, k, v, causal=True, attend_current=attend_current, remainder=remainder, vector=vector)
    inputs = [q, k, v, *pe.parameters()]
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, inputs, g)
    for backend in BACKENDS:
        got = posenc.attention(q, k, v, pe, causal=True, backend=backend)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12, msg=lambda m, b=backend: f"{b}: {m}")
        for a, w in zip(torch.autograd.grad(got, inputs, g), want_grads):
            torch.testing.assert_close(a, w, atol=1e-11, rtol=1e-11, msg=lambda m, b=backend: f"{b} grad: {m}")


@pytest.mark.parametrize("attend_current", [False, True])
def test_equals_the_reference_repositorys_formulation(attend_current):
    pe = _encoding(attend_current=attend_current, remainder="value")
    q, k, v = _qkv()
    torch.testing.assert_close(posenc.attention(q, k, v, pe, causal=True),
                               _reference_repo(q, k, v, attend_current=attend_current), atol=1e-12, rtol=1e-12)


def test_the_diagonal_convention_changes_the_outputs_and_defaults_to_the_papers_strict_one():
    """``attend_current=False`` (the paper's ``j < i``, the kernels' default): a query takes nothing from its own key,
    so the first token attends to nothing; ``True`` lets the query's own key break the stick first."""
    assert get_encoding("stick_breaking", dim=DIM, n_heads=H).attend_current is False
    q, k, v = _qkv()
    strict, current = (posenc.attention(q, k, v, _encoding(attend_current=a), causal=True) for a in (False, True))
    assert torch.equal(strict[:, :, 0], torch.zeros_like(strict[:, :, 0]))  # no earlier key, no remainder
    assert (strict - current).abs().amin(-1).gt(1e-6).all()  # every query's output changes
    logits = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    weights = stick_breaking_weights(logits, torch.arange(3), causal=True, attend_current=False)
    assert torch.equal(weights.diagonal(dim1=-2, dim2=-1), torch.zeros(1, 1, 3, dtype=torch.float64))


# -- bidirectional: distance order -------------------------------------------------------------------------------
def test_breaking_order_is_by_distance_with_the_earlier_key_first_on_a_tie():
    assert breaking_order(torch.tensor([2]), 6).tolist() == [[2, 1, 3, 0, 4, 5]]
    assert breaking_order(torch.tensor([0, 5]), 6).tolist() == [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]]
    assert breaking_order(torch.tensor([-2]), 3).tolist() == [[0, 1, 2]]  # a query before every key


@pytest.mark.parametrize("attend_current", [False, True])
@pytest.mark.parametrize("hkv", [H, HKV], ids=["mha", "gqa"])
def test_bidirectional_equals_the_naive_loop_in_distance_order(hkv, attend_current, small_chunks):
    pe = _encoding(causal=False, attend_current=attend_current, remainder="learned")
    q, k, v = (x.requires_grad_() for x in _qkv(tq=9, tk=T, hkv=hkv))
    keep = torch.rand(B, 1, 9, T, generator=torch.Generator().manual_seed(3)) > 0.25  # padding-like holes
    want = _naive(q, k, v, causal=False, attend_current=attend_current, allowed=keep, remainder="learned",
                  vector=pe.remainder_vector)
    inputs = [q, k, v, pe.remainder_vector]
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, inputs, g)
    for backend in BACKENDS:
        got = posenc.attention(q, k, v, pe, causal=False, attn_mask=keep, backend=backend)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12, msg=lambda m, b=backend: f"{b}: {m}")
        for a, w in zip(torch.autograd.grad(got, inputs, g), want_grads):
            torch.testing.assert_close(a, w, atol=1e-11, rtol=1e-11, msg=lambda m, b=backend: f"{b} grad: {m}")


def test_bidirectional_restricted_to_earlier_keys_is_the_causal_rule():
    pe = _encoding(causal=False, remainder="learned")
    q, k, v = _qkv(tq=7)
    lower = torch.arange(T) <= torch.arange(T - 7, T)[:, None]  # (Tq, Tk): the causal mask
    torch.testing.assert_close(posenc.attention(q, k, v, pe, attn_mask=lower),
                               posenc.attention(q, k, v, pe, causal=True), atol=1e-14, rtol=1e-14)


# -- pitfalls ------------------------------------------------------------------------------------------------------
def test_log_space_keeps_saturated_gates_exact_where_products_of_probabilities_fail():
    """Logits of +-60 in float32: ``1 - sigmoid(60)`` rounds to 0 and ``log`` of it is ``-inf`` (a NaN gradient),
    while ``logsigmoid(-60) = -60`` is exact. The float32 weights and gradients match the float64 loop."""
    q, k, v = _qkv(scale=12.0)  # scores of tens
    pe = get_encoding("stick_breaking", dim=DIM, n_heads=H, causal=True)
    want = _naive(q, k, v, causal=True)
    qf, kf, vf = (x.float().requires_grad_() for x in (q, k, v))
    got = posenc.attention(qf, kf, vf, pe, causal=True)
    assert (q @ k.repeat_interleave(2, 1).transpose(-2, -1) / math.sqrt(D)).abs().max() > 40
    torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5)
    got.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (qf, kf, vf))
    naive_keep = torch.log(1 - torch.sigmoid(torch.tensor(60.0)))  # what a product-of-probabilities form computes
    assert torch.isneginf(naive_keep)


def test_float32_weights_over_many_keys_stay_within_float32_rounding_of_float64():
    """The log-space sums run in float64: at 4096 keys the float32 weights differ from float64 ones by a few ulps."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(1, 2, 64, 4096, generator=g, dtype=torch.float64) * 3 - 4  # mostly small gates
    q_index = torch.arange(4096 - 64, 4096)
    want = stick_breaking_weights(logits, q_index, causal=True)
    got = stick_breaking_weights(logits.float(), q_index, causal=True)
    assert (got.double() - want).abs().max() < 1e-6


def test_masked_keys_break_nothing_causal_padding_anywhere_equals_the_keys_removed():
    pe = _encoding(remainder="learned")
    q, k, v = _qkv()
    keep = torch.ones(T, dtype=torch.bool)
    keep[[2, 3, 7]] = False  # holes inside the row
    out = posenc.attention(q, k, v, pe, causal=True, attn_mask=keep)
    rows = [r for r in range(T) if keep[r]]  # the same queries with the masked keys gone (their own key stays)
    shorter = posenc.attention(q[:, :, rows], k[:, :, keep], v[:, :, keep], pe, causal=True)
    torch.testing.assert_close(out[:, :, rows], shorter, atol=1e-14, rtol=1e-14)


def test_masked_keys_break_nothing_bidirectional_padding_and_packed_documents_equal_separate_runs():
    """Left and right padding, and a packed row's documents (masked from each other), equal each run alone. (Within a
    document a masked key keeps its place in the distance order: it takes nothing and breaks nothing, but the keys
    around it stay as far from the query as they are.)"""
    pe = _encoding(causal=False, remainder="learned")
    q, k, v = _qkv()
    keep = torch.zeros(T, dtype=torch.bool)
    keep[2:9] = True  # two padded keys on the left, three on the right
    out = posenc.attention(q, k, v, pe, attn_mask=keep)
    alone = posenc.attention(q[:, :, 2:9], k[:, :, 2:9], v[:, :, 2:9], pe)
    torch.testing.assert_close(out[:, :, 2:9], alone, atol=1e-14, rtol=1e-14)
    doc = torch.tensor([0] * 5 + [1] * 7)
    out = posenc.attention(q, k, v, pe, attn_mask=doc[:, None] == doc[None, :])  # (T, T) block diagonal
    for part in (slice(0, 5), slice(5, T)):
        alone = posenc.attention(q[:, :, part], k[:, :, part], v[:, :, part], pe)
        torch.testing.assert_close(out[:, :, part], alone, atol=1e-14, rtol=1e-14)


def test_positions_are_ignored():
    pe = _encoding(remainder="learned")
    q, k, v = _qkv()
    far = torch.arange(10**6, 10**6 + T)
    torch.testing.assert_close(posenc.attention(q, k, v, pe, q_pos=far, k_pos=far, causal=True),
                               posenc.attention(q, k, v, pe, causal=True), atol=0, rtol=0)


# -- through posenc.Transformer ------------------------------------------------------------------------------------
def _model(**options) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=30, dim=DIM, n_heads=H, n_kv_heads=HKV,
                                          n_layers=2, encoding="stick_breaking", encoding_options=options))
    with torch.no_grad():
        for pe in model.decoder.encodings():
            for p in pe.parameters():
                p.normal_(0.0, 1.0)
    return model.eval()


@pytest.mark.parametrize("options", [{}, {"attend_current": True}, {"remainder": "learned"}, {"remainder": "value"}],
                         ids=["default", "attend_current", "learned", "value"])
@pytest.mark.parametrize("split", [[12], [5, 1, 1, 5], [1] * 12])
def test_prefill_then_decode_with_an_ordinary_kv_cache_equals_the_full_forward(options, split):
    model = _model(**options)
    x = torch.randint(0, 30, (B, T), generator=torch.Generator().manual_seed(3))
    full = model(x)
    cache, outs, start = KVCache(), [], 0
    for n in split:
        outs.append(model(x[:, start:start + n], cache=cache))
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    assert set(cache.layers[0].features) == set()  # nothing beyond k and v is cached


@pytest.mark.parametrize("options", [{}, {"remainder": "learned"}], ids=["default", "learned"])
def test_packed_documents_equal_separate_runs_also_when_decoding(options):
    model = _model(**options)
    g = torch.Generator().manual_seed(4)
    a, b = torch.randint(0, 30, (1, 5), generator=g), torch.randint(0, 30, (1, 4), generator=g)
    pos = torch.cat((torch.arange(5), torch.arange(4)))[None]
    seg = torch.tensor([[0] * 5 + [1] * 4])
    packed = model(torch.cat((a, b), 1), positions=Positions(pos=pos, segment_ids=seg))
    torch.testing.assert_close(packed[:, :5], model(a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 5:], model(b), atol=1e-5, rtol=1e-5)
    cache = KVCache()
    model(torch.cat((a, b[:, :2]), 1), positions=Positions(pos=pos[:, :7], segment_ids=seg[:, :7]), cache=cache)
    steps = [model(b[:, i:i + 1], cache=cache) for i in (2, 3)]
    torch.testing.assert_close(torch.cat(steps, 1), packed[:, 7:], atol=1e-5, rtol=1e-5)


def test_an_encoder_runs_bidirectional_stick_breaking_and_padding_changes_nothing_else():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind="encoder", vocab_size=30, dim=DIM, n_heads=H, n_layers=2,
                                          encoding="stick_breaking")).eval()
    x = torch.randint(0, 30, (1, 7), generator=torch.Generator().manual_seed(5))
    padded = torch.cat((x, torch.zeros(1, 3, dtype=torch.long)), 1)
    keep = torch.cat((torch.ones(1, 7), torch.zeros(1, 3)), 1).bool()
    torch.testing.assert_close(model(padded, padding_mask=keep)[:, :7], model(x), atol=1e-5, rtol=1e-5)


def test_the_learned_remainder_is_one_vector_per_layer_and_trains():
    model = _model(remainder="learned")
    encodings = model.decoder.encodings()
    assert len({id(pe) for pe in encodings}) == 2 and all(pe.per_layer for pe in encodings)
    assert not get_encoding("stick_breaking", dim=DIM, n_heads=H).per_layer  # nothing to keep per layer
    model.train()
    model(torch.randint(0, 30, (B, T))).logsumexp(-1).mean().backward()
    assert all(pe.remainder_vector.grad is not None and pe.remainder_vector.grad.abs().sum() > 0
               for pe in encodings)


def test_gradcheck_of_the_learned_remainder_on_chunked_in_blocks_of_one_row(monkeypatch):
    monkeypatch.setattr(posenc.attention_settings, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(posenc.attention_settings, "TERMS_MIN_ROWS", 1)
    q, k, v = (x[:, :, :4] for x in _qkv())
    for causal in (True, False):
        pe = _encoding(causal=causal, remainder="learned")
        out = posenc.attention(q.clone().requires_grad_(), k, v, pe, causal=causal, backend="chunked")
        assert type(out.grad_fn).__name__ == "ChunkedTermsBackward"

        def run(vector, pe=pe, causal=causal):  # gradcheck perturbs the parameter in place; the terms read it
            return posenc.attention(q, k, v, pe, causal=causal, backend="chunked")

        assert torch.autograd.gradcheck(run, (pe.remainder_vector,), eps=1e-6, atol=1e-8)


# -- refusals ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, error, words", [
    ({"attend_current": 1}, TypeError, "attend_current"),
    ({"remainder": "ones"}, ValueError, "remainder must be one of"),
    ({"remainder": None}, ValueError, "remainder must be one of"),
])
def test_bad_options_are_refused_clearly(options, error, words):
    with pytest.raises(error, match=words):
        get_encoding("stick_breaking", dim=DIM, n_heads=H, **options)


def test_calls_a_remainder_cannot_serve_are_refused_clearly():
    q = torch.randn(1, H, 3, D)
    wide = torch.randn(1, H, 3, 2 * D)
    with pytest.raises(ValueError, match="head_dim=8.*16 channels"):
        posenc.attention(q, q, wide, get_encoding("stick_breaking", dim=DIM, n_heads=H, remainder=True))
    more = torch.randn(1, H, 5, D)
    with pytest.raises(ValueError, match="more queries"):
        posenc.attention(more, q, q, get_encoding("stick_breaking", dim=DIM, n_heads=H, remainder="value"))
