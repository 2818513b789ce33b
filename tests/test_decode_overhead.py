"""RoPE's per-step work in KV-cache decoding (issue #8, item 4): once per forward, not once per layer.

``RoPE.rotate`` remembers the cos/sin of the last positions tensor (identity + version counter), so the layers of
one forward share one table lookup and one value check. These tests pin that down by counting the aten ops the
encoding issues, and check that the numbers are bit-identical to the unmemoised formula in every situation where
the memo could go stale (in-place position updates, device/dtype moves, inference mode, torch.func).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from posenc.encodings.rope import RoPE, apply_rope
from posenc.model import KVCache, Transformer, TransformerConfig


class _CountOps(TorchDispatchMode):
    """Counts aten ops by name (``aten.index.Tensor`` -> ``index``) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _expected(pe: RoPE, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The rotation from scratch: a fresh cos/sin lookup and the reference formula."""
    cos, sin = pe.cos_sin(pos, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    return apply_rope(x, cos, sin, layout=pe.layout)


def _decoder(n_layers: int, **options) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(kind="decoder", dim=64, n_heads=4, n_layers=n_layers, max_seq_len=64, encoding="rope",
                            encoding_options=options)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("fast", ["1", "0"])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rotate_is_bit_identical_to_a_fresh_lookup(monkeypatch, fast, layout):
    monkeypatch.setenv("POSENC_FAST_ROPE", fast)
    pe = RoPE(dim=64, n_heads=4, max_seq_len=32, layout=layout)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 16, generator=gen), torch.randn(2, 2, 5, 16, generator=gen)  # (B, H, T, D), GQA k
    for pos in (torch.arange(3, 8), torch.tensor([[0, 1, 2, 3, 4], [7, 9, 40, 41, 100]])):  # (T,), (B, T); past cache
        for _ in range(2):  # the second call is a memo hit
            rq, rk = pe.rotate(q, k, pos, pos)
            assert torch.equal(rq, _expected(pe, q, pos)) and torch.equal(rk, _expected(pe, k, pos))
        rq, rk = pe.rotate(q, k, pos, pos.clone())  # distinct tensors: the per-tensor path
        assert torch.equal(rq, _expected(pe, q, pos)) and torch.equal(rk, _expected(pe, k, pos))


def test_a_decode_step_looks_up_cos_sin_once_for_all_layers():
    for n_layers in (1, 4):
        model = _decoder(n_layers)
        cache = KVCache()
        ops = _CountOps()
        original = model.pe.rotate

        def counted(*args, ops=ops, original=original):
            with ops:  # count only what the encoding issues
                return original(*args)

        with torch.no_grad():
            model(torch.randint(0, 256, (1, 6)), cache=cache)
            model.pe.rotate = counted
            model(torch.randint(0, 256, (1, 1)), cache=cache)
        # one position: read once (one scalar), then slices of the cached tables -- however many layers
        c = ops.counts
        assert (c.get("min", 0), c.get("max", 0), c.get("index", 0)) == (0, 0, 0), (n_layers, c)
        assert c.get("_local_scalar_dense", 0) == 1, (n_layers, c)
        ops.counts.clear()
        with torch.no_grad():  # a prefill of several tokens: one pass for both bounds (aminmax), two row gathers
            model(torch.randint(0, 256, (1, 3)), cache=cache)
        c = ops.counts
        assert (c.get("aminmax", 0), c.get("index_select", 0)) == (1, 2), (n_layers, c)
        assert (c.get("min", 0), c.get("max", 0), c.get("index", 0)) == (0, 0, 0), (n_layers, c)


def test_the_one_position_path_equals_the_table_gather():
    pe = RoPE(dim=64, n_heads=4, max_seq_len=32)
    q = torch.randn(2, 4, 1, 16)
    for p in (0, 7, 31, 40, 100_000):  # inside the cache, at its end, past it (computed directly)
        pos = torch.tensor([p])
        assert torch.equal(pe.rotate(q, q, pos, pos)[0], _expected(pe, q, pos)), p
        pos2 = torch.tensor([[p], [p]])  # (B, 1)
        assert torch.equal(pe.rotate(q, q, pos2, pos2)[0], _expected(pe, q, pos2)), p
    with pytest.raises(ValueError, match="non-negative"):
        pe.rotate(q, q, torch.tensor([-1]), torch.tensor([-1]))


def test_in_place_position_updates_and_moves_invalidate_the_memo():
    pe = RoPE(dim=64, n_heads=4, max_seq_len=32)
    q = torch.randn(1, 4, 3, 16)
    pos = torch.arange(3)
    pe.rotate(q, q, pos, pos)
    pos += 10  # same tensor, new version
    assert torch.equal(pe.rotate(q, q, pos, pos)[0], _expected(pe, q, pos))
    pos[1:].add_(5)  # through a view: views share the version counter
    assert torch.equal(pe.rotate(q, q, pos, pos)[0], _expected(pe, q, pos))
    pe.to(torch.float64)  # rebuild_caches clears the memo
    assert pe._memo is None
    assert torch.equal(pe.rotate(q.double(), q.double(), pos, pos)[0], _expected(pe, q.double(), pos))


def test_a_memo_made_in_inference_mode_does_not_leak_into_training():
    pe = RoPE(dim=64, n_heads=4, max_seq_len=32)
    pos = torch.arange(4)
    with torch.inference_mode():
        pe.rotate(torch.randn(1, 4, 4, 16), torch.randn(1, 4, 4, 16), pos, pos)
    q = torch.randn(1, 4, 4, 16, requires_grad=True)
    rq, rk = pe.rotate(q, q, pos, pos)  # an inference tensor saved for backward would raise here
    (rq.sum() + rk.sum()).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_memo_hits_still_validate_against_the_new_tensor():
    pe = RoPE(dim=64, n_heads=4, max_seq_len=32)
    pos = torch.arange(3)
    q = torch.randn(2, 4, 3, 16)
    pe.rotate(q, q, pos, pos)
    with pytest.raises(ValueError, match="k_pos has 3 positions"):
        pe.rotate(q, torch.randn(2, 4, 4, 16), pos, pos)
    with pytest.raises(ValueError, match="k has head_dim 8"):
        pe.rotate(q, torch.randn(2, 4, 3, 8), pos, pos)
    batch_pos = torch.zeros(3, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="q_pos has batch size 3"):
        pe.rotate(q, q, batch_pos, batch_pos)
    with pytest.raises(ValueError, match="non-negative"):
        pe.rotate(q, q, pos - 5, pos - 5)


def test_torch_func_transforms_see_the_formula():
    pe = RoPE(dim=64, n_heads=4, max_seq_len=32)
    pos = torch.arange(3)
    x = torch.randn(2, 1, 4, 3, 16)
    out = torch.func.vmap(lambda y: pe.rotate(y, y, pos, pos)[0])(x)
    assert torch.equal(out, torch.stack([_expected(pe, xi, pos) for xi in x]))


def test_decoding_matches_the_unmemoised_encoding_bit_for_bit(monkeypatch):
    model = _decoder(3)
    prompt = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(1))
    memoised = model.generate(prompt, 6)
    logits = model(memoised)

    def no_memo(self, x, pos, name, seq_len):
        self._memo = None
        return original(self, x, pos, name, seq_len)

    original = RoPE._cos_sin_for
    monkeypatch.setattr(RoPE, "_cos_sin_for", no_memo)
    assert torch.equal(model.generate(prompt, 6), memoised)
    assert torch.equal(model(memoised), logits)


# -- ALiBi (and every PairwiseBias): the bias is built once per forward, not once per layer ----------------------------
def _bias_decoder(encoding: str, n_layers: int) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(kind="decoder", dim=64, n_heads=4, n_layers=n_layers, max_seq_len=64, encoding=encoding)
    return Transformer(cfg).eval()


def test_a_decode_step_builds_the_alibi_bias_once_for_all_layers(monkeypatch):
    from posenc.encodings._relative import PairwiseBias

    built = []
    original = PairwiseBias._bias
    monkeypatch.setattr(PairwiseBias, "_bias", lambda self, q, k: built.append(1) or original(self, q, k))
    for n_layers in (1, 4):
        model = _bias_decoder("alibi", n_layers)
        cache = KVCache()
        with torch.no_grad():
            model(torch.randint(0, 256, (1, 6)), cache=cache)
            built.clear()
            model(torch.randint(0, 256, (1, 1)), cache=cache)
        assert len(built) == 1, (n_layers, len(built))


@pytest.mark.parametrize("encoding", ["alibi", "t5", "kerple"])
def test_bias_decoding_matches_the_unmemoised_bias_bit_for_bit(monkeypatch, encoding):
    from posenc.encodings._relative import PairwiseBias

    model = _bias_decoder(encoding, 3)
    prompt = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(1))
    memoised = model.generate(prompt, 6)
    logits = model(memoised)
    monkeypatch.setattr(PairwiseBias, "bias", PairwiseBias._bias)
    assert torch.equal(model.generate(prompt, 6), memoised)
    assert torch.equal(model(memoised), logits)


def test_bias_memo_sees_in_place_writes_moves_and_trainable_parameters():
    import posenc

    pe = posenc.get_encoding("alibi", dim=64, n_heads=4, causal=True)
    q_pos, k_pos = torch.arange(5, 8), torch.arange(8)
    first = pe.bias(q_pos, k_pos)
    assert pe.bias(q_pos[..., 0:3], k_pos[..., :8]) is first  # fresh views of the same positions hit
    q_pos += 1  # same tensor, new version
    assert torch.equal(pe.bias(q_pos, k_pos), pe._bias(q_pos, k_pos))
    again = pe.bias(q_pos, k_pos)
    again.add_(1.0)  # a caller wrote into the result: it is not handed out again
    assert torch.equal(pe.bias(q_pos, k_pos), pe._bias(q_pos, k_pos))
    pe.double()  # new buffers: a new key
    assert pe.bias(q_pos, k_pos).dtype == torch.float64
    t5 = posenc.get_encoding("t5", dim=64, n_heads=4, causal=True)  # trainable: no memo while grads are recorded
    a, b = t5.bias(q_pos, k_pos), t5.bias(q_pos, k_pos)
    assert a is not b and a.requires_grad
    (a.sum() + b.sum()).backward()
    with torch.no_grad():
        assert t5.bias(q_pos, k_pos) is t5.bias(q_pos, k_pos)
    with torch.no_grad():
        frozen = t5.bias(q_pos, k_pos)
    assert not frozen.requires_grad and t5.bias(q_pos, k_pos).requires_grad  # grad mode is part of the key
