"""PaTH attention (``path``): the paper's formula as a naive float64 product of Householder matrices for every pair,
flash-linear-attention's reference (``fla.ops.path_attn.naive``) with a ``PaTHAttention`` layer's weights copied,
and :class:`posenc.Transformer` with a KV cache (prefill, then 1- and 2-token steps), packed documents and padding.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import posenc
import posenc.attention_settings as settings
from posenc import KVCache, LayerView, Positions, Transformer, TransformerConfig
from posenc.backends import prepare_call
from posenc.encodings.path import conv_reads, householder_vectors, short_convolution

B, H, D = 2, 4, 4
F64 = torch.float64


def _pe(*, causal: bool = True, seed: int = 0, **options) -> posenc.PositionalEncoding:
    """A float64 ``path`` off its initialisation (wider weights: transforms far from the identity)."""
    pe = posenc.get_encoding("path", dim=H * D, n_heads=H, causal=causal, **options).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pe.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=F64))
    return pe


def _inputs(tq: int, tk: int, hkv: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, tk, H * D, generator=g, dtype=F64)  # the layer's input (B, Tk, dim)
    q = torch.randn(B, H, tq, D, generator=g, dtype=F64)
    k, v = (torch.randn(B, hkv, tk, D, generator=g, dtype=F64) for _ in range(2))
    return x, q, k, v


def _group_mean(p: torch.Tensor, hkv: int) -> torch.Tensor:
    return p.reshape(hkv, H // hkv, *p.shape[1:]).mean(1)


def naive_features(pe, x: torch.Tensor, hkv: int, reads=None):
    """``w``, ``beta`` ``(B, Hkv, T, D|1)`` and ``log f`` ``(B, H, T)`` from the paper's formulas, token by token.

    ``reads(b, t, s) -> bool``: whether token ``t``'s convolution reads token ``s < t`` (default: always).
    """
    b, t, _ = x.shape
    size = pe.conv_size
    w_up, conv = _group_mean(pe.w_up, hkv), _group_mean(pe.conv_weight, hkv)  # (Hkv, D, r), (Hkv, D, K)
    w_beta, b_beta = _group_mean(pe.beta_weight, hkv), _group_mean(pe.beta_bias, hkv)
    u = torch.einsum("gdr,btr->bgtd", w_up, x @ pe.w_down.t())  # (B, Hkv, T, D)
    ws = []
    for bi in range(b):
        for g in range(hkv):
            for ti in range(t):
                y = conv[g, :, size - 1] * u[bi, g, ti]
                for lag in range(1, size):
                    s = ti - lag
                    if s >= 0 and (reads is None or reads(bi, ti, s)):
                        y = y + conv[g, :, size - 1 - lag] * u[bi, g, s]
                y = F.silu(y)
                ws.append(y / torch.sqrt((y * y).sum() + 1e-6))
    w = torch.stack(ws).view(b, hkv, t, D)
    beta = (2 * torch.sigmoid(x @ w_beta.t() + b_beta)).transpose(1, 2)[..., None]  # (B, Hkv, T, 1)
    log_f = None
    if pe.forget_gate:
        log_f = F.logsigmoid(x @ pe.gate_weight.t() + pe.gate_bias).transpose(1, 2)  # (B, H, T)
    return w, beta, log_f


def naive_path(q, k, v, w, beta, *, causal: bool, log_f=None, mask=None) -> torch.Tensor:
    """``softmax(q_i^T P_ij k_j / sqrt(D) + gate) v`` with ``P_ij`` an explicit product of ``D x D`` matrices.

    ``P_ij = H_i ... H_{j+1}`` for ``j <= i`` and ``H_{i+1} ... H_j`` for ``j > i`` (``H_t = I - beta_t w_t
    w_t^T``); the gate adds ``sum log f`` over the same tokens (FoX: unscaled). Query ``i`` sits at key index
    ``Tk - Tq + i``. ``mask`` (bool ``(B, Tq, Tk)``) is AND-ed with the causal mask.
    """
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    eye = torch.eye(d, dtype=q.dtype)
    out = torch.zeros(b, h, tq, v.shape[-1], dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            g = hi // (h // hkv)
            hh = [eye - beta[bi, g, t, 0] * torch.outer(w[bi, g, t], w[bi, g, t]) for t in range(tk)]
            logits = []
            for i in range(tq):
                qi = tk - tq + i
                row = []
                for j in range(tk):
                    if causal and j > qi:
                        row.append(torch.tensor(float("-inf"), dtype=q.dtype))
                        continue
                    m, between = eye, range(j + 1, qi + 1) if j <= qi else range(qi + 1, j + 1)
                    for t in between:
                        m = hh[t] @ m if j <= qi else m @ hh[t]
                    s = q[bi, hi, i] @ m @ k[bi, g, j] / math.sqrt(d)
                    if log_f is not None:
                        s = s + sum((log_f[bi, hi, t] for t in between), torch.zeros((), dtype=q.dtype))
                    if mask is not None and not mask[bi, i, j]:
                        s = torch.tensor(float("-inf"), dtype=q.dtype)
                    row.append(s)
                logits.append(torch.stack(row))
            out[bi, hi] = torch.softmax(torch.stack(logits), -1) @ v[bi, g]
    return out


def _attend(pe, q, k, v, x, hkv, **kwargs):
    layer = LayerView(0, H, hkv, D)
    return posenc.attention(q, k, v, pe, features=pe.features(x, torch.arange(x.shape[1]), layer=layer),
                            layer=layer, **kwargs)


@pytest.mark.parametrize("backend", ["reference", "dense", "chunked"])
@pytest.mark.parametrize("gate", [False, True], ids=["plain", "forget_gate"])
@pytest.mark.parametrize("hkv", [H, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_matches_the_naive_product_of_householders_for_every_pair(causal, hkv, gate, backend, monkeypatch):
    """Forward and every gradient (q, k, v, each parameter) in float64, in chunks of 3 keys (blocks of 2 query rows
    on ``chunked``, which cross the chunks), 7 queries on 11 keys."""
    monkeypatch.setattr(settings, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(settings, "TERMS_MIN_ROWS", 2)
    pe = _pe(causal=causal, chunk_size=3, forget_gate=gate)
    x, q, k, v = _inputs(7, 11, hkv)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    got = _attend(pe, q, k, v, x, hkv, causal=causal, backend=backend)
    w, beta, log_f = naive_features(pe, x, hkv)
    want = naive_path(q, k, v, w, beta, causal=causal, log_f=log_f)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    inputs = (q, k, v, *pe.parameters())
    grad = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(want, inputs, grad)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 5, 64])
@pytest.mark.parametrize("shape", [(9, 9), (1, 9), (4, 9)], ids=["prefill", "one_query", "four_queries"])
def test_every_chunk_size_gives_the_naive_numbers(chunk_size, shape):
    tq, tk = shape
    pe = _pe(chunk_size=chunk_size, seed=2)
    x, q, k, v = _inputs(tq, tk, 2, seed=3)
    w, beta, _ = naive_features(pe, x, 2)
    for causal in (True, False):
        want = naive_path(q, k, v, w, beta, causal=causal)
        for backend in ("reference", "chunked"):
            got = _attend(pe, q, k, v, x, 2, causal=causal, backend=backend)
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("shape", [(10, 10), (3, 10), (1, 10)], ids=["prefill", "chunk", "decode"])
def test_identity_transforms_are_plain_attention(shape, causal):
    """beta = 0 makes every H_t the identity: ordinary softmax attention, to float64 rounding."""
    tq, tk = shape
    pe = _pe(chunk_size=3)
    x, q, k, v = _inputs(tq, tk, 2)
    layer = LayerView(0, H, 2, D)
    feats = pe.features(x, torch.arange(tk), layer=layer)
    feats["beta"] = torch.zeros_like(feats["beta"])
    want = F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=True,
                                          attn_mask=torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq)
                                          if causal else None)
    for backend in ("reference", "dense", "chunked"):
        got = posenc.attention(q, k, v, pe, causal=causal, features=feats, layer=layer, backend=backend)
        torch.testing.assert_close(got, want, atol=1e-13, rtol=1e-13)


def test_the_forget_gate_follows_fox_unscaled():
    """With identity transforms and the gate, PaTH is FoX: ``q.k / sqrt(D) + sum_{l=j+1..i} log f_l``, the decay not
    multiplied by the softmax scale (flash-linear-attention's PaTH-FoX multiplies it: a different model)."""
    pe = _pe(forget_gate=True)
    x, q, k, v = _inputs(8, 8, H)
    layer = LayerView(0, H, H, D)
    feats = pe.features(x, torch.arange(8), layer=layer)
    feats["beta"] = torch.zeros_like(feats["beta"])
    got = posenc.attention(q, k, v, pe, causal=True, features=feats, layer=layer)
    c = torch.cumsum(feats["log_f"][..., 0], dim=-1)  # (B, H, T)
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    for gate_scale, close in ((1.0, True), (1 / math.sqrt(D), False)):
        logits = q @ k.transpose(-1, -2) / math.sqrt(D) + gate_scale * (c[..., :, None] - c[..., None, :])
        want = torch.softmax(logits.masked_fill(~causal, float("-inf")), -1) @ v
        assert torch.allclose(got, want, atol=1e-12, rtol=1e-12) == close


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_spent_keys_before_the_queries_forward_and_gradients(causal, monkeypatch):
    """Keys whose beta is 0 before the queries (a KV cache's, after commit) take the skip path (``origin``): the
    same numbers and gradients as the formula, on ``chunked`` in blocks of 2 rows and on ``reference``. A beta that
    needs a gradient is not skipped: the gradient of a zero beta is not zero."""
    monkeypatch.setattr(settings, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(settings, "TERMS_MIN_ROWS", 2)
    pe = _pe(causal=causal, chunk_size=2, forget_gate=True)
    x, q, k, v = _inputs(5, 12, 2)
    layer = LayerView(0, H, 2, D)
    feats = pe.features(x, torch.arange(12), layer=layer)
    beta = torch.cat((torch.zeros_like(feats["beta"][:, :, :7]), feats["beta"][:, :, 7:]), dim=2).detach()
    u, log_f = (feats[name].detach().requires_grad_() for name in ("u", "log_f"))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    for beta_grad, origin in ((False, 7), (True, 0)):
        beta = beta.detach().requires_grad_(beta_grad)
        feats = {"u": u, "beta": beta, "log_f": log_f}
        assert prepare_call(q, k, v, pe, causal=causal, features=feats, layer=layer).terms.origin == origin
        w = householder_vectors(u, _group_mean(pe.conv_weight, 2), None)  # w from u: its gradient too
        want = naive_path(q, k, v, w, beta, causal=causal, log_f=log_f[..., 0])
        inputs = (q, k, v, u, log_f, pe.conv_weight) + ((beta,) if beta_grad else ())
        grad = torch.randn_like(want)
        want_grads = torch.autograd.grad(want, inputs, grad)
        for backend in ("reference", "chunked"):
            got = posenc.attention(q, k, v, pe, causal=causal, features=feats, layer=layer, backend=backend)
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
            for a, b in zip(torch.autograd.grad(got, inputs, grad), want_grads):
                torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def _copy_fla_layer(layer, pe, hkv: int) -> None:
    """Copy flash-linear-attention ``PaTHAttention`` weights into ``pe``: each kv head's row into its group's slots."""
    rep = H // hkv
    with torch.no_grad():
        pe.w_down.copy_(layer.w_proj[0].weight)
        pe.w_up.copy_(layer.w_proj[1].weight.view(hkv, D, -1).repeat_interleave(rep, 0))
        pe.conv_weight.copy_(layer.w_conv1d.weight.view(hkv, D, -1).repeat_interleave(rep, 0))
        pe.beta_weight.copy_(layer.bt_proj.weight.repeat_interleave(rep, 0))
        pe.beta_bias.copy_(layer.bt_proj.bias.repeat_interleave(rep, 0))
        if pe.forget_gate:
            pe.gate_weight.copy_(layer.g_proj.weight)
            pe.gate_bias.copy_(layer.g_proj.bias)


@pytest.mark.parametrize("gate", [False, True], ids=["plain", "forget_gate"])
@pytest.mark.parametrize("hkv", [H, 2], ids=["mha", "gqa"])
def test_matches_flash_linear_attention_with_copied_weights(hkv, gate):
    """flash-linear-attention's ``naive_path_attn`` (its chunked UT-transform reference, float32 inside) on the
    q, k, v, w, beta, g a ``PaTHAttention`` layer makes; its ``ShortConvolution`` is an ``nn.Conv1d`` (padding
    ``K - 1``, one group per channel) plus ``silu`` whose Triton kernel does not run on CPU, so its weight is applied
    with ``F.conv1d`` here. Its gate is multiplied by the scale: FoX's unscaled gate is ``g / scale`` there."""
    pytest.importorskip("fla.ops.path_attn.naive")
    from fla.layers.path_attn import PaTHAttention
    from fla.ops.path_attn.naive import naive_path_attn

    torch.manual_seed(4)
    t, scale = 37, D**-0.5  # 37: neither its chunk (64) nor ours (4) divides it
    layer = PaTHAttention(hidden_size=H * D, num_heads=H, num_kv_heads=hkv, use_forget_gate=gate).double()
    pe = posenc.get_encoding("path", dim=H * D, n_heads=H, forget_gate=gate, causal=True).double()
    _copy_fla_layer(layer, pe, hkv)
    x = torch.randn(B, t, H * D, dtype=F64)
    with torch.no_grad():
        q = layer.q_proj(x).view(B, t, H, D)
        k, v = layer.k_proj(x).view(B, t, hkv, D), layer.v_proj(x).view(B, t, hkv, D)
        w = layer.w_proj(x).transpose(1, 2)  # (B, Hkv*D, T)
        w = F.silu(F.conv1d(w, layer.w_conv1d.weight, padding=layer.w_conv1d.kernel_size[0] - 1,
                            groups=hkv * D)[..., :t]).transpose(1, 2).reshape(B, t, hkv, D)
        w = w * torch.rsqrt(w.pow(2).sum(-1, keepdim=True) + 1e-6)
        beta = layer.bt_proj(x).sigmoid() * 2  # (B, T, Hkv)
        g = F.logsigmoid(layer.g_proj(x)) if gate else torch.zeros(B, t, H, dtype=F64)
        want = naive_path_attn(q, k, v, w, beta, g / scale, scale).transpose(1, 2)  # (B, H, T, D)
        layer_view = LayerView(0, H, hkv, D)
        got = posenc.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), pe, causal=True,
                               features=pe.features(x, torch.arange(t), layer=layer_view), layer=layer_view)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    if gate:  # fla's own convention (the gate times the scale) is a different model
        other = naive_path_attn(q, k, v, w, beta, g, scale).transpose(1, 2)
        assert (other - got).abs().max() > 1e-3


