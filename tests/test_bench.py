"""``posenc bench`` in quick mode: rows are measured, checked against the reference, and written as valid JSON."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from posenc.bench.rope import run_decode_bench, run_numerics_bench, run_rope_bench, tame_cpu_allocator
from posenc.cli import main

SMALL = {"q_shape": (1, 2, 32, 16), "k_shape": (1, 1, 32, 16), "repeats": 2, "warmup": 1}


def test_rope_bench_rows_are_measured_and_correct():
    rows = run_rope_bench(quick=True, peers=("x-transformers", "rotary-embedding-torch"), backward=True, **SMALL)
    by_name = {(r["name"], r["direction"]): r for r in rows}
    copy = by_name[("copy (empty_like + copy_)", "forward")]
    assert copy["vs_copy"] == pytest.approx(1.0)
    assert ("copy x2 (forward+backward bytes)", "forward+backward") in by_name
    rotate = by_name[("posenc RoPE.rotate", "forward")]
    assert rotate["vs_posenc"] == pytest.approx(1.0) and rotate["median_ms"] > 0
    measured = [r for r in rows if "skipped" not in r]
    expected = {"posenc apply_rope (reference, eager)"}
    if importlib.util.find_spec("x_transformers"):
        expected.add("x-transformers apply_rotary_pos_emb")
    if importlib.util.find_spec("rotary_embedding_torch"):
        expected.add("rotary-embedding-torch apply_rotary_emb")
    assert {r["name"] for r in measured} >= expected
    assert {r["name"] for r in rows} >= {"x-transformers apply_rotary_pos_emb"}  # a missing peer still gets a row
    for r in measured:
        assert r["median_ms"] >= r["min_ms"] > 0 and r["repeats"] == 2
        if r.get("max_abs_err") is not None:  # every row computes the same rotation as the reference
            assert r["max_abs_err"] < 1e-5, r
    with pytest.raises(ValueError, match="unknown peers"):
        run_rope_bench(quick=True, peers=("nope",))


def test_decode_bench_reports_a_share():
    rows = run_decode_bench(quick=True, steps=2, repeats=1)
    assert [r["name"] for r in rows] == ["decode step, rope (fused path)", "decode step, rope (reference path)",
                                         "decode step, alibi (bias)"]
    for r in rows:
        assert 0 < r["pe_ms"] < r["step_ms"] and 0 < r["pe_share"] < 1
    alibi = rows[-1]
    assert "pe.bias" in alibi["method"] and alibi["step_ms_without_pe"] > 0  # a difference: noise may flip its sign
    assert alibi["removed_ms"] == pytest.approx(alibi["step_ms"] - alibi["step_ms_without_pe"])


def test_numerics_float64_angles_beat_float32_angles():
    fused, fp32 = run_numerics_bench(length=64)
    assert fused["max_abs_err"] < 1e-5
    assert fp32["max_abs_err"] > 100 * fused["max_abs_err"]  # float32 pos * theta at 10**6 loses ~0.06 rad


def test_cli_quick_writes_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "posenc.bench.attention", None)  # as if the attention suite were absent
    out = tmp_path / "sub" / "bench.json"
    rc = main(["bench", "--suite", "all", "--quick", "--json", str(out), "--repeats", "2", "--threads", "1",
               "--peers", "x-transformers", "--numerics"])
    assert rc == 0
    payload = json.loads(out.read_text())
    suites = {r["suite"] for r in payload["results"]}
    assert suites == {"rope", "decode", "attention", "numerics", "train", "generate"}
    assert payload["environment"]["torch"] == torch.__version__ and payload["quick"] is True
    assert any("attention suite skipped" in m for m in payload["messages"])
    text = capsys.readouterr().out
    assert "== rope ==" in text and "x copy" in text and "wrote" in text
    assert "== generate" in text and "x bare" in text


def test_cli_rejects_cuda_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "--device", "cuda", "--quick", "--suite", "rope"]) == 1
    assert "cuda" in capsys.readouterr().err


def test_allocator_taming_is_reported():
    assert isinstance(tame_cpu_allocator(), bool)


def test_rope_bench_times_the_compiled_module_call():
    """The ``torch.compile`` row of ``RoPE.rotate`` (the op inside a compiled graph) computes the same rotation."""
    rows = run_rope_bench(quick=True, peers=(), backward=False, compile_peers=True, **SMALL)
    row = {r["name"]: r for r in rows}["posenc RoPE.rotate torch.compile"]
    assert "skipped" not in row, row
    assert row["max_abs_err"] < 1e-5 and row["median_ms"] > 0


def test_train_bench_compares_like_models_step_for_step():
    pytest.importorskip("x_transformers")
    from posenc.bench.bare import BARE_ENCODINGS
    from posenc.bench.train import PEER_FLAGS, run_train_bench

    rows = run_train_bench(quick=True, repeats=2)
    assert [r["name"] for r in rows] == list(PEER_FLAGS)
    for r in rows:
        # the same decoder on both sides: parameter counts agree to within the encodings' own tables/MLPs
        assert abs(r["posenc_params"] - r["peer_params"]) <= 0.05 * r["peer_params"], r
        assert r["vs_peer"] == pytest.approx(r["peer_ms"] / r["posenc_ms"]) and r["posenc_tok_s"] > 0
        if r["name"] in BARE_ENCODINGS:  # the ceiling is the same network: exactly posenc's parameter count
            assert r["bare_params"] == r["posenc_params"]
            assert r["vs_bare"] == pytest.approx(r["bare_ms"] / r["posenc_ms"])
        else:
            assert r["vs_bare"] is None
    with pytest.raises(ValueError, match="no x-transformers counterpart"):
        run_train_bench(encodings=["shaw"], quick=True)


def test_attention_bench_names_the_backend_auto_picks():
    from posenc.attention_settings import DENSE_MAX_ELEMENTS
    from posenc.bench.attention import DEFAULT_BACKENDS, auto_choice

    assert "auto" in DEFAULT_BACKENDS
    fits = int((DENSE_MAX_ELEMENTS / 8) ** 0.5)  # 8 heads: the largest T whose dense mask fits the budget
    assert auto_choice(length=fits, heads=8) == "dense"  # within the budget auto is SDPA + the dense bias
    assert auto_choice(length=fits + 1, heads=8) == "chunked"  # beyond it, O(rows x T) memory
    # an encoding with a length limit is built for the measured length, as measure_one builds it (was: TUPE's
    # default 2048-position table, so asking about T=4096 raised)
    assert auto_choice(length=4096, heads=4, encoding="tupe") in DEFAULT_BACKENDS


@pytest.mark.parametrize("encoding", ["fox", "deberta"])
def test_attention_bench_measures_encodings_that_read_the_layer(encoding):
    """FoX reads the layer's input (features), DeBERTa the layer's projections: the bench passes both."""
    from posenc.bench.attention import measure_one

    row = measure_one(backend="chunked", length=64, encoding=encoding, heads=2, head_dim=8, repeats=1,
                      measure="time")
    assert row["status"] == "ok" and row["explain"] == "chunked" and row["time_ms"] > 0
