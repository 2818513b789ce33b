"""The model's KV cache and positions at its boundary: what a decode step may assume, and what it must refuse.

Each test names the red-team finding it pins (issue "reliability round three"): a refused step changes nothing,
default positions continue each row, batch changes broadcast where unambiguous, positions that would wrap are
refused, and generate() refuses a length it cannot reach before decoding anything.
"""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc import KVCache, Positions, Transformer, TransformerConfig

VOCAB = 30


def _decoder(encoding: str = "rope", **cfg) -> Transformer:
    torch.manual_seed(0)
    options = dict(kind="decoder", vocab_size=VOCAB, dim=32, n_heads=4, n_layers=2, encoding=encoding,
                   max_seq_len=32)
    options.update(cfg)
    return Transformer(TransformerConfig(**options)).eval()


def _tokens(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def _snapshot(cache: KVCache) -> KVCache:
    def clone(t):
        return None if t is None else t.detach().clone()

    layers = [posenc.model.LayerCache(clone(c.k), clone(c.v), {n: clone(f) for n, f in c.features.items()})
              for c in cache.layers]
    return KVCache(layers, clone(cache.k_pos), cache.offset, max_pos=cache.max_pos,
                   segment_ids=clone(cache.segment_ids), next_pos=clone(cache.next_pos))


def _same_cache(a: KVCache, b: KVCache) -> bool:
    if (a.offset, a.max_pos, len(a.layers)) != (b.offset, b.max_pos, len(b.layers)):
        return False
    pairs = [(a.k_pos, b.k_pos), (a.next_pos, b.next_pos), (a.segment_ids, b.segment_ids)]
    pairs += [(x.k, y.k) for x, y in zip(a.layers, b.layers)] + [(x.v, y.v) for x, y in zip(a.layers, b.layers)]
    return all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y)) for x, y in pairs)


# -- item 5: a refused step changes nothing ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["negative_positions", "float_positions", "padding_mask_shape", "past_max_seq_len"])
def test_a_step_refused_for_bad_input_leaves_the_cache_as_it_was(bad):
    model = _decoder("learned" if bad == "past_max_seq_len" else "rope")
    x = _tokens(2, 6)
    cache = KVCache()
    model(x[:, :4], cache=cache)
    before = _snapshot(cache)
    kwargs = {"negative_positions": dict(positions=torch.tensor([-1])),
              "float_positions": dict(positions=torch.tensor([4.0])),
              "padding_mask_shape": dict(padding_mask=torch.ones(2, 3, dtype=torch.bool)),
              "past_max_seq_len": dict(positions=torch.tensor([40]))}[bad]
    with pytest.raises((ValueError, TypeError)):
        model(x[:, 4:5], cache=cache, **kwargs)
    assert _same_cache(cache, before)
    # ... and the next good step still matches the full forward
    steps = model(x[:, 4:], cache=cache)
    torch.testing.assert_close(steps, model(x)[:, 4:], atol=1e-5, rtol=1e-5)


# -- item 6: default decode positions continue each row ----------------------------------------------------------------
def test_decoding_after_a_packed_prefill_continues_each_rows_own_positions():
    model = _decoder("rope")
    x = _tokens(1, 8, seed=1)
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])  # two documents packed; the second ends at position 4
    seg = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    full = model(x, positions=Positions(pos=pos, segment_ids=seg))
    cache = KVCache()
    model(x[:, :6], positions=Positions(pos=pos[:, :6], segment_ids=seg[:, :6]), cache=cache)
    steps = [model(x[:, i:i + 1], cache=cache) for i in (6, 7)]  # no positions given: 3, then 4
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 6:], atol=1e-5, rtol=1e-5)
    assert cache.k_pos.tolist() == pos.tolist()


def test_decoding_after_a_prefill_at_an_offset_does_not_repeat_a_position():
    model = _decoder("alibi")
    x = _tokens(2, 6, seed=2)
    full = model(x, positions=torch.arange(3, 9))
    cache = KVCache()
    model(x[:, :4], positions=torch.arange(3, 7), cache=cache)
    steps = [model(x[:, i:i + 1], cache=cache) for i in (4, 5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 4:], atol=1e-5, rtol=1e-5)
    assert cache.k_pos.tolist() == list(range(3, 9))


def test_rows_with_different_positions_continue_separately():
    model = _decoder("rope")
    x = _tokens(2, 5, seed=3)
    pos = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    full = model(x, positions=pos)
    cache = KVCache()
    model(x[:, :3], positions=pos[:, :3], cache=cache)
    steps = [model(x[:, i:i + 1], cache=cache) for i in (3, 4)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 3:], atol=1e-5, rtol=1e-5)


