"""Sweeps: SIGKILL and restart loses and duplicates nothing; bad input is a clear error and touches nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posenc.cli import main
from posenc.lab.config import Experiment, ModelConfig, RunConfig, TaskConfig
from posenc.lab.sweep import RESULTS, append_record, load_records, plan_sweep, run_sweep

TINY_FLAGS = ["--dim", "16", "--n-layers", "1", "--n-heads", "2", "--batch-size", "8", "--eval-batches", "1",
              "--eval-batch-size", "8", "--train-max-length", "4", "--eval-lengths", "4", "6"]


def _cmd(out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "posenc", "lab", "run", "--suite", "quick", "--tasks", "parity_check",
            "--encodings", "nope", "rope", "--seeds", "0", "1", "--steps", str(steps), "--checkpoint-every", "2",
            "--no-progress", "--out", str(out), *TINY_FLAGS]


@pytest.mark.timeout(900)  # three interpreter starts; seconds on an idle machine, minutes on a busy one
def test_sigkill_then_rerun_finishes_every_run_exactly_once(tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cmd(out, 30), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    results = out / RESULTS
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_text().count("\n") >= 1:  # mid-way: one run recorded, more to go
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stdout.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = load_records(results)
    assert 1 <= len(before) < 4
    rerun = subprocess.run(_cmd(out, 30), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(before)} already recorded" in rerun.stderr + rerun.stdout
    records = load_records(results)
    ids = [r["run_id"] for r in records]
    assert len(ids) == 4 and len(set(ids)) == 4  # nothing lost, nothing duplicated
    assert {(r["encoding"], r["seed"]) for r in records} == {(e, s) for e in ("nope", "rope") for s in (0, 1)}
    assert records[: len(before)] == before  # earlier records are kept byte for byte
    assert not (out / "checkpoints").exists()  # every checkpoint is removed once its record is written
    assert (out / "report.md").exists() and (out / "report.html").exists()
    again = subprocess.run(_cmd(out, 30), env=env, capture_output=True, text=True, timeout=300)
    assert "0 to go" in again.stderr + again.stdout and load_records(results) == records


def _tiny_runs():
    exp = Experiment(TaskConfig("parity_check", 1, 3, (3,)), ModelConfig(dim=16, n_layers=1, n_heads=2),
                     RunConfig(steps=2, batch_size=4, eval_batches=1, eval_batch_size=4))
    return plan_sweep({"parity_check": exp}, ["nope"], [0])


def test_corrupt_results_file_is_a_clear_error_and_is_left_untouched(tmp_path):
    results = tmp_path / RESULTS
    record = '{"run_id": "a", "task": "t", "encoding": "e", "seed": 0, "metrics": {}}\n'
    # damage in the middle (a torn *last* line is set aside instead: see test_lab_crash_safety.py)
    results.write_text(record + '{"run_id": "b", "ta\n' + record)
    before = results.read_bytes()
    with pytest.raises(ValueError, match=r"line 2, is not valid JSON.*left untouched"):
        run_sweep(_tiny_runs(), tmp_path, progress=False, echo=lambda s: None)
    assert results.read_bytes() == before
    assert not (tmp_path / "checkpoints").exists()
    results.write_text('{"not": "a record"}\n')
    with pytest.raises(ValueError, match="line 1, is not a lab run record"):
        load_records(results)


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    with pytest.raises(OSError, match="is not a folder"):
        run_sweep(_tiny_runs(), blocker, progress=False, echo=lambda s: None)
    with pytest.raises(OSError, match="is not writable"):
        run_sweep(_tiny_runs(), blocker / "sub", progress=False, echo=lambda s: None)
    assert blocker.read_text() == "keep me"


def test_cli_reports_bad_names_in_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["lab", "run", "--tasks", "no_such_task", "--encodings", "rope", "--out", str(out)]) == 1
    assert "unknown task 'no_such_task'" in capsys.readouterr().err
    assert main(["lab", "run", "--tasks", "parity_check", "--encodings", "ropee", "--out", str(out)]) == 1
    assert "unknown encoding 'ropee'" in capsys.readouterr().err
    assert main(["lab", "run", "--tasks", "parity_check", "--encodings", "rope", "--train-min-length", "9",
                 "--train-max-length", "3", "--out", str(out)]) == 1
    assert "larger than train_max_length" in capsys.readouterr().err
    assert not out.exists()


def test_append_record_keeps_earlier_lines(tmp_path):
    path = tmp_path / RESULTS
    for i in range(3):
        append_record(path, {"run_id": str(i), "task": "t", "encoding": "e", "seed": i, "metrics": {}})
    assert [json.loads(line)["run_id"] for line in path.read_text().splitlines()] == ["0", "1", "2"]
    assert not [p for p in tmp_path.iterdir() if p.name != RESULTS]  # no temporary files left behind


def test_a_finished_run_leaves_a_loadable_model_for_plots(tmp_path):
    from posenc import Transformer
    from posenc.viz import resolve_encoding

    runs = _tiny_runs()
    run_sweep(runs, tmp_path, progress=False, echo=lambda s: None)
    saved = tmp_path / "models" / runs[0].checkpoint_name
    model = Transformer.load(saved)
    assert model.cfg.encoding == "nope"
    assert resolve_encoding(str(saved)).name == "nope"  # what `posenc plot waves OUT/models/X.pt` draws


def test_plan_sweep_takes_encodings_per_task():
    small = Experiment(TaskConfig("parity_check", 1, 3, (3,)), ModelConfig(dim=16, n_layers=1, n_heads=2))
    other = Experiment(TaskConfig("bucket_sort", 1, 3, (3,)), ModelConfig(dim=16, n_layers=1, n_heads=2))
    runs = plan_sweep({"parity_check": small, "bucket_sort": other},
                      {"parity_check": ["nope", "rope"], "bucket_sort": ["alibi"]}, [0, 1])
    assert [(r.experiment.task.name, r.encoding, r.seed) for r in runs] == [
        ("parity_check", "nope", 0), ("parity_check", "nope", 1), ("parity_check", "rope", 0),
        ("parity_check", "rope", 1), ("bucket_sort", "alibi", 0), ("bucket_sort", "alibi", 1)]
    with pytest.raises(ValueError, match="task 'bucket_sort' has none"):
        plan_sweep({"parity_check": small, "bucket_sort": other}, {"parity_check": ["nope"]}, [0])
    with pytest.raises(ValueError, match="unknown encoding 'ropee'"):
        plan_sweep({"parity_check": small}, {"parity_check": ["ropee"]}, [0])


def test_suite_task_encodings_override_the_suite_list():
    from posenc.lab.config import Suite, suite_encodings

    suite = Suite("test", {}, ("nope", "rope"), task_encodings={"grid": ("rope", "not_registered_yet")})
    assert suite.encodings_for("parity_check") == ("nope", "rope")
    assert suite_encodings(suite, "grid") == (["rope"], ["not_registered_yet"])
    assert suite_encodings(suite) == (["nope", "rope"], [])


def test_encoding_options_reach_the_model_and_only_their_encoding_s_run_id():
    from posenc.lab.config import config_hash
    from posenc.lab.tasks import get_task
    from posenc.lab.train import build_model

    # a run id computed before the field existed (the standard suite's lm preset, alibi, seed 0) stays the same
    lm = Experiment(TaskConfig("lm", 64, 64, (64, 128, 256, 512, 1024)), ModelConfig(dim=128, n_layers=3),
                    RunConfig(steps=2000, batch_size=16, lr=2e-3))
    assert config_hash(lm, "alibi", 0) == "425536910e46"

    exp = Experiment(TaskConfig("parity_check", 1, 3, (3,)), ModelConfig(dim=16, n_layers=1, n_heads=2))
    tuned = Experiment(exp.task, ModelConfig(dim=16, n_layers=1, n_heads=2,
                                             encoding_options={"rope": {"base": 100.0}}))
    # ids of runs without options are what they were before the field existed, and other encodings' ids don't move
    assert config_hash(tuned, "nope", 0) == config_hash(exp, "nope", 0)
    assert config_hash(tuned, "rope", 0) != config_hash(exp, "rope", 0)
    model = build_model(tuned, get_task("parity_check"), "rope", 8)
    assert model.pe.base == 100.0 and model.cfg.encoding_options == {"base": 100.0}
    assert build_model(tuned, get_task("parity_check"), "alibi", 8).cfg.encoding_options == {}
    bad = Experiment(exp.task, ModelConfig(dim=16, n_layers=1, n_heads=2, encoding_options={"rope": {"bsae": 1}}))
    with pytest.raises((TypeError, ValueError), match="bsae"):
        plan_sweep({"parity_check": bad}, ["nope", "rope"], [0])  # fails before any work
    with pytest.raises(TypeError, match="map encoding names to dicts"):
        plan_sweep({"parity_check": Experiment(exp.task, ModelConfig(encoding_options={"rope": 1}))}, ["rope"], [0])


def test_seeds_may_differ_per_task():
    from posenc.lab.config import PAPER_TASKS, SUITES
    from posenc.lab.sweep import plan_sweep

    suite = SUITES["standard"]
    experiments = {name: suite.experiments[name] for name in ("decoder_copy", "who_did_what")}
    runs = plan_sweep(experiments, ["nope", "rope"], {name: list(suite.seeds_for(name)) for name in experiments})
    seeds = {(r.experiment.task.name, r.encoding): [] for r in runs}
    for r in runs:
        seeds[(r.experiment.task.name, r.encoding)].append(r.seed)
    assert seeds[("decoder_copy", "rope")] == [0, 1, 2] and seeds[("who_did_what", "rope")] == [0]
    assert "decoder_copy" in PAPER_TASKS and "who_did_what" not in PAPER_TASKS
