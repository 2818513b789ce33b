"""benchmarks/lab_cost.py: a suite's cost from a timing rerun, measured where timed and estimated where not."""

import importlib.util
from pathlib import Path

import pytest

from posenc.lab.config import SUITES, suite_encodings

_spec = importlib.util.spec_from_file_location("lab_cost", Path(__file__).parents[2] / "benchmarks" / "lab_cost.py")
lab_cost = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lab_cost)


def _plan(suite="standard"):
    plan = SUITES[suite]
    return [(task, enc, seed) for task in plan.experiments for enc in suite_encodings(plan, task)[0]
            for seed in plan.seeds_for(task)]


def _rec(run, seconds):
    return {"task": run[0], "encoding": run[1], "seed": run[2], "wall_time_s": seconds}


def test_timed_runs_count_as_measured_and_other_seeds_of_a_configuration_are_estimated_from_them():
    plan = _plan()
    recorded = [_rec(run, 100.0) for run in plan]  # the committed suite, timed on a loaded machine
    timing = [_rec(run, 10.0) for run in plan if run[2] == 0]  # seed 0 rerun: 10 s each
    rows = {r["task"]: r for r in lab_cost.suite_cost(timing, "standard", recorded)}
    decoder = rows["decoder_copy"]  # three seeds: seed 0 timed, seeds 1 and 2 estimated from it
    encodings = len(suite_encodings(SUITES["standard"], "decoder_copy")[0])
    assert decoder["planned"] == 3 * encodings and decoder["measured"] == encodings
    assert decoder["measured_s"] == pytest.approx(10.0 * encodings)
    assert decoder["estimated_s"] == pytest.approx(2 * 10.0 * encodings) and decoder["from_records"] == 0
    assert decoder["quiet_over_recorded"] == pytest.approx(0.1)
    total = sum(r["measured_s"] + r["estimated_s"] for r in rows.values())
    assert total == pytest.approx(10.0 * len(plan))
    text = lab_cost.format_cost(list(rows.values()), workers=2, efficiency=0.5)
    assert f"| all | {len(plan)} | {len(timing)} | {total / 60:.1f} |" in text
    assert f"about {total / 60:.0f} minutes" in text  # 2 workers at 50% packing: wall = total / 1


def test_a_configuration_timed_on_no_seed_is_scaled_from_its_record_and_flagged():
    plan = _plan()
    recorded = [_rec(run, 100.0) for run in plan]
    timing = [_rec(run, 50.0) for run in plan if run[0] == "decoder_copy" and run[1] == "rope"]
    rows = {r["task"]: r for r in lab_cost.suite_cost(timing, "standard", recorded)}
    other = rows["decoder_copy"]  # rope timed at half its recorded time: its other encodings are scaled by 0.5
    assert other["from_records"] == other["planned"] - other["measured"]
    assert other["estimated_s"] == pytest.approx(50.0 * other["from_records"])
    assert rows["lm"]["estimated_s"] == pytest.approx(50.0 * rows["lm"]["planned"])  # no lm timed: overall ratio
    assert "from records" in lab_cost.format_cost(list(rows.values()), workers=2, efficiency=1.0)
    with pytest.raises(ValueError, match="measured on no seed and has no record"):
        lab_cost.suite_cost(timing, "standard", None)
