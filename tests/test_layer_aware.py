"""The layer-aware core: per-layer instances, features cached beside k/v, a LayerView, a replaceable normaliser and
``commit``, exercised with test-only encodings written against their naive formulas.

The registered frontier encodings (FoX, stick-breaking, PaTH, ...) have their own tests; these pin the core's part of
the contract with the smallest encodings that use each hook.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import posenc
from posenc import KVCache, Positions, Transformer, TransformerConfig
from posenc.base import _REGISTRY, PositionalEncoding
from posenc.terms import AttentionTerms, safe_softmax

B, H, D, T = 2, 4, 8, 12


class _Gate(PositionalEncoding):
    """A per-layer data-dependent decay (FoX's shape): ``log f_t = logsigmoid(w_h . x_t + b_h)``, logit
    ``sum_{l=j+1..i} log f_l``; ``b`` starts at 3.0, which the model's init must leave alone."""

    per_layer = True
    family = "contextual"

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        self.gate = nn.Linear(dim, n_heads)
        nn.init.normal_(self.gate.weight, std=0.3)
        nn.init.constant_(self.gate.bias, 3.0)

    def features(self, x, pos, *, layer):
        return {"log_f": nn.functional.logsigmoid(self.gate(x)).transpose(1, 2)[..., None]}  # (B, H, T, 1)

    def terms(self, call):
        c = torch.cumsum(call.features["log_f"].double(), dim=2)  # (B, H, Tk, 1) prefix sums, float64
        return _GateTerms(c[:, :, c.shape[2] - call.q.shape[2]:], c)


class _GateTerms(AttentionTerms):
    call_tensors = ("c_q", "c_k")

    def __init__(self, c_q: Tensor, c_k: Tensor) -> None:
        self.c_q, self.c_k = c_q, c_k

    def logits(self, scores, blk):
        decay = blk.query_rows(self.c_q) - blk.key_rows(self.c_k).transpose(-2, -1)  # (B, H, rows, keys)
        return scores + decay.to(scores.dtype)


class _StickBreak(PositionalEncoding):
    """Stick-breaking weights by key index (a replaced normaliser): ``A_ij = s(z_ij) prod_{j<l<=i'} (1 - s(z_il))``
    over the visible keys after j, in log space."""

    family = "contextual"

    def terms(self, call):
        return _StickTerms()


class _StickTerms(AttentionTerms):
    call_tensors = ()

    def normalize(self, logits, blk):
        log_beta = nn.functional.logsigmoid(logits)  # -inf logits (masked) -> log 0
        log_keep = nn.functional.logsigmoid(-logits)  # masked -> log 1: they break nothing
        after = torch.flip(torch.cumsum(torch.flip(log_keep, [-1]), -1), [-1]) - log_keep  # sum over l > j
        return torch.exp(log_beta + after)


def _register(cls, name):
    _REGISTRY.register(name)(cls)
    return name


@pytest.fixture(scope="module", autouse=True)
def registered():
    names = [_register(_Gate, "test_gate"), _register(_StickBreak, "test_stick")]
    yield
    for name in names:
        del _REGISTRY[name]


def _naive_gate(pe: _Gate, x: Tensor, q, k, v, causal: bool) -> Tensor:
    log_f = nn.functional.logsigmoid(pe.gate(x)).double()  # (B, T, H)
    c = torch.cumsum(log_f, dim=1).transpose(1, 2)  # (B, H, T)
    logits = q.double() @ k.double().transpose(-2, -1) / D**0.5 + (c[..., :, None] - c[..., None, :])
    if causal:
        logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(logits, -1) @ v.double()


@pytest.mark.parametrize("backend", ["reference", "dense", "chunked"])
def test_features_reach_terms_on_every_backend_forward_and_backward(backend, monkeypatch):
    monkeypatch.setattr(posenc.attention_settings, "CHUNK_ELEMENTS", 1)  # chunked in blocks of 4 rows
    torch.manual_seed(0)
    pe = _Gate(dim=H * D, n_heads=H, causal=True).double()
    x = torch.randn(B, T, H * D, dtype=torch.float64)
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    layer = posenc.LayerView(0, H, H, D)
    feats = pe.features(x, torch.arange(T), layer=layer)
    out = posenc.attention(q, k, v, pe, causal=True, features=feats, layer=layer, backend=backend)
    want = _naive_gate(pe, x, q, k, v, causal=True)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-12)
    g = torch.randn_like(out)
    got_grads = torch.autograd.grad(out, (q, k, v, pe.gate.weight, pe.gate.bias), g)
    want_grads = torch.autograd.grad(want, (q, k, v, pe.gate.weight, pe.gate.bias), g)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_a_replaced_normaliser_runs_on_every_backend(monkeypatch):
    monkeypatch.setattr(posenc.attention_settings, "CHUNK_ELEMENTS", 1)
    pe = posenc.get_encoding("test_stick", dim=H * D, n_heads=H, causal=True)
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64) for _ in range(3))
    z = q @ k.transpose(-2, -1) / D**0.5
    want = torch.zeros(B, H, T, D, dtype=torch.float64)
    for i in range(T):  # the naive loop: keys from the nearest (i) back to 0
        remaining = torch.ones(B, H, dtype=torch.float64)
        for j in range(i, -1, -1):
            beta = torch.sigmoid(z[:, :, i, j])
            want[:, :, i] += (beta * remaining)[..., None] * v[:, :, j]
            remaining = remaining * (1 - beta)
    for backend in ("reference", "dense", "chunked"):
        got = posenc.attention(q, k, v, pe, causal=True, backend=backend)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12, msg=backend)
    assert safe_softmax is not None  # the default normaliser stays the masked safe softmax


