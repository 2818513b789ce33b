"""Edges of posenc.model that mutation testing (``make test-mutate``, group model) found no test for: an
encoder-decoder forward that fills its KV cache, the options every per-layer instance is built with, the cache's
concatenation of shared and per-sequence positions and features, and the words of an error."""

import pytest
import torch

from posenc import KVCache, Transformer, TransformerConfig
from posenc.model import _cat_features, _cat_positions


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