# -- item 4: batch changes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["rope", "t5", "shaw"])
def test_a_one_sequence_prefill_broadcasts_to_a_batch_of_decodes(encoding):
    model = _decoder(encoding)
    prompt, nxt = _tokens(1, 5, seed=4), _tokens(3, 1, seed=5)
    cache = KVCache()
    model(prompt, cache=cache)
    got = model(nxt, cache=cache)  # (3, 1): three continuations of one shared prompt
    want = model(torch.cat((prompt.expand(3, -1), nxt), dim=1))[:, -1:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert cache.batch == 3 and cache.layers[0].k.shape[0] == 3


@pytest.mark.parametrize("held, new", [(2, 1), (2, 3)])
def test_an_ambiguous_batch_change_is_a_clear_error_and_changes_nothing(held, new):
    model = _decoder()
    cache = KVCache()
    model(_tokens(held, 4), cache=cache)
    before = _snapshot(cache)
    with pytest.raises(ValueError, match=f"holds {held} sequences but this call has {new}"):
        model(_tokens(new, 1), cache=cache)
    assert _same_cache(cache, before)


# -- item 2: positions must not wrap ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16])
@pytest.mark.parametrize("encoding", ["t5", "sinusoidal", "alibi", "rope"])
def test_positions_in_a_dtype_that_wraps_are_refused_everywhere(encoding, dtype):
    model = _decoder(encoding)
    x = _tokens(1, 6)
    with pytest.raises(TypeError, match="int64"):
        model(x, positions=torch.arange(6, dtype=dtype))
    pe = posenc.get_encoding(encoding, dim=32, n_heads=4)
    q = torch.randn(1, 4, 6, 8)
    with pytest.raises(TypeError, match="int64"):
        posenc.attention(q, q, q, pe, q_pos=torch.arange(6, dtype=dtype), k_pos=torch.arange(6, dtype=dtype))


@pytest.mark.parametrize("encoding", ["t5", "sinusoidal", "alibi", "rope"])
def test_int32_positions_give_the_int64_numbers(encoding):
    model = _decoder(encoding)
    x = _tokens(2, 7)
    pos = torch.tensor([[9, 7, 5, 3, 1, 0, 2], [0, 1, 2, 3, 4, 5, 6]])
    torch.testing.assert_close(model(x, positions=pos.int()), model(x, positions=pos), atol=0, rtol=0)


# -- item 12: generate refuses up front --------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["learned", "tupe"])
def test_generate_past_max_seq_len_is_refused_before_decoding(encoding, monkeypatch):
    model = _decoder(encoding, max_seq_len=8)
    calls = []
    monkeypatch.setattr(model, "decode", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=r"reach position 9.*max_new_tokens <= 5"):
        model.generate(_tokens(1, 4), max_new_tokens=7)
    assert calls == []  # nothing was decoded


@pytest.mark.parametrize("encoding", ["learned", "tupe"])
def test_generate_reaches_exactly_max_seq_len(encoding):
    model = _decoder(encoding, max_seq_len=8)
    out = model.generate(_tokens(1, 4), max_new_tokens=5)  # fed positions 0..7: the last new token is not fed
    assert out.shape == (1, 9)


# -- the cache is written back only by a successful call; getters never mutate it -------------------------------------
def test_reading_the_cache_or_its_positions_changes_nothing():
    model = _decoder()
    cache = KVCache()
    model(_tokens(1, 3), cache=cache)
    before = _snapshot(cache)
    assert cache.layer(5).k is None and len(cache.layers) == 2  # a layer it never cached: empty, not appended
    model.decoder.positions(None, 1, 2, torch.device("cpu"), cache)
    assert _same_cache(cache, before)


# -- planted: packed segment ids shared by the batch; padding AND packing -------------------------------------------
def test_segment_ids_of_shape_1_by_t_are_shared_by_a_batch():
    model = _decoder("alibi")
    x = _tokens(3, 6, seed=6)
    seg = torch.tensor([[0, 0, 0, 1, 1, 1]])
    pos = torch.tensor([0, 1, 2, 0, 1, 2])
    shared = model(x, positions=Positions(pos=pos, segment_ids=seg))
    per_row = model(x, positions=Positions(pos=pos, segment_ids=seg.expand(3, -1)))
    torch.testing.assert_close(shared, per_row, atol=0, rtol=0)
    torch.testing.assert_close(shared[:, 3:], model(x[:, 3:]), atol=1e-5, rtol=1e-5)  # the second document alone


def test_padding_and_packing_both_restrict_attention():
    """A token sees a key only if the key is real (padding) AND in its document (packing): the masks are AND-ed."""
    model = _decoder("alibi", kind="encoder")
    x = _tokens(1, 6, seed=7)
    seg = torch.tensor([[0, 0, 0, 1, 1, 1]])
    pos = torch.tensor([0, 1, 2, 0, 1, 2])
    pad = torch.tensor([[True, True, True, True, True, False]])  # the last token is padding
    got = model(x, positions=Positions(pos=pos, segment_ids=seg), padding_mask=pad)
    torch.testing.assert_close(got[:, :3], model(x[:, :3]), atol=1e-5, rtol=1e-5)  # document 0 alone
    torch.testing.assert_close(got[:, 3:5], model(x[:, 3:5]), atol=1e-5, rtol=1e-5)  # document 1 without padding


# -- cross-attention honours the configured backend -------------------------------------------------------------------
def test_cross_attention_uses_the_configured_backend(monkeypatch):
    from posenc import backends

    model = _decoder(kind="encoder_decoder", attention_backend="reference")
    seen = []
    real = backends.BACKENDS["reference"]
    monkeypatch.setitem(backends.BACKENDS, "reference", backends.Backend(
        "reference", lambda call: seen.append(call.pe) or real.fn(call), real.supports, real.priority, real.suits))
    model(_tokens(1, 4), _tokens(1, 3))
    assert None in seen  # the cross-attention calls (pe=None) ran on 'reference' too


# -- a bound view trusts only what it validated -----------------------------------------------------------------------
def test_a_bound_view_does_not_trust_another_part_of_the_same_storage():
    pe = posenc.get_encoding("alibi", dim=32, n_heads=4, causal=True)
    big = torch.tensor([-5, 0, 1, 2, 3])
    bound = pe.bind(Positions(pos=big[1:]).validate(4).with_keys(big[1:], 3))
    with pytest.raises(ValueError, match="non-negative"):
        bound.bias(big[:4], big[:4])  # shares big's storage, reads the unvalidated -5
    with pytest.raises(ValueError, match="non-negative"):
        pe.bias(big[:4], big[:4])  # the unbound encoding refuses it too
    assert bound.trusts(big[1:][1:3])  # a slice of the validated positions is trusted (chunked's blocks)


def test_a_bound_view_does_not_trust_positions_changed_in_place():
    pe = posenc.get_encoding("alibi", dim=32, n_heads=4, causal=True)
    pos = torch.arange(4)
    bound = pe.bind(Positions(pos=pos).validate(4).with_keys(pos, 3))
    assert bound.trusts(pos)
    pos.sub_(2)
    assert not bound.trusts(pos)
    with pytest.raises(ValueError, match="non-negative"):
        bound.bias(pos, pos)


# -- red team round four -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["rope", "stick_breaking"])
def test_a_padding_mask_that_is_not_bool_is_refused_and_changes_nothing(encoding):
    """A float 0/1 padding mask reached attention as an *additive* mask (+1 on real tokens, +0 on padding: nothing
    hidden, and stick-breaking's weights changed); an int one was refused as "attn_mask". Both are a TypeError naming
    padding_mask now, before the cache moves."""
    model = _decoder(encoding)
    x = _tokens(2, 6)
    cache = KVCache()
    model(x[:, :4], cache=cache)
    before = _snapshot(cache)
    for mask, error, words in ((torch.ones(2, 5), TypeError, "padding_mask must be a bool tensor.*float32.*bool()"),
                               (torch.ones(2, 5, dtype=torch.long), TypeError, "padding_mask must be a bool tensor"),
                               (torch.ones(2, 4, dtype=torch.bool), ValueError, r"\(B, T_keys\) = \(2, 5\)"),
                               (torch.ones(5, dtype=torch.bool), ValueError, "padding_mask must have shape")):
        with pytest.raises(error, match=words):
            model(x[:, 4:5], padding_mask=mask, cache=cache)
        assert _same_cache(cache, before)
    with pytest.raises(TypeError, match="padding_mask must be a bool"):
        model(x, padding_mask=torch.ones(2, 6))  # without a cache too
    ok = torch.ones(2, 5, dtype=torch.bool)
    torch.testing.assert_close(model(x[:, 4:5], padding_mask=ok, cache=cache), model(x)[:, 4:5], atol=1e-5, rtol=1e-5)


def test_a_memory_padding_mask_that_is_not_bool_is_refused():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind="encoder_decoder", vocab_size=VOCAB, dim=32, n_heads=4, n_layers=1,
                                          max_seq_len=32)).eval()
    src, tgt = _tokens(2, 5), _tokens(2, 3, seed=1)
    memory = model.encode(src)
    with pytest.raises(TypeError, match="memory_padding_mask must be a bool tensor"):
        model.decode(tgt, memory, memory_padding_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"memory_padding_mask must have shape \(B, T_keys\) = \(2, 5\)"):
        model.decode(tgt, memory, memory_padding_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="padding_mask must be a bool tensor"):
        model(src, tgt, padding_mask=torch.ones(2, 5))


