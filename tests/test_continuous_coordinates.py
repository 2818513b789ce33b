"""Continuous (float) coordinates: accepted by encodings that declare ``continuous_coordinates``, checked once in
``Positions.validate`` (dtype, finite), refused with a clear error by the encodings that need integers."""

from __future__ import annotations

import pytest
import torch

from posenc import Positions, Transformer, TransformerConfig
from posenc.encodings.grid2d import AxialRoPE, grid_coordinates


class ContinuousAxial(AxialRoPE):
    """Axial RoPE reading float coordinates as they are (its angles are formed in float64 from any dtype)."""

    continuous_coordinates = True


def _model(encoding: str = "axial_rope") -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(kind="encoder", vocab_size=20, dim=16, n_layers=1, n_heads=2, max_seq_len=32,
                            encoding=encoding)
    return Transformer(cfg).eval()


def test_a_continuous_encoding_accepts_float_coordinates_and_they_equal_integer_ones():
    pe = ContinuousAxial(dim=16, n_heads=2)
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    pos = torch.arange(6)
    table = grid_coordinates(2, 3)
    exact = pe.bind(Positions(coordinates=table)).rotate(q, k, pos, pos)
    for dtype in (torch.float32, torch.float64):
        got = pe.bind(Positions(coordinates=table.to(dtype))).rotate(q, k, pos, pos)
        torch.testing.assert_close(got, exact, atol=0, rtol=0)  # integral values: the same float64 angles
    half = pe.bind(Positions(coordinates=table.double() + 0.5)).rotate(q, k, pos, pos)
    assert not torch.allclose(half[0], exact[0])  # fractions are read, not rounded
    coords = (torch.rand(1, 6, 2) * 4).double()  # straight to the hook: (B, T, A) float
    assert torch.isfinite(pe.rotate(q, k, coords, coords)[0]).all()


def test_integer_encodings_refuse_float_coordinates_naming_the_continuous_ones():
    model, x = _model(), torch.randint(0, 20, (1, 6))
    with pytest.raises(TypeError, match=r"integer coordinates only.*continuous_coordinates = True.*string"):
        model(x, positions=Positions(coordinates=grid_coordinates(2, 3).double()))
    with pytest.raises(TypeError, match="integer coordinates only"):
        AxialRoPE(dim=16, n_heads=2).rotate_one(torch.randn(1, 2, 6, 8), torch.zeros(1, 6, 2))


def test_positions_validate_refuses_non_finite_and_half_precision_coordinates():
    bad = grid_coordinates(2, 3).double()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="coordinates must be finite"):
        Positions(pos=torch.arange(6), coordinates=bad).validate(6)
    with pytest.raises(TypeError, match="float32 or float64; got torch.float16"):
        Positions(pos=torch.arange(6), coordinates=grid_coordinates(2, 3).half()).validate(6)
    inf = grid_coordinates(2, 3).float()
    inf[0, 0] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        ContinuousAxial(dim=16, n_heads=2).rotate_one(torch.randn(1, 2, 6, 8), inf.unsqueeze(0))
    ok = Positions(pos=torch.arange(6), coordinates=grid_coordinates(2, 3).float()).validate(6)
    assert ok.validated and ok.coordinates.dtype == torch.float32  # kept as given