def test_per_layer_encodings_get_an_instance_per_layer_and_keep_their_init():
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=20, dim=H * D, n_heads=H, n_layers=3,
                                          encoding="test_gate"))
    encodings = model.decoder.encodings()
    assert len({id(pe) for pe in encodings}) == 3 and encodings[0] is model.decoder.pe
    assert all(torch.all(pe.gate.bias == 3.0) for pe in encodings)  # reset_parameters did not touch them
    instances = [m for m in model.modules() if isinstance(m, PositionalEncoding)]
    assert len(instances) == 3  # one per layer, instead of the stack's: none beside them


def test_layer_encodings_keep_their_own_init():
    """FIRE's MLP inside layer_encodings is not re-initialised by the model (it used to be)."""
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=20, dim=H * D, n_heads=H, n_layers=2,
                                          encoding="rope", layer_encodings={1: {"encoding": "fire"}}))
    fire = model.decoder.layer_pe["1"]
    before = {n: p.detach().clone() for n, p in fire.named_parameters()}
    blocks_before = {n: p.detach().clone() for n, p in model.decoder.blocks.named_parameters()}
    torch.manual_seed(123)
    model.reset_parameters()
    for n, p in fire.named_parameters():
        assert torch.equal(p, before[n]), n
    assert any(not torch.equal(p, blocks_before[n]) for n, p in model.decoder.blocks.named_parameters())


@pytest.mark.parametrize("split", [[12], [5, 1, 1, 5], [1] * 12])
def test_cached_features_decode_equal_to_the_full_forward(split):
    torch.manual_seed(1)
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=20, dim=H * D, n_heads=H, n_layers=2,
                                          n_kv_heads=2, encoding="test_gate")).eval()
    x = torch.randint(0, 20, (B, T))
    full = model(x)
    cache, outs, start = KVCache(), [], 0
    for n in split:
        outs.append(model(x[:, start:start + n], cache=cache))
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.layers[0].features["log_f"].shape == (B, H, T, 1)


