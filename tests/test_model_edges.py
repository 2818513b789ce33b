"""Edges of posenc.model that mutation testing (``make test-mutate``, group model) found no test for: an
encoder-decoder forward that fills its KV cache, the options every per-layer instance is built with, the cache's
concatenation of shared and per-sequence positions and features, and the words of an error."""

import pytest
import torch

from posenc import KVCache, Transformer, TransformerConfig
from posenc.model import LayerCache, _cat_features, _cat_positions


def _seq2seq():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=11, dim=16, n_heads=2, n_layers=2, kind="encoder_decoder", encoding="rope",
                            max_seq_len=32)
    return Transformer(cfg).eval()


def test_encoder_decoder_forward_with_a_cache_fills_it_and_decodes_step_by_step_like_the_full_forward():
    model = _seq2seq()
    src, tgt = torch.randint(0, 11, (2, 5)), torch.randint(0, 11, (2, 4))
    with torch.no_grad():
        full = model(src, tgt)
        cache = KVCache()
        first = model(src, tgt[:, :3], cache=cache)
        assert cache.next_pos == 3  # the decoder's self-attention keys were kept
        step = model(src, tgt[:, 3:], cache=cache)
    torch.testing.assert_close(first, full[:, :3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step, full[:, 3:], rtol=1e-5, atol=1e-5)


def test_decode_without_memory_says_how_to_get_it():
    model = _seq2seq()
    with pytest.raises(ValueError, match=r"needs the encoder's memory: decode\(tgt, model.encode\(src\)\)"):
        model.decode(torch.zeros(1, 3, dtype=torch.long), None)


def test_every_per_layer_instance_gets_the_configs_options_and_head_count():
    cfg = TransformerConfig(vocab_size=11, dim=16, n_heads=4, n_layers=3, encoding="fox",
                            encoding_options={"gate_bias_init": 3.0}, max_seq_len=32)
    model = Transformer(cfg)
    encodings = model.decoder.encodings()
    assert len({id(pe) for pe in encodings}) == 3  # fox is per layer: one instance each
    for pe in encodings:
        assert pe.n_heads == 4 and pe.gate.out_features == 4
        assert torch.equal(pe.gate.bias.detach(), torch.full((4,), 3.0))


def test_a_layer_encoding_gets_the_models_head_count():
    cfg = TransformerConfig(vocab_size=11, dim=16, n_heads=4, n_layers=2, encoding="rope",
                            layer_encodings={1: {"encoding": "alibi"}}, max_seq_len=32)
    model = Transformer(cfg)
    encodings = model.decoder.encodings()
    assert encodings[1].name == "alibi" and encodings[1].n_heads == 4


def test_cache_positions_shared_then_per_sequence_concatenate_per_sequence():
    shared, per_seq = torch.arange(3), torch.tensor([[3, 4], [7, 8]])
    got = _cat_positions(shared, per_seq, batch=2)
    assert torch.equal(got, torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, 7, 8]]))
    got = _cat_positions(per_seq, torch.tensor([9]), batch=2)  # per-sequence, then one shared step
    assert torch.equal(got, torch.tensor([[3, 4, 9], [7, 8, 9]]))
    assert torch.equal(_cat_positions(shared, torch.tensor([3]), batch=2), torch.arange(4))
    assert _cat_positions(None, per_seq, batch=2) is per_seq


def test_cached_features_shared_by_the_batch_are_broadcast_to_the_call():
    cached = {"gate": torch.randn(1, 2, 3, 5)}  # (1, H, T_cached, X): cached once for every sequence
    new = {"gate": torch.randn(4, 2, 1, 5)}
    got = _cat_features(cached, new)["gate"]
    assert got.shape == (4, 2, 4, 5)
    assert torch.equal(got[:, :, :3], cached["gate"].expand(4, 2, 3, 5)) and torch.equal(got[:, :, 3:], new["gate"])
    with pytest.raises(ValueError, match="a cache belongs to one model and encoding"):
        _cat_features(cached, {"other": new["gate"]})


