"""RoPE's and ALiBi's per-step work in KV-cache decoding: positions validated once per forward, not once per layer.

The model builds one :class:`posenc.Positions` per forward, validates it once (one ``aminmax``) and binds its
encoding to it (``pe.bind``): the bound view looks up RoPE's cos/sin (or builds a bias) once and trusts those
positions in every layer. These tests pin that down by counting the aten ops a forward issues (they must not grow
with the number of layers) and check that the numbers are bit-identical to the unbound encoding, and that direct
hook calls, which have no bound positions, still validate and never reuse stale state (there is no memo to go
stale: in-place position updates, device/dtype moves, inference mode, torch.func).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import posenc
from posenc.encodings._relative import PairwiseBias
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


def _step_counts(model: Transformer, n_prompt: int, n_new: int) -> dict[str, int]:
    """aten op counts of one forward of ``n_new`` tokens after a prompt of ``n_prompt`` in the cache."""
    cache = KVCache()
    with torch.no_grad():
        model(torch.randint(0, 256, (1, n_prompt)), cache=cache)
        with _CountOps() as ops:
            model(torch.randint(0, 256, (1, n_new)), cache=cache)
    return ops.counts


SYNC_OPS = ("aminmax", "min", "max", "_local_scalar_dense", "index", "index_select")


def test_a_decode_step_validates_and_looks_up_cos_sin_once_for_all_layers():
    for n_new in (1, 3):  # a decode step; a prefill of several tokens
        one, four = (_step_counts(_decoder(n_layers), 6, n_new) for n_layers in (1, 4))
        per_forward = {op: one.get(op, 0) for op in SYNC_OPS}
        assert per_forward == {op: four.get(op, 0) for op in SYNC_OPS}, (n_new, one, four)  # not per layer
        assert per_forward["aminmax"] == 1, one  # the positions' one value check (Positions.validate)
        # one position: a slice of the cached table (no gather); several: one lookup of two row gathers
        assert per_forward["index_select"] == (0 if n_new == 1 else 2), one


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


def test_direct_calls_see_in_place_position_updates_and_moves():
    pe = RoPE(dim=64, n_heads=4, max_seq_len=32)
    q = torch.randn(1, 4, 3, 16)
    pos = torch.arange(3)
    pe.rotate(q, q, pos, pos)
    pos += 10  # same tensor, new values
    assert torch.equal(pe.rotate(q, q, pos, pos)[0], _expected(pe, q, pos))
    pos[1:].add_(5)  # through a view
    assert torch.equal(pe.rotate(q, q, pos, pos)[0], _expected(pe, q, pos))
    pe.to(torch.float64)
    assert torch.equal(pe.rotate(q.double(), q.double(), pos, pos)[0], _expected(pe, q.double(), pos))


def test_a_call_in_inference_mode_does_not_leak_into_training():
    pe = RoPE(dim=64, n_heads=4, max_seq_len=32)
    pos = torch.arange(4)
    with torch.inference_mode():
        pe.rotate(torch.randn(1, 4, 4, 16), torch.randn(1, 4, 4, 16), pos, pos)
    q = torch.randn(1, 4, 4, 16, requires_grad=True)
    rq, rk = pe.rotate(q, q, pos, pos)  # an inference tensor saved for backward would raise here
    (rq.sum() + rk.sum()).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_repeated_calls_still_validate_against_the_new_tensor():
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


def test_decoding_matches_the_unbound_encoding_bit_for_bit(monkeypatch):
    model = _decoder(3)
    prompt = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(1))
    bound = model.generate(prompt, 6)
    logits = model(bound)
    monkeypatch.setattr(RoPE, "bind", lambda self, positions: self)  # every layer checks and looks up itself
    assert torch.equal(model.generate(prompt, 6), bound)
    assert torch.equal(model(bound), logits)


def test_a_bound_view_trusts_only_its_own_positions():
    pe = RoPE(dim=64, n_heads=4, max_seq_len=32)
    pos = torch.arange(3)
    view = pe.bind(posenc.Positions(pos=pos).validate(3))
    assert view is not pe and view.trusts(pos) and view.trusts(pos[1:]) and not pe.trusts(pos)
    assert not view.trusts(torch.arange(3))
    q = torch.randn(1, 4, 3, 16)
    assert torch.equal(view.rotate(q, q, pos, pos)[0], _expected(pe, q, pos))
    with pytest.raises(ValueError, match="non-negative"):  # other positions are checked as in a direct call
        view.rotate(q, q, pos - 5, pos - 5)
    assert pe.bind(posenc.Positions(pos=pos)) is pe  # not validated: nothing to trust


# -- ALiBi (and every PairwiseBias): the bias is built once per forward, not once per layer ----------------------------
def _bias_decoder(encoding: str, n_layers: int) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(kind="decoder", dim=64, n_heads=4, n_layers=n_layers, max_seq_len=64, encoding=encoding)
    return Transformer(cfg).eval()


def test_a_decode_step_builds_the_alibi_bias_once_for_all_layers(monkeypatch):
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
def test_bias_decoding_matches_the_unbound_bias_bit_for_bit(monkeypatch, encoding):
    model = _bias_decoder(encoding, 3)
    prompt = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(1))
    bound = model.generate(prompt, 6)
    logits = model(bound)
    monkeypatch.setattr(PairwiseBias, "bind", lambda self, positions: self)
    assert torch.equal(model.generate(prompt, 6), bound)
    assert torch.equal(model(bound), logits)


def test_a_shared_trainable_bias_gives_the_per_layer_gradients(monkeypatch):
    x = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))

    def grads() -> dict[str, torch.Tensor]:
        model = _bias_decoder("t5", 3).train()
        model(x).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    shared = grads()  # one bias per forward, used by every layer
    monkeypatch.setattr(PairwiseBias, "bind", lambda self, positions: self)
    per_layer = grads()  # one bias per layer
    assert shared.keys() == per_layer.keys()
    for name in shared:
        torch.testing.assert_close(shared[name], per_layer[name], rtol=1e-6, atol=1e-7)


def test_direct_bias_calls_are_computed_and_checked_every_time():
    pe = posenc.get_encoding("alibi", dim=64, n_heads=4, causal=True)
    q_pos, k_pos = torch.arange(5, 8), torch.arange(8)
    first = pe.bias(q_pos, k_pos)
    q_pos += 1  # same tensor, new values: a new bias
    assert not torch.equal(pe.bias(q_pos, k_pos), first)
    with pytest.raises(ValueError, match="non-negative"):
        pe.bias(q_pos - 10, k_pos)
    pe.double()
    assert pe.bias(q_pos, k_pos).dtype == torch.float64
