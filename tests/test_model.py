"""The small Transformer: kinds, KV-cache generation, persistence, padding, GQA."""

from __future__ import annotations

import math

import pytest
import torch

from posenc import KVCache, Transformer, TransformerConfig


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, dim=32, n_layers=2, n_heads=4, encoding="rope") | kw
    return Transformer(TransformerConfig(**cfg)).eval()


def test_generate_greedy_equals_argmax_of_full_forward():
    model = _model()
    prompt = torch.randint(0, 50, (2, 5))
    out = model.generate(prompt, 6)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    for t in range(5, 11):  # each generated token is the argmax of a full forward over what came before
        torch.testing.assert_close(model(out[:, :t])[:, -1].argmax(-1), out[:, t])


def test_generate_sampling_is_reproducible_and_stops_at_eos():
    model = _model()
    prompt = torch.randint(0, 50, (2, 3))
    a = model.generate(prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    eos = int(model.generate(prompt, 1)[0, -1])
    stopped = model.generate(prompt[:1], 20, eos_id=eos)
    assert stopped.shape[1] == 4 and stopped[0, -1] == eos


def test_encoder_decoder_generate_matches_teacher_forcing():
    model = _model(kind="encoder_decoder", encoding="sinusoidal")
    src = torch.randint(0, 50, (2, 7))
    bos = torch.zeros(2, 1, dtype=torch.long)
    out = model.generate(bos, 5, src=src)
    logits = model(src, out[:, :-1])
    torch.testing.assert_close(logits.argmax(-1), out[:, 1:])


def test_save_load_round_trip(tmp_path):
    model = _model(kind="encoder", encoding="learned", n_kv_heads=2)
    x = torch.randint(0, 50, (2, 9))
    model.save(tmp_path / "model.pt")
    loaded = Transformer.load(tmp_path / "model.pt").eval()
    assert loaded.cfg == model.cfg
    torch.testing.assert_close(loaded(x), model(x))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable posenc Transformer checkpoint"):
        Transformer.load(tmp_path / "junk.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a posenc Transformer checkpoint"):
        Transformer.load(tmp_path / "other.pt")


def test_padding_does_not_change_real_tokens():
    model = _model(kind="encoder", encoding="sinusoidal")
    x = torch.randint(1, 50, (1, 6))
    padded = torch.cat((x, torch.zeros(1, 3, dtype=torch.long)), dim=1)
    mask = torch.tensor([[True] * 6 + [False] * 3])
    torch.testing.assert_close(model(padded, padding_mask=mask)[:, :6], model(x), atol=1e-5, rtol=1e-5)


def test_packed_sequences_with_restarting_positions():
    """Two documents in one row: positions restart, a block-diagonal mask keeps them apart."""
    model = _model(kind="encoder", encoding="rope")
    a, b = torch.randint(0, 50, (1, 4)), torch.randint(0, 50, (1, 5))
    packed = torch.cat((a, b), dim=1)
    pos = torch.cat((torch.arange(4), torch.arange(5)))
    doc = torch.tensor([0] * 4 + [1] * 5)
    same_doc = (doc[:, None] == doc[None, :])[None, None]  # (1, 1, T, T)
    hidden = model.decoder(model._embed(packed, "tokens"), positions=pos, padding_mask=None, cache=None)
    # the public forward takes a padding mask only; exercise the stack with a document mask through attention
    assert hidden.shape == (1, 9, 32)
    from posenc import attention, get_encoding
    pe = get_encoding("rope", dim=32, n_heads=4)
    q = torch.randn(1, 4, 9, 8)
    qa, ka = pe.rotate(q, q, pos, pos)
    packed_out = attention(qa, ka, q, pe, q_pos=pos, k_pos=pos, attn_mask=same_doc)
    qa1, ka1 = pe.rotate(q[:, :, :4], q[:, :, :4], pos[:4], pos[:4])
    torch.testing.assert_close(packed_out[:, :, :4], attention(qa1, ka1, q[:, :, :4], pe), atol=1e-6, rtol=1e-5)
    qb, kb = pe.rotate(q[:, :, 4:], q[:, :, 4:], pos[4:], pos[4:])
    torch.testing.assert_close(packed_out[:, :, 4:], attention(qb, kb, q[:, :, 4:], pe), atol=1e-6, rtol=1e-5)


def test_kv_cache_tracks_offsets():
    model = _model()
    cache = KVCache()
    model(torch.randint(0, 50, (1, 4)), cache=cache)
    model(torch.randint(0, 50, (1, 1)), cache=cache)
    assert cache.offset == 5 and cache.layers[0].k.shape[2] == 5
    torch.testing.assert_close(cache.k_pos, torch.arange(5))


def test_errors_for_misuse():
    enc = _model(kind="encoder")
    with pytest.raises(ValueError, match="no KV cache"):
        enc(torch.zeros(1, 3, dtype=torch.long), cache=KVCache())
    with pytest.raises(ValueError, match="needs a decoder"):
        enc.generate(torch.zeros(1, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"model\(src, tgt\)"):
        _model(kind="encoder_decoder")(torch.zeros(1, 3, dtype=torch.long))


@pytest.mark.parametrize("kind", ["encoder", "decoder", "encoder_decoder"])
@pytest.mark.parametrize("dim,vocab", [(64, 18), (256, 256)])
def test_initial_loss_is_that_of_a_uniform_guess(kind, dim, vocab):
    # an untrained model predicts no token in particular: loss ~ ln(vocab). The old recipe (tied head, sqrt(dim)
    # embedding scale) put the current token at logit ~sqrt(dim): loss 10.45 on 18 tokens.
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind=kind, vocab_size=vocab, dim=dim, n_heads=4, max_seq_len=64))
    tokens, targets = torch.randint(0, vocab, (2, 8, 32))
    with torch.no_grad():
        logits = model(tokens, tokens) if kind == "encoder_decoder" else model(tokens)
    for against in (targets, tokens):  # a random next token, and the current one (which a tied head favours)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), against.flatten())
        assert abs(float(loss) - math.log(vocab)) < 0.02 * math.log(vocab)


def test_tied_head_scales_logits_and_starts_near_uniform():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=18, dim=128, tie_embeddings=True))
    assert model.head.weight is model.tok_emb.weight
    tokens, targets = torch.randint(0, 18, (2, 8, 32))
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
    assert abs(float(loss) - math.log(18)) < 0.25 * math.log(18)


def test_the_model_leaves_the_encodings_initialisation_alone():
    # FIRE's MLP keeps nn.Linear's default init, U(+-1/sqrt(fan_in)), instead of the model's own
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(encoding="fire", dim=64))
    layers = [m for m in model.pe.modules() if isinstance(m, torch.nn.Linear)]
    assert layers
    for layer in layers:
        bound, weight = layer.in_features**-0.5, layer.weight.detach()
        assert float(weight.abs().max()) <= bound
        assert float(weight.std()) > 0.5 * bound / math.sqrt(3)
