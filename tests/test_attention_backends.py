"""Every attention backend computes what ``reference`` computes, for every encoding with a bias.

``sdpa``/``dense``/``chunked`` are checked in float32 (to 1e-5), bfloat16 (to ``BF16_TOL``, see there) and float64
gradients; ``flex`` runs compiled in exactly one small forward test (compiling takes ~30 s on CPU), and for every
bias encoding in a ``slow`` test. Encodings are looked up in the registry at collection time, so a new bias
encoding is checked the moment its file lands; ``_SlopeBias`` below (not registered) keeps the tests meaningful
without any.
"""

from __future__ import annotations

import importlib
import logging
import math

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import posenc
import posenc.attention_settings as settings
import posenc.backends as attn_mod
from layer_inputs import attend, layer_kwargs
from posenc.base import PositionalEncoding
from posenc.flex import causal_flex_block_mask

B, H, HKV, D = 2, 4, 2, 16
# bfloat16 keeps 8 significant bits (a rounding error of up to 2**-9 relative). ``dense``/``chunked`` must round the
# bias to the input dtype before SDPA adds it (SDPA takes a mask only in the query's dtype), so a bias b moves by up
# to |b| * 2**-9, which moves the probabilities by that much relatively; for the biases that still carry weight
# (|b| up to ~8) that is 2**-6. Outputs are convex combinations of v, so they are within ~2**-5 * max|v| of the
# float32 reference (measured worst case: 0.012 * max|v|, for the test bias with slopes up to ~0.8).
BF16_TOL = 2**-5  # relative, and times max|v| absolute


class _SlopeBias(PositionalEncoding):
    """A test-only ALiBi-like bias, ``-slope_h * |i - j|``, with *trainable* slopes (not registered)."""

    name = "slope_bias"
    family = "relative"

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        self.slopes = nn.Parameter(2.0 ** -torch.arange(1, n_heads + 1, dtype=torch.float32))

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        dist = (q_pos[..., :, None] - k_pos[..., None, :]).abs().float()  # (Tq, Tk) or (B, Tq, Tk)
        return -self.slopes[:, None, None] * dist.unsqueeze(-3)  # (H, Tq, Tk) or (B, H, Tq, Tk)

    def score_mod(self, q_pos: Tensor, k_pos: Tensor):
        slopes = self.slopes
        if q_pos.dim() == 1 and k_pos.dim() == 1:
            def slope_bias(score, b, h, q_idx, kv_idx):
                return score - slopes[h] * (q_pos[q_idx] - k_pos[kv_idx]).abs()
        else:
            qp, kp = q_pos.expand(B, -1), k_pos.expand(B, -1)

            def slope_bias(score, b, h, q_idx, kv_idx):
                return score - slopes[h] * (qp[b, q_idx] - kp[b, kv_idx]).abs()
        return slope_bias


def _bias_names() -> list[str]:
    names = []
    for name in posenc.registered_names():
        pe = posenc.get_encoding(name, dim=H * D, n_heads=H, max_seq_len=256)
        if pe.uses_bias and not pe.uses_terms:
            names.append(name)
    return names


ENCODINGS = ["slope_bias", *_bias_names()]


def _make(name: str, *, causal: bool = False, seed: int = 0) -> PositionalEncoding:
    if name == "slope_bias":
        pe = _SlopeBias(dim=H * D, n_heads=H, max_seq_len=256, causal=causal)
    else:
        pe = posenc.get_encoding(name, dim=H * D, n_heads=H, max_seq_len=256, causal=causal)
    # Nudge trainable parameters off their init (a zero-initialized table would make every bias test vacuous).
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pe.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return pe


def _qkv(tq: int, tk: int, dtype=torch.float32, *, hkv: int = HKV, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, tq, D, generator=g).to(dtype)  # (B, H, Tq, D)
    k = torch.randn(B, hkv, tk, D, generator=g).to(dtype)  # (B, Hkv, Tk, D)
    v = torch.randn(B, hkv, tk, D, generator=g).to(dtype)
    return q, k, v


