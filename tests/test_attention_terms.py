"""Attention terms (``posenc.terms``): every encoding runs on ``reference``, ``dense`` and ``chunked``, which agree.

``reference`` is the oracle: all query rows at once. ``chunked`` splits the rows into blocks (here 4 rows with
terms, 16 for a bias), skips the keys a causal block cannot see and recomputes each block in the backward pass;
``dense`` is one block (SDPA for the bias-only encodings). Forward outputs and the gradients of q, k, v and every
parameter must agree, and ``chunked`` must never build anything the size of the full ``(B, H, Tq, Tk)`` scores.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

import posenc
import posenc.attention_settings as settings
import posenc.backends as attn_mod
from layer_inputs import attend, prepare
from posenc.base import PositionalEncoding
from posenc.chunked import ChunkedTerms
from posenc.terms import AttentionTerms, ScoreBlock, positions_2d

B, H, D, TQ, TK = 2, 4, 8, 36, 40
NAMES = posenc.registered_names()
# adaptive is a plain bias unless content-conditioned; randomized wraps an encoding with terms (and per-call tensors)
TERM_OPTIONS = {"adaptive": {"content": True}, "randomized": {"base": "tupe", "max_positions": 128},
                # a relative table of 2S = 8 rows: distances past 2 take the log buckets, and the per-call p2c
                # products k . W_q R (B, H, Tk, 2S) are no wider than q (D = 8), as the one-block bound assumes; at
                # the default 2S = 512 they are O(Tk) but wider than q
                "deberta": {"position_buckets": 4, "max_relative_positions": 16}}


def _term_names() -> list[str]:
    return [n for n in NAMES if posenc.get_encoding(n, dim=H * D, n_heads=H, max_seq_len=128,
                                                    **TERM_OPTIONS.get(n, {})).uses_terms]


TERM_NAMES = _term_names()


@pytest.fixture
def small_chunks(monkeypatch):
    """``chunked`` in its smallest blocks: 4 query rows with terms (TERMS_MIN_ROWS), 16 for a bias."""
    monkeypatch.setattr(settings, "CHUNK_ELEMENTS", 1)


def _encoding(name: str, causal: bool, **options) -> PositionalEncoding:
    pe = posenc.get_encoding(name, dim=H * D, n_heads=H, max_seq_len=128, causal=causal, **options)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # off the initialisation: zero-initialized tables would make the comparison vacuous
        for p in pe.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return pe.eval()


def _inputs(hkv: int, *, tq: int = TQ, tk: int = TK) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(4)
    q = torch.randn(B, H, tq, D, generator=g)  # (B, H, Tq, D)
    k, v = torch.randn(B, hkv, tk, D, generator=g), torch.randn(B, hkv, tk, D, generator=g)  # (B, Hkv, Tk, D)
    return q, k, v, torch.randn(B, H, tq, D, generator=g)


def _run(pe, backend, q, k, v, grad_out, **kwargs) -> dict[str, Tensor]:
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = attend(q, k, v, pe, backend=backend, **kwargs)
    pe.zero_grad(set_to_none=True)
    out.backward(grad_out)
    result = {"out": out.detach(), "q": q.grad, "k": k.grad, "v": v.grad}
    result.update({n: p.grad.clone() for n, p in pe.named_parameters() if p.grad is not None})
    return result


def _chunked_backward(pe, q, k, v, **kwargs) -> str:
    """The name of the backward node of ``chunked`` attention for a training call."""
    out = attend(q.requires_grad_(), k, v, pe, backend="chunked", **kwargs)
    q.requires_grad_(False)
    return type(out.grad_fn).__name__


@pytest.mark.parametrize("hkv", [H, H // 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("name", NAMES)
def test_chunked_and_dense_equal_reference_forward_and_backward(name, causal, hkv, small_chunks):
    pe = _encoding(name, causal, **TERM_OPTIONS.get(name, {}))
    q, k, v, grad_out = _inputs(hkv)
    k_pos = torch.stack((torch.arange(3, 3 + TK), torch.arange(TK) % 17))  # (B, Tk): an offset; packed documents
    kwargs = dict(q_pos=k_pos[:, TK - TQ:], k_pos=k_pos, causal=causal)
    if not causal:  # padding: the first sequence ends early, the second starts late
        keep = torch.ones(B, 1, 1, TK, dtype=torch.bool)
        keep[0, ..., 33:] = False
        keep[1, ..., :2] = False
        kwargs["attn_mask"] = keep
    want = _run(pe, "reference", q, k, v, grad_out, **kwargs)
    assert torch.isfinite(want["out"]).all()
    if pe.uses_terms:  # chunked trains every encoding with terms through ChunkedTerms, none by checkpointed blocks
        assert _chunked_backward(pe, q, k, v, **kwargs) == "ChunkedTermsBackward"
    for backend in ("dense", "chunked"):
        got = _run(pe, backend, q, k, v, grad_out, **kwargs)
        assert sorted(got) == sorted(want), backend
        for field in want:
            torch.testing.assert_close(got[field], want[field], atol=1e-5, rtol=1e-5,
                                       msg=lambda m, b=backend, f=field: f"{name} {b} {f}: {m}")


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


@pytest.mark.parametrize("name", TERM_NAMES)
def test_chunked_terms_stay_within_one_block_forward_and_backward(name, small_chunks):
    t = 128
    pe = _encoding(name, True, **TERM_OPTIONS.get(name, {}))
    q, k, v, grad_out = _inputs(H // 2, tq=t, tk=t)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    # what chunked must save: q, k, v and the terms' per-call tensors (O(T) each; Inkling's r is d_rel wide, not D)
    terms = prepare(q, k, v, pe, causal=True).terms
    per_call = max([getattr(terms, n).numel() for n in terms.call_tensors or ()], default=0)
    largest, saved = {}, {}
    for backend in ("dense", "chunked"):
        sizes = []

        def pack(x, sizes=sizes):
            if x.dim() >= 2 and t in x.shape[-2:] and x.numel() > max(B * H * t * D, per_call):  # bigger than those
                sizes.append(x.numel())
            return x

        with _LargestTensor() as probe, torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            out = attend(q, k, v, pe, causal=True, backend=backend)
        out.backward(grad_out)
        largest[backend], saved[backend] = probe.largest, sum(sizes)
    with _LargestTensor() as probe:  # the backward pass of chunked recomputes one block at a time
        attend(q, k, v, pe, causal=True, backend="chunked").backward(grad_out)
    rows = attn_mod.chunk_rows(prepare(q, k, v, pe, causal=True))
    assert rows < t // 4
    assert largest["dense"] >= B * H * t * t  # the probe sees the full scores, so this test can fail
    # one block's share of the largest dense intermediate (a (B, H, rows, Tk) score, DAPE's MLP activations), or a
    # q/k/v-sized tensor, or a per-call tensor of the terms (or its gradient)
    assert max(largest["chunked"], probe.largest) <= max(largest["dense"] * rows // t, B * H * t * D, per_call), \
        (largest, rows)
    assert saved["chunked"] == 0 and saved["dense"] >= B * H * t * t, saved  # chunked keeps no score for backward


@pytest.mark.parametrize("declared", [True, False], ids=["call_tensors", "reset_to_none"])
@pytest.mark.parametrize("name", TERM_NAMES)
def test_every_encoding_with_terms_declares_call_tensors(name, declared, small_chunks, monkeypatch):
    """What takes chunked's ChunkedTerms path: terms with call_tensors; reset to None, checkpointed blocks instead."""
    pe = _encoding(name, True, **TERM_OPTIONS.get(name, {}))
    if not declared:  # on the terms object: some set call_tensors per call
        make_terms = pe.terms

        def undeclared(*args, **kwargs):
            terms = make_terms(*args, **kwargs)
            terms.call_tensors = None
            return terms

        monkeypatch.setattr(pe, "terms", undeclared)
    q, k, v, _ = _inputs(H // 2)
    assert (_chunked_backward(pe, q, k, v, causal=True) == "ChunkedTermsBackward") == declared


class _Decay(PositionalEncoding):
    """A test-only encoding with both kinds of term: ``-slope_h * (i - j)`` by key index, and a value term."""

    name = "decay"

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        self.slopes = torch.nn.Parameter(torch.linspace(0.1, 0.8, n_heads))
        self.shift = torch.nn.Parameter(torch.randn(n_heads, self.head_dim))

    def terms(self, call):
        return _DecayTerms(self)


class _DecayTerms(AttentionTerms):
    def __init__(self, pe: _Decay) -> None:
        self.pe = pe

    def logits(self, scores: Tensor, blk: ScoreBlock) -> Tensor:
        dist = (blk.q_index[:, None] - torch.arange(blk.keys)).to(scores.dtype)  # (rows, keys) by key index
        return scores - self.pe.slopes[:, None, None] * dist

    def values(self, probs: Tensor, blk: ScoreBlock) -> Tensor:
        return probs.sum(-1, keepdim=True) * self.pe.shift[None, :, None, :]  # (B, H, rows, D)


@pytest.mark.parametrize("backend", ["reference", "dense", "chunked"])
def test_a_custom_term_matches_its_formula_on_every_backend(backend, small_chunks):
    pe = _Decay(dim=H * D, n_heads=H)
    q, k, v, _ = _inputs(H // 2)
    ke, ve = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    i = torch.arange(TK - TQ, TK)[:, None]  # the queries are the last Tq keys
    scores = q @ ke.transpose(-2, -1) / math.sqrt(D) - pe.slopes[:, None, None] * (i - torch.arange(TK))
    probs = torch.softmax(scores.masked_fill(torch.arange(TK) > i, float("-inf")), dim=-1)
    want = probs @ ve + pe.shift[None, :, None, :]
    with torch.no_grad():
        got = attend(q, k, v, pe, causal=True, backend=backend)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert posenc.explain(q, k, v, pe, causal=True).startswith("dense:")


def test_adaptive_is_a_bias_unless_content_conditioned():
    static = posenc.get_encoding("adaptive", dim=H * D, n_heads=H)
    content = posenc.get_encoding("adaptive", dim=H * D, n_heads=H, content=True)
    assert static.uses_bias and not static.uses_terms
    assert content.uses_terms and not content.uses_bias


class _KeyGate(PositionalEncoding):
    """A test-only encoding whose terms read a per-call tensor with gradients (``k @ w``, declared in call_tensors)
    and an integer one (the key positions)."""

    name = "key_gate"

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        self.w = torch.nn.Parameter(torch.randn(self.head_dim, 1))

    def terms(self, call):
        # (B, Hkv, Tk, 1) and (B|1, 1, Tk, 1)
        return _KeyGateTerms(call.k @ self.w, positions_2d(call.k_pos)[:, None, :, None])


class _KeyGateTerms(AttentionTerms):
    call_tensors = ("gate",)

    def __init__(self, gate: Tensor, k_pos: Tensor) -> None:
        self.gate = gate
        self.k_pos = k_pos  # int64: needs no gradient, so it need not be listed

    def logits(self, scores: Tensor, blk: ScoreBlock) -> Tensor:
        gate = blk.key_rows(self.gate) + 0.01 * blk.key_rows(self.k_pos)  # (B, H, keys, 1)
        return scores + gate.transpose(-2, -1)  # + (B, H, 1, keys)


@pytest.mark.parametrize("declared", [("gate",), ("gate", "k_pos"), None],
                         ids=["call_tensors", "integer_listed_too", "undeclared"])
def test_chunked_returns_gradients_of_declared_per_call_tensors(declared, small_chunks, monkeypatch):
    monkeypatch.setattr(_KeyGateTerms, "call_tensors", declared)  # None: chunked checkpoints each block instead
    pe = _KeyGate(dim=H * D, n_heads=H)
    q, k, v, grad_out = _inputs(H // 2)
    k_pos = torch.stack((torch.arange(TK), torch.arange(TK) % 7))  # (B, Tk)
    kwargs = dict(q_pos=k_pos[:, TK - TQ:], k_pos=k_pos, causal=True)
    want = _run(pe, "reference", q, k, v, grad_out, **kwargs)
    got = _run(pe, "chunked", q, k, v, grad_out, **kwargs)
    assert sorted(got) == sorted(want) and "w" in got
    for field in want:
        torch.testing.assert_close(got[field], want[field], atol=1e-5, rtol=1e-5, msg=lambda m, f=field: f"{f}: {m}")
    want_path = "ChunkedTermsBackward" if declared is not None else "CatBackward0"
    assert _chunked_backward(pe, q, k, v, **kwargs) == want_path


def test_chunked_refuses_terms_holding_an_undeclared_tensor_that_requires_grad(small_chunks, monkeypatch):
    """ChunkedTerms differentiates only the tensors in call_tensors: another one's gradient would be lost."""
    monkeypatch.setattr(_KeyGateTerms, "call_tensors", ())
    q, k, v, _ = _inputs(H // 2)
    with pytest.raises(TypeError, match=r"\['gate'\] hold tensors that require grad but are not in call_tensors"):
        attend(q, k, v, _KeyGate(dim=H * D, n_heads=H), causal=True, backend="chunked")


_CHUNKED_TERMS_BACKWARD = ChunkedTerms.backward


def _backward_allocations(pe, rows: int, monkeypatch) -> list[str]:
    """The ``(..., H, T, D)`` tensors (q-sized) that the backward pass of chunked's ChunkedTerms allocates, in
    blocks of ``rows`` query rows (causal, 96 queries and keys): what made them, and their shapes."""
    t = 96
    monkeypatch.setattr(settings, "TERMS_MIN_ROWS", rows)
    made = []

    class _Allocations(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for r in result if isinstance(result, (tuple, list)) else (result,):
                fresh = not func.is_view and not any(r is a for a in args)  # not a view, not written in place
                if isinstance(r, Tensor) and fresh and tuple(r.shape[-3:]) == (H, t, D):
                    made.append(f"{func.__name__} {tuple(r.shape)}")
            return result

    def recorded_backward(ctx, *grads):
        with _Allocations():
            return _CHUNKED_TERMS_BACKWARD(ctx, *grads)

    monkeypatch.setattr(ChunkedTerms, "backward", staticmethod(recorded_backward))
    q, k, v, grad_out = _inputs(H, tq=t, tk=t)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = attend(q, k, v, pe, causal=True, backend="chunked")
    assert type(out.grad_fn).__name__ == "ChunkedTermsBackward"
    assert attn_mod.chunk_rows(prepare(q, k, v, pe, causal=True)) == rows
    out.backward(grad_out)
    return made


@pytest.mark.parametrize("name", TERM_NAMES)
def test_chunked_backward_allocates_the_gradients_once(name, small_chunks, monkeypatch):
    """The backward pass of chunked allocates dq, dk, dv and each per-call tensor's gradient once, not a full-size
    gradient per block: as many q-sized tensors in 32 blocks as in 16 (the last block, which sees every key, has
    key-sized gradients of the per-call key-side tensors)."""
    pe = _encoding(name, True, **TERM_OPTIONS.get(name, {}))
    many, few = (_backward_allocations(pe, rows, monkeypatch) for rows in (3, 6))  # rows != H: no block is q-shaped
    assert sorted(many) == sorted(few), (many, few)
    q, k, v, _ = _inputs(H, tq=96, tk=96)
    if not prepare(q, k, v, pe, causal=True).terms.call_tensors:
        assert len(many) == 3, many  # dq, dk, dv


# tiny encodings for gradcheck (max_seq_len=8): dual_chunk's chunks and self_extend's groups split the 4 keys
GRADCHECK_OPTIONS = {"cope": {"npos_max": 4}, "shaw": {"max_relative_position": 2},
                     "dual_chunk": {"chunk_size": 3, "local_window": 1},
                     "self_extend": {"group_size": 2, "neighbor_window": 2},
                     "randomized": {"base": "tupe", "max_positions": 8},
                     "deberta": {"position_buckets": 4, "max_relative_positions": 6}, "inkling": {"d_rel": 2}}


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("name", TERM_NAMES)
def test_chunked_gradcheck_float64_in_blocks_of_one_row(name, causal, monkeypatch):
    """float64 gradcheck of ChunkedTerms' backward over several blocks: q, k, v (GQA) and every parameter."""
    monkeypatch.setattr(settings, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(settings, "TERMS_MIN_ROWS", 1)
    heads, head_dim = 2, 4
    options = {**TERM_OPTIONS.get(name, {}), **GRADCHECK_OPTIONS.get(name, {})}
    pe = posenc.get_encoding(name, dim=heads * head_dim, n_heads=heads, max_seq_len=8, causal=causal, **options)
    with torch.no_grad():
        for p in pe.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    pe = pe.double()
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, heads, 3, head_dim, dtype=torch.float64, generator=g).requires_grad_()
    k, v = (torch.randn(1, 1, 4, head_dim, dtype=torch.float64, generator=g).requires_grad_() for _ in range(2))
    params = tuple(pe.parameters())
    assert type(attend(q, k, v, pe, causal=causal, backend="chunked").grad_fn).__name__ == \
        "ChunkedTermsBackward"

    def run_params(*_):  # gradcheck perturbs the parameters in place; the terms read them
        return attend(q.detach(), k.detach(), v.detach(), pe, causal=causal, backend="chunked")

    def run_inputs(qq, kk, vv):
        return attend(qq, kk, vv, pe, causal=causal, backend="chunked")

    assert attn_mod.chunk_rows(prepare(q, k, v, pe, causal=causal)) == 1
    if params:  # (self_extend and dual_chunk have none)
        assert torch.autograd.gradcheck(run_params, params, eps=1e-6, atol=1e-5, fast_mode=len(params) > 4)
    assert torch.autograd.gradcheck(run_inputs, (q, k, v), eps=1e-6, atol=1e-5)


class _HeadWeightedKV(PositionalEncoding):
    """A test-only encoding whose terms read the block's keys and values directly, with a different weight per query
    head: under GQA the gradient of each kv head is the sum over exactly its own group of query heads."""

    name = "head_weighted_kv"

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        self.key_weight = torch.nn.Parameter(torch.linspace(-1.0, 2.0, n_heads))  # one per query head
        self.value_weight = torch.nn.Parameter(torch.linspace(0.5, -1.5, n_heads))

    def terms(self, call):
        return _HeadWeightedKVTerms(self)


class _HeadWeightedKVTerms(AttentionTerms):
    call_tensors = ()

    def __init__(self, pe: _HeadWeightedKV) -> None:
        self.pe = pe

    def logits(self, scores: Tensor, blk: ScoreBlock) -> Tensor:
        key_term = blk.k.pow(2).sum(-1) * self.pe.key_weight[:, None].to(scores.dtype)  # (B, H, keys)
        return scores + 0.1 * key_term[:, :, None, :]

    def values(self, probs: Tensor, blk: ScoreBlock) -> Tensor:
        return probs @ (blk.v.tanh() * self.pe.value_weight[:, None, None].to(probs.dtype))  # (B, H, rows, D)


@pytest.mark.parametrize("hkv", [1, 2], ids=["mqa", "gqa"])
def test_chunked_sums_a_terms_own_key_and_value_gradients_over_each_kv_heads_group(hkv, small_chunks):
    pe = _HeadWeightedKV(dim=H * D, n_heads=H)
    q, k, v, grad_out = _inputs(hkv)
    want = _run(pe, "reference", q, k, v, grad_out, causal=True)
    got = _run(pe, "chunked", q, k, v, grad_out, causal=True)
    assert _chunked_backward(pe, q, k, v, causal=True) == "ChunkedTermsBackward"
    for field in ("out", "q", "k", "v", "key_weight", "value_weight"):
        torch.testing.assert_close(got[field], want[field], atol=1e-5, rtol=1e-5, msg=lambda m, f=field: f"{f}: {m}")


def test_terms_that_replace_scores_must_define_logits():
    """With ``replaces_scores`` the backends compute no raw scores: the default ``logits`` would hand ``None`` on as
    the block's logits, so it says what to override instead."""

    class NoLogits(AttentionTerms):
        replaces_scores = True

    with pytest.raises(TypeError, match="must override logits"):
        NoLogits().logits(None, None)
    scores = torch.zeros(1, 1, 2, 2)
    assert AttentionTerms().logits(scores, None) is scores
