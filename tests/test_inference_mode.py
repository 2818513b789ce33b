"""Every public entry point under ``torch.no_grad()``, ``torch.inference_mode()`` and ``torch.compile``.

Serving stacks run under inference mode, whose tensors carry no version counter; memos keyed on ``_version`` must
not read it. The property: for every registered encoding, ``posenc.attention``, ``Transformer(...)(x)`` and
``generate`` give the same numbers under each mode as in plain eager mode.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import posenc
from layer_inputs import attend
from posenc import Transformer, TransformerConfig

NAMES = posenc.registered_names()
MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
H, D, T = 2, 8, 6


def _attend(name: str, mode) -> torch.Tensor:
    torch.manual_seed(0)
    pe = posenc.get_encoding(name, dim=H * D, n_heads=H, max_seq_len=32).eval()
    with mode():
        q, k, v = (torch.randn(2, H, T, D) for _ in range(3))
        pos = torch.arange(T)
        q, k = pe.rotate(q, k, pos, pos)
        first = attend(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True)
        again = attend(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True)  # memo hit (if any) agrees
        torch.testing.assert_close(again, first)
        return first


def _model(name: str) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(kind="decoder", vocab_size=40, dim=H * D * 2, n_heads=H, n_layers=2,
                                         encoding=name, max_seq_len=32)).eval()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", NAMES)
def test_attention_under_mode_equals_eager(name, mode):
    eager = _attend(name, contextlib.nullcontext)
    torch.testing.assert_close(_attend(name, MODES[mode]), eager)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", NAMES)
def test_model_and_generate_under_mode_equal_eager(name, mode):
    model, x = _model(name), torch.randint(0, 40, (2, T))
    eager_logits = model(x).detach()
    eager_tokens = model.generate(x[:, :3], max_new_tokens=4)
    with MODES[mode]():
        logits = model(x)
        tokens = model.generate(x[:, :3], max_new_tokens=4)
    torch.testing.assert_close(logits, eager_logits)
    assert torch.equal(tokens, eager_tokens)


def test_memo_under_inference_mode_sees_new_positions():
    """Without a version counter, an in-place write to inference-mode positions must still change the answer."""
    for name in ("rope", "alibi"):
        pe = posenc.get_encoding(name, dim=H * D, n_heads=H, max_seq_len=32).eval()
        with torch.inference_mode():
            q, k, v = (torch.randn(1, H, T, D) for _ in range(3))
            pos = torch.arange(T)
            before = attend(*pe.rotate(q, k, pos, pos), v, pe, q_pos=pos, k_pos=pos)
            pos.mul_(3)
            after = attend(*pe.rotate(q, k, pos, pos), v, pe, q_pos=pos, k_pos=pos)
            fresh = attend(*pe.rotate(q, k, pos.clone(), pos.clone()), v, pe, q_pos=pos.clone(),
                                     k_pos=pos.clone())
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, fresh)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", ["rope", "alibi"])
def test_compiled_model_under_mode(name, mode):
    model, x = _model(name), torch.randint(0, 40, (2, T))
    eager = model(x).detach()
    compiled = torch.compile(model)
    with MODES[mode]():
        out = compiled(x)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("rope", "alibi")])
def test_compiled_model_under_inference_mode_every_encoding(name):
    model, x = _model(name), torch.randint(0, 40, (2, T))
    eager = model(x).detach()
    with torch.inference_mode():
        out = torch.compile(model)(x)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