# -- the preallocated cache: decode steps write into free slots instead of copying every cached key ------------------
def test_decode_steps_write_into_preallocated_slots_without_copying_the_cache():
    model = _decoder("rope")
    tokens = _tokens(2, 20)
    cache = KVCache()
    with torch.no_grad():
        full = model(tokens)
        steps = [model(tokens[:, :8], cache=cache)]
        steps.append(model(tokens[:, 8:9], cache=cache))  # the first step moves the keys into buffers
        storage = cache.layers[0].k.untyped_storage().data_ptr()
        for n in range(9, 20):
            steps.append(model(tokens[:, n:n + 1], cache=cache))
            assert cache.layers[0].k.untyped_storage().data_ptr() == storage  # same buffer: no copy per step
    assert cache.layers[0].k.shape[2] == 20 and cache.layers[0].buffers[0].shape[2] >= 20
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_an_older_cache_a_user_kept_is_never_overwritten_by_a_newer_one():
    """Two continuations from one prefix (a shallow copy of the cache) each decode as if alone."""
    import copy

    model = _decoder("rope")
    prefix, a, b = _tokens(1, 10), _tokens(1, 3, seed=1), _tokens(1, 3, seed=2)
    cache = KVCache()
    with torch.no_grad():
        model(prefix[:, :9], cache=cache)
        model(prefix[:, 9:], cache=cache)  # buffers now hold 10 keys, with free slots after them
        branch = copy.copy(cache)  # shares the layers (and so the buffers) with cache
        out_a = torch.cat([model(a[:, i:i + 1], cache=cache) for i in range(3)], dim=1)
        out_b = torch.cat([model(b[:, i:i + 1], cache=branch) for i in range(3)], dim=1)  # must not see a's keys
        again_a = torch.cat([model(a[:, i:i + 1], cache=cache) for i in range(1)], dim=1)
        ref_a, ref_b = model(torch.cat((prefix, a), 1))[:, 10:], model(torch.cat((prefix, b), 1))[:, 10:]
        ref_again = model(torch.cat((prefix, a, a[:, :1]), 1))[:, 13:]
    torch.testing.assert_close(out_a, ref_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_b, ref_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again_a, ref_again, rtol=1e-5, atol=1e-5)  # b's steps did not overwrite a's keys


