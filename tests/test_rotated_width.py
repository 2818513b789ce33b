"""The declared q/k width of a rotation (``PositionalEncoding.rotated_width``) and the softmax scale the core keeps.

An encoding may return q/k of another width than ``head_dim`` from ``rotate`` (PoPE: ``2 * head_dim``), declared by
``rotated_width``; :func:`posenc.attention` then keeps the scale of the heads before the rotation,
``1 / sqrt(head_dim)``.
"""

from __future__ import annotations

import math

import pytest
import torch

import posenc
from posenc.base import PositionalEncoding


class _Doubled(PositionalEncoding):
    """A test rotation that widens q/k to ``2 * head_dim`` by repeating them: ``q' . k' = 2 q . k``."""

    def rotate(self, q, k, q_pos, k_pos):
        return torch.cat((q, q), dim=-1), torch.cat((k, k), dim=-1)

    def rotated_width(self, head_dim: int) -> int:
        return 2 * head_dim


def test_default_width_is_head_dim_for_every_registered_encoding_but_the_declared():
    widths = {name: posenc.get_encoding(name, dim=32, n_heads=4).rotated_width(8) for name in posenc.registered_names()}
    assert {name for name, w in widths.items() if w != 8} <= {"pope"}  # widening is declared, never a default


@pytest.mark.parametrize("backend", ["auto", "reference", "dense", "chunked"])
def test_attention_keeps_the_scale_of_the_heads_before_a_widening_rotation(backend):
    pe = _Doubled(dim=16, n_heads=2)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(5)
    q2, k2 = pe.rotate(q, k, pos, pos)  # (1, 2, 5, 16): scores 2 q.k
    got = posenc.attention(q2, k2, v, pe, q_pos=pos, k_pos=pos, causal=True, backend=backend)
    want = posenc.attention(q2, k2, v, pe, q_pos=pos, k_pos=pos, causal=True, backend=backend,
                            scale=1 / math.sqrt(8))
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    # ... which is 1/sqrt(8) on 2 q.k, not 1/sqrt(16): the same as plain attention with scale sqrt(2)/sqrt(8)
    plain = posenc.attention(q, k, v, None, causal=True, scale=2 / math.sqrt(8))
    torch.testing.assert_close(got, plain, atol=1e-12, rtol=0)


def test_widths_the_encoding_does_not_declare_keep_their_own_scale():
    """q/k of any other width (not rotated by this pe) are scaled by their own width, as before."""
    pe = _Doubled(dim=16, n_heads=2)
    q, k, v = (torch.randn(1, 2, 4, 12, dtype=torch.float64) for _ in range(3))
    got = posenc.attention(q, k, v, pe)
    torch.testing.assert_close(got, posenc.attention(q, k, v, pe, scale=1 / math.sqrt(12)), atol=1e-12, rtol=0)
