"""Data-dependent ALiBi (x-transformers' ``DataDependentAlibi``, and ``PerRowDataDependentAlibi`` as ``per_row=True``):
against the formulas written gate by gate in float64, against x-transformers with weights copied (the bias and the
whole attention layer), and through :class:`posenc.Transformer` (KV-cache decoding, packed documents)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import posenc
import posenc.attention_settings as settings
import posenc.backends as attn_mod
from posenc import KVCache, Positions, Transformer, TransformerConfig, get_encoding
from posenc.encodings.data_dependent_alibi import per_row_gate_bias
from posenc.encodings.fox import forget_gate_bias

B, H, HKV, D, DR = 2, 4, 2, 8, 8  # DR: the per-row gate width d'
DIM = H * D
BACKENDS = ["reference", "dense", "chunked"]


@pytest.fixture
def small_chunks(monkeypatch):
    """``chunked`` in blocks of 4 query rows, so a call of a dozen rows spans several blocks."""
    monkeypatch.setattr(settings, "CHUNK_ELEMENTS", 1)


def _dda(*, causal: bool = True, dtype=torch.float64, **options):
    pe = get_encoding("data_dependent_alibi", dim=DIM, n_heads=H, causal=causal, **options)
    with torch.no_grad():  # gates spread over (0, 1) (their init of 5 makes every gate 0.993)
        if pe.per_row:
            pe.gate_qk.weight.normal_(0.0, 0.5)
        else:
            pe.gate.weight.normal_(0.0, 0.3)
            pe.gate.bias.uniform_(-1.0, 3.0)
    return pe.to(dtype)


def _layer(kv_heads: int = H) -> posenc.LayerView:
    return posenc.LayerView(0, H, kv_heads, D)


def _qkv(tq, tk, hkv=HKV, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, t, D, generator=g, dtype=dtype) for h, t in ((H, tq), (hkv, tk), (hkv, tk)))


def _naive_per_token(pe, x, tq: int, *, bidirectional: bool) -> torch.Tensor:
    """``sum_{l=j+1..i} log f_l`` below the diagonal, ``sum_{l=i+1..j} log f'_l`` above it (reversed gates), gate by
    gate; NaN where a causal call hides the pair. ``(B, H, Tq, Tk)``."""
    logit = x @ pe.gate.weight.t() + pe.gate.bias  # (B, Tk, S * H): the forward set first, as x-transformers
    log_f = (F.logsigmoid(logit) * pe.post_log_scale).transpose(1, 2)  # (B, S * H, Tk)
    fwd, rev = log_f[:, :H], log_f[:, -H:]
    b, _, tk = log_f.shape
    out = torch.full((b, H, tq, tk), float("nan"), dtype=x.dtype)
    for row in range(tq):
        i = tk - tq + row
        for j in range(tk):
            if j > i and not bidirectional:
                continue
            gates, lo, hi = (fwd, j + 1, i) if j <= i else (rev, i + 1, j)
            total = torch.zeros(b, H, dtype=x.dtype)
            for t in range(lo, hi + 1):
                total = total + gates[:, :, t]
            out[:, :, row, j] = total
    return out


def _naive_per_row(pe, x, tq: int) -> torch.Tensor:
    """``s * sum_{l=j..i-1} logsigmoid(q'_i . k'_l / sqrt(d'))`` gate by gate (causal); ``(B, H, Tq, Tk)``."""
    b, tk, _ = x.shape
    proj = (x @ pe.gate_qk.weight.t()).view(b, tk, 2, H, DR)  # (B, Tk, qk, H, d')
    qg, kg = proj[:, :, 0], proj[:, :, 1]  # (B, Tk, H, d')
    out = torch.full((b, H, tq, tk), float("nan"), dtype=x.dtype)
    for row in range(tq):
        i = tk - tq + row
        for j in range(i + 1):
            total = torch.zeros(b, H, dtype=x.dtype)
            for t in range(j, i):
                total = total + F.logsigmoid((qg[:, i] * kg[:, t]).sum(-1) / DR**0.5) * pe.post_log_scale
            out[:, :, row, j] = total
    return out


def _naive_attention(bias, q, k, v, scale):
    k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    logits = q @ k.transpose(-2, -1) * scale + bias.nan_to_num(0.0)
    return torch.softmax(logits.masked_fill(bias.isnan(), float("-inf")), dim=-1) @ v


# -- the formulas --------------------------------------------------------------------------------------------------
CASES = [("per_token", True), ("per_token", False), ("per_row", True)]


@pytest.mark.parametrize("variant,causal", CASES, ids=["causal", "bidirectional", "per_row"])
@pytest.mark.parametrize("hkv", [H, HKV], ids=["mha", "gqa"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_the_formula_gate_by_gate_forward_and_every_gradient(backend, hkv, variant, causal, small_chunks):
    """Queries are the last 9 of 13 keys (a KV cache's shape); float64 on every backend, to 1e-12 (forward) and
    1e-10 (gradients of q, k, v and every gate parameter)."""
    per_row = variant == "per_row"
    pe = _dda(causal=causal, per_row=per_row, post_log_scale=0.7)
    tq, tk = 9, 13
    x = torch.randn(B, tk, DIM, dtype=torch.float64)
    q, k, v = (t.requires_grad_() for t in _qkv(tq, tk, hkv))
    features = pe.features(x, torch.arange(tk), layer=_layer(hkv))
    got = posenc.attention(q, k, v, pe, causal=causal, features=features, backend=backend)
    bias = _naive_per_row(pe, x, tq) if per_row else _naive_per_token(pe, x, tq, bidirectional=not causal)
    want = _naive_attention(bias, q, k, v, D**-0.5)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    grad = torch.randn_like(got)
    inputs = (q, k, v, *pe.parameters())
    for a, b in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(want, inputs, grad)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_the_biases_equal_the_formulas_before_the_softmax():
    """The raw biases too (a constant per row, which the softmax hides, would show here): 11 keys, the last 7 query."""
    x = torch.randn(B, 11, DIM, dtype=torch.float64)
    row = _dda(per_row=True, post_log_scale=0.7)
    feats = row.features(x, torch.arange(11), layer=None)
    got = per_row_gate_bias(feats["gate_q"][:, :, 4:], feats["gate_k"], torch.arange(4, 11), post_log_scale=0.7)
    want = _naive_per_row(row, x, 7)
    seen = ~want.isnan()
    torch.testing.assert_close(got[seen], want[seen], atol=1e-13, rtol=0)
    assert torch.all(got[~seen] == 0)  # on and after the diagonal, as x-transformers
    both = _dda(causal=False, post_log_scale=0.7)
    got = forget_gate_bias(both.features(x, torch.arange(11), layer=None)["log_f"], q_len=7, bidirectional=True)
    torch.testing.assert_close(got, _naive_per_token(both, x, 7, bidirectional=True), atol=1e-13, rtol=0)


def test_per_row_trains_through_chunked_terms_and_passes_gradcheck_in_blocks_of_one_row(monkeypatch):
    """The registry-wide gradcheck builds the default (per token); the per-row variant here: float64, one row a
    block, 3 queries after 4 keys (GQA), gradients of q, k, v and of the gate features."""
    monkeypatch.setattr(settings, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(settings, "TERMS_MIN_ROWS", 1)
    pe = get_encoding("data_dependent_alibi", dim=2 * 4, n_heads=2, causal=True, per_row=True, per_row_dim=2).double()
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    x = torch.randn(1, 4, 8, generator=g, dtype=torch.float64)
    feats = {n: f.detach().requires_grad_() for n, f in pe.features(x, torch.arange(4), layer=None).items()}
    out = posenc.attention(q, k, v, pe, causal=True, features=feats, backend="chunked")
    assert type(out.grad_fn).__name__ == "ChunkedTermsBackward"
    assert attn_mod.chunk_rows(attn_mod.prepare_call(q, k, v, pe, causal=True, features=feats)) == 1

    def run(qq, kk, vv, gq, gk):
        return posenc.attention(qq, kk, vv, pe, causal=True, features={"gate_q": gq, "gate_k": gk},
                                backend="chunked")

    assert torch.autograd.gradcheck(run, (q, k, v, feats["gate_q"], feats["gate_k"]), eps=1e-6, atol=1e-5,
                                    fast_mode=True)


def test_a_causal_call_of_a_bidirectional_encoding_reads_only_the_forward_gates():
    both = _dda(causal=False)
    one = get_encoding("data_dependent_alibi", dim=DIM, n_heads=H, causal=True).double()
    with torch.no_grad():
        one.gate.weight.copy_(both.gate.weight[:H])
        one.gate.bias.copy_(both.gate.bias[:H])
    x = torch.randn(B, 10, DIM, dtype=torch.float64)
    q, k, v = _qkv(10, 10)
    out = posenc.attention(q, k, v, both, causal=True, features=both.features(x, torch.arange(10), layer=None))
    want = posenc.attention(q, k, v, one, causal=True, features=one.features(x, torch.arange(10), layer=None))
    torch.testing.assert_close(out, want, atol=1e-14, rtol=0)
    out.sum().backward()
    assert torch.all(both.gate.weight.grad[H:] == 0) and both.gate.weight.grad[:H].abs().sum() > 0


# -- x-transformers ------------------------------------------------------------------------------------------------
def _x_attention(causal: bool, per_row: bool):
    xt = pytest.importorskip("x_transformers.x_transformers")
    torch.manual_seed(3)
    return xt.Attention(dim=DIM, dim_head=D, heads=H, causal=causal, data_dependent_alibi=True,
                        data_dependent_alibi_per_row=per_row, data_dependent_alibi_per_row_dim_head=DR).eval()


def _copy_from(theirs, *, causal: bool, per_row: bool):
    """Our attention layer and encoding with x-transformers' weights (q/k/v/out projections and the gates)."""
    cfg = TransformerConfig(kind="decoder", vocab_size=30, dim=DIM, n_heads=H, n_layers=1)
    ours = posenc.model.Attention(cfg).eval()
    pe = get_encoding("data_dependent_alibi", dim=DIM, n_heads=H, causal=causal, per_row=per_row, per_row_dim=DR)
    gates = theirs.data_dependent_alibi.to_forget_gates[0]
    with torch.no_grad():
        for mine, their in ((ours.q_proj, theirs.to_q), (ours.k_proj, theirs.to_k), (ours.v_proj, theirs.to_v),
                            (ours.o_proj, theirs.to_out)):
            mine.weight.copy_(their.weight)
        if not per_row:
            gates.bias.uniform_(-1.0, 4.0)  # off the init of 5, so the decay matters
        (pe.gate_qk if per_row else pe.gate).load_state_dict(gates.state_dict())
    return ours, pe


@pytest.mark.parametrize("causal,per_row", [(True, False), (False, False), (True, True)],
                         ids=["causal", "bidirectional", "per_row"])
def test_equals_x_transformers_with_weights_copied(causal, per_row):
    """The bias (their DataDependentAlibi / PerRowDataDependentAlibi forward) and the whole attention layer. They add
    the bias after their own 1/sqrt(d) scaling of q.k, as posenc adds a logit term to the scaled scores, so the same
    weights give the same layer."""
    theirs = _x_attention(causal, per_row)
    ours, pe = _copy_from(theirs, causal=causal, per_row=per_row)
    t = 17
    x = torch.randn(B, t, DIM)
    feats = pe.features(x, torch.arange(t), layer=ours.view())
    their_bias = theirs.data_dependent_alibi(x)  # (B, H, T, T)
    if per_row:
        our_bias = per_row_gate_bias(feats["gate_q"], feats["gate_k"], torch.arange(t))
    else:
        our_bias = forget_gate_bias(feats["log_f"], bidirectional=not causal).float()
    torch.testing.assert_close(our_bias, their_bias, atol=1e-5, rtol=1e-5)
    positions = Positions(pos=torch.arange(t)).validate(t, batch=B)
    got, _ = ours(x, pe=pe, positions=positions, causal=causal, attn_mask=None, cache=None)
    torch.testing.assert_close(got, theirs(x), atol=1e-5, rtol=1e-5)


def test_the_bias_is_not_scaled_with_the_scores():
    """x-transformers' pitfall: its bias joins after the 1/sqrt(d) scaling. With scale 0 the weights are exactly
    softmax(bias): the scale never reaches the bias."""
    pe = _dda(causal=True, dtype=torch.float32)
    x = torch.randn(1, 6, DIM)
    feats = pe.features(x, torch.arange(6), layer=None)
    q, k, v = _qkv(6, 6, H, torch.float32)
    bias = forget_gate_bias(feats["log_f"]).float()  # (1, H, 6, 6)
    want = torch.softmax(bias.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf")), -1) @ v
    got = posenc.attention(q, k, v, pe, causal=True, scale=0.0, features=feats, backend="reference")
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


# -- through the Transformer ---------------------------------------------------------------------------------------
def _model(kind="decoder", n_kv_heads=None, **options):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind=kind, vocab_size=30, dim=DIM, n_heads=H, n_kv_heads=n_kv_heads,
                                          n_layers=2, encoding="data_dependent_alibi",
                                          encoding_options=options)).eval()
    with torch.no_grad():
        for pe in model.decoder.encodings():
            if pe.per_row:
                pe.gate_qk.weight.normal_(0.0, 0.5)
            else:
                pe.gate.bias.uniform_(-1.0, 3.0)
    return model


@pytest.mark.parametrize("per_row", [False, True], ids=["per_token", "per_row"])
@pytest.mark.parametrize("split", [[16], [9, 1, 1, 5], [1] * 16])
@pytest.mark.parametrize("n_kv_heads", [None, HKV], ids=["mha", "gqa"])
def test_prefill_then_decode_equals_the_full_forward(split, n_kv_heads, per_row):
    model = _model(n_kv_heads=n_kv_heads, per_row=per_row)
    x = torch.randint(0, 30, (B, 16))
    full = model(x)
    cache, outs, start = KVCache(), [], 0
    for n in split:
        outs.append(model(x[:, start:start + n], cache=cache))
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    shapes = {name: tuple(f.shape) for name, f in cache.layers[1].features.items()}
    assert shapes == ({"gate_q": (B, H, 16, DR), "gate_k": (B, H, 16, DR)} if per_row else {"log_f": (B, H, 16, 1)})


@pytest.mark.parametrize("per_row", [False, True], ids=["per_token", "per_row"])
def test_packed_documents_equal_their_separate_forwards_and_decode_on(per_row):
    model = _model(per_row=per_row)
    a, b = torch.randint(0, 30, (1, 6)), torch.randint(0, 30, (1, 5))
    pos = torch.cat((torch.arange(6), torch.arange(5)))[None]
    seg = torch.tensor([[0] * 6 + [1] * 5])
    packed = model(torch.cat((a, b), 1), positions=Positions(pos=pos, segment_ids=seg))
    torch.testing.assert_close(packed[:, :6], model(a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 6:], model(b), atol=1e-5, rtol=1e-5)
    cache = KVCache()
    model(torch.cat((a, b[:, :2]), 1), positions=Positions(pos=pos[:, :8], segment_ids=seg[:, :8]), cache=cache)
    steps = [model(b[:, i:i + 1], cache=cache) for i in (2, 3, 4)]
    torch.testing.assert_close(torch.cat(steps, 1), packed[:, 8:], atol=1e-5, rtol=1e-5)


def test_an_encoder_gets_a_reversed_gate_set_per_layer():
    model = _model(kind="encoder")
    for pe in model.decoder.encodings():
        assert pe.bidirectional and pe.gate.out_features == 2 * H
    x = torch.randint(0, 30, (1, 8))
    y = x.clone()
    y[0, 7] = (x[0, 7] + 1) % 30
    assert not torch.allclose(model(y)[0, 0], model(x)[0, 0])  # the first token sees the last


@pytest.mark.parametrize("per_row", [False, True], ids=["per_token", "per_row"])
def test_the_gate_init_survives_the_models_reset_parameters(per_row):
    """x-transformers' init: gate bias 5.0, weights nn.Linear's default; Transformer.reset_parameters would zero the
    bias and redraw the weights."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=30, dim=DIM, n_heads=H, n_layers=3,
                                          encoding="data_dependent_alibi", encoding_options={"per_row": per_row}))
    encodings = model.decoder.encodings()
    assert len({id(pe) for pe in encodings}) == 3
    before = [[p.detach().clone() for p in pe.parameters()] for pe in encodings]
    model.reset_parameters()
    for pe, params in zip(encodings, before):
        for p, old in zip(pe.parameters(), params):
            assert torch.equal(p, old)
        if not per_row:
            assert torch.all(pe.gate.bias == 5.0)


# -- errors --------------------------------------------------------------------------------------------------------
def test_causal_only_builds_refuse_bidirectional_calls():
    q, k, v = _qkv(4, 4, H, torch.float32)
    one = get_encoding("data_dependent_alibi", dim=DIM, n_heads=H, causal=True)
    with pytest.raises(ValueError, match="no reversed gate set.*causal=False"):
        posenc.attention(q, k, v, one, causal=False, features={"log_f": torch.zeros(1, H, 4, 1)})
    row = get_encoding("data_dependent_alibi", dim=DIM, n_heads=H, causal=True, per_row=True)
    feats = {"gate_q": torch.zeros(1, H, 4, DR), "gate_k": torch.zeros(1, H, 4, DR)}
    with pytest.raises(ValueError, match="per_row=True is causal only"):
        posenc.attention(q, k, v, row, causal=False, features=feats)


@pytest.mark.parametrize("options,error,match", [
    ({"per_row": True}, ValueError, "causal attention only; build it with causal=True"),
    ({"per_row": 1}, TypeError, "per_row must be True or False"),
    ({"per_row_dim": 0}, ValueError, "per_row_dim .* must be an int >= 1"),
    ({"bias_init": None}, TypeError, "bias_init must be a number; got NoneType"),
    ({"post_log_scale": float("inf")}, ValueError, "post_log_scale must be a finite number"),
])
def test_bad_options_are_clear_errors(options, error, match):
    with pytest.raises(error, match=match):
        get_encoding("data_dependent_alibi", dim=DIM, n_heads=H, **options)  # causal=False by default


def test_bad_features_are_clear_errors():
    pe = get_encoding("data_dependent_alibi", dim=DIM, n_heads=H, causal=False)
    q, k, v = _qkv(4, 4, H, torch.float32)
    with pytest.raises(KeyError, match="no feature 'log_f'"):
        posenc.attention(q, k, v, pe)
    with pytest.raises(ValueError, match=r"\(B\|1, H\|1, Tk, 2\)"):  # bidirectional builds hold two gate sets
        posenc.attention(q, k, v, pe, features={"log_f": torch.zeros(1, H, 4, 1)})
