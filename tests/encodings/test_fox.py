"""FoX, the Forgetting Transformer's forget gate (arXiv 2503.02130): against its formula written gate by gate in
float64, against ALiBi (a constant gate is ALiBi, exactly), against x-transformers' ``DataDependentAlibi`` layer (the
same formula) with weights copied, and through :class:`posenc.Transformer` (KV-cache decoding, packed documents)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import posenc
import posenc.attention_settings as settings
from posenc import KVCache, Positions, Transformer, TransformerConfig, get_encoding
from posenc.encodings.alibi import alibi_slopes
from posenc.encodings.fox import cumulative_log_gates, forget_gate_bias

B, H, HKV, D = 2, 4, 2, 8
DIM = H * D
BACKENDS = ["reference", "dense", "chunked"]


@pytest.fixture
def small_chunks(monkeypatch):
    """``chunked`` in blocks of 4 query rows, so a call of a dozen rows spans several blocks."""
    monkeypatch.setattr(settings, "CHUNK_ELEMENTS", 1)


def _fox(*, causal: bool = True, dtype=torch.float64, **options):
    pe = get_encoding("fox", dim=DIM, n_heads=H, causal=causal, **options)
    with torch.no_grad():  # gates spread over (0, 1), so the decay varies from token to token
        pe.gate.weight.normal_(0.0, 0.3)
        pe.gate.bias.uniform_(-1.0, 3.0)
    return pe.to(dtype)


def _layer(pe, index: int = 0, kv_heads: int = H) -> posenc.LayerView:
    return posenc.LayerView(index, H, kv_heads, D)


def _naive_decay(log_f: torch.Tensor, tq: int, *, bidirectional: bool) -> torch.Tensor:
    """The paper's decay summed gate by gate: ``sum_{l=j+1..i} log f_l`` below the diagonal (and, for our bidirectional
    extension, ``sum_{l=i+1..j} log f_l`` above it). ``log_f`` ``(B, H, Tk)``; returns ``(B, H, Tq, Tk)``; NaN where
    a causal mask hides the pair."""
    b, h, tk = log_f.shape
    out = torch.full((b, h, tq, tk), float("nan"), dtype=log_f.dtype)
    for row in range(tq):
        i = tk - tq + row  # the query's key index (bottom-right aligned)
        for j in range(tk):
            if j > i and not bidirectional:
                continue
            lo, hi = (j + 1, i) if j <= i else (i + 1, j)
            total = torch.zeros(b, h, dtype=log_f.dtype)
            for t in range(lo, hi + 1):
                total = total + log_f[:, :, t]
            out[:, :, row, j] = total
    return out


def _naive_attention(decay, q, k, v, scale):
    """softmax(q k^T * scale + decay) v with NaN decay masked; k, v expanded to H heads."""
    k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    logits = q @ k.transpose(-2, -1) * scale + decay.nan_to_num(0.0)
    return torch.softmax(logits.masked_fill(decay.isnan(), float("-inf")), dim=-1) @ v


def _qkv(tq, tk, hkv=HKV, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, t, D, generator=g, dtype=dtype) for h, t in ((H, tq), (hkv, tk), (hkv, tk)))


# -- the formula ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("hkv", [H, HKV], ids=["mha", "gqa"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_the_paper_formula_gate_by_gate_forward_and_every_gradient(backend, hkv, causal, small_chunks):
    """Queries are the last 9 of 13 keys (a KV cache's shape); float64 on every backend, to 1e-12 (forward) and
    1e-10 (gradients of q, k, v and the gate)."""
    pe = _fox(causal=causal)
    tq, tk = 9, 13
    x = torch.randn(B, tk, DIM, dtype=torch.float64)
    q, k, v = (t.requires_grad_() for t in _qkv(tq, tk, hkv))
    features = pe.features(x, torch.arange(tk), layer=_layer(pe, kv_heads=hkv))
    got = posenc.attention(q, k, v, pe, causal=causal, features=features, backend=backend)
    log_f = F.logsigmoid(x @ pe.gate.weight.t() + pe.gate.bias).transpose(1, 2)  # (B, H, Tk): f = sigmoid(w.x + b)
    want = _naive_attention(_naive_decay(log_f, tq, bidirectional=not causal), q, k, v, D**-0.5)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    grad = torch.randn_like(got)
    inputs = (q, k, v, pe.gate.weight, pe.gate.bias)
    for a, b in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(want, inputs, grad)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_forget_gate_bias_is_the_decay_the_terms_add():
    log_f = F.logsigmoid(torch.randn(B, H, 11, 1, dtype=torch.float64))
    for bidirectional in (False, True):
        naive = _naive_decay(log_f[..., 0], 7, bidirectional=bidirectional)
        got = forget_gate_bias(log_f, q_len=7, bidirectional=bidirectional)
        seen = ~naive.isnan()
        torch.testing.assert_close(got[seen], naive[seen], atol=1e-14, rtol=0)
    assert forget_gate_bias(log_f).shape == (B, H, 11, 11)


# -- ALiBi ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_heads", [4, 8])
@pytest.mark.parametrize("tq,tk,offset", [(12, 12, 0), (12, 12, 10**6), (3, 3000, 10**6 - 2997)])
def test_a_constant_gate_is_causal_alibi_exactly(n_heads, tq, tk, offset):
    """``log f = -m_h``: ``c_i - c_j = -m_h (i - j)``, bit for bit ALiBi's bias and attention (the paper's slopes for
    a power-of-two head count are powers of two, so both are exact), at positions past 10^6 and 3000 keys back."""
    dim = n_heads * D
    fox = get_encoding("fox", dim=dim, n_heads=n_heads, causal=True)
    alibi = get_encoding("alibi", dim=dim, n_heads=n_heads, causal=True)
    slopes = alibi_slopes(n_heads)
    log_f = (-slopes).view(1, n_heads, 1, 1).expand(1, n_heads, tk, 1)  # (1, H, Tk, 1)
    k_pos = torch.arange(offset, offset + tk)
    causal = torch.arange(tk)[None, :] <= torch.arange(tk - tq, tk)[:, None]
    decay = forget_gate_bias(log_f, q_len=tq).to(torch.float32)[0]  # (H, Tq, Tk)
    bias = alibi.bias(k_pos[tk - tq:], k_pos)  # (H, Tq, Tk)
    assert torch.equal(decay[:, causal], bias[:, causal])
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, n_heads, tq, D, generator=g)
    k, v = torch.randn(2, n_heads, tk, D, generator=g), torch.randn(2, n_heads, tk, D, generator=g)
    want = posenc.attention(q, k, v, alibi, q_pos=k_pos[tk - tq:], k_pos=k_pos, causal=True, backend="reference")
    got = posenc.attention(q, k, v, fox, causal=True, features={"log_f": log_f}, backend="reference")
    assert torch.equal(got, want)
    for backend in ("dense", "chunked"):  # other backends: the same numbers up to float32 rounding
        got = posenc.attention(q, k, v, fox, causal=True, features={"log_f": log_f}, backend=backend)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_a_constant_gate_is_symmetric_alibi_when_bidirectional():
    """Our bidirectional extension decays keys after the query by the same gates: ``-m_h |i - j|``."""
    fox = get_encoding("fox", dim=DIM, n_heads=H, causal=False)
    alibi = get_encoding("alibi", dim=DIM, n_heads=H, causal=False)
    log_f = (-alibi_slopes(H)).view(1, H, 1, 1).expand(1, H, 20, 1)
    pos = torch.arange(10**6, 10**6 + 20)
    assert torch.equal(forget_gate_bias(log_f, bidirectional=True).float()[0], alibi.bias(pos, pos))
    q, k, v = _qkv(20, 20, H, torch.float32)
    want = posenc.attention(q, k, v, alibi, q_pos=pos, k_pos=pos, causal=False, backend="reference")
    assert torch.equal(posenc.attention(q, k, v, fox, causal=False, features={"log_f": log_f}, backend="reference"),
                       want)


def test_a_model_with_a_constant_gate_is_an_alibi_model():
    """Through the Transformer: gate weights 0 and bias ``b = -log(expm1(m))`` (``sigmoid(b) = exp(-m)``) in every
    layer; every other weight copied from an ALiBi model."""
    def model(encoding):
        torch.manual_seed(0)
        return Transformer(TransformerConfig(kind="decoder", vocab_size=30, dim=DIM, n_heads=H, n_layers=2,
                                             encoding=encoding)).eval()

    alibi, fox = model("alibi"), model("fox")
    m = alibi_slopes(H, dtype=torch.float64)
    with torch.no_grad():
        for pe in fox.decoder.encodings():
            pe.gate.weight.zero_()
            pe.gate.bias.copy_(-torch.log(torch.expm1(m)))
    fox.load_state_dict(alibi.state_dict(), strict=False)
    x = torch.randint(0, 30, (2, 40))
    torch.testing.assert_close(fox(x), alibi(x), atol=1e-5, rtol=1e-5)


# -- numerics ------------------------------------------------------------------------------------------------------
def test_prefix_sums_keep_the_decay_exact_a_million_tokens_in():
    """Near the end of 10^6 tokens ``|c|`` is about 5e4: float32 prefix sums (ulp 0.004 there) would put errors of
    ~1e-3 into ``c_i - c_j``; ours stay below 1e-9 of the decay summed directly over the few gates in between."""
    t = 10**6
    g = torch.Generator().manual_seed(5)
    log_f = (-0.1 * torch.rand(1, 1, t, 1, generator=g)).float()  # float32 gates, as the feature holds them
    decay = forget_gate_bias(log_f, q_len=2)[0, 0]  # (2, Tk) float64
    gates = log_f[0, 0, :, 0].double()
    for row, i in enumerate((t - 2, t - 1)):
        for j in (i, i - 1, i - 7, i - 300, i - 5000):
            direct = math.fsum(gates[j + 1:i + 1].tolist())
            assert abs(decay[row, j].item() - direct) < 1e-9, (i, j)
    c32 = torch.cumsum(log_f[0, 0, :, 0], 0)  # what float32 prefix sums would give
    assert abs((c32[t - 1] - c32[t - 301]).item() - math.fsum(gates[t - 300:].tolist())) > 1e-4
    # and through attention: one query at the end, zero scores, so the weights are softmax(decay)
    v = torch.randn(1, 1, t, 1, generator=g)
    q = torch.zeros(1, 1, 1, 1)
    fox = get_encoding("fox", dim=1, n_heads=1, causal=True)
    got = posenc.attention(q, torch.zeros(1, 1, t, 1), v, fox, causal=True, features={"log_f": log_f})
    suffix = torch.flip(torch.cumsum(torch.flip(gates, [0]), 0), [0])  # sum_{l >= j} log f_l, from the end
    weights = torch.softmax(torch.cat((suffix[1:], torch.zeros(1, dtype=torch.float64))), 0)  # l = j+1 .. t-1
    torch.testing.assert_close(got[0, 0, 0, 0].double(), weights @ v[0, 0, :, 0].double(), atol=1e-6, rtol=1e-5)


def test_gates_are_computed_in_float32_under_a_bfloat16_model():
    pe = get_encoding("fox", dim=DIM, n_heads=H).to(torch.bfloat16)
    x = torch.randn(B, 5, DIM).to(torch.bfloat16)
    log_f = pe.features(x, torch.arange(5), layer=_layer(pe))["log_f"]
    assert log_f.dtype == torch.float32 and log_f.shape == (B, H, 5, 1)
    want = F.logsigmoid(x.float() @ pe.gate.weight.float().t() + pe.gate.bias.float()).transpose(1, 2)
    torch.testing.assert_close(log_f[..., 0], want, atol=1e-6, rtol=1e-6)
    assert cumulative_log_gates(log_f).dtype == torch.float64


# -- through the Transformer ---------------------------------------------------------------------------------------
def _model(kind="decoder", n_kv_heads=None, seed=0, **options):
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(kind=kind, vocab_size=30, dim=DIM, n_heads=H, n_kv_heads=n_kv_heads,
                                          n_layers=2, encoding="fox", encoding_options=options)).eval()
    with torch.no_grad():  # trained-looking gates: the paper's init makes every gate about 1/2
        for pe in model.decoder.encodings():
            pe.gate.weight.normal_(0.0, 0.3)
            pe.gate.bias.uniform_(-1.0, 3.0)
    return model


@pytest.mark.parametrize("split", [[16], [9, 1, 1, 5], [1] * 16, [4, 12]])
@pytest.mark.parametrize("n_kv_heads", [None, HKV], ids=["mha", "gqa"])
def test_prefill_then_decode_equals_the_full_forward(split, n_kv_heads):
    model = _model(n_kv_heads=n_kv_heads)
    x = torch.randint(0, 30, (B, 16))
    full = model(x)
    cache, outs, start = KVCache(), [], 0
    for n in split:
        outs.append(model(x[:, start:start + n], cache=cache))
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    log_f = cache.layers[1].features["log_f"]  # the per-token gates, cached like keys
    assert log_f.shape == (B, H, 16, 1) and log_f.dtype == torch.float32


def test_packed_documents_equal_their_separate_forwards_and_decode_on():
    model = _model()
    a, b = torch.randint(0, 30, (1, 6)), torch.randint(0, 30, (1, 5))
    pos = torch.cat((torch.arange(6), torch.arange(5)))[None]
    seg = torch.tensor([[0] * 6 + [1] * 5])
    packed = model(torch.cat((a, b), 1), positions=Positions(pos=pos, segment_ids=seg))
    torch.testing.assert_close(packed[:, :6], model(a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 6:], model(b), atol=1e-5, rtol=1e-5)  # document 0's gates cancel out
    cache = KVCache()
    model(torch.cat((a, b[:, :2]), 1), positions=Positions(pos=pos[:, :8], segment_ids=seg[:, :8]), cache=cache)
    steps = [model(b[:, i:i + 1], cache=cache) for i in (2, 3, 4)]
    torch.testing.assert_close(torch.cat(steps, 1), packed[:, 8:], atol=1e-5, rtol=1e-5)


def test_an_encoder_decays_both_ways():
    """A bidirectional stack (built with causal=False) gets our extension: every token sees both sides, decayed."""
    model = _model(kind="encoder")
    assert all(pe.bidirectional for pe in model.decoder.encodings())
    x = torch.randint(0, 30, (1, 8))
    out = model(x)
    y = x.clone()
    y[0, 7] = (x[0, 7] + 1) % 30  # a later token changes an earlier output: attention looks ahead
    assert not torch.allclose(model(y)[0, 0], out[0, 0])


def test_each_layer_has_its_own_gate_and_the_model_keeps_its_init():
    """The paper's init (weight N(0, 0.02), bias 0; here bias 2.0) survives Transformer.reset_parameters, which
    would draw the weight at std dim**-0.5 = 0.0625 and zero the bias."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=30, dim=256, n_heads=4, n_layers=3,
                                          encoding="fox", encoding_options={"gate_bias_init": 2.0}))
    encodings = model.decoder.encodings()
    assert len({id(pe) for pe in encodings}) == 3
    before = [pe.gate.weight.detach().clone() for pe in encodings]
    model.reset_parameters()
    for pe, weight in zip(encodings, before):
        assert torch.equal(pe.gate.weight, weight)
        assert torch.all(pe.gate.bias == 2.0)
        assert 0.015 < float(pe.gate.weight.detach().std()) < 0.025  # 1024 draws of N(0, 0.02): std within +-11 sigma
    assert not torch.equal(encodings[0].gate.weight, encodings[1].gate.weight)
    paper = get_encoding("fox", dim=256, n_heads=4)
    assert torch.all(paper.gate.bias == 0.0)  # the paper's code starts the gate bias at zero