def test_decoding_with_gradients_concatenates_and_backpropagates():
    model = _decoder("rope").train()
    tokens = _tokens(1, 6)
    cache = KVCache()
    out = [model(tokens[:, :4], cache=cache)]
    out += [model(tokens[:, n:n + 1], cache=cache) for n in (4, 5)]
    assert all(layer.buffers is None for layer in cache.layers)  # no in-place writes into tensors autograd saved
    torch.cat(out, 1).sum().backward()
    assert model.tok_emb.weight.grad is not None and torch.isfinite(model.tok_emb.weight.grad).all()


def test_a_step_refused_after_writing_a_slot_leaves_the_cache_decoding_correctly():
    model = _decoder("rope")
    tokens = _tokens(1, 12)
    cache = KVCache()
    with torch.no_grad():
        model(tokens[:, :9], cache=cache)
        model(tokens[:, 9:10], cache=cache)
        before = _snapshot(cache)
        layer2 = model.decoder.blocks[1].attn
        original = layer2.forward

        def broken(*args, **kwargs):
            raise RuntimeError("a failure in the second layer, after the first wrote its slot")

        layer2.forward = broken
        with pytest.raises(RuntimeError, match="second layer"):
            model(_tokens(1, 1, seed=5), cache=cache)
        layer2.forward = original
        assert cache.offset == before.offset and cache.layers[0].k.shape == before.layers[0].k.shape
        torch.testing.assert_close(cache.layers[0].k, before.layers[0].k, rtol=0, atol=0)
        steps = [model(tokens[:, n:n + 1], cache=cache) for n in (10, 11)]
        ref = model(tokens)[:, 10:]
    torch.testing.assert_close(torch.cat(steps, 1), ref, rtol=1e-5, atol=1e-5)
