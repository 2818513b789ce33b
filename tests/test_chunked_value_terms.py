"""``chunked``'s hand-written backward pass and value terms whose gradient does not flow through the weights.

A value term may depend on a parameter that the attention weights do not (stick-breaking's learned remainder vector
``(1 - sum_j A_ij) r_h``). When nothing upstream of the weights needs a gradient (q and k frozen, no logit parameter),
the weights carry none, but the value term's parameter still does.
"""

from __future__ import annotations

import torch

import posenc
import posenc.attention_settings as settings
from posenc.base import PositionalEncoding
from posenc.terms import AttentionTerms, ScoreBlock

B, H, D, T = 1, 2, 4, 6


class _Offset(PositionalEncoding):
    """A test-only encoding with a value term only: ``out_i += (2 - sum_j p_ij) * u_h`` (``u`` a parameter)."""

    name = "value_offset"

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        self.u = torch.nn.Parameter(torch.randn(n_heads, self.head_dim))

    def terms(self, call):
        return _OffsetTerms(self)


class _OffsetTerms(AttentionTerms):
    call_tensors = ()

    def __init__(self, pe: _Offset) -> None:
        self.pe = pe

    def values(self, probs: torch.Tensor, blk: ScoreBlock) -> torch.Tensor:
        weight = 2.0 - probs.sum(-1, keepdim=True)  # (B, H, rows, 1)
        return weight * self.pe.u.to(probs.dtype)[None, :, None, :]


def test_a_value_term_parameter_gets_its_gradient_when_the_weights_need_none(monkeypatch):
    monkeypatch.setattr(settings, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(settings, "TERMS_MIN_ROWS", 2)
    pe = _Offset(dim=H * D, n_heads=H).double()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3))  # no grad
    grads = {}
    for backend in ("reference", "chunked"):
        out = posenc.attention(q, k, v, pe, causal=True, backend=backend)
        if backend == "chunked":
            assert type(out.grad_fn).__name__ == "ChunkedTermsBackward"
        (grads[backend],) = torch.autograd.grad(out.pow(2).sum(), pe.u)
    assert grads["reference"].abs().sum() > 0
    torch.testing.assert_close(grads["chunked"], grads["reference"], atol=1e-12, rtol=1e-12)
    # the same, when v needs a gradient (the core's dv) but nothing upstream of the weights does
    v.requires_grad_()
    got, want = (torch.autograd.grad(posenc.attention(q, k, v, pe, causal=True, backend=b).pow(2).sum(), (v, pe.u))
                 for b in ("chunked", "reference"))
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, atol=1e-12, rtol=1e-12)
