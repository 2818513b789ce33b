"""The ``generators`` plot kind: a learned rotation's generators L_k (string, liere, comrope) and their commutators."""

from __future__ import annotations

import pytest
import torch

from posenc import viz


@pytest.mark.parametrize(("name", "options", "commute"), [
    ("string", {"axes": 2}, True), ("string", {"axes": 3, "variant": "circulant"}, True),
    ("comrope", {"axes": 3, "variant": "ld", "block_size": 4}, True), ("liere", {"axes": 2}, False)])
def test_generators_data_are_the_encodings_generators_and_their_commutators(name, options, commute):
    pe = viz.resolve_encoding(name, dim=48, n_heads=4, max_seq_len=64, **options)
    assert "generators" in viz.applicable_kinds(pe)
    gens, comm = viz.generators_data(pe)
    torch.testing.assert_close(gens, pe.generator_matrices(0), atol=0, rtol=0)
    a = pe.n_axes
    assert gens.shape == (a, 12, 12) and comm.shape == (a, a)
    assert torch.all(comm.diagonal() == 0)
    scale = float(gens.abs().max()) ** 2
    if commute:
        assert float(comm.max()) < 1e-12 * scale
    else:
        assert float(comm.max()) > 1e-2 * scale  # LieRE's generators do not commute


def test_generators_kind_is_refused_where_there_are_none():
    pe = viz.resolve_encoding("rope", dim=32, n_heads=4)
    assert "generators" not in viz.applicable_kinds(pe)
    with pytest.raises(ValueError, match="cannot draw 'generators' for rope: it has no generator_matrices"):
        viz.generators_data(pe)


def test_generators_figure_is_drawn_and_saved(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "g.png"
    fig = viz.plot("generators", "liere", out=out, dim=32, n_heads=4, axes=2, block_size=4)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len([ax for ax in fig.axes if ax.get_title().startswith("L_")]) == 2
    assert "not relative" in fig.get_suptitle()
    fig = viz.plot("generators", "comrope", dim=32, n_heads=4, axes=2)
    assert "exactly relative" in fig.get_suptitle()
