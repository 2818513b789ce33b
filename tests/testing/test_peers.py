"""The peer adapters under the kit (the ``peers`` extra): what docs/conformance.md reports, in short form."""

from __future__ import annotations

import importlib.util

import pytest

from posenc.testing import check_rope, peers

FAST = {"dtypes": ("float32",), "max_position": 131071}


@pytest.mark.parametrize("config", [{"head_dim": 32}, {"head_dim": 32, "partial_rotary_factor": 0.5},
                                    {"rope_type": "linear", "factor": 4.0, "head_dim": 32},
                                    {"rope_type": "ntk", "factor": 4.0, "head_dim": 32}],
                         ids=["default", "partial", "linear", "ntk"])
@pytest.mark.parametrize("peer", ["x_transformers", "rotary_embedding_torch"])
def test_lucidrains_peers_conform_interleaved_with_float32_angles(peer, config):
    pytest.importorskip(peer)
    fn = getattr(peers, peer)(config)
    result = check_rope(fn, config, layout="interleaved", **FAST)
    assert result.finding.hypothesis == "angles_float32", result.table()
    if peer == "x_transformers":  # its RotaryEmbedding takes t.max() + 1 for xpos: an empty sequence raises
        assert [c.name for c in result.cases if c.status == "error"] == ["empty"], result.table()
        assert "It also raised on 1 case(s), e.g. 'empty': RuntimeError: max()" in result.diagnosis
        assert all(c.status in ("pass", "precision") for c in result.cases if c.name != "empty")
    else:
        assert result.verdict == "precision", result.table()
    assert check_rope(fn, config, layout="half", **FAST).finding.hypothesis == "layout"


def test_peers_without_a_scaling_say_so():
    pytest.importorskip("x_transformers")
    with pytest.raises(ValueError, match="no 'yarn'"):
        peers.x_transformers({"rope_type": "yarn", "factor": 4.0, "head_dim": 32,
                              "original_max_position_embeddings": 1024})


def test_torchtune_conforms_interleaved_with_float32_angles():
    if importlib.util.find_spec("torchtune") is None:
        pytest.skip("torchtune not installed")
    fn = peers.torchtune({"head_dim": 32}, max_seq_len=131072)
    result = check_rope(fn, {"head_dim": 32}, layout="interleaved", **FAST)
    assert result.verdict == "precision", result.table()
