"""What callers really pass: the kit's matrix holds int32 positions, one tensor passed as q and k, an empty sequence
and checks that the candidate leaves its inputs alone; each has a wrong implementation here that the kit must catch.

The candidates are written independently of the kit's reference (their own rotate_half, float64 angles).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from posenc.testing import check_rope

CONFIG = {"rope_type": "default", "rope_theta": 10000.0, "head_dim": 16}
FAST = {"dtypes": ("float32",), "max_position": 1024}


def _cos_sin(positions: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = positions.double()[..., None] * inv  # (T, d/2) or (B, T, d/2), float64 angles
    cos, sin = torch.cat((ang.cos(), ang.cos()), -1).float(), torch.cat((ang.sin(), ang.sin()), -1).float()
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, d)
    return cos, sin


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    x1, x2 = xf.chunk(2, -1)
    return (xf * cos + torch.cat((-x2, x1), -1) * sin).to(x.dtype)


def correct(q, k, positions):
    cos, sin = _cos_sin(positions, q.shape[-1])
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


def writes_into_its_inputs(q, k, positions):  # right numbers, but the caller's q and k are overwritten
    cos, sin = _cos_sin(positions, q.shape[-1])
    q.copy_(_rotate(q, cos, sin))
    k.copy_(_rotate(k, cos, sin))
    return q, k


def in_place_once_each(q, k, positions):  # declared in-place, but rotates k again when k is q
    return writes_into_its_inputs(q, k, positions)


def in_place_aware_of_aliasing(q, k, positions):  # declared in-place and correct when k is q
    cos, sin = _cos_sin(positions, q.shape[-1])
    q.copy_(_rotate(q, cos, sin))
    if k is not q:
        k.copy_(_rotate(k, cos, sin))
    return q, k


def one_hot_lookup(q, k, positions):  # a TPU-style port: cos/sin rows picked by a one-hot matmul (int64 only)
    table = torch.arange(2048)
    rows = F.one_hot(positions, table.numel()).double() @ table.double()  # (T,) or (B, T): the positions again
    return correct(q, k, rows)


def sized_by_the_largest_position(q, k, positions):  # HF's dynamic-RoPE habit: seq_len = max(positions) + 1
    seq_len = int(positions.max()) + 1
    assert seq_len > 0
    return correct(q, k, positions)


def first_row_positions(q, k, positions):  # (B, T) positions: every row rotated at row 0's
    return correct(q, k, positions[0] if positions.dim() == 2 else positions)


def test_the_correct_candidate_passes_every_caller_case():
    result = check_rope(correct, CONFIG, **FAST)
    assert result.passed, result.table()
    names = {c.name for c in result.cases}
    assert {"offset-int32", "prefill-aliased", "empty", "prefill-transposed", "batch"} <= names


def test_a_candidate_that_writes_into_its_inputs_is_named():
    result = check_rope(writes_into_its_inputs, CONFIG, **FAST)
    assert not result.passed and result.finding.hypothesis == "mutates_input", result.diagnosis
    assert "q and k changed" in result.diagnosis and "inplace=True" in result.diagnosis
    assert all(c.status == "fail" for c in result.cases if c.max_position < 4096 and c.name != "empty")


def test_a_declared_in_place_candidate_must_still_handle_k_is_q():
    result = check_rope(in_place_once_each, CONFIG, inplace=True, **FAST)
    assert result.finding is not None and result.finding.hypothesis == "aliasing", result.diagnosis
    assert [c.name for c in result.cases if c.status == "fail"] == ["prefill-aliased"]
    assert "k is q" in result.diagnosis
    assert check_rope(in_place_aware_of_aliasing, CONFIG, inplace=True, **FAST).passed


def test_int32_positions_are_passed_and_a_candidate_that_refuses_them_is_caught():
    result = check_rope(one_hot_lookup, CONFIG, **FAST)
    assert not result.passed
    (bad,) = [c for c in result.cases if c.status != "pass"]
    assert bad.name == "offset-int32" and bad.status == "error" and "int32" in result.diagnosis


def test_an_empty_sequence_is_passed_and_a_candidate_that_fails_on_it_is_caught():
    result = check_rope(sized_by_the_largest_position, CONFIG, **FAST)
    assert [c.name for c in result.cases if c.status != "pass"] == ["empty"]
    assert "empty (T = 0)" in result.diagnosis


def test_per_row_positions_are_checked_row_by_row():
    result = check_rope(first_row_positions, CONFIG, **FAST)
    assert {c.name for c in result.cases if c.status == "fail"} == {"batch", "batch-transposed"}


def test_a_write_into_the_positions_is_a_bug_even_when_declared_in_place():
    def shifts_its_positions(q, k, positions):
        out = correct(q, k, positions)
        positions.add_(1)  # e.g. advancing a decode pointer in the caller's tensor
        return out

    result = check_rope(shifts_its_positions, CONFIG, inplace=True, **FAST)
    assert result.finding.hypothesis == "mutates_input" and "positions changed" in result.diagnosis


def test_inplace_must_be_a_bool():
    with pytest.raises(TypeError, match="inplace must be true or false"):
        check_rope(correct, CONFIG, inplace="yes", **FAST)


def test_the_cli_reports_a_write_into_the_inputs_and_accepts_declared_in_place(tmp_path, monkeypatch, capsys):
    import json
    import sys

    from posenc.cli import main

    (tmp_path / "inplace_rope.py").write_text(
        "import torch\n"
        "from test_callers import in_place_aware_of_aliasing as rope\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    sys.modules.pop("inplace_rope", None)
    argv = ["conform", "inplace_rope:rope", "--config", json.dumps(CONFIG), "--dtypes", "float32", "--max-position",
            "1024", "--timeout", "0"]
    assert main([*argv, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["finding"]["hypothesis"] == "mutates_input"
    assert main([*argv, "--inplace"]) == 0, capsys.readouterr().out


def test_bad_sources_and_table_positions_name_the_field():
    from posenc.testing import check_hf_model
    from posenc.testing.rope import check_rope_tables

    with pytest.raises(TypeError, match="a Hugging Face source must be a model, a PretrainedConfig"):
        check_hf_model(5)  # was a ValueError about "model_type None"
    tables = {"config": {"head_dim": 4}, "positions": [0, 2 ** 70], "cos": [[1.0] * 4] * 2, "sin": [[0.0] * 4] * 2}
    with pytest.raises(ValueError, match=r"positions\[1\] = 1180591620717411303424 is beyond \+-2\^53"):
        check_rope_tables(tables)  # was "Overflow when unpacking long long", naming no field


def test_a_bias_that_writes_into_its_positions_is_named():
    from posenc.testing.bias import check_bias

    m = torch.tensor([2.0 ** -(h + 1) for h in range(8)])

    def shifts_queries(q_pos, k_pos):  # right bias, but the caller's query positions are moved in place
        bias = -m[:, None, None] * (q_pos[:, None] - k_pos[None, :]).float()
        q_pos.sub_(q_pos.min())
        return bias

    result = check_bias(shifts_queries, {"type": "alibi", "n_heads": 8, "causal": True})
    assert result.finding.hypothesis == "mutates_input", result.diagnosis
    assert "q_pos changed in case 'offset'" in result.diagnosis and "compute on a copy" in result.diagnosis

    def clamps_in_place(rel):
        return rel.clamp_(-4, 4) + 4

    result = check_bias(clamps_in_place, {"type": "t5", "bidirectional": True, "num_buckets": 32,
                                          "max_distance": 128})
    assert result.finding.hypothesis == "mutates_input" and "relative_position changed" in result.diagnosis


def test_an_mrope_that_writes_into_its_inputs_is_named():
    import posenc
    from posenc.testing import check_mrope

    pe = posenc.get_encoding("mrope", dim=4 * 32, n_heads=4, base=1e6, mrope_section=[4, 6, 6])

    def writes_q(q, k, coords):
        qo, ko = pe.rotate(q, k, coords, coords)
        q.copy_(qo)  # right numbers, the caller's q overwritten
        return qo, ko

    config = {"head_dim": 32, "rope_theta": 1e6, "mrope_section": [4, 6, 6]}
    assert check_mrope(lambda q, k, c: pe.rotate(q, k, c, c), config, dtypes=("float32",)).passed
    result = check_mrope(writes_q, config, dtypes=("float32",))
    assert result.finding.hypothesis == "mutates_input" and "q changed" in result.diagnosis, result.diagnosis