def test_packed_segments_with_cached_features():
    torch.manual_seed(2)
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=20, dim=H * D, n_heads=H, n_layers=2,
                                          encoding="test_gate")).eval()
    a, b = torch.randint(0, 20, (1, 5)), torch.randint(0, 20, (1, 4))
    pos = torch.cat((torch.arange(5), torch.arange(4)))[None]
    seg = torch.tensor([[0] * 5 + [1] * 4])
    packed = model(torch.cat((a, b), 1), positions=Positions(pos=pos, segment_ids=seg))
    torch.testing.assert_close(packed[:, 5:], model(b), atol=1e-5, rtol=1e-5)  # gates of document 0 cancel out
    cache = KVCache()
    model(torch.cat((a, b[:, :2]), 1), positions=Positions(pos=pos[:, :7], segment_ids=seg[:, :7]), cache=cache)
    steps = [model(b[:, i:i + 1], cache=cache) for i in (2, 3)]
    torch.testing.assert_close(torch.cat(steps, 1), packed[:, 7:], atol=1e-5, rtol=1e-5)


def test_a_bare_call_without_the_features_an_encoding_reads_is_a_clear_error():
    pe = posenc.get_encoding("test_gate", dim=H * D, n_heads=H)
    q = torch.randn(1, H, 3, D)
    with pytest.raises(KeyError, match="log_f"):
        posenc.attention(q, q, q, pe)
    with pytest.raises(ValueError, match=r"features\['log_f'\] must have shape"):
        posenc.attention(q, q, q, pe, features={"log_f": torch.zeros(1, H, 2, 1)})


def test_explain_runs_terms_but_never_commit(monkeypatch):
    pe = posenc.get_encoding("test_gate", dim=H * D, n_heads=H)
    calls = []
    monkeypatch.setattr(type(pe), "commit", lambda self, *a, **k: calls.append(1))
    q = torch.randn(1, H, 3, D)
    text = posenc.explain(q, q, q, pe, features={"log_f": torch.zeros(1, H, 3, 1)})
    assert text.startswith("dense:") and calls == []


def test_commit_decides_what_the_cache_keeps(monkeypatch):
    """A commit that halves every key it keeps: the next call attends to the halved keys."""
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=20, dim=H * D, n_heads=H, n_layers=1,
                                          encoding="nope")).eval()
    pe = model.decoder.pe
    monkeypatch.setattr(type(pe), "commit",
                        lambda self, k, v, features, *, new, attn_mask=None: (k * 0.5, v, dict(features)))
    assert pe.uses_commit
    cache = KVCache()
    x = torch.randint(0, 20, (1, 4))
    model(x[:, :3], cache=cache)
    k_after = cache.layers[0].k.clone()
    model(x[:, 3:], cache=cache)
    torch.testing.assert_close(cache.layers[0].k[:, :, :3], k_after * 0.5)

    def drop_one(self, k, v, features, *, new, attn_mask=None):
        return k[:, :, 1:], v[:, :, 1:], dict(features)

    monkeypatch.setattr(type(pe), "commit", drop_one)
    with pytest.raises(ValueError, match="commit must return every key"):
        model(x[:, 3:], cache=cache)


def test_commit_receives_the_calls_attention_mask(monkeypatch):
    """commit sees the mask the call attended with (packed documents, padding), so it can repeat what terms(call)
    computed from call.attn_mask (PaTH's short convolution stops at a document's start)."""
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=20, dim=H * D, n_heads=H, n_layers=1,
                                          encoding="nope")).eval()
    pe = model.decoder.pe
    seen = []

    def record(self, k, v, features, *, new, attn_mask=None):
        seen.append(attn_mask)
        return k, v, dict(features)

    monkeypatch.setattr(type(pe), "commit", record)
    seg = torch.tensor([[0, 0, 1, 1, 1]])
    cache = KVCache()
    model(torch.randint(0, 20, (1, 5)), positions=Positions(pos=torch.tensor([[0, 1, 0, 1, 2]]), segment_ids=seg),
          cache=cache)
    model(torch.randint(0, 20, (1, 1)), cache=cache)  # a decode step continues document 1
    want_prefill = seg[:, None, :, None] == seg[:, None, None, :]  # (1, 1, 5, 5)
    assert torch.equal(seen[0], want_prefill)
    assert torch.equal(seen[1], torch.tensor([[[[False, False, True, True, True, True]]]]))
    model(torch.randint(0, 20, (1, 2)))  # no cache: no commit
    cache = KVCache()
    model(torch.randint(0, 20, (1, 3)), cache=cache)
    assert len(seen) == 3 and seen[2] is None  # nothing masked
