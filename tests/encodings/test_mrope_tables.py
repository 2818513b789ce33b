"""M-RoPE's explicit pair -> axis table (``pair_axes``, ``axis_scale``): Qwen2-VL's and Qwen3-VL's layouts are two of
its tables, "no axis" leaves a pair unrotated, and tables Qwen's config keys cannot describe refuse to export."""

from __future__ import annotations

import pytest
import torch

from posenc import get_encoding, to_hf_config
from posenc.encodings.mrope import NO_AXIS, mrope_axes, pair_axis_angles

DIM, HEADS = 64, 2  # head_dim 32: 16 pairs


def _coords(t=7):
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 50, (2, t, 3), generator=g)


@pytest.mark.parametrize("interleaved", [False, True])
def test_qwen_layouts_are_tables(interleaved):
    section = [4, 6, 6]
    qwen = get_encoding("mrope", dim=DIM, n_heads=HEADS, mrope_section=section, mrope_interleaved=interleaved)
    table = get_encoding("mrope", dim=DIM, n_heads=HEADS, pair_axes=mrope_axes(section, interleaved=interleaved))
    assert qwen.pair_axes == table.pair_axes and qwen.qwen_layout
    c = _coords()
    for a, b in zip(qwen.cos_sin(c, dtype=torch.float64), table.cos_sin(c, dtype=torch.float64)):
        assert torch.equal(a, b)
    if not interleaved:  # a blocked table is Qwen2-VL's: it exports with its sections
        assert to_hf_config(table)["rope_parameters"]["mrope_section"] == section


def test_table_angles_by_hand():
    coords = torch.tensor([[3, 5, 7]])
    inv = torch.tensor([1.0, 0.5, 0.25, 0.125], dtype=torch.float64)
    angles = pair_axis_angles(coords, inv, [2, NO_AXIS, 0, 1], axis_scale=[2.0, 1.0, 0.5])
    assert angles.tolist() == [[7 * 0.5 * 1.0, 0.0, 3 * 2.0 * 0.25, 5 * 1.0 * 0.125]]


def test_no_axis_pairs_are_not_rotated_and_scale_multiplies():
    axes = [0, 1, 2, NO_AXIS] * 4
    pe = get_encoding("mrope", dim=DIM, n_heads=HEADS, pair_axes=axes, axis_scale=[1.0, 0.5, 2.0])
    c = _coords()
    cos, sin = pe.cos_sin(c, dtype=torch.float64)
    none = torch.tensor(axes) == NO_AXIS
    assert torch.equal(cos[..., none], torch.ones_like(cos[..., none]))
    assert torch.equal(sin[..., none], torch.zeros_like(sin[..., none]))
    inv = 10000.0 ** (-torch.arange(0, 32, 2, dtype=torch.float64) / 32)
    i = 5  # pair 5 reads height (axis 1) at scale 0.5
    torch.testing.assert_close(cos[..., i], (c[..., 1].double() * 0.5 * inv[i]).cos(), atol=1e-12, rtol=0)
    assert not pe.qwen_layout
    with pytest.raises(ValueError, match="pair -> axis table"):
        to_hf_config(pe)


def test_table_errors():
    with pytest.raises(ValueError, match="pair_axes must be a list of head_dim / 2 = 16"):
        get_encoding("mrope", dim=DIM, n_heads=HEADS, pair_axes=[0, 1])
    with pytest.raises(ValueError, match="pair_axes must be"):
        get_encoding("mrope", dim=DIM, n_heads=HEADS, pair_axes=[3] * 16)
    with pytest.raises(ValueError, match="not both"):
        get_encoding("mrope", dim=DIM, n_heads=HEADS, pair_axes=[0] * 16, mrope_section=[16, 0, 0])
    with pytest.raises(ValueError, match="axis_scale must be 3 finite numbers"):
        get_encoding("mrope", dim=DIM, n_heads=HEADS, axis_scale=[1.0, float("inf"), 1.0])
