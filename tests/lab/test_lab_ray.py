"""`posenc lab run --executor ray`: a sweep on a local Ray cluster equals the local sweep record for record.

Records are compared whole except ``wall_time_s``, the one field that measures the machine rather than the run
(records carry no timestamps or host names). The Ray tests share one local cluster of 2 CPUs, started once.
"""

import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from posenc._io import checked_bytes, read_checked
from posenc.cli import main
from posenc.lab import sweep
from posenc.lab.config import Experiment, ModelConfig, RunConfig, TaskConfig
from posenc.lab.sweep import RESULTS, load_records, plan_sweep, run_sweep
from posenc.lab.train import train_run

SRC = str(Path(__file__).resolve().parents[2] / "src")

TIMING = ("wall_time_s",)  # seconds on this machine at this moment: the only field two equal runs may differ in


def _runs(**run):
    settings = dict(steps=6, batch_size=4, eval_batches=1, eval_batch_size=4, log_every=2, checkpoint_every=2) | run
    exp = lambda task: Experiment(TaskConfig(task, 1, 3, (3, 5)), ModelConfig(dim=16, n_layers=1, n_heads=2),  # noqa: E731
                                  RunConfig(**settings))
    return plan_sweep({"parity_check": exp("parity_check"), "reverse_string": exp("reverse_string")},
                      ["nope", "rope"], [0])


def _by_id(records: list[dict]) -> dict[str, dict]:
    return {r["run_id"]: {k: v for k, v in r.items() if k not in TIMING} for r in records}


@pytest.mark.slow  # ~60 s (a fresh local Ray cluster from the command line); the executor itself is checked by
# test_ray_sweep_equals_local_sweep_record_for_record in make test
@pytest.mark.timeout(300)
def test_cli_starts_a_local_cluster_and_writes_the_local_records(tmp_path):
    # runs before the shared cluster exists: `posenc lab run --executor ray` with no address starts (and stops) one
    pytest.importorskip("ray")
    flags = ["--tasks", "parity_check", "--encodings", "rope", "--seeds", "0", "--steps", "4", "--dim", "16",
             "--n-layers", "1", "--n-heads", "2", "--batch-size", "4", "--eval-batches", "1", "--eval-batch-size", "4",
             "--train-max-length", "3", "--eval-lengths", "3", "--no-progress"]
    assert main(["lab", "run", *flags, "--out", str(tmp_path / "local")]) == 0
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "RAY_ADDRESS": ""}
    done = subprocess.run([sys.executable, "-m", "posenc", "lab", "run", *flags, "--executor", "ray",
                           "--out", str(tmp_path / "ray")], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "Started a local Ray instance" in done.stderr
    assert _by_id(load_records(tmp_path / "ray" / RESULTS)) == _by_id(load_records(tmp_path / "local" / RESULTS))
    assert (tmp_path / "ray" / "report.md").exists()


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.timeout(300)
def test_ray_sweep_equals_local_sweep_record_for_record(tmp_path, ray_cluster):
    runs = _runs()
    local = run_sweep(runs, tmp_path / "local", progress=False, echo=lambda s: None)
    lines = []
    on_ray = run_sweep(runs, tmp_path / "ray", progress=False, echo=lines.append, executor="ray")
    assert len(on_ray) == len(local) == 4
    assert _by_id(on_ray) == _by_id(local)
    # what the driver wrote, read back as a report reads it
    assert _by_id(load_records(tmp_path / "ray" / RESULTS)) == _by_id(load_records(tmp_path / "local" / RESULTS))
    for run in runs:  # the trained models came back from the workers, byte for byte the local ones
        name = run.checkpoint_name
        assert (tmp_path / "ray" / "models" / name).read_bytes() == (tmp_path / "local" / "models" / name).read_bytes()
    assert lines[0].startswith("sweep: 4 runs, 0 already recorded") and len(lines) == 4 + 2
    assert not (tmp_path / "ray" / "checkpoints").exists()


@pytest.mark.timeout(300)
def test_ray_sweep_resumes_skipping_recorded_runs(tmp_path, ray_cluster, monkeypatch):
    runs = _runs()
    run_sweep(runs, tmp_path / "full", progress=False, echo=lambda s: None)
    out = tmp_path / "resumed"
    run_sweep(runs[:2], out, progress=False, echo=lambda s: None)  # a sweep that stopped after two runs
    before = (out / RESULTS).read_bytes()
    submitted = []
    on_ray = sweep._run_on_ray

    def spy(todo, *args):
        submitted.extend(r.run_id for r in todo)
        return on_ray(todo, *args)

    monkeypatch.setattr(sweep, "_run_on_ray", spy)
    lines = []
    records = run_sweep(runs, out, progress=False, echo=lines.append, executor="ray")
    assert submitted == [r.run_id for r in runs[2:]]  # only the runs without a record went to Ray
    assert "4 runs, 2 already recorded" in lines[0] and "2 to go" in lines[0]
    assert (out / RESULTS).read_bytes().startswith(before)  # earlier records kept byte for byte
    assert len(records) == 4
    assert _by_id(load_records(out / RESULTS)) == _by_id(load_records(tmp_path / "full" / RESULTS))
    submitted.clear()
    run_sweep(runs, out, progress=False, echo=lambda s: None, executor="ray")
    assert submitted == []  # everything recorded: nothing is submitted


@pytest.mark.timeout(300)
def test_ray_run_resumes_from_the_checkpoint_a_killed_sweep_left(tmp_path, ray_cluster):
    (run, *_) = _runs()
    out = tmp_path / "killed"
    checkpoint = out / "checkpoints" / run.checkpoint_name
    checkpoint.parent.mkdir(parents=True)

    def kill(step, loss):
        if step == 5:  # after the checkpoint of step 4
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(run.experiment, encoding=run.encoding, seed=run.seed, checkpoint=checkpoint, on_step=kill)
    # mark the checkpoint's curve: the record carries the mark only if the Ray task resumed from this file
    state = torch.load(io.BytesIO(read_checked(checkpoint, "run checkpoint", "")), weights_only=True)
    state["curve"][0][1] = 123.0
    buf = io.BytesIO()
    torch.save(state, buf)
    checkpoint.write_bytes(checked_bytes(buf.getvalue()))
    (record,) = run_sweep([run], out, progress=False, echo=lambda s: None, executor="ray")
    assert record["loss_curve"][0] == [2, 123.0] and [s for s, _ in record["loss_curve"]] == [2, 4, 6]
    assert not checkpoint.exists()  # removed by the driver once the record was written


@pytest.mark.timeout(300)
def test_ray_runs_send_their_tensorboard_files_to_the_driver(tmp_path, ray_cluster):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run, *_) = _runs(log="tensorboard")
    (record,) = run_sweep([run], tmp_path, progress=False, echo=lambda s: None, executor="ray")
    events = EventAccumulator(str(tmp_path / "tensorboard" / run.run_id))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [s for s, _ in record["loss_curve"]] == [2, 4, 6]
    assert [e.step for e in events.Scalars("eval/accuracy")] == [3, 5]