@pytest.fixture
def small_chunks(monkeypatch):
    """Make ``chunked`` split a 40-query test into blocks of 16, 16 and 8 rows."""
    monkeypatch.setattr(settings, "CHUNK_ELEMENTS", 1)


def _packed_positions(t: int) -> tuple[Tensor, Tensor]:
    """(B, T) positions restarting per document, and the (B, 1, T, T) bool mask keeping attention inside documents."""
    cuts = [(0, 13, 29), (0, 21)]  # document starts per sequence (t >= 30)
    doc = torch.zeros(B, t, dtype=torch.long)
    pos = torch.zeros(B, t, dtype=torch.long)
    for b, starts in enumerate(cuts):
        for i, s in enumerate(starts):
            doc[b, s:] = i
            pos[b, s:] = torch.arange(t - s)
    mask = doc[:, None, :, None] == doc[:, None, None, :]  # (B, 1, T, T)
    return pos, mask


BACKENDS = ["dense", "chunked"]  # ``sdpa`` with a bias is ``dense``: test_sdpa_with_a_bias_is_dense


@pytest.mark.parametrize("name", ENCODINGS)
def test_float32_agrees_with_reference(name, small_chunks):
    for causal, tq, tk in ((False, 40, 40), (True, 40, 40), (True, 24, 40), (True, 1, 40)):  # KV cache: Tq < Tk
        pe = _make(name, causal=causal)
        q, k, v = _qkv(tq, tk)
        ref = posenc.attention(q, k, v, pe, causal=causal, backend="reference")
        for backend in BACKENDS:
            out = posenc.attention(q, k, v, pe, causal=causal, backend=backend)
            assert out.shape == (B, H, tq, D) and out.dtype == torch.float32
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, msg=f"{backend} causal={causal} Tq={tq}")


@pytest.mark.parametrize("name", ENCODINGS)
def test_packed_positions_and_masks(name, small_chunks):
    pe = _make(name, causal=True)
    q, k, v = _qkv(40, 40)
    pos, docs = _packed_positions(40)
    pad = torch.ones(B, 1, 1, 40, dtype=torch.bool)
    pad[1, ..., 35:] = False  # padding keys of the second sequence
    float_mask = torch.zeros(B, 1, 40, 40).masked_fill(~docs, float("-inf"))
    for mask in (docs, docs & pad, float_mask):
        kw = dict(q_pos=pos, k_pos=pos, causal=True, attn_mask=mask)
        ref = posenc.attention(q, k, v, pe, backend="reference", **kw)
        for backend in BACKENDS:
            out = posenc.attention(q, k, v, pe, backend=backend, **kw)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, msg=f"{backend} mask {mask.dtype}")


@pytest.mark.parametrize("name", ENCODINGS)
def test_bfloat16_agrees_with_reference(name, small_chunks):
    pe = _make(name, causal=True)
    q, k, v = _qkv(40, 40, torch.bfloat16)
    ref = posenc.attention(q, k, v, pe, causal=True, backend="reference")  # float32 math on the bf16 inputs
    for backend in BACKENDS:
        out = posenc.attention(q, k, v, pe, causal=True, backend=backend)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), ref.float(), atol=BF16_TOL * v.float().abs().max().item(),
                                   rtol=BF16_TOL, msg=backend)


def test_sdpa_with_a_bias_is_dense():
    pe = _make("slope_bias", causal=True)
    q, k, v = _qkv(24, 40)
    torch.testing.assert_close(posenc.attention(q, k, v, pe, causal=True, backend="sdpa"),
                               posenc.attention(q, k, v, pe, causal=True, backend="dense"), atol=0, rtol=0)


