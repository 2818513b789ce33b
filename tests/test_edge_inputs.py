"""Inputs at the edges: empty batches and sequences, 1-D and mixed-dtype masks, generate's sampling arguments.

Each either works (and agrees with the reference backend) or raises a ValueError/TypeError naming the argument.
"""

from __future__ import annotations

import pytest
import torch

import posenc
from layer_inputs import attend
from posenc import Transformer, TransformerConfig
from posenc.backends import BACKENDS

NAMES = posenc.registered_names()
H, D = 2, 8
FAST_BACKENDS = [b for b in BACKENDS if b != "flex"]


def _call(name, b, tq, tk, **kwargs):
    pe = posenc.get_encoding(name, dim=H * D, n_heads=H, max_seq_len=32).eval()
    q = torch.randn(b, H, tq, D)
    k, v = torch.randn(b, H, tk, D), torch.randn(b, H, tk, D)
    q_pos, k_pos = torch.arange(tk - tq, tk), torch.arange(tk)
    q, k = pe.rotate(q, k, q_pos, k_pos)
    return pe, (q, k, v), dict(q_pos=q_pos, k_pos=k_pos, **kwargs)


@pytest.mark.parametrize("shape", [(0, 4, 4), (2, 0, 0), (2, 0, 3)], ids=["B=0", "T=0", "Tq=0"])
@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_or_sequence_gives_an_empty_output(name, shape):
    b, tq, tk = shape
    pe, qkv, kwargs = _call(name, b, tq, tk)
    for backend in ("auto", "reference"):
        out = attend(*qkv, pe, backend=backend, **kwargs)
        assert out.shape == (b, H, tq, D)


def _backends(pe):
    return list(FAST_BACKENDS)


@pytest.mark.parametrize("name", ["nope", "alibi", "rope", "t5", "cope", "shaw"])
def test_a_1d_key_mask_equals_its_4d_form(name):
    torch.manual_seed(0)
    pe, qkv, kwargs = _call(name, 2, 5, 5)
    keep = torch.tensor([True, False, True, True, False])
    for backend in _backends(pe):
        if backend in ("flex",):
            continue
        try:
            want = attend(*qkv, pe, backend=backend, attn_mask=keep[None, None, None, :], **kwargs)
        except ValueError:  # a backend that does not take this call says so for both forms
            continue
        got = attend(*qkv, pe, backend=backend, attn_mask=keep, **kwargs)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("qdtype", [torch.bfloat16, torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("mdtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["nope", "alibi"])
def test_a_float_mask_of_another_dtype_is_accepted(name, qdtype, mdtype):
    torch.manual_seed(0)
    pe, (q, k, v), kwargs = _call(name, 1, 4, 4)
    q, k, v = q.to(qdtype), k.to(qdtype), v.to(qdtype)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1] = float("-inf")
    ref = attend(q, k, v, pe, backend="reference", attn_mask=mask.to(qdtype), **kwargs)
    tol = {torch.bfloat16: 2e-2, torch.float16: 2e-3}.get(qdtype, 1e-5)
    for backend in ("auto", "dense", "chunked", "sdpa", "reference"):
        try:
            out = attend(q, k, v, pe, backend=backend, attn_mask=mask.to(mdtype), **kwargs)
        except ValueError:  # e.g. sdpa refuses a bias encoding, with the reason
            continue
        torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


# -- generate -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return Transformer(TransformerConfig(kind="decoder", vocab_size=30, dim=16, n_heads=2)).eval()


@pytest.mark.parametrize("kwargs, word, exc", [
    (dict(temperature=float("nan")), "temperature", ValueError), (dict(temperature=float("inf")), "temperature",
                                                                  ValueError),
    (dict(temperature=-1.0), "temperature", ValueError), (dict(temperature=1.0, top_k=0), "top_k", ValueError),
    (dict(temperature=1.0, top_k=-2), "top_k", ValueError), (dict(temperature=1.0, top_k=1.5), "top_k", TypeError),
    (dict(temperature="0.5"), "temperature", TypeError),
])
def test_generate_rejects_bad_sampling_arguments(decoder, kwargs, word, exc):
    with pytest.raises(exc, match=word):
        decoder.generate(torch.tensor([[1, 2]]), 3, **kwargs)


@pytest.mark.parametrize("prompt, exc", [
    (torch.zeros(2, 0, dtype=torch.long), ValueError), (torch.tensor([1, 2]), ValueError),
    (torch.zeros(1, 2), TypeError), ([[1, 2]], TypeError),
])
def test_generate_rejects_bad_prompts(decoder, prompt, exc):
    with pytest.raises(exc, match="prompt"):
        decoder.generate(prompt, 3)


@pytest.mark.parametrize("kwargs, words, exc", [
    (dict(eos_id=True), "eos_id must be an int; got bool", TypeError),  # stopped at token 1
    (dict(eos_id=1.5), "eos_id must be an int; got float", TypeError),  # never stopped
    (dict(eos_id="2"), "eos_id must be an int; got str", TypeError),
    (dict(eos_id=torch.tensor(2)), "eos_id must be an int; got Tensor", TypeError),
    (dict(eos_id=10**20), r"eos_id must be an int >= 0 and <= 29", ValueError),  # OverflowError after the prefill
    (dict(eos_id=-1), r"eos_id must be an int >= 0", ValueError),
    (dict(temperature=1.0, generator="seed"), "generator must be a torch.Generator", TypeError),
    (dict(src=torch.zeros(1, 2, dtype=torch.long)), "src and src_padding_mask are for encoder_decoder", ValueError),
])
def test_generate_checks_eos_id_generator_and_src_before_decoding(decoder, kwargs, words, exc):
    """Red team round four: these were taken silently (a decoder ignored src=) or failed mid-decoding."""
    with pytest.raises(exc, match=words):
        decoder.generate(torch.tensor([[1, 2]]), 3, **kwargs)
    assert decoder.generate(torch.tensor([[1, 2]]), 3, eos_id=29).shape[0] == 1  # the last id of the vocabulary


def test_generate_on_an_empty_batch_returns_an_empty_batch(decoder):
    out = decoder.generate(torch.zeros(0, 3, dtype=torch.long), 4)
    assert out.shape == (0, 7)


def test_generate_top_k_one_is_greedy(decoder):
    prompt = torch.tensor([[1, 2, 3]])
    greedy = decoder.generate(prompt, 5)
    sampled = decoder.generate(prompt, 5, temperature=0.7, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sampled, greedy)


# -- plots ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["waves", "decay"])
def test_a_plot_refuses_more_positions_than_it_can_show_before_allocating(kind):
    from posenc import viz

    pe = posenc.get_encoding("rope", dim=16, n_heads=2)
    with pytest.raises(ValueError, match=str(viz.MAX_PLOT_LENGTH)):
        if kind == "waves":
            viz.waves_data(pe, length=viz.MAX_PLOT_LENGTH + 1)
        else:
            viz.decay_data(pe, max_distance=viz.MAX_PLOT_LENGTH + 1)
    assert viz.waves_data(pe, length=viz.MAX_PLOT_LENGTH).shape[0] == viz.MAX_PLOT_LENGTH  # the limit itself works
