"""Sweeps that share a folder, damaged checkpoints, stale temporary files and records that contradict the folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from posenc._io import atomic_write_bytes
from posenc.lab.config import Experiment, ModelConfig, RunConfig, TaskConfig
from posenc.lab.sweep import RESULTS, load_records, plan_sweep, run_sweep


def _runs(seeds=(0,), eval_lengths=(3,), steps=2, checkpoint_every=100, encodings=("nope",)):
    exp = Experiment(TaskConfig("parity_check", 1, 3, eval_lengths), ModelConfig(dim=16, n_layers=1, n_heads=2),
                     RunConfig(steps=steps, batch_size=4, eval_batches=1, eval_batch_size=4,
                               checkpoint_every=checkpoint_every))
    return plan_sweep({"parity_check": exp}, list(encodings), list(seeds))


def _quiet(runs, out, **kwargs):
    return run_sweep(runs, out, progress=False, echo=lambda s: None, **kwargs)


# -- item 2: one sweep per folder ------------------------------------------------------------------------------------
HOLD = ("import sys, time; from posenc._io import FolderLock\n"
        "with FolderLock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n")


def _holder(out):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "--the-first-sweep"], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_sweep_into_a_locked_folder_is_refused_naming_the_first(tmp_path):
    from posenc._io import FolderLockedError

    proc = _holder(tmp_path)
    try:
        with pytest.raises(FolderLockedError, match=rf"PID {proc.pid}.*--the-first-sweep"):
            _quiet(_runs(), tmp_path)
        assert not (tmp_path / RESULTS).exists()  # refused before any work
    finally:
        proc.kill()
        proc.wait()
    records = _quiet(_runs(), tmp_path)  # a killed holder released the lock
    assert len(records) == 1


def test_two_concurrent_sweeps_record_each_run_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "posenc", "lab", "run", "--tasks", "parity_check", "--encodings", "nope",
           "--seeds", "0", "--steps", "3", "--no-progress", "--out", str(tmp_path), "--dim", "16", "--n-layers", "1",
           "--n-heads", "2", "--batch-size", "4", "--eval-batches", "1", "--eval-batch-size", "4",
           "--train-max-length", "3", "--eval-lengths", "3"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    lines = (tmp_path / RESULTS).read_text().splitlines()
    assert len(lines) == 1  # one record, whichever order the two started in
    if codes != [0, 0]:  # the later one was refused while the first ran, in one line naming it
        assert codes == [0, 1], outs
        refused = next(err for p, (_, err) in zip(procs, outs) if p.returncode == 1)
        assert "in use by another sweep (PID" in refused and "Traceback" not in refused


def test_duplicate_lines_are_read_once(tmp_path):
    _quiet(_runs(), tmp_path)
    results = tmp_path / RESULTS
    line = results.read_text()
    results.write_text(line + line)
    records = load_records(results)
    assert len(records) == 1


# -- item 4: damaged run checkpoints, stale temporary files ---------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "text"])
def test_a_damaged_run_checkpoint_is_set_aside_and_the_run_restarts(tmp_path, damage):
    runs = _runs(steps=4, checkpoint_every=2)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    ckpt = ckpt_dir / runs[0].checkpoint_name
    from posenc.lab.train import train_run

    class _Stop(Exception):
        pass

    def stop(step, loss):
        if step == 3:
            raise _Stop

    with pytest.raises(_Stop):  # a real checkpoint at step 2, then damage it
        train_run(runs[0].experiment, encoding="nope", seed=0, checkpoint=ckpt, on_step=stop)
    data = ckpt.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "empty": b"", "text": b"not a checkpoint\n",
               "flipped": data[:-200] + bytes(b ^ 0xFF for b in data[-200:-136]) + data[-136:]}[damage]
    ckpt.write_bytes(damaged)
    with pytest.warns(RuntimeWarning, match="moved to .*damaged.*restarts"):
        records = _quiet(runs, tmp_path)
    assert len(records) == 1 and [s for s, _ in records[0]["loss_curve"]][-1] == 4
    aside = list(ckpt_dir.glob("*.damaged-*")) if ckpt_dir.exists() else []
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept for inspection, not deleted


def test_a_rerun_after_a_damaged_checkpoint_is_not_blocked(tmp_path):
    runs = _runs()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / runs[0].checkpoint_name).write_bytes(b"\0" * 100)
    with pytest.warns(RuntimeWarning):
        first = _quiet(runs, tmp_path)
    assert len(first) == 1
    assert [r["run_id"] for r in _quiet(runs, tmp_path)] == [first[0]["run_id"]]  # recorded: nothing to redo


def test_stale_temporary_files_of_killed_writes_are_removed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "models").mkdir()
    stale = [tmp_path / f".{RESULTS}.abc123.tmp", tmp_path / "checkpoints" / ".x.pt.k1ll3d.tmp",
             tmp_path / "models" / ".y.pt.zzz.tmp"]
    for p in stale:
        p.write_bytes(b"half a write")
    keep = tmp_path / "notes.tmp"  # not ours: left alone
    keep.write_text("mine")
    _quiet(_runs(), tmp_path)
    assert not any(p.exists() for p in stale)
    assert keep.exists()


def test_atomic_write_leaves_no_tmp_and_lock_is_reentrant_after_release(tmp_path):
    from posenc._io import FolderLock

    atomic_write_bytes(tmp_path / "f", b"x")
    with FolderLock(tmp_path):
        pass
    with FolderLock(tmp_path):  # released on exit
        pass
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


# -- items 5 and 6: records that contradict the folder ---------------------------------------------------------------
def test_a_sweep_with_other_settings_into_a_used_folder_is_refused_before_any_work(tmp_path):
    _quiet(_runs(eval_lengths=(3,)), tmp_path)
    before = (tmp_path / RESULTS).read_bytes()
    with pytest.raises(ValueError, match="another configuration.*another --out"):
        _quiet(_runs(eval_lengths=(100000,)), tmp_path)
    assert (tmp_path / RESULTS).read_bytes() == before
    from posenc.lab.report import write_report

    write_report(tmp_path)  # the folder still reports


def test_another_encoding_under_other_settings_is_refused_too(tmp_path):
    """The report compares encodings on one experiment per task: lengths that differ per encoding would not fit."""
    _quiet(_runs(eval_lengths=(3,), encodings=("nope",)), tmp_path)
    with pytest.raises(ValueError, match="another configuration"):
        _quiet(_runs(eval_lengths=(100000,), encodings=("learned",)), tmp_path)
    records = _quiet(_runs(eval_lengths=(3,), encodings=("nope", "learned")), tmp_path)  # same settings: welcome
    assert sorted(r["encoding"] for r in records) == ["learned", "nope"]


def test_more_seeds_of_the_same_settings_are_welcome(tmp_path):
    _quiet(_runs(seeds=(0,)), tmp_path)
    records = _quiet(_runs(seeds=(0, 1)), tmp_path)
    assert sorted(r["seed"] for r in records) == [0, 1]


def test_lab_run_then_report_with_an_unreachable_length_keeps_the_folder_usable(tmp_path, capsys):
    from posenc.cli import main

    tiny = ["--tasks", "parity_check", "--steps", "2", "--no-progress", "--out", str(tmp_path), "--dim", "16",
            "--n-layers", "1", "--n-heads", "2", "--batch-size", "4", "--eval-batches", "1", "--eval-batch-size", "4",
            "--train-max-length", "3"]
    assert main(["lab", "run", "--encodings", "rope", *tiny, "--eval-lengths", "3"]) == 0
    assert main(["lab", "run", "--encodings", "learned", *tiny, "--eval-lengths", "100000"]) == 1
    assert "another configuration" in capsys.readouterr().err
    assert main(["lab", "report", str(tmp_path)]) == 0
    assert main(["lab", "run", "--encodings", "learned", *tiny, "--eval-lengths", "3"]) == 0


def _edit(line: str, **changes) -> str:
    record = json.loads(line)
    record.update(changes)
    return json.dumps(record, sort_keys=True)


def test_a_record_of_another_configuration_is_rejected_with_its_line(tmp_path):
    _quiet(_runs(seeds=(0,)), tmp_path)
    results = tmp_path / RESULTS
    line = results.read_text().strip()
    record = json.loads(line)
    # a consistent record of a different experiment (more steps), as another sweep into this folder would write
    config = json.loads(json.dumps(record["config"]))
    config["run"]["steps"] = 50
    from posenc.lab.config import config_hash_of

    digest = config_hash_of(config, "nope", 1)
    other = _edit(line, seed=1, config=config, config_hash=digest, run_id=f"parity_check/nope/seed1/{digest}")
    results.write_text(line + "\n" + other + "\n")
    with pytest.raises(ValueError, match="line 2: .*another configuration than line 1"):
        load_records(results)


@pytest.mark.parametrize("change", ["accuracy", "run_id", "config"])
def test_an_impossible_or_edited_record_is_rejected_with_its_line(tmp_path, change):
    _quiet(_runs(seeds=(0,)), tmp_path)
    results = tmp_path / RESULTS
    line = results.read_text().strip()
    record = json.loads(line)
    if change == "accuracy":
        length = next(iter(record["metrics"]))
        bad = _edit(line, metrics={length: {**record["metrics"][length], "accuracy": 5.245}})
    elif change == "run_id":
        bad = _edit(line, run_id=record["run_id"][:-12] + "0" * 12)
    else:
        config = json.loads(json.dumps(record["config"]))
        config["model"]["dim"] = 1024
        bad = _edit(line, config=config)
    results.write_text(line + "\n" + bad + "\n")
    with pytest.raises(ValueError, match="line 2"):
        load_records(results)


def test_new_records_carry_their_configuration_hash(tmp_path):
    (record,) = _quiet(_runs(), tmp_path)
    assert record["run_id"].endswith("/" + record["config_hash"])


@pytest.mark.parametrize("content", [b"", b"text, not a checkpoint\n", b"PK\x03\x04truncated zip"])
def test_train_run_on_a_damaged_checkpoint_names_the_file_and_what_to_do(tmp_path, content):
    from posenc.lab.train import train_run

    ckpt = tmp_path / "run.pt"
    ckpt.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{ckpt.name}.*(delete it|move it aside)"):
        train_run(_runs()[0].experiment, encoding="nope", seed=0, checkpoint=ckpt)