# -- x-transformers ------------------------------------------------------------------------------------------------
def test_equals_x_transformers_data_dependent_alibi_layer_with_weights_copied():
    """x-transformers' DataDependentAlibi is FoX's decay (its docstring cites the paper); with the same weights the
    whole causal attention layer agrees. Its bias is added after its own 1/sqrt(d) scaling, as ours."""
    xt = pytest.importorskip("x_transformers.x_transformers")
    torch.manual_seed(3)
    theirs = xt.Attention(dim=DIM, dim_head=D, heads=H, causal=True, data_dependent_alibi=True).eval()
    cfg = TransformerConfig(kind="decoder", vocab_size=30, dim=DIM, n_heads=H, n_layers=1, encoding="fox")
    ours = posenc.model.Attention(cfg).eval()
    pe = get_encoding("fox", dim=DIM, n_heads=H, causal=True)
    with torch.no_grad():
        for mine, their in ((ours.q_proj, theirs.to_q), (ours.k_proj, theirs.to_k), (ours.v_proj, theirs.to_v),
                            (ours.o_proj, theirs.to_out)):
            mine.weight.copy_(their.weight)
        gate = theirs.data_dependent_alibi.to_forget_gates[0]
        gate.bias.uniform_(-1.0, 4.0)  # off their init of 5, so the decay matters
        pe.gate.load_state_dict(gate.state_dict())
    x = torch.randn(B, 17, DIM)
    positions = Positions(pos=torch.arange(17)).validate(17, batch=B)
    got, _ = ours(x, pe=pe, positions=positions, causal=True, attn_mask=None, cache=None)
    torch.testing.assert_close(got, theirs(x), atol=1e-5, rtol=1e-5)
    log_f = pe.features(x, torch.arange(17), layer=ours.view())["log_f"]
    torch.testing.assert_close(forget_gate_bias(log_f)[..., 0:17, :].float(), theirs.data_dependent_alibi(x),
                               atol=1e-5, rtol=1e-5)


