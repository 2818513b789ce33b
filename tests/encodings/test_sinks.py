"""Attention sinks (``sinks``) against the formula written naively, Hugging Face's gpt-oss and x-transformers.

The naive reference is the softmax over ``[logits, s_h]`` with the sink's share dropped, in float64, with each base's
logits built from its paper formula (RoPE rotation, ALiBi slopes, Shaw's clipped tables). gpt-oss is compared twice:
the whole tiny random model with posenc's attention registered through HF's public ``AttentionInterface`` (sliding
and full layers, padding, a KV cache), and one attention layer's public forward with RoPE and every weight copied.
"""

from __future__ import annotations

import math

import pytest
import torch

import posenc
from posenc import KVCache, Positions, Transformer, TransformerConfig, get_encoding
from posenc.encodings.alibi import alibi_slopes
from posenc.encodings.shaw import shaw_buckets
from posenc.encodings.sinks import sink_softmax

B, H, HKV, D, T = 2, 4, 2, 8, 12
DIM = H * D
BACKENDS = ["reference", "dense", "chunked"]


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(posenc.attention_settings, "CHUNK_ELEMENTS", 1)  # chunked in blocks of 4 rows


def _sinks(base: str = "nope", *, causal: bool = True, seed: int = 0, **options) -> posenc.PositionalEncoding:
    pe = get_encoding("sinks", dim=DIM, n_heads=H, max_seq_len=64, causal=causal, base=base, **options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # off the initialisation: sinks of 0 and zero tables would hide a wrong sign or index
        for p in pe.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return pe.double()


def _qkv(tq: int = T, tk: int = T, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, tq, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, HKV, tk, D, generator=g, dtype=torch.float64) for _ in range(2))
    return q, k, v