def _model(*, kv_heads: int = 2, **options) -> Transformer:
    torch.manual_seed(5)
    cfg = TransformerConfig(kind="decoder", vocab_size=30, dim=H * D, n_heads=H, n_kv_heads=kv_heads, n_layers=2,
                            encoding="path", encoding_options={"chunk_size": 3, **options})
    model = Transformer(cfg).double().eval()
    with torch.no_grad():  # transforms away from the identity, beta over (0, 2)
        for pe in model.decoder.encodings():
            pe.beta_bias.copy_(torch.linspace(-3, 3, H))
    return model


@pytest.mark.parametrize("gate", [False, True], ids=["plain", "forget_gate"])
@pytest.mark.parametrize("kv_heads", [H, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("split", [[13], [5] + [1] * 8, [1, 2, 2, 2, 2, 2, 2], [6, 7]],
                         ids=["prefill", "then_one_token", "two_token_chunks", "two_calls"])
def test_kv_cache_decoding_equals_the_full_forward(split, kv_heads, gate):
    model = _model(kv_heads=kv_heads, forget_gate=gate)
    x = torch.randint(0, 30, (B, 13), generator=torch.Generator().manual_seed(6))
    full = model(x)
    cache, outs, start = KVCache(), [], 0
    for n in split:
        outs.append(model(x[:, start:start + n], cache=cache))
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-12, rtol=1e-12)
    layer = cache.layers[0]
    assert layer.features["u"].shape == (B, kv_heads, 13, D) and not layer.features["beta"].any()  # all spent


def test_commit_moves_every_key_to_the_last_token_and_spends_the_transforms():
    """``commit`` keeps ``H_{T-1} ... H_{j+1} k_j`` (the naive product) and zero betas; a next call that adds
    tokens applies only theirs (``terms`` starts its chunks after the spent keys)."""
    pe = _pe(chunk_size=3)
    x, q, k, v = _inputs(9, 9, 2)
    layer = LayerView(0, H, 2, D)
    feats = pe.features(x, torch.arange(9), layer=layer)
    kept_k, kept_v, kept = pe.commit(k, v, feats, new=9)
    w, beta, _ = naive_features(pe, x, 2)
    eye = torch.eye(D, dtype=F64)
    want = torch.empty_like(k)
    for b in range(B):
        for g in range(2):
            for j in range(9):
                m = eye
                for t in range(j + 1, 9):
                    m = (eye - beta[b, g, t, 0] * torch.outer(w[b, g, t], w[b, g, t])) @ m
                want[b, g, j] = m @ k[b, g, j]
    torch.testing.assert_close(kept_k, want, atol=1e-13, rtol=1e-13)
    assert kept_v is v and not kept["beta"].any() and kept["u"] is feats["u"]
    # one more token (decoding: no gradients): its call skips the 9 spent keys, and attends as the full formula over
    # the raw keys does
    x2, q2, k2, v2 = _inputs(1, 10, 2, seed=7)
    x2[:, :9], k2[:, :, :9], v2[:, :, :9] = x, k, v
    with torch.no_grad():
        new = pe.features(x2[:, 9:], torch.arange(9, 10), layer=layer)
        feats2 = {name: torch.cat((kept[name], new[name]), dim=2) for name in kept}
        keys = torch.cat((kept_k, k2[:, :, 9:]), 2)
        assert prepare_call(q2, keys, v2, pe, causal=True, features=feats2, layer=layer).terms.origin == 9
        got = posenc.attention(q2, keys, v2, pe, causal=True, features=feats2, layer=layer)
    w2, beta2, _ = naive_features(pe, x2, 2)
    torch.testing.assert_close(got, naive_path(q2, k2, v2, w2, beta2, causal=True), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("restart", [True, False], ids=["positions_restart", "positions_continue"])
def test_packed_documents_never_convolve_over_the_previous_one(restart):
    """Document b packed after document a gives what b alone gives: the short convolution of b's first tokens reads
    nothing of a (it stops where the segment mask stops attention, whatever the positions), and decoding on from
    a packed prefill equals the packed forward."""
    model = _model()
    g = torch.Generator().manual_seed(8)
    a, b = torch.randint(0, 30, (1, 5), generator=g), torch.randint(0, 30, (1, 6), generator=g)
    pos = torch.cat((torch.arange(5), torch.arange(6) if restart else torch.arange(5, 11)))[None]
    seg = torch.tensor([[0] * 5 + [1] * 6])
    packed = model(torch.cat((a, b), 1), positions=Positions(pos=pos, segment_ids=seg))
    torch.testing.assert_close(packed[:, 5:], model(b), atol=1e-12, rtol=1e-12)
    cache = KVCache()
    prefill = model(torch.cat((a, b[:, :1]), 1), positions=Positions(pos=pos[:, :6], segment_ids=seg[:, :6]),
                    cache=cache)
    steps = [model(b[:, i:i + 1], cache=cache) for i in range(1, 6)]
    torch.testing.assert_close(torch.cat([prefill] + steps, 1), packed, atol=1e-12, rtol=1e-12)


def test_left_padding_is_never_read():
    model = _model()
    g = torch.Generator().manual_seed(9)
    real = torch.randint(0, 30, (1, 7), generator=g)
    padded = torch.cat((torch.randint(0, 30, (1, 3), generator=g), real), 1)
    keep = torch.tensor([[False] * 3 + [True] * 7])
    torch.testing.assert_close(model(padded, padding_mask=keep)[:, 3:], model(real), atol=1e-12, rtol=1e-12)


def test_the_short_convolution_is_a_causal_depthwise_conv1d():
    """flash-linear-attention's ShortConvolution is ``nn.Conv1d(padding=K - 1, groups=channels)`` cut to ``T``."""
    g = torch.Generator().manual_seed(11)
    u, weight = torch.randn(2, 3, 9, 5, generator=g, dtype=F64), torch.randn(3, 5, 4, generator=g, dtype=F64)
    flat = u.permute(0, 1, 3, 2).reshape(2, 15, 9)  # (B, Hkv*D, T)
    want = F.conv1d(flat, weight.reshape(15, 1, 4), padding=3, groups=15)[..., :9]
    got = short_convolution(u, weight, None).permute(0, 1, 3, 2).reshape(2, 15, 9)
    torch.testing.assert_close(got, want, atol=1e-14, rtol=1e-14)


def test_the_convolution_reads_what_the_mask_lets_a_token_attend_to():
    seg = torch.tensor([[0, 0, 0, 1, 1, 1]])
    mask = (seg[:, :, None] == seg[:, None, :])[:, None]  # (1, 1, 6, 6): packed documents
    reads = conv_reads(mask, 6, 6, 3)  # (1, 6, 3): token t reads t - lag
    want = torch.tensor([[[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]]], dtype=torch.bool)
    assert torch.equal(reads, want)
    # a decode step's single row, and a bare call's 2 queries (the earlier keys read what any query may attend to):
    # the same for document 1's tokens; document 0's never lie between a visible key and a query
    assert torch.equal(conv_reads(mask[:, :, 5:], 1, 6, 3)[:, 3:], want[:, 3:])
    assert torch.equal(conv_reads(mask[:, :, 4:], 2, 6, 3)[:, 3:], want[:, 3:])
    padding = torch.tensor([False, False, True, True, True, True])  # (Tk,): left padding
    assert torch.equal(conv_reads(padding, 6, 6, 3)[0, 3], torch.tensor([True, True, False]))
    assert conv_reads(None, 6, 6, 3) is None and conv_reads(mask, 6, 6, 1) is None


def test_a_changed_token_reaches_the_next_ones_transform_only_through_the_convolution():
    """Query 2 against keys 1 and 2 (key 0 masked): ``s_21 = q_2^T H_2 k_1`` reads ``w_2``, which reads token 1's
    input only through the short convolution; ``conv_size=0`` makes it blind to token 1."""
    for size in (3, 0):
        pe = _pe(conv_size=size)
        layer = LayerView(0, H, H, D)
        x = torch.randn(1, 3, H * D, dtype=F64)
        y = x.clone()
        y[:, 1] += 1.0
        q, k, v = torch.randn(1, H, 1, D, dtype=F64), torch.randn(1, H, 3, D, dtype=F64), \
            torch.randn(1, H, 3, D, dtype=F64)
        keep = torch.tensor([False, True, True])
        out_x, out_y = (posenc.attention(q, k, v, pe, attn_mask=keep, features=pe.features(z, torch.arange(3),
                                                                                           layer=layer),
                                         layer=layer) for z in (x, y))
        assert torch.equal(out_x, out_y) == (size == 0)


def test_float32_stays_close_to_float64():
    """The transforms run in float32 for float32 input: 300 tokens, the default chunk (head_dim) and 64, betas
    spread over (0, 2)."""
    torch.manual_seed(10)
    for chunk in (None, 64):
        pe = posenc.get_encoding("path", dim=H * 16, n_heads=H, chunk_size=chunk).double()
        with torch.no_grad():
            pe.beta_bias.copy_(torch.linspace(-4, 4, H))
        x = torch.randn(1, 300, H * 16, dtype=F64)
        q, k, v = (torch.randn(1, H, 300, 16, dtype=F64) for _ in range(3))
        layer = LayerView(0, H, H, 16)
        want = posenc.attention(q, k, v, pe, causal=True, features=pe.features(x, torch.arange(300), layer=layer),
                                layer=layer)
        pe32 = pe.float()
        got = posenc.attention(q.float(), k.float(), v.float(), pe32, causal=True, layer=layer,
                               features=pe32.features(x.float(), torch.arange(300), layer=layer))
        assert (got.double() - want).abs().max() < 1e-4
        pe.double()


def test_options_and_calls_it_refuses():
    for bad, err in (({"rank": 0}, ValueError), ({"rank": 2.0}, TypeError), ({"conv_size": -1}, ValueError),
                     ({"conv_size": None}, TypeError), ({"chunk_size": True}, TypeError),
                     ({"chunk_size": 0}, ValueError), ({"forget_gate": 1}, TypeError)):
        with pytest.raises(err, match="path"):
            posenc.get_encoding("path", dim=16, n_heads=4, **bad)
    pe = posenc.get_encoding("path", dim=16, n_heads=4)
    x = torch.randn(1, 5, 16)
    q, k = torch.randn(1, 4, 5, 4), torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="features"):
        posenc.attention(q, k, k, pe)
    feats = pe.features(x, torch.arange(5), layer=LayerView(0, 4, 4, 4))  # four kv heads' transforms
    with pytest.raises(ValueError, match="kv head"):
        posenc.attention(q, k, k, pe, features=feats)
    feats = pe.features(x[:, :3], torch.arange(3), layer=LayerView(0, 4, 2, 4))
    with pytest.raises(ValueError, match=r"more queries \(Tq=5\) than keys \(Tk=3\)"):
        posenc.attention(q, k[:, :, :3], k[:, :, :3], pe, features=feats)
    with pytest.raises(ValueError, match="divide"):
        pe.features(x, torch.arange(5), layer=LayerView(0, 4, 3, 4))
    with pytest.raises(ValueError, match="dim=16"):
        pe.features(x[..., :8], torch.arange(5), layer=None)


def test_one_set_of_weights_serves_any_number_of_kv_heads():
    """A kv head's projections are its group's mean: with every slot of a group equal, ``n_kv_heads=2`` computes
    what two heads' own weights compute, and each query head of a group shares its kv head's transforms."""
    pe = _pe()
    with torch.no_grad():  # slots (0, 1) and (2, 3) equal
        for p in (pe.w_up, pe.conv_weight, pe.beta_weight, pe.beta_bias):
            p.copy_(p[::2].repeat_interleave(2, 0))
    x = torch.randn(B, 6, H * D, dtype=F64)
    two = pe.features(x, torch.arange(6), layer=LayerView(0, H, 2, D))
    four = pe.features(x, torch.arange(6), layer=LayerView(0, H, H, D))
    torch.testing.assert_close(two["u"], four["u"][:, ::2])
    torch.testing.assert_close(two["beta"], four["beta"][:, ::2])
