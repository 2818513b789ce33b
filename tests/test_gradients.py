"""Gradients: torch.autograd.gradcheck in float64 for every encoding with trainable parameters, end to end
through its hooks (embed, rotate, bias / attention terms inside posenc.attention)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import posenc
from layer_inputs import attend

NAMES = posenc.registered_names()
H, D, T = 2, 4, 5


class _Probe(nn.Module):
    """Runs every hook of ``pe`` once: embed on x, rotate q/k, then attention (bias or terms) with v."""

    def __init__(self, pe: posenc.PositionalEncoding) -> None:
        super().__init__()
        self.pe = pe

    def forward(self, x, q, k, v, pos):
        out = self.pe.embed(x, pos).sum(-1)  # (B, T)
        q, k = self.pe.rotate(q, k, pos, pos)
        att = attend(q, k, v, self.pe, q_pos=pos, k_pos=pos, causal=self.pe.causal, backend="auto")
        return att.sum(-1) + out[:, None, :]  # (B, H, T)


def _trainable(name: str, causal: bool):
    torch.manual_seed(0)
    pe = posenc.get_encoding(name, dim=H * D, n_heads=H, max_seq_len=8, causal=causal).double().train()
    params = {n: p for n, p in pe.named_parameters() if p.requires_grad}
    return pe, params


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_parameters(name, causal):
    try:
        pe, params = _trainable(name, causal)
    except ValueError as exc:
        pytest.skip(f"{name} refuses causal={causal}: {exc}")
    if not params:
        pytest.skip(f"{name} has no trainable parameters")
    if hasattr(pe, "generator"):  # randomized positions: fix the sample so the function is deterministic
        pe.eval()
    probe = _Probe(pe)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, T, H * D, generator=g, dtype=torch.float64)
    q, k, v = (torch.randn(1, H, T, D, generator=g, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(T)
    names = list(params)

    def fn(*values):
        return functional_call(probe, {f"pe.{n}": val for n, val in zip(names, values)}, (x, q, k, v, pos))

    inputs = tuple(params[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_inputs(name):
    """Gradients with respect to q, k, v and x are right too (the encoding is differentiable where it should be)."""
    pe = posenc.get_encoding(name, dim=H * D, n_heads=H, max_seq_len=8, causal=True).double().eval()
    probe = _Probe(pe)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, T, H * D, generator=g, dtype=torch.float64, requires_grad=True)
    q, k, v = (torch.randn(1, H, T, D, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda *a: probe(*a, torch.arange(T)), (x, q, k, v), eps=1e-6, atol=1e-5,
                                    fast_mode=True,
                                    rtol=1e-4)