def _naive_sink_attention(logits: torch.Tensor, sinks: torch.Tensor, allowed: torch.Tensor, v: torch.Tensor,
                          extra_values: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax([l_i1 .. l_iT, s_h])`` with the sink column dropped, then ``@ v`` (+ ``sum_j p_ij extra_ij``)."""
    logits = logits.masked_fill(~allowed, float("-inf"))
    sink = sinks[None, :, None, None].expand(*logits.shape[:-1], 1)
    probs = torch.softmax(torch.cat((logits, sink), -1), -1)[..., :-1]  # (B, H, Tq, Tk)
    out = probs @ v.repeat_interleave(H // v.shape[1], 1)
    if extra_values is not None:  # (B|1, Tq, Tk, D): Shaw's a^V per pair
        out = out + torch.einsum("bhij,bijd->bhid", probs, extra_values.expand(probs.shape[0], -1, -1, -1))
    return out


def _causal(tq: int, tk: int) -> torch.Tensor:
    return torch.arange(tk) <= torch.arange(tk - tq, tk)[:, None]  # (Tq, Tk)


# -- the normaliser ----------------------------------------------------------------------------------------------------
def test_sink_softmax_is_the_softmax_over_logits_and_the_sink_with_its_share_dropped():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, H, 5, 7, generator=g, dtype=torch.float64) * 4
    logits[0, :, 1, 2:] = float("-inf")
    sinks = torch.randn(H, generator=g, dtype=torch.float64) * 3
    want = torch.softmax(torch.cat((logits, sinks[None, :, None, None].expand(B, H, 5, 1)), -1), -1)[..., :-1]
    torch.testing.assert_close(sink_softmax(logits, sinks), want, atol=1e-15, rtol=1e-14)
    # the rows' mass: 1 - sigmoid(s_h - logsumexp_j l_ij)
    mass = 1 - torch.sigmoid(sinks[None, :, None] - torch.logsumexp(logits, -1))
    torch.testing.assert_close(sink_softmax(logits, sinks).sum(-1), mass, atol=1e-15, rtol=1e-14)


def test_a_fully_masked_row_gives_zeros_not_nan_with_zero_gradients():
    """The sink stays in the denominator of a row with no visible key: its weights are 0 (the plain masked softmax
    would be 0/0), and so are the gradients through it."""
    logits = torch.randn(1, H, 3, 5, dtype=torch.float64)
    logits[:, :, 1] = float("-inf")
    logits.requires_grad_()
    sinks = torch.randn(H, dtype=torch.float64, requires_grad=True)
    probs = sink_softmax(logits, sinks)
    assert torch.equal(probs[:, :, 1], torch.zeros_like(probs[:, :, 1]))
    probs.pow(2).sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(sinks.grad).all()
    assert torch.equal(logits.grad[:, :, 1], torch.zeros_like(logits.grad[:, :, 1]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fully_masked_row_through_attention_is_zero_on_every_backend(backend, small_chunks):
    pe = _sinks("rope")
    q, k, v = (x.requires_grad_() for x in _qkv())
    keep = torch.ones(B, 1, T, T, dtype=torch.bool)
    keep[0, :, 5] = False  # query 5 of the first sequence sees nothing
    out = posenc.attention(q, k, v, pe, causal=True, attn_mask=keep, backend=backend)
    assert torch.equal(out[0, :, 5], torch.zeros_like(out[0, :, 5]))
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v, pe.sink_logits))


# -- over each kind of base, against the naive formula ---------------------------------------------------------------
def _rope(x: torch.Tensor, pos: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Half-split RoPE, written out: pairs (c, c + D/2) rotated by ``pos * theta^(-2c/D)``."""
    half = x.shape[-1] // 2
    angle = pos.double()[:, None] * theta ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    cos, sin = angle.cos(), angle.sin()
    a, b = x[..., :half], x[..., half:]
    return torch.cat((a * cos - b * sin, b * cos + a * sin), -1)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("base", ["rope", "alibi", "shaw"])
def test_sinks_over_a_rotary_a_bias_and_a_terms_base_equal_the_naive_formula(base, causal, small_chunks):
    pe = _sinks(base, causal=causal)
    q, k, v = _qkv(tq=9, tk=T)
    pos = torch.arange(3, 3 + T)  # an offset: the keys' positions; the queries are the last 9
    q_pos = pos[T - 9:]
    keep = torch.rand(B, 1, 9, T, generator=torch.Generator().manual_seed(2)) > 0.3
    keep[..., 0] = True
    allowed = keep & _causal(9, T) if causal else keep
    kv = k.repeat_interleave(H // HKV, 1)
    extra = None
    if base == "rope":
        logits = _rope(q, q_pos) @ _rope(kv, pos).transpose(-2, -1) / math.sqrt(D)
    elif base == "alibi":
        dist = (pos[None, :] - q_pos[:, None]).double()  # j - i
        bias = -alibi_slopes(H).double()[:, None, None] * dist.abs()
        logits = q @ kv.transpose(-2, -1) / math.sqrt(D) + bias
    else:  # Shaw: (q.k + q.a^K_{clip(j-i)}) / sqrt(d), and sum_j p_ij a^V_{clip(j-i)}
        buckets = shaw_buckets(q_pos, pos, pe.inner.max_relative_position)  # (1, Tq, Tk)
        a_k, a_v = pe.inner.key_table[buckets], pe.inner.value_table[buckets]  # (1, Tq, Tk, D)
        logits = (q @ kv.transpose(-2, -1) + torch.einsum("bhid,bijd->bhij", q, a_k)) / math.sqrt(D)
        extra = a_v
    want = _naive_sink_attention(logits, pe.sink_logits.detach(), allowed, v, extra)
    rq, rk = pe.rotate(q, k, q_pos, pos)
    for backend in BACKENDS:
        got = posenc.attention(rq, rk, v, pe, q_pos=q_pos, k_pos=pos, causal=causal, attn_mask=keep,
                               backend=backend)
        torch.testing.assert_close(got, want.detach(), atol=1e-12, rtol=1e-12, msg=lambda m, b=backend: f"{b}: {m}")


@pytest.mark.parametrize("base", ["rope", "alibi", "shaw"])
def test_a_very_negative_sink_is_the_base_alone_and_gradients_match_the_naive_ones(base, small_chunks):
    """``s_h -> -inf`` recovers the plain softmax of the base; with finite sinks every gradient (q, k, v, the sinks,
    the base's own tables) equals the naive formula's through autograd."""
    pe = _sinks(base)
    q, k, v = _qkv()
    with torch.no_grad():
        pe.sink_logits.fill_(-1e4)
    plain = get_encoding(base, dim=DIM, n_heads=H, max_seq_len=64, causal=True).double()
    plain.load_state_dict(pe.inner.state_dict())
    rq, rk = pe.rotate(q, k, torch.arange(T), torch.arange(T))
    torch.testing.assert_close(posenc.attention(rq, rk, v, pe, causal=True),
                               posenc.attention(rq, rk, v, plain, causal=True), atol=1e-14, rtol=1e-14)
    with torch.no_grad():
        pe.sink_logits.normal_(0, 2, generator=torch.Generator().manual_seed(5))
    params = [p for p in pe.parameters()]
    grads = {}
    for backend in ("reference", "chunked"):
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        rq, rk = pe.rotate(qq, kk, torch.arange(T), torch.arange(T))
        out = posenc.attention(rq, rk, vv, pe, causal=True, backend=backend)
        grads[backend] = torch.autograd.grad(out.pow(2).sum(), [qq, kk, vv, *params])
    for a, b in zip(grads["chunked"], grads["reference"]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_a_base_with_per_call_tensors_keeps_them_through_chunkeds_backward(small_chunks):
    """TUPE's terms hold per-call tensors with gradients (``call_tensors``); behind the sinks chunked still swaps and
    differentiates them (its ChunkedTerms path), equal to the reference backend."""
    pe = _sinks("tupe")
    q, k, v = _qkv()
    params = list(pe.parameters())
    grads = {}
    for backend in ("reference", "chunked"):
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        out = posenc.attention(qq, kk, vv, pe, causal=True, backend=backend)
        if backend == "chunked":
            assert type(out.grad_fn).__name__ == "ChunkedTermsBackward"
            assert posenc.backends.prepare_call(q, k, v, pe, causal=True).terms.call_tensors
        grads[backend] = (out, *torch.autograd.grad(out.pow(2).sum(), [qq, kk, vv, *params]))
    for a, b in zip(grads["chunked"], grads["reference"]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_gradcheck_of_the_sinks_on_chunked_in_blocks_of_one_row(monkeypatch):
    monkeypatch.setattr(posenc.attention_settings, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(posenc.attention_settings, "TERMS_MIN_ROWS", 1)
    pe = _sinks("alibi")
    q, k, v = (x[:, :, :4].requires_grad_() for x in _qkv())

    def run(*inputs):
        return posenc.attention(*inputs, pe, causal=True, backend="chunked")

    assert type(run(q, k, v).grad_fn).__name__ == "ChunkedTermsBackward"
    assert torch.autograd.gradcheck(run, (q, k, v), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(lambda s: posenc.attention(q.detach(), k.detach(), v.detach(), pe, causal=True,
                                                               backend="chunked"), (pe.sink_logits,),
                                    eps=1e-6, atol=1e-8)


# -- refusals ------------------------------------------------------------------------------------------------------
def test_a_base_that_replaces_the_softmax_is_refused_with_the_reason():
    pe = get_encoding("sinks", dim=DIM, n_heads=H, base="stick_breaking")
    q = torch.randn(1, H, 3, D)
    with pytest.raises(ValueError, match="stick_breaking.*replaces the softmax"):
        posenc.attention(q, q, q, pe, causal=True)


@pytest.mark.parametrize("options, error, words", [
    ({"base": "sinks"}, ValueError, "another encoding"),
    ({"base": 3}, TypeError, "name of a registered encoding"),
    ({"base": "no_such_encoding"}, ValueError, "no_such_encoding"),
    ({"base_options": [1]}, TypeError, "base_options"),
    ({"sink_init": float("nan")}, ValueError, "sink_init"),
    ({"sink_init": "0"}, TypeError, "sink_init"),
    ({"per_layer": 1}, TypeError, "per_layer"),
    ({"base": "sinusoidal"}, ValueError, "per_layer=False"),
])
def test_bad_options_are_refused_clearly(options, error, words):
    with pytest.raises(error, match=words):
        get_encoding("sinks", dim=DIM, n_heads=H, **options)


def test_a_base_with_token_embeddings_works_with_sinks_shared_by_the_stack():
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=20, dim=DIM, n_heads=H, n_layers=2,
                                          encoding="sinks", encoding_options={"base": "sinusoidal",
                                                                              "per_layer": False}))
    assert [id(pe) for pe in model.decoder.encodings()] == [id(model.decoder.pe)] * 2
    assert torch.isfinite(model(torch.randint(0, 20, (1, 5)))).all()


# -- through posenc.Transformer ------------------------------------------------------------------------------------
def _model(base: str = "rope", **options) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=30, dim=DIM, n_heads=H, n_kv_heads=HKV,
                                          n_layers=2, encoding="sinks", encoding_options={"base": base, **options}))
    with torch.no_grad():
        for i, pe in enumerate(model.decoder.encodings()):
            pe.sink_logits.copy_(torch.linspace(-1.0, 2.0, H) + i)
    return model.eval()


def test_each_layer_has_its_own_sinks_as_gpt_oss_has():
    model = _model()
    encodings = model.decoder.encodings()
    assert len({id(pe) for pe in encodings}) == 2
    assert not torch.equal(encodings[0].sink_logits, encodings[1].sink_logits)
    names = [n for n, _ in model.named_parameters() if n.endswith("sink_logits")]
    assert len(names) == 2, names


@pytest.mark.parametrize("base", ["rope", "alibi", "shaw"])
@pytest.mark.parametrize("split", [[12], [5, 1, 1, 5], [1] * 12])
def test_prefill_then_decode_equals_the_full_forward(base, split):
    model = _model(base)
    x = torch.randint(0, 30, (B, T), generator=torch.Generator().manual_seed(3))
    full = model(x)
    cache, outs, start = KVCache(), [], 0
    for n in split:
        outs.append(model(x[:, start:start + n], cache=cache))
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("base", ["rope", "alibi", "shaw"])
def test_packed_documents_equal_separate_runs(base):
    model = _model(base)
    g = torch.Generator().manual_seed(4)
    a, b = torch.randint(0, 30, (1, 5), generator=g), torch.randint(0, 30, (1, 4), generator=g)
    pos = torch.cat((torch.arange(5), torch.arange(4)))[None]
    seg = torch.tensor([[0] * 5 + [1] * 4])
    packed = model(torch.cat((a, b), 1), positions=Positions(pos=pos, segment_ids=seg))
    torch.testing.assert_close(packed[:, :5], model(a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 5:], model(b), atol=1e-5, rtol=1e-5)


# -- peers ---------------------------------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")


def _gpt_oss(seed: int = 0):
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    cfg = GptOssConfig(vocab_size=64, hidden_size=DIM, intermediate_size=32, head_dim=D, num_attention_heads=H,
                       num_key_value_heads=HKV, num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
                       sliding_window=4, max_position_embeddings=64, pad_token_id=0,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                       attn_implementation="eager", experts_implementation="eager")
    model = GptOssForCausalLM(cfg).eval()
    with torch.no_grad():  # sinks far from their N(0, 0.02) init, so that a wrong sign or head order shows
        for layer in model.model.layers:
            layer.self_attn.sinks.normal_(0.0, 2.0)
    return model


@pytest.fixture
def posenc_in_hf():
    """Registers posenc's ``sinks`` attention (over ``nope``: HF rotates q and k itself) as an HF attention function
    named ``posenc_sinks``, with HF's eager additive mask; yields the encodings it built, one per HF layer."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    built: dict[int, posenc.PositionalEncoding] = {}

    def posenc_sinks(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        pe = built.get(module.layer_idx)
        if pe is None:
            pe = get_encoding("sinks", dim=query.shape[1] * query.shape[-1], n_heads=query.shape[1], base="nope")
            built[module.layer_idx] = pe
        with torch.no_grad():
            pe.sink_logits.copy_(module.sinks)  # the layer's own sinks, copied
        # HF's mask holds causality, padding and the sliding window; query i sits at key index Tk - Tq + i
        out = posenc.attention(query, key, value, pe, attn_mask=attention_mask, scale=scaling)  # (B, H, Tq, D)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("posenc_sinks", posenc_sinks)
    AttentionMaskInterface.register("posenc_sinks", eager_mask)
    yield built


def test_gpt_oss_logits_equal_with_posenc_sinks_as_its_attention(posenc_in_hf):
    """The whole tiny random gpt-oss (a sliding-window layer, a full layer) with posenc computing its attention
    equals HF's eager attention, also on a left-padded batch whose padded queries see no key at all."""
    model = _gpt_oss()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (2, 11), generator=g)
    padding = torch.ones(2, 11, dtype=torch.long)
    padding[1, :3] = 0  # left padding: the first three queries of row 1 have every key masked
    ids[1, :3] = 0
    with torch.no_grad():
        want = [model(ids).logits, model(ids, attention_mask=padding).logits]
        model.set_attn_implementation("posenc_sinks")
        got = [model(ids).logits, model(ids, attention_mask=padding).logits]
    assert sorted(posenc_in_hf) == [0, 1]
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gpt_oss_greedy_decoding_with_a_cache_equals_hf(posenc_in_hf):
    model = _gpt_oss(seed=2)
    ids = torch.randint(1, 64, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=6, do_sample=False)
        model.set_attn_implementation("posenc_sinks")
        got = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, want)


