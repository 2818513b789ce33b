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
        # one value check (min), one cache bound (max), one cos and one sin gather per step, however many layers
        c = ops.counts
        assert (c.get("min", 0), c.get("max", 0), c.get("index", 0)) == (1, 1, 2), (n_layers, c)


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