def _grads(pe, q, k, v, backend, **kw):
    leaves = [q, k, v, *pe.parameters()]
    for t in leaves:
        t.grad = None
    out = posenc.attention(q, k, v, pe, backend=backend, **kw)
    torch.autograd.backward(out, torch.cos(torch.arange(out.numel(), dtype=out.dtype, device=out.device)).view_as(out))
    return [None if t.grad is None else t.grad.clone() for t in leaves]  # None: no gradient reached it


@pytest.mark.parametrize("name", ENCODINGS)
def test_gradients_agree(name, small_chunks):
    pe = _make(name, causal=True).double()
    q, k, v = (t.requires_grad_() for t in _qkv(32, 32, torch.float64))  # two chunked blocks of 16
    pos, docs = _packed_positions(32)
    for kw in (dict(causal=True, q_pos=pos, k_pos=pos, attn_mask=docs),):  # causal, packed, masked at once
        ref = _grads(pe, q, k, v, "reference", **kw)
        for backend in ("dense", "chunked"):
            for i, (got, want) in enumerate(zip(_grads(pe, q, k, v, backend, **kw), ref)):
                # q, k, v: float64 end to end. Parameters: registered biases are float32 by contract, so their
                # gradients pass through float32 math in every backend alike.
                tol = 1e-9 if i < 3 else 1e-5
                torch.testing.assert_close(got, want, atol=tol, rtol=tol, msg=f"{backend} {sorted(kw)} grad {i}")


class _GivenSlopes(_SlopeBias):
    """``_SlopeBias`` whose slopes are a given tensor, so gradcheck can differentiate through them."""

    def __init__(self, slopes: Tensor) -> None:
        super().__init__(dim=H * D, n_heads=H, causal=True)
        del self.slopes
        self.slopes = slopes