def test_a_tied_head_scales_the_hidden_state_by_dim_to_the_minus_half():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=11, dim=16, n_heads=2, n_layers=1, encoding="rope", tie_embeddings=True)
    model = Transformer(cfg)
    hidden = torch.randn(2, 3, 16)
    torch.testing.assert_close(model.logits(hidden), hidden @ model.head.weight.T / 4.0)  # 16 ** -0.5 = 1 / 4


def test_a_per_layer_encoding_has_exactly_one_instance_per_layer():
    cfg = TransformerConfig(vocab_size=11, dim=16, n_heads=4, n_layers=3, encoding="fox", max_seq_len=32)
    model = Transformer(cfg)
    fox = [m for m in model.modules() if m.__class__.__name__ == "FoX"]
    assert len(fox) == 3  # the stack's serves layer 0, layers 1 and 2 have their own: no idle fourth
    assert model.decoder.encodings()[0] is model.decoder.pe


def test_encoder_decoder_forward_passes_the_source_padding_to_the_encoder():
    model = _seq2seq()
    src, tgt = torch.randint(0, 11, (1, 5)), torch.randint(0, 11, (1, 3))
    pad = torch.tensor([[True, True, True, False, False]])
    other = src.clone()
    other[:, 3:] = (src[:, 3:] + 1) % 11  # only the padded source tokens differ
    with torch.no_grad():
        a = model(src, tgt, padding_mask=pad)
        b = model(other, tgt, padding_mask=pad)
        c = model(other, tgt)
    torch.testing.assert_close(a, b)  # padded source tokens are never read, by the encoder or the cross-attention
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(("options", "match"), [
    ({"layer_encodings": {2: {"encoding": "alibi"}}}, r"layer indices in \[0, 2\)"),
    ({"encoding_options": ["x"]}, r"TransformerConfig.encoding_options must be a dict; got <class 'list'>"),
    ({"n_layers": 0}, r"TransformerConfig.n_layers"),
])
def test_config_errors_name_the_field(options, match):
    fields = dict(vocab_size=11, dim=16, n_heads=2, n_layers=2, encoding="rope")
    with pytest.raises((ValueError, TypeError), match=match):
        TransformerConfig(**{**fields, **options})


def test_model_errors_say_what_to_do():
    model = Transformer(TransformerConfig(vocab_size=11, dim=16, n_heads=2, n_layers=1, encoding="rope"))
    with pytest.raises(ValueError, match=r"encode\(\) is for 'encoder' and 'encoder_decoder' models; a decoder uses "
                                         r"forward\(\)"):
        model.encode(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tokens ids must lie in \[0, vocab_size=11\); got range \[0, 11\]"):
        model(torch.tensor([[0, 11]]))
    with pytest.raises(ValueError, match=r"^an encoder_decoder model needs the encoder's memory"):
        _seq2seq().decode(torch.zeros(1, 3, dtype=torch.long), None)


# -- surviving mutants of the seed-2 sample (model) -------------------------------------------------------------------


def _decoder(encoding="alibi", **kw):
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=11, dim=16, n_heads=2, n_layers=2, encoding=encoding, max_seq_len=32, **kw)
    return Transformer(cfg).eval()


def test_a_padding_mask_that_is_not_a_tensor_is_named_by_its_type():
    with pytest.raises(TypeError, match=r"padding_mask must be a bool tensor \(B, T_keys\), True for real tokens; got "
                                        r"list\. Hint: padding_mask\.bool\(\)"):
        _decoder()(torch.zeros(2, 4, dtype=torch.long), padding_mask=[[1] * 4] * 2)


def test_an_attention_layer_without_an_encoding_is_plain_attention():
    from posenc import Positions
    from posenc.model import Attention

    model = _decoder()
    attn = model.decoder.blocks[0].attn
    assert isinstance(attn, Attention)
    x = torch.randn(2, 5, 16)
    positions = Positions(pos=torch.arange(5)).validate(5)
    with torch.no_grad():
        out, cache = attn(x, pe=None, positions=positions, causal=True, attn_mask=None, cache=None)
        q, k, v = (attn._heads(p(x), 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))  # (B, H, T, D)
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        expected = attn.o_proj(expected.transpose(1, 2).reshape(2, 5, 16))
    assert cache is None
    torch.testing.assert_close(out, expected)


