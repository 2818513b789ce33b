"""Positions far past 2**31: RoPE and sinusoidal angles are range-reduced exactly, so values stay at the dtype floor.

The reference is mpmath at 60 digits of ``cos/sin(p * theta)`` with the encoding's own float64 frequencies (the
encoding's definition). A float64 product alone is off by ~1e-5 at 2**40 and meaningless at 2**53.
"""

from __future__ import annotations

import pytest
import torch

import posenc

mpmath = pytest.importorskip("mpmath")
mpmath.mp.dps = 60

POSITIONS = [2**31 + 7, 2**40, 2**40 + 12345, 2**53 - 1, 2**53 + 1, 2**62 + 3, 2**63 - 1]
F32_FLOOR = 2.0**-24  # half an ulp of float32 near 1
F64_FLOOR = 1e-8  # exact reduction leaves ~1e-9 rad; float64 sin/cos of the reduced angle is exact beyond that


def _reference(p: int, thetas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    angles = [mpmath.mpf(p) * mpmath.mpf(t) for t in thetas]  # mpf(t) is the float64 frequency exactly
    return (torch.tensor([float(mpmath.cos(a)) for a in angles], dtype=torch.float64),
            torch.tensor([float(mpmath.sin(a)) for a in angles], dtype=torch.float64))


@pytest.mark.parametrize("p", POSITIONS)
def test_rope_cos_sin_is_exact_far_out(p):
    pe = posenc.get_encoding("rope", dim=64, n_heads=4)
    cos_ref, sin_ref = _reference(p, pe.inv_freq().tolist())
    pos = torch.tensor([p])
    cos32, sin32 = pe.cos_sin(pos)
    cos64, sin64 = pe.cos_sin(pos, dtype=torch.float64)
    assert (cos32[0].double() - cos_ref).abs().max() <= F32_FLOOR
    assert (sin32[0].double() - sin_ref).abs().max() <= F32_FLOOR
    assert (cos64[0] - cos_ref).abs().max() <= F64_FLOOR
    assert (sin64[0] - sin_ref).abs().max() <= F64_FLOOR


@pytest.mark.parametrize("p", POSITIONS)
def test_sinusoidal_is_exact_far_out_and_float64_module_keeps_float64(p):
    dim = 32
    pe = posenc.get_encoding("sinusoidal", dim=dim, n_heads=4)
    i = torch.arange(0, dim, 2, dtype=torch.float64)
    thetas = torch.exp(-torch.log(torch.tensor(10000.0, dtype=torch.float64)) * i / dim).tolist()
    cos_ref, sin_ref = _reference(p, thetas)
    ref = torch.stack((sin_ref, cos_ref), dim=-1).flatten()  # interleaved, as in the paper
    pos = torch.tensor([p])
    out32 = pe.embed(torch.zeros(1, 1, dim), pos)[0, 0]
    assert out32.dtype == torch.float32 and (out32.double() - ref).abs().max() <= F32_FLOOR
    out64 = pe.double().embed(torch.zeros(1, 1, dim, dtype=torch.float64), pos)[0, 0]
    assert out64.dtype == torch.float64 and (out64 - ref).abs().max() <= F64_FLOOR


def test_a_float64_sinusoidal_module_has_a_float64_table_near_the_origin():
    pe = posenc.get_encoding("sinusoidal", dim=32, n_heads=4, max_seq_len=64).double()
    pos = torch.arange(64)
    got = pe.embed(torch.zeros(1, 64, 32, dtype=torch.float64), pos)[0]
    want = posenc.sinusoidal_table(pos, 32, dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert (got - got.float().double()).abs().max() > 0  # more digits than float32 holds


def test_small_positions_take_the_plain_product_bit_for_bit():
    from posenc._angles import EXACT_FROM, exact_angles

    theta = posenc.get_encoding("rope", dim=64, n_heads=4).inv_freq()
    pos = torch.tensor([0, 1, 1000, EXACT_FROM - 1])
    assert torch.equal(exact_angles(pos, theta), pos.double()[:, None] * theta)


def test_attention_with_rope_far_out_is_relative():
    """RoPE's promise holds at 2**50: shifting every position by the same amount leaves attention unchanged."""
    torch.manual_seed(0)
    pe = posenc.get_encoding("rope", dim=32, n_heads=2)
    q, k, v = (torch.randn(1, 2, 6, 16, dtype=torch.float64) for _ in range(3))
    outs = []
    for start in (0, 2**50):
        pos = torch.arange(start, start + 6)
        qr, kr = pe.rotate(q, k, pos, pos)
        outs.append(posenc.attention(qr, kr, v, pe, q_pos=pos, k_pos=pos, causal=True))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-7, rtol=1e-7)