def test_chunked_gradcheck_with_trainable_bias(small_chunks):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, H, 20, 4, generator=g, dtype=torch.float64, requires_grad=True)  # 2 blocks: 16 + 4 rows
    k, v = (torch.randn(1, 1, 24, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    slopes = (2.0 ** -torch.arange(1, H + 1, dtype=torch.float64)).requires_grad_()

    def f(q, k, v, slopes):
        return posenc.attention(q, k, v, _GivenSlopes(slopes), causal=True, backend="chunked")

    assert torch.autograd.gradcheck(f, (q, k, v, slopes), eps=1e-6, atol=1e-6, fast_mode=True)


def test_gqa_matches_repeated_heads(small_chunks):
    pe = _make("slope_bias", causal=True)
    q, k, v = _qkv(40, 40, hkv=1)
    rep = (k.repeat_interleave(H, dim=1), v.repeat_interleave(H, dim=1))  # (B, H, Tk, D): what GQA means
    for backend in BACKENDS:
        out = posenc.attention(q, k, v, pe, causal=True, backend=backend)
        full = posenc.attention(q, *rep, pe, causal=True, backend="reference")
        torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


def test_kv_cache_decoding_equals_full_forward(small_chunks):
    pe = _make("slope_bias", causal=True)
    q, k, v = _qkv(40, 40)
    full = posenc.attention(q, k, v, pe, causal=True, backend="chunked")
    steps = [posenc.attention(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1], pe, causal=True, backend="chunked")
             for t in range(30, 40)]
    torch.testing.assert_close(torch.cat(steps, dim=-2), full[:, :, 30:], atol=1e-5, rtol=1e-5)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op creates (forward and backward run through dispatch on CPU)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_never_builds_a_full_mask(small_chunks):
    pe = _make("slope_bias", causal=True)
    t = 96
    q, k, v = (x.requires_grad_() for x in _qkv(t, t))
    sizes = {}
    for backend in ("dense", "chunked"):
        with _LargestTensor() as probe:
            out = posenc.attention(q, k, v, pe, causal=True, backend=backend)
            out.sum().backward()
        sizes[backend] = probe.largest
    rows = attn_mod.chunk_rows(attn_mod.prepare_call(q, k, v, pe, causal=True))
    assert sizes["dense"] >= H * t * t  # the (1, H, T, T) dense bias: the probe sees it, so this test can fail
    assert sizes["chunked"] <= B * H * max(rows * t, t * D), sizes  # one block's scores, or q/k/v-sized


def test_chunked_saves_no_block_masks_for_backward(small_chunks):
    pe = _make("slope_bias")
    t = 96
    q, k, v = (x.requires_grad_() for x in _qkv(t, t))
    saved = {}
    for backend in ("dense", "chunked"):
        sizes = []

        def pack(x, sizes=sizes):
            if x.dim() >= 2 and x.shape[-1] == t:  # mask- or score-like (keys on the last axis), not q/k/v-like
                sizes.append(x.numel())
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            posenc.attention(q, k, v, pe, backend=backend)
        saved[backend] = sum(sizes)
    # Dense keeps its (1, H, T, T) mask for backward; chunked without recomputation would keep every block's
    # (1, H, rows, T) mask, H * T * T in all; with it, blocks are rebuilt in backward and nothing that size is kept.
    assert saved["dense"] >= H * t * t and saved["chunked"] < H * t * t // 4, saved


# -- auto, explain, errors --------------------------------------------------------------------------------------------
def _explain(pe, tq=40, tk=40, *, grad=False, **kw) -> str:
    q, k, v = _qkv(tq, tk)
    if grad:
        q.requires_grad_()
    kw = {**layer_kwargs(pe, batch=B, keys=tk, kv_heads=HKV, k_pos=kw.get("k_pos")), **kw}  # features it reads
    return posenc.explain(q, k, v, pe, **kw)


def test_auto_choices_are_explained(monkeypatch):
    pe = _make("slope_bias", causal=True)
    pe.requires_grad_(False)
    assert _explain(None, causal=True).startswith("sdpa:")
    assert _explain(pe, causal=True).startswith("dense:")  # small: dense is cheapest
    monkeypatch.setattr(settings, "DENSE_MAX_ELEMENTS", 100)
    text = _explain(pe, causal=True, grad=True)
    assert text.startswith("chunked:") and "forward-only" in text and "grad=True" in text, text
    assert "bias=slope_bias" in text and "(1, 4, 40, 40)" in text
    monkeypatch.setattr(settings, "FLEX_CPU_MIN_ELEMENTS", 100)
    if attn_mod._flex_supports(attn_mod.prepare_call(*_qkv(40, 40), pe)) is None:
        assert _explain(pe, causal=True).startswith("flex:")  # inference, long enough: compiled Flex
    monkeypatch.setattr(settings, "FLEX_CPU_MIN_ELEMENTS", math.inf)
    assert _explain(pe, causal=True).startswith("chunked:")
    assert _explain(pe, causal=True, backend="dense").startswith("dense: requested")


def test_auto_logs_its_choice(caplog):
    pe = _make("slope_bias", causal=True)
    q, k, v = _qkv(40, 40)
    with caplog.at_level(logging.DEBUG, logger="posenc.attention"):
        out = posenc.attention(q, k, v, pe, causal=True)
    assert any("auto chose dense" in r.getMessage() for r in caplog.records), caplog.text
    torch.testing.assert_close(out, posenc.attention(q, k, v, pe, causal=True, backend="reference"),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in posenc.registered_names()
                                  if posenc.get_encoding(n, dim=H * D, n_heads=H).uses_terms])
def test_auto_runs_terms_dense_when_small_chunked_when_large_and_flex_refuses(name, monkeypatch):
    pe = posenc.get_encoding(name, dim=H * D, n_heads=H, max_seq_len=256, causal=True)
    text = _explain(pe, causal=True)
    assert text.startswith("dense:") and f"terms={name}" in text, text
    monkeypatch.setattr(settings, "DENSE_MAX_ELEMENTS", 100)
    assert _explain(pe, causal=True).startswith("chunked:")
    q, k, v = _qkv(8, 8)
    with torch.no_grad(), pytest.raises(ValueError, match="score_mod cannot.*chunked"):
        attend(q, k, v, pe, causal=True, backend="flex")
    with pytest.raises(ValueError, match="'sdpa' cannot compute this call exactly.*SDPA's kernels cannot"):
        attend(q, k, v, pe, causal=True, backend="sdpa")  # refused: sdpa never means dense in disguise