def test_a_block_built_without_cross_attention_has_none_and_runs_without_memory():
    from posenc import Positions
    from posenc.model import Block

    block = Block(_decoder().cfg).eval()
    assert block.cross_attn is None and block.cross_norm is None
    assert not any(name.startswith("cross") for name in block.state_dict())
    positions = Positions(pos=torch.arange(3)).validate(3)
    pe = _decoder().decoder.pe
    out, _ = block(torch.randn(1, 3, 16), pe=pe, positions=positions.with_keys(positions.pos, positions.max_pos),
                   causal=True, attn_mask=None, cache=None, memory=None, memory_mask=None)
    assert out.shape == (1, 3, 16)


def test_with_zero_dropout_training_and_eval_forwards_agree():
    model = _decoder(dropout=0.0)
    tokens = torch.randint(0, 11, (2, 6))
    with torch.no_grad():
        evaluated = model(tokens)
        trained = model.train()(tokens)
    torch.testing.assert_close(trained, evaluated)


def test_a_one_sequence_cache_broadcasts_its_memory_mask_too():
    k = torch.randn(1, 2, 3, 8)
    mask = torch.tensor([[[[True, True, False]]]])  # (1, 1, 1, S)
    cache = KVCache(layers=[LayerCache(k=k, v=k)], k_pos=torch.arange(3), offset=3, memory_mask=mask)
    grown = cache.broadcast_to(4)
    assert grown.memory_mask.shape == (4, 1, 1, 3) and bool((grown.memory_mask == mask).all())
    assert grown.layers[0].k.shape == (4, 2, 3, 8)
    assert KVCache(layers=[LayerCache(k=k, v=k)]).broadcast_to(4).memory_mask is None


def test_positions_on_another_device_are_named_where_they_enter():
    with pytest.raises(ValueError, match=r"^positions is on meta but the input is on cpu; move it with "
                                         r"positions\.to\(x\.device\)"):
        _decoder()(torch.zeros(2, 4, dtype=torch.long), positions=torch.arange(4, device="meta"))


def test_per_sequence_positions_after_a_shared_prefill_decode_like_the_full_forward():
    model = _decoder()
    tokens = torch.randint(0, 11, (2, 6))
    pos = torch.stack([torch.arange(6), torch.cat([torch.arange(4), torch.arange(10, 12)])])  # rows part at step 2
    with torch.no_grad():
        full = model(tokens, positions=pos)
        cache = KVCache()
        first = model(tokens[:, :4], positions=torch.arange(4), cache=cache)  # shared (T,) positions cached
        second = model(tokens[:, 4:], positions=pos[:, 4:], cache=cache)  # (B, T): per sequence
    assert torch.equal(cache.k_pos, pos)
    torch.testing.assert_close(first, full[:, :4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, full[:, 4:], rtol=1e-5, atol=1e-5)


def test_an_encoder_decoder_forward_without_a_target_says_how_to_call_it():
    with pytest.raises(ValueError, match=r"^an encoder_decoder model takes model\(src, tgt\)\.$"):
        _seq2seq()(torch.zeros(1, 3, dtype=torch.long))


@pytest.mark.parametrize("payload", [{"config": {}, "state_dict": []}, {"config": [], "state_dict": {}}])
def test_load_refuses_a_checkpoint_whose_config_or_weights_are_not_dicts(tmp_path, payload):
    import io

    from posenc._io import atomic_write_bytes, checked_bytes

    buffer = io.BytesIO()
    torch.save({"format": "posenc.Transformer/1", **payload}, buffer)
    path = tmp_path / "model.pt"
    atomic_write_bytes(path, checked_bytes(buffer.getvalue()))
    with pytest.raises(ValueError, match=r"model\.pt is not a posenc Transformer checkpoint \(written by "
                                         r"Transformer\.save\); save the model again"):
        Transformer.load(path)


def test_num_parameters_counts_the_trainable_ones():
    model = _decoder()
    total = sum(p.numel() for p in model.parameters())
    assert model.num_parameters() == total
    next(model.parameters()).requires_grad_(False)  # frozen: no longer counted
    assert model.num_parameters() == sum(p.numel() for p in model.parameters() if p.requires_grad) < total


# -- surviving mutants of the seed-3 sample (model) -------------------------------------------------------------------


def test_segment_ids_after_a_cache_filled_without_them_are_refused_with_the_rule():
    from posenc import Positions

    model = _decoder()
    cache = KVCache()
    with torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match=r"segment_ids: the KV cache holds tokens without segment ids; give "
                                             r"segment_ids from the first call on, or none at all\.$"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache,
                  positions=Positions(segment_ids=torch.zeros(1, 1, dtype=torch.long)))