# -- errors --------------------------------------------------------------------------------------------------------
def test_a_causal_fox_refuses_a_bidirectional_call():
    pe = get_encoding("fox", dim=DIM, n_heads=H, causal=True)
    q, k, v = _qkv(4, 4, H, torch.float32)
    features = {"log_f": torch.zeros(1, H, 4, 1)}
    with pytest.raises(ValueError, match="built for causal attention.*causal=False or bidirectional=True"):
        posenc.attention(q, k, v, pe, causal=False, features=features)
    both = get_encoding("fox", dim=DIM, n_heads=H, causal=True, bidirectional=True)
    assert posenc.attention(q, k, v, both, causal=False, features=features).shape == q.shape


@pytest.mark.parametrize("options,error,match", [
    ({"gate_bias_init": "5"}, TypeError, "gate_bias_init must be a number; got str"),
    ({"gate_bias_init": float("nan")}, ValueError, "gate_bias_init must be a finite number"),
    ({"gate_init_std": -0.1}, ValueError, "gate_init_std must be >= 0"),
    ({"bidirectional": 1}, TypeError, "bidirectional must be True, False or None"),
])
def test_bad_options_are_clear_errors(options, error, match):
    with pytest.raises(error, match=match):
        get_encoding("fox", dim=DIM, n_heads=H, **options)


def test_bad_features_are_clear_errors():
    pe = get_encoding("fox", dim=DIM, n_heads=H, causal=True)
    q, k, v = _qkv(4, 4, H, torch.float32)
    with pytest.raises(KeyError, match="no feature 'log_f'.*features=pe.features"):
        posenc.attention(q, k, v, pe, causal=True)
    with pytest.raises(ValueError, match=r"must have shape \(B\|1, H\|1, Tk, 1\)"):
        posenc.attention(q, k, v, pe, causal=True, features={"log_f": torch.zeros(1, H, 4, 2)})
    with pytest.raises(TypeError, match="must be a float tensor"):
        posenc.attention(q, k, v, pe, causal=True, features={"log_f": torch.zeros(1, H, 4, 1, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"x of shape \(B, T, dim=32\)"):
        pe.features(torch.zeros(2, 3, 16), torch.arange(3), layer=_layer(pe))
    with pytest.raises(TypeError, match="as a float tensor"):
        pe.features(torch.zeros(2, 3, DIM, dtype=torch.long), torch.arange(3), layer=_layer(pe))