def test_errors_for_bad_backends():
    pe = _make("slope_bias", causal=True)
    q, k, v = _qkv(8, 8)
    with pytest.raises(ValueError, match="unknown attention backend 'flash'.*chunked"):
        posenc.attention(q, k, v, pe, backend="flash")
    with pytest.raises(TypeError, match="backend must be a str"):
        posenc.attention(q, k, v, pe, backend=None)
    with pytest.raises(ValueError, match="forward-only.*chunked"):  # CPU Flex has no backward
        posenc.attention(q.requires_grad_(), k, v, pe, backend="flex")
    with torch.no_grad():  # what flex refuses on CPU even without gradients
        with pytest.raises(ValueError, match="float attn_mask"):
            posenc.attention(q, k, v, pe, backend="flex", attn_mask=torch.zeros(8, 8))
        no_score_mod = type("NoScoreMod", (_SlopeBias,), {"score_mod": PositionalEncoding.score_mod})
        with pytest.raises(ValueError, match="no score_mod"):
            posenc.attention(q, k, v, no_score_mod(dim=H * D, n_heads=H), backend="flex")


@pytest.mark.parametrize("q_len,k_len", [(64, 64), (200, 300), (1, 257), (129, 129), (384, 1000)])
def test_causal_flex_block_mask_matches_create_block_mask(q_len, k_len):
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    offset = k_len - q_len
    want = flex.create_block_mask(lambda b, h, q, kv: kv <= q + offset, None, None, q_len, k_len, device="cpu")
    got = causal_flex_block_mask(q_len, k_len, "cpu")
    assert torch.equal(got.to_dense(), want.to_dense())  # which tiles are visited at all
    assert torch.equal(got.kv_num_blocks, want.kv_num_blocks)  # partial tiles (mask applied)
    assert torch.equal(got.full_kv_num_blocks, want.full_kv_num_blocks)  # full tiles (mask skipped)
    assert got.shape == want.shape


def test_flex_compiled_forward_matches_reference():
    """The one compiled test (~30 s on CPU): causal block mask, GQA, a score_mod over trainable slopes."""
    pe = _make("slope_bias", causal=True)
    q, k, v = _qkv(136, 200)  # Tq < Tk and lengths that are not multiples of the 128 tile
    with torch.no_grad():
        reason = attn_mod._flex_supports(attn_mod.prepare_call(q, k, v, pe, causal=True))
        if reason is not None:
            pytest.skip(f"flex unavailable here: {reason}")
        out = posenc.attention(q, k, v, pe, causal=True, backend="flex")
        ref = posenc.attention(q, k, v, pe, causal=True, backend="reference")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", _bias_names())