@pytest.mark.timeout(300)
def test_ray_failed_run_gets_no_record_and_names_its_own_error(tmp_path, ray_cluster):
    runs = plan_sweep({"parity_check": Experiment(TaskConfig("parity_check", 1, 3, (3,)),
                                                  ModelConfig(dim=16, n_layers=1, n_heads=2),
                                                  RunConfig(steps=4, batch_size=4, eval_batch_size=4, lr=1e30,
                                                            warmup=0.0, grad_clip=0.0))}, ["nope"], [0])
    with pytest.raises(RuntimeError, match=r"1 of 1 runs failed.*RuntimeError: parity_check/nope/seed 0: the "
                                           r"training loss became"):
        run_sweep(runs, tmp_path, progress=False, echo=lambda s: None, executor="ray")
    assert load_records(tmp_path / RESULTS) == []


def test_ray_run_that_no_node_can_take_is_refused(tmp_path, ray_cluster):
    with pytest.raises(ValueError, match=r"asks Ray for 64 CPUs, but no node of the cluster has that \(nodes: 2 CPUs"):
        run_sweep(_runs(threads=64), tmp_path, progress=False, echo=lambda s: None, executor="ray")
    assert not (tmp_path / RESULTS).exists()


def test_ray_resources_per_run():
    (cpu, *_) = _runs(threads=3)
    assert sweep.ray_resources(cpu) == {"num_cpus": 3}
    (gpu, *_) = _runs(device="cuda")
    assert sweep.ray_resources(gpu) == {"num_cpus": 1, "num_gpus": 1}