def test_a_padding_mask_of_the_wrong_rank_is_refused_and_one_row_is_shared_by_the_batch():
    model = _decoder()
    tokens = torch.randint(0, 11, (3, 4))
    with pytest.raises(ValueError, match=r"padding_mask must have shape \(B, T_keys\) = \(3, 4\)"):
        model(tokens, padding_mask=torch.ones(3, 4, 1, dtype=torch.bool))
    row = torch.tensor([[True, True, True, False]])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, padding_mask=row), model(tokens, padding_mask=row.expand(3, 4)))


def test_a_commit_that_drops_keys_is_refused_with_both_shapes():
    from types import SimpleNamespace

    from posenc.model import _checked_commit

    k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 6)
    pe = SimpleNamespace(name="probe", commit=lambda k, v, f, new, attn_mask: (k, v[:, :, 1:], f))
    with pytest.raises(ValueError, match=r"probe\.commit must return every key's k, v and features with their "
                                         r"shapes \(k \(1, 2, 3, 4\), v \(1, 2, 3, 6\)\); got k \(1, 2, 3, 4\), "
                                         r"v \(1, 2, 2, 6\)"):
        _checked_commit(pe, k, v, {}, 1, None)


def test_each_attention_layer_knows_its_index():
    model = _decoder()
    assert [block.attn.view().index for block in model.decoder.blocks] == [0, 1]


def test_a_one_sequence_cache_broadcasts_its_cross_attention_keys_and_values():
    k, mem = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 5, 8)
    grown = KVCache(layers=[LayerCache(k=k, v=k, cross_k=mem, cross_v=mem)]).broadcast_to(4)
    assert grown.layers[0].cross_k.shape == grown.layers[0].cross_v.shape == (4, 2, 5, 8)


def test_a_model_on_meta_makes_its_default_positions_on_meta():
    model = _decoder().to("meta")
    out = model(torch.zeros(2, 5, dtype=torch.long, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 5, 11)


def test_the_encoder_of_an_encoder_decoder_is_bidirectional():
    model = _seq2seq()
    src = torch.randint(0, 11, (1, 5))
    changed = src.clone()
    changed[0, -1] = (src[0, -1] + 1) % 11
    with torch.no_grad():
        first, second = model.encode(src), model.encode(changed)
    assert not torch.allclose(first[:, 0], second[:, 0])  # the first token sees the last one
    assert model.encoder.causal is False and model.decoder.causal is True


def test_encode_on_a_decoder_says_to_use_forward():
    with pytest.raises(ValueError, match=r"^encode\(\) is for 'encoder' and 'encoder_decoder' models; a decoder uses "
                                         r"forward\(\)\.$"):
        _decoder().encode(torch.zeros(1, 3, dtype=torch.long))


def test_an_encoder_decoder_forward_uses_the_target_positions():
    model = _seq2seq()
    src, tgt = torch.randint(0, 11, (1, 5)), torch.randint(0, 11, (1, 4))
    with torch.no_grad():
        spread = model(src, tgt, tgt_positions=torch.tensor([0, 2, 5, 9]))  # gaps: RoPE sees other distances
        default = model(src, tgt, tgt_positions=torch.arange(4))
        plain = model(src, tgt)
    torch.testing.assert_close(default, plain)
    assert not torch.allclose(spread, plain, atol=1e-4)


def _checkpoint(tmp_path, data: bytes):
    from posenc._io import atomic_write_bytes, checked_bytes

    path = tmp_path / "model.pt"
    atomic_write_bytes(path, checked_bytes(data))
    return path


def test_load_names_what_went_wrong_reading_or_building_a_checkpoint(tmp_path):
    import io

    with pytest.raises(ValueError, match=r"model\.pt is not a readable posenc Transformer checkpoint \(\w+: "):
        Transformer.load(_checkpoint(tmp_path, b"not a torch file at all"))
    buffer = io.BytesIO()
    torch.save({"format": "posenc.Transformer/1", "config": {"bogus_field": 1}, "state_dict": {}}, buffer)
    with pytest.raises(ValueError, match=r"holds a configuration or weights this posenc cannot build \(TypeError: .*"
                                         r"bogus_field.*\); save the model again"):
        Transformer.load(_checkpoint(tmp_path, buffer.getvalue()))


def test_load_never_unpickles_code_on_any_supported_torch(tmp_path, monkeypatch):
    # torch < 2.6 (pyproject allows 2.5) defaults to weights_only=False: the flag must be passed explicitly
    path = tmp_path / "model.pt"
    _decoder().save(path)
    seen = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: seen.append((kw.get("weights_only"), kw.get("map_location")))
                        or real_load(*a, **kw))
    Transformer.load(path, map_location="cpu")
    assert seen == [(True, "cpu")]  # and the caller's map_location reaches torch.load