def test_flex_every_bias_encoding(name):
    """Each registered encoding's ``score_mod`` equals its ``bias`` through compiled Flex (one compile each)."""
    pe = _make(name, causal=True)
    q, k, v = _qkv(64, 80)
    pos, _ = _packed_positions(80)
    with torch.no_grad():
        if (reason := attn_mod._flex_supports(attn_mod.prepare_call(q, k, v, pe))) is not None:
            pytest.skip(f"flex unavailable here: {reason}")
        pad = torch.ones(B, 1, 1, 80, dtype=torch.bool)
        pad[1, ..., 70:] = False  # padding keys: a bool attn_mask becomes part of the block mask
        for kw in (dict(causal=True), dict(causal=False, q_pos=pos[:, 16:], k_pos=pos),
                   dict(causal=True, attn_mask=pad)):
            if q.device.type == "cpu" and "q_pos" in kw:  # refused on CPU (inductor codegen bug), with the reason
                with pytest.raises(ValueError, match=r"per-sequence \(B, T\) positions"):
                    posenc.attention(q, k, v, pe, backend="flex", **kw)
                continue
            try:
                out = posenc.attention(q, k, v, pe, backend="flex", **kw)
            # an upstream CPU codegen bug; auto avoids compiled flex on CPU
            except importlib.import_module("torch._inductor.exc").InductorError as exc:
                if q.device.type != "cpu":
                    raise
                pytest.xfail(f"torch's CPU flex template does not compile {name}'s score_mod: "
                             f"{str(exc).splitlines()[0][:120]}")
            ref = posenc.attention(q, k, v, pe, backend="reference", **kw)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def _close(got: Tensor, want: Tensor, *, atol: float, rtol: float, what: str) -> None:
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")
@pytest.mark.parametrize("name", ENCODINGS)
def test_cuda_backends_agree_forward_and_backward(name):
    """On GPU: flex (compiled Triton, with backward), chunked and dense against reference, float32 and bf16.

    float32 tolerance 1e-4 on GPU: the fused kernels reorder the float32 sums differently from the reference.
    """
    pe = _make(name, causal=True).cuda()
    pos, docs = _packed_positions(256)
    for kw in (dict(causal=True), dict(causal=True, q_pos=pos.cuda(), k_pos=pos.cuda(), attn_mask=docs.cuda())):
        q, k, v = (t.cuda().requires_grad_() for t in _qkv(256, 256))
        ref = _grads(pe, q, k, v, "reference", **kw)
        ref_out = posenc.attention(q, k, v, pe, backend="reference", **kw)
        for backend in ("flex", "chunked", "dense"):
            what = f"{backend} {sorted(kw)}"
            _close(posenc.attention(q, k, v, pe, backend=backend, **kw), ref_out, atol=1e-4, rtol=1e-4, what=what)
            for i, (got, want) in enumerate(zip(_grads(pe, q, k, v, backend, **kw), ref)):
                _close(got, want, atol=1e-3, rtol=1e-3, what=f"{what} grad {i}")
        # bf16 inference. (Under autograd a trainable bias makes SDPA on GPU take its math kernel, which rounds the
        # scores themselves to bf16: errors up to ~7% of max|v| were seen for dense/chunked; flex stays in float32.)
        pe.requires_grad_(False)
        qb, kb, vb = (t.detach().bfloat16() for t in (q, k, v))
        ref_b = posenc.attention(qb, kb, vb, pe, backend="reference", **kw).float()
        tol = BF16_TOL * vb.float().abs().max().item()
        for backend in ("flex", "chunked", "dense"):
            out = posenc.attention(qb, kb, vb, pe, backend=backend, **kw).float()
            _close(out, ref_b, atol=tol, rtol=BF16_TOL, what=f"{backend} bf16 {sorted(kw)}")
        pe.requires_grad_(True)


# -- red team round four: arguments of posenc.attention ------------------------------------------------------------
@pytest.mark.parametrize("scale, error, words", [
    (float("nan"), ValueError, "finite"), (float("inf"), ValueError, "finite"), ("0.5", TypeError, "got str"),
    (True, TypeError, "got bool"), ([0.5], TypeError, "got list")])
def test_a_scale_that_is_not_a_finite_number_is_refused(scale, error, words):
    """NaN or inf used to give NaN outputs without a word, "0.5" a bare float() error, True a scale of 1."""
    pe = _make("slope_bias", causal=True)
    q, k, v = _qkv(8, 8)
    for backend in ("auto", "reference"):
        with pytest.raises(error, match=f"posenc.attention: scale must be a .*{words}.*None for 1 / sqrt"):
            posenc.attention(q, k, v, pe, causal=True, scale=scale, backend=backend)
    with pytest.raises(error, match="scale"):
        posenc.explain(q, k, v, pe, scale=scale)
    for scale in (0, 0.0, -0.5, 2):  # any finite real number is a scale (0: uniform weights)
        out = posenc.attention(q, k, v, pe, causal=True, scale=scale)
        _close(out, posenc.attention(q, k, v, pe, causal=True, scale=float(scale), backend="reference"), atol=1e-5,
               rtol=1e-5, what=f"scale={scale}")