def test_one_gpt_oss_attention_layer_with_rope_equals_posenc_with_its_weights_copied():
    """HF's ``GptOssAttention`` (projections, half-split RoPE at theta, sinks, eager attention) against posenc's
    ``sinks`` over ``rope``: the layer's q/k/v/o projections are used as they are, the sinks copied into posenc."""
    model = _gpt_oss(seed=3)
    layer = model.model.layers[1].self_attn  # a full-attention layer
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, DIM, generator=g)
    pos = torch.arange(5, 5 + T)[None].expand(B, T)
    cos, sin = model.model.rotary_emb(x, pos)
    causal = torch.zeros(1, 1, T, T).masked_fill(~_causal(T, T), torch.finfo(torch.float32).min)
    with torch.no_grad():
        want, _ = layer(x, position_embeddings=(cos, sin), attention_mask=causal)
        pe = get_encoding("sinks", dim=DIM, n_heads=H, base="rope", base_options={"base": 10000.0, "layout": "half"},
                          causal=True)
        pe.sink_logits.copy_(layer.sinks)
        q = layer.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = layer.k_proj(x).view(B, T, HKV, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = layer.v_proj(x).view(B, T, HKV, D).transpose(1, 2)
        q, k = pe.rotate(q, k, pos, pos)
        out = posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True)  # (B, H, T, D)
        got = layer.o_proj(out.transpose(1, 2).reshape(B, T, DIM))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_x_transformers_learned_head_sink_equals_posenc():
    """x-transformers' ``Attend(head_learned_sink=True)`` (also from gpt-oss) with its sink copied."""
    x_attend = pytest.importorskip("x_transformers.attend")
    attend = x_attend.Attend(heads=H, causal=True, head_learned_sink=True, flash=False).eval()
    q, k, v = (x.float() for x in _qkv())
    k, v = (x.repeat_interleave(H // HKV, 1) for x in (k, v))
    with torch.no_grad():
        attend.head_attn_sink.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(6))
        want, _ = attend(q, k, v)
        pe = get_encoding("sinks", dim=DIM, n_heads=H, base="nope", causal=True)
        pe.sink_logits.copy_(attend.head_attn_sink)
        got = posenc.attention(q, k, v, pe, causal=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