# -- surviving mutants of the seed-4 sample (model) -------------------------------------------------------------------


def test_a_block_built_alone_serves_layer_zero():
    from posenc.model import Block

    assert Block(_decoder().cfg).attn.view().index == 0


def test_every_per_layer_instance_gets_the_configs_max_seq_len():
    model = _decoder("fox")  # two layers: the stack's instance and one of layer 1's own
    assert [pe.max_seq_len for pe in model.decoder.encodings()] == [32, 32]


def test_a_layer_encoding_that_embeds_is_refused_by_name():
    with pytest.raises(ValueError, match=r"TransformerConfig\.layer_encodings\[1\]: 'learned' adds to the token "
                                         r"embeddings, which the stack does once"):
        _decoder("rope", layer_encodings={1: {"encoding": "learned"}})


def test_dropout_of_one_is_refused():
    with pytest.raises(ValueError, match=r"TransformerConfig\.dropout must be in \[0, 1\); got 1\.0\."):
        _decoder(dropout=1.0)


def test_tokens_that_are_not_a_tensor_are_named_by_type():
    with pytest.raises(TypeError, match=r"^tokens must be an integer tensor of token ids \(B, T\); got list\.$"):
        _decoder()([[1, 2, 3]])


# -- surviving mutants of the seed-5 sample (model) -------------------------------------------------------------------


def test_a_layer_view_projects_with_the_layers_own_q_and_k():
    attn = _decoder().decoder.blocks[1].attn
    view = attn.view()
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(view.project_q(x), attn.q_proj(x).unflatten(-1, (2, 8)))
    torch.testing.assert_close(view.project_k(x), attn.k_proj(x).unflatten(-1, (2, 8)))


def test_a_one_sequence_cache_broadcasts_per_sequence_key_positions():
    k = torch.randn(1, 2, 3, 8)
    grown = KVCache(layers=[LayerCache(k=k, v=k)], k_pos=torch.tensor([[0, 5, 6]]), offset=3).broadcast_to(4)
    assert torch.equal(grown.k_pos, torch.tensor([[0, 5, 6]] * 4))


def test_token_shape_and_encoder_cache_errors_say_what_to_do():
    with pytest.raises(ValueError, match=r"^tokens must have shape \(B, T\); got \(3,\)\. Hint: tokens\[None\] adds"):
        _decoder()(torch.zeros(3, dtype=torch.long))
    encoder = Transformer(TransformerConfig(vocab_size=11, dim=16, n_heads=2, n_layers=1, kind="encoder",
                                            encoding="rope"))
    with pytest.raises(ValueError, match=r"^a bidirectional encoder has no KV cache: every token attends to every "
                                         r"other\.$"):
        encoder(torch.zeros(1, 3, dtype=torch.long), cache=KVCache())