@pytest.mark.parametrize("name, options", [("fox", {}), ("data_dependent_alibi", {}), ("inkling", {}),
                                           ("sinks", {"base": "fox"})])
def test_an_encoding_that_reads_features_refuses_more_queries_than_keys(name, options):
    """Red team round four: a bidirectional call with Tq > Tk of FoX, data-dependent ALiBi or Inkling (whose queries'
    features are the last Tq keys') crashed with a raw size mismatch or gather error in every backend."""
    pe = posenc.get_encoding(name, dim=H * D, n_heads=H, max_seq_len=256, causal=False, **options)
    q, k, v = _qkv(5, 3)
    kw = layer_kwargs(pe, batch=B, keys=3, kv_heads=HKV)
    for backend in ("auto", "dense", "chunked", "reference"):
        with pytest.raises(ValueError, match=r"reads features .* more queries \(Tq=5\) than keys \(Tk=3\)"):
            posenc.attention(q, k, v, pe, backend=backend, **kw)
    with pytest.raises(ValueError, match="more queries"):
        posenc.explain(q, k, v, pe, **kw)
    q, k, v = _qkv(3, 3)  # as many queries as keys: fine
    assert posenc.attention(q, k, v, pe, **kw).shape == (B, H, 3, D)


@pytest.mark.parametrize("setting, value, error", [
    ("TERMS_BUDGET_SHARE", 0, ValueError), ("CHUNK_ELEMENTS", None, TypeError), ("CHUNK_ELEMENTS", 2.0**22, TypeError),
    ("TERMS_MIN_ROWS", "4", TypeError), ("DENSE_MAX_ELEMENTS", None, TypeError), ("DENSE_MAX_ELEMENTS", -1, ValueError),
    ("FLEX_CPU_MIN_ELEMENTS", "inf", TypeError), ("FLEX_CPU_MIN_ELEMENTS", float("nan"), ValueError)])
def test_a_bad_attention_setting_is_named(setting, value, error, monkeypatch):
    """Red team round four: TERMS_BUDGET_SHARE = 0 gave a bare ZeroDivisionError inside chunked, None or a str a
    TypeError about operand types, a float CHUNK_ELEMENTS a float row count that range() rejects on long calls."""
    pe = posenc.get_encoding("fox", dim=H * D, n_heads=H, causal=True)
    q, k, v = _qkv(8, 8)
    kw = layer_kwargs(pe, batch=B, keys=8, kv_heads=HKV)
    monkeypatch.setattr(settings, setting, value)
    backend = "chunked" if setting in ("TERMS_BUDGET_SHARE", "CHUNK_ELEMENTS", "TERMS_MIN_ROWS") else "auto"
    pe_or_bias = pe if setting != "FLEX_CPU_MIN_ELEMENTS" else _make("slope_bias", causal=True)
    kw = kw if setting != "FLEX_CPU_MIN_ELEMENTS" else {}
    with torch.no_grad(), pytest.raises(error, match=f"posenc.attention_settings.{setting} must be .*Its default is"):
        posenc.attention(q, k, v, pe_or_bias, causal=True, backend=backend, **kw)