def test_executor_flags_are_checked(tmp_path, capsys, monkeypatch):
    base = ["lab", "run", "--tasks", "parity_check", "--encodings", "nope", "--out", str(tmp_path)]
    assert main([*base, "--address", "auto"]) == 2
    assert "only --executor ray uses" in capsys.readouterr().err
    assert main([*base, "--executor", "ray", "--workers", "2"]) == 2
    assert "Leave --workers out" in capsys.readouterr().err
    with pytest.raises(ValueError, match="executor must be one of 'local', 'ray'; got 'dask'"):
        run_sweep(_runs(), tmp_path, executor="dask")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ImportError, match=r"pip install 'posenc\[ray\]'"):
        run_sweep(_runs(), tmp_path / "sweep", progress=False, echo=lambda s: None, executor="ray")
    assert not (tmp_path / "sweep").exists()  # refused before the folder was made


# -- a killed sweep leaves no Ray process behind ---------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, str]]:
    """``pid -> (ppid, start time)`` of every live process (Linux ``/proc``); zombies left out."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if fields[0] != "Z":
                procs[int(entry)] = (int(fields[1]), fields[19])
    return procs


def _descendants(root: int) -> dict[int, str]:
    """Every live descendant of ``root``: ``pid -> start time`` (so a reused PID is not mistaken for one)."""
    procs, found, frontier = _proc_table(), {}, {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier and pid not in found}
        found.update({pid: procs[pid][1] for pid in frontier})
    return found


def _still_alive(procs: dict[int, str]) -> dict[int, str]:
    now = _proc_table()
    return {pid: Path(f"/proc/{pid}/comm").read_text().strip() if Path(f"/proc/{pid}/comm").exists() else "?"
            for pid, start in procs.items() if pid in now and now[pid][1] == start}


def _kill_a_ray_sweep(tmp_path, signum) -> tuple[dict[int, str], dict[int, str], int]:
    """Start ``posenc lab run --executor ray`` (a local cluster), send ``signum`` once a run is training, and return
    ``(the sweep's descendants just before, those alive 30 s after, its exit code)``."""
    pytest.importorskip("ray")
    out = tmp_path / "sweep"
    ray_tmp = tempfile.mkdtemp(prefix="posenc-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "RAY_ADDRESS": "",
           "RAY_TMPDIR": ray_tmp}
    flags = ["--tasks", "parity_check", "--encodings", "rope", "--seeds", "0", "--steps", "1000000", "--dim", "16",
             "--n-layers", "1", "--n-heads", "2", "--batch-size", "4", "--checkpoint-every", "20", "--no-progress"]
    log = open(tmp_path / "sweep.log", "wb")  # noqa: SIM115 - closed below
    sweep_proc = subprocess.Popen([sys.executable, "-m", "posenc", "lab", "run", *flags, "--executor", "ray",
                                   "--out", str(out)], env=env, stdout=log, stderr=subprocess.STDOUT)
    before = {}
    try:
        deadline = time.monotonic() + 180
        while not list((out / "checkpoints").glob("*.pt")):  # a Ray worker is training the run
            assert sweep_proc.poll() is None, (tmp_path / "sweep.log").read_text()
            assert time.monotonic() < deadline, "the run never started on Ray"
            time.sleep(0.5)
        before = _descendants(sweep_proc.pid)
        sweep_proc.send_signal(signum)
        code = sweep_proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _still_alive(before) and time.monotonic() < deadline:
            time.sleep(0.5)
        return before, _still_alive(before), code
    finally:
        if sweep_proc.poll() is None:
            sweep_proc.kill()
        for pid in _still_alive(before):  # the test's own leftovers, ended by their ids
            os.kill(pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL is survived with Linux's /proc only")
@pytest.mark.timeout(300)
def test_a_ray_sweep_killed_with_sigkill_leaves_no_ray_process(tmp_path):
    before, left, code = _kill_a_ray_sweep(tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert len(before) >= 5, before  # gcs_server, raylet, agents, workers... the test saw the cluster
    assert left == {}, f"left running after the sweep was killed: {left}"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.timeout(300)
def test_a_ray_sweep_stopped_by_a_signal_shuts_ray_down(tmp_path, signum):
    before, left, code = _kill_a_ray_sweep(tmp_path, signum)
    assert code == 130  # unwound as an interrupt: Ray shut down, the folder's lock released, "interrupted" said
    assert len(before) >= 5 and left == {}, left
    assert "interrupted" in (tmp_path / "sweep.log").read_text()