def test_good_attention_settings_are_read_as_set(monkeypatch):
    monkeypatch.setattr(settings, "FLEX_CPU_MIN_ELEMENTS", math.inf)  # the default: never
    assert settings.get("FLEX_CPU_MIN_ELEMENTS") == math.inf
    monkeypatch.setattr(settings, "DENSE_MAX_ELEMENTS", 1e9)  # a threshold may be a float
    assert settings.get("DENSE_MAX_ELEMENTS") == 1e9
    monkeypatch.setattr(settings, "TERMS_MIN_ROWS", 1)
    assert settings.get("TERMS_MIN_ROWS") == 1


@pytest.mark.parametrize("b, tq, tk, causal", [(0, 3, 3, True), (B, 0, 5, True), (B, 3, 0, False)])
def test_flex_on_an_empty_call_gives_what_every_backend_gives(b, tq, tk, causal):
    """Red team round four: backend='flex' with an empty batch or no queries or no keys crashed compiling (inductor
    LoweringException / C++ compile error); the answer is empty, or zeros for queries without keys."""
    pe = _make("slope_bias", causal=causal)
    q, k, v = (t[:b] for t in _qkv(tq, tk))
    with torch.no_grad():
        if (reason := attn_mod._flex_supports(attn_mod.prepare_call(q, k, v, pe, causal=causal))) is not None:
            pytest.skip(f"flex unavailable here: {reason}")
        out = posenc.attention(q, k, v, pe, causal=causal, backend="flex")
        ref = posenc.attention(q, k, v, pe, causal=causal, backend="reference")
    assert out.shape == ref.shape == (b, H, tq, D) and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_flex_on_cpu_compiles_a_second_length():
    """Red team round four: on CPU the second flex call with other lengths (a longer prompt, a decode step's Tk + 1)
    recompiled with dynamic shapes, which torch's CPU flex template fails to compile for Tq != Tk (a raw
    InductorError/CppCompileError); CPU flex now compiles each length statically (~10 s each)."""
    pe = posenc.get_encoding("alibi", dim=H * D, n_heads=H, causal=True)
    with torch.no_grad():
        for tq, tk in ((3, 9), (4, 10)):
            q, k, v = _qkv(tq, tk)
            if (reason := attn_mod._flex_supports(attn_mod.prepare_call(q, k, v, pe, causal=True))) is not None:
                pytest.skip(f"flex unavailable here: {reason}")
            out = posenc.attention(q, k, v, pe, causal=True, backend="flex")
            ref = posenc.attention(q, k, v, pe, causal=True, backend="reference")
            _close(out, ref, atol=1e-5, rtol=1e-5, what=f"Tq={tq}, Tk={tk}")


def test_auto_shortcut_for_calls_without_bias_chooses_what_the_full_choice_chooses():
    """``attention`` skips asking each backend for calls with no bias and no terms; ``explain`` still asks them all.

    The shortcut must agree with the full choice, and a backend registered later (which may suit such calls) must
    switch it off.
    """
    from posenc.backends import BACKENDS, _auto_is_sdpa, prepare_call

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 8)
    for pe in (None, posenc.get_encoding("rope", dim=32, n_heads=4)):
        for causal in (False, True):
            call = prepare_call(q, k, v, pe, causal=causal)
            assert _auto_is_sdpa(call)
            assert posenc.explain(q, k, v, pe, causal=causal).startswith("sdpa:")
    alibi = posenc.get_encoding("alibi", dim=32, n_heads=4)
    assert not _auto_is_sdpa(prepare_call(q, k, v, alibi, causal=True))

    seen = []

    @posenc.register_backend("shortcut_probe", priority=100)
    def probe(call):
        seen.append(call)
        return torch.zeros(*call.q.shape[:-1], call.v.shape[-1])

    try:
        out = posenc.attention(q, k, v, None, causal=True)
        assert len(seen) == 1 and out.abs().max() == 0  # the later backend won: the shortcut stood aside
    finally:
        BACKENDS.pop("shortcut_probe", None)
    torch.testing.assert_close(posenc.attention(q, k, v, None, causal=True),
                               posenc.attention(q, k, v, None, causal=True, backend="sdpa"), rtol=0, atol=0)
