"""A sweep: tasks x encodings x seeds, one JSON record per finished run, resumable after any crash.

Records live in ``OUT/results.jsonl``, one JSON object per line. A record is added by writing the whole new file to a
temporary name, fsyncing and renaming it over the old one, so a kill at any instant leaves either the old file or the
new one: never half a line. A run is identified by a hash of everything that determines its result
(:func:`posenc.lab.config.config_hash`); a sweep started again with the same command skips the runs that have a
record and resumes the unfinished one from its checkpoint (``OUT/checkpoints/``).

Runs train in this process, in ``workers`` local processes, or as Ray tasks on a cluster (``executor="ray"``). Either
way one function trains a run (:func:`_execute`), and records are written by this process alone, under the folder's
lock; a Ray task sends its model and TensorBoard files back for this process to write too, and writes only its
checkpoint into ``OUT/checkpoints`` itself, as a local worker does (see :func:`_execute_remote`). A local Ray
cluster the sweep starts ends with it, however it ends (Ctrl-C, SIGTERM, SIGHUP, and on Linux SIGKILL too; see
:func:`_ray_session`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from posenc._checks import check_int, is_number
from posenc._io import FolderLock, remove_stale_tmp
from posenc.base import get_encoding, registered_names
from posenc.lab.config import EXECUTORS, Experiment, config_hash, config_hash_of
from posenc.lab.tasks import get_task
from posenc.lab.train import (
    DamagedCheckpointError,
    atomic_write_bytes,
    check_log,
    encoding_options_for,
    resolve_lengths,
    train_run,
)

__all__ = ["EXECUTORS", "RAY_MARKER", "RESULTS", "PlannedRun", "SweepTerminated", "append_record", "check_out_dir",
           "check_plan_against_records", "load_records", "plan_sweep", "ray_resources", "run_sweep", "summary_line"]

RESULTS = "results.jsonl"


@dataclass
class PlannedRun:
    """One (task, encoding, seed) of a sweep."""

    experiment: Experiment
    encoding: str
    seed: int

    @property
    def run_id(self) -> str:
        return f"{self.experiment.task.name}/{self.encoding}/seed{self.seed}/" \
               f"{config_hash(self.experiment, self.encoding, self.seed)}"

    @property
    def checkpoint_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.run_id) + ".pt"


def _task_plan(config: dict) -> str:
    """The hash of a run's configuration without encoding, its options and seed: one per task in a folder."""
    data = json.loads(json.dumps(config, default=str))
    data.get("model", {}).pop("encoding_options", None)
    return config_hash_of(data, "", None)


def _check_metrics(record: dict) -> str | None:
    """What is impossible about a record's metrics (an accuracy outside [0, 1], say), or ``None``."""
    if not isinstance(record["metrics"], dict):
        return "its metrics are not an object"
    for length, m in record["metrics"].items():
        if not isinstance(m, dict):
            return f"its metrics at length {length} are not an object"
        for name, value in m.items():
            if name == "undefined":
                continue
            if not is_number(value) or not math.isfinite(value):
                return f"its {name} at length {length} is {value!r}, not a finite number"
            if name in ("accuracy", "token_accuracy") and not 0.0 <= value <= 1.0:
                return f"its {name} at length {length} is {value!r}, outside [0, 1]"
            if name == "perplexity" and value < 1.0:
                return f"its perplexity at length {length} is {value!r}, below 1"
    return None


def load_records(path: str | os.PathLike) -> list[dict]:
    """Records of a ``results.jsonl`` (``[]`` if it does not exist); a damaged file raises ``ValueError``.

    Every record must hold together: its run id names its task, encoding, seed and the hash of its configuration
    (``config_hash``), its metrics are possible (accuracies in [0, 1], finite perplexities >= 1), and all records of
    one task share one configuration (only encoding, encoding options and seed differ), so the report compares
    encodings on one experiment and its mean over seeds is a mean over seeds. A contradiction is a ``ValueError``
    naming the line. A line repeated with the same run id (two sweeps that raced into one folder before sweeps took a
    lock) is read once.
    """
    path = Path(path)
    if not path.exists():
        return []
    records, seen, plans = [], {}, {}
    where = "The file was left untouched: repair or move it, or choose another --out."
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {i}, is not valid JSON ({exc.msg}); the results file is damaged. It was "
                             f"left untouched: repair or move it, or choose another --out.") from None
        if not isinstance(record, dict) or not {"run_id", "task", "encoding", "seed", "metrics"} <= set(record):
            raise ValueError(f"{path}, line {i}, is not a lab run record (it needs run_id, task, encoding, seed and "
                             f"metrics). The file was left untouched: repair or move it, or choose another --out.")
        problem = _check_metrics(record)
        prefix = f"{record['task']}/{record['encoding']}/seed{record['seed']}/"
        plan = None
        if problem is None and isinstance(record.get("config"), dict):  # a record written by train_run
            digest = config_hash_of(record["config"], record["encoding"], record["seed"])
            if record["run_id"] != prefix + digest or record.get("config_hash", digest) != digest:
                problem = (f"its configuration hashes to {digest}, but it says {record['run_id']} (config_hash "
                           f"{record.get('config_hash', '-')}): it was edited, or does not belong to this run id")
            plan = _task_plan(record["config"])
        if problem is not None:
            raise ValueError(f"{path}, line {i}: {problem}. {where}")
        if record["run_id"] in seen:
            continue  # the same run recorded twice: one record
        seen[record["run_id"]] = i
        if plan is not None:
            first = plans.setdefault(record["task"], (plan, i))
            if first[0] != plan:
                raise ValueError(f"{path}, line {i}: a {record['task']} run with another configuration than line "
                                 f"{first[1]} (within one folder a task's runs differ only in encoding and seed, or "
                                 f"the report would mix experiments). {where}")
        records.append(record)
    return records


def check_plan_against_records(runs: list["PlannedRun"], records: list[dict], results: Path) -> None:
    """Refuse a sweep whose runs contradict the folder's records: the same task under another configuration."""
    plans = {}
    for r in records:
        if isinstance(r.get("config"), dict):
            plans.setdefault(r["task"], (_task_plan(r["config"]), r["run_id"]))
    for run in runs:
        task = run.experiment.task.name
        have = plans.get(task)
        if have is None:
            continue
        if _task_plan(run.experiment.to_dict()) != have[0]:
            raise ValueError(f"{results} already holds {task} runs of another "
                             f"configuration (e.g. {have[1]}); this sweep's settings differ (flags such as --steps, "
                             f"--eval-lengths or model sizes). Use another --out, or the same settings as before.")


def set_aside_torn_tail(path: str | os.PathLike) -> Path | None:
    """Move an unparseable, unterminated last line of ``path`` to ``<path>.partial-<time>`` and warn.

    posenc itself only ever replaces the results file whole, but a file copied during a write, a file system without
    atomic renames or power loss on some disks can leave the final line cut off. Such a torn tail is the only damage
    repaired automatically: it is set aside (not deleted) and every complete record is kept. Damage anywhere else
    still stops the sweep in :func:`load_records`. Returns the set-aside file, or ``None`` when there was nothing to do.
    """
    path = Path(path)
    if not path.exists():
        return None
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    head, _, tail = data.rpartition(b"\n")
    try:
        json.loads(tail)
        return None  # a complete record that only lacks its newline; append_record adds it
    except ValueError:  # cut off mid-record
        aside = path.with_name(f"{path.name}.partial-{time.strftime('%Y%m%d-%H%M%S')}")
    atomic_write_bytes(aside, tail)
    atomic_write_bytes(path, head + b"\n" if head else b"")
    warnings.warn(f"{path}: its last line was cut off mid-record ({len(tail)} bytes, e.g. by a power loss); it was "
                  f"moved to {aside} and every complete record was kept.", RuntimeWarning, stacklevel=2)
    return aside


def append_record(path: str | os.PathLike, record: dict) -> None:
    """Add one record to ``path`` atomically (the whole file is rewritten through a temporary file and a rename)."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write_bytes(path, old + json.dumps(record, sort_keys=True).encode() + b"\n")


def check_out_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and make sure files can be written in it; raise a clear ``OSError`` if not."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OSError(f"output folder {out} exists and is not a folder; choose another --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-probe-")
        try:  # write real bytes and sync them, so a full disk fails here and not after an hour of training
            os.write(fd, b"\0" * 65536)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise OSError(f"output folder {out} is not writable ({exc.strerror or exc}); choose another --out.") from None
    return out


def plan_sweep(experiments: dict[str, Experiment], encodings: list[str] | dict[str, list[str]],
               seeds: list[int] | dict[str, list[int]]) -> list[PlannedRun]:
    """Every (task, encoding, seed), validated up front: unknown names or impossible lengths fail before any work.

    ``encodings`` is one list for every task, or a dict ``task -> list`` (structured tasks compare their own set);
    ``seeds`` likewise (paper-comparison tasks run more seeds).
    """
    per_task = encodings if isinstance(encodings, dict) else {task: encodings for task in experiments}
    seeds_of = seeds if isinstance(seeds, dict) else {task: seeds for task in experiments}
    known = registered_names()
    for task in experiments:
        if not per_task.get(task):
            raise ValueError(f"a sweep needs at least one encoding for every task; task {task!r} has none.")
        for name in per_task[task]:
            if name not in known:
                raise ValueError(f"unknown encoding {name!r}; registered: {', '.join(known)}.")
    if not experiments or not all(seeds_of.get(task) for task in experiments):
        raise ValueError("a sweep needs at least one task, one encoding and one seed.")
    for task, experiment in experiments.items():
        resolve_lengths(get_task(experiment.task.name, **experiment.task.options), experiment.task)
        m = experiment.model
        for name in per_task[task]:  # unknown or invalid encoding options fail here, before any work
            get_encoding(name, dim=m.dim, n_heads=m.n_heads, **encoding_options_for(experiment, name))
        if experiment.run.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda'; got {experiment.run.device!r}.")
        check_log(experiment.run.log)  # an unknown logger, or tensorboard not installed, fails before any work
    return [PlannedRun(exp, enc, seed) for task, exp in experiments.items() for enc in per_task[task]
            for seed in seeds_of[task]]


def summary_line(record: dict) -> str:
    """One line per finished run: the headline metric in and beyond the training range."""
    hi = record["train_lengths"][1]
    parts = []
    for length, m in record["metrics"].items():
        if "undefined" in m:
            parts.append(f"{length}: n/a")
        elif record["metric"] == "perplexity":
            parts.append(f"{length}: {m['perplexity']:.2f}")
        else:
            parts.append(f"{length}: {m.get(record['metric'], m.get('accuracy')):.0%}")
    label = {"perplexity": "ppl", "token_accuracy": "tok-acc"}.get(record["metric"], "acc")
    verdict = "" if record.get("learned", True) else "  NOT LEARNED (below the task's in-distribution bar)"
    return (f"{record['task']:<18} {record['encoding']:<11} seed {record['seed']}  train<= {hi:<4} "
            f"{label} {'  '.join(parts)}  loss {record['final_train_loss']:.3f}  {record['wall_time_s']:.0f}s"
            f"{verdict}")


def _execute(run: PlannedRun, out: Path, progress: bool, checkpoint: Path | None = None) -> dict:
    """Train one run, writing its files under ``out``: the worker of every executor.

    The trained model goes to ``out/models/`` (Transformer.save) so plots can read it (``posenc plot waves
    OUT/models/X.pt``), TensorBoard files (``--log tensorboard``) to ``out/tensorboard/<run_id>/``, and the checkpoint
    to ``checkpoint`` (default ``out/checkpoints/``).
    """
    checkpoint = checkpoint or out / "checkpoints" / run.checkpoint_name
    model_out = out / "models" / run.checkpoint_name
    for folder in (checkpoint.parent, model_out.parent):
        folder.mkdir(parents=True, exist_ok=True)
    train = dict(encoding=run.encoding, seed=run.seed, checkpoint=checkpoint, progress=progress, model_out=model_out,
                 tensorboard_dir=out / "tensorboard")
    try:
        return train_run(run.experiment, **train)
    except DamagedCheckpointError as exc:  # a rerun would fail the same way: set the file aside, start over
        aside = checkpoint.with_name(f"{checkpoint.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(checkpoint, aside)
        warnings.warn(f"{run.run_id}: its checkpoint could not be resumed ({exc}); it was moved to {aside} and the "
                      f"run restarts from step 0.", RuntimeWarning, stacklevel=2)
        return train_run(run.experiment, **train)


def run_sweep(runs: list[PlannedRun], out: str | os.PathLike, *, workers: int = 1, progress: bool = True,
              extra: dict | None = None, echo: Callable[[str], None] | None = None, executor: str = "local",
              address: str | None = None) -> list[dict]:
    """Run every planned run that has no record in ``out`` yet; returns all records of ``out`` afterwards.

    Args:
        runs: from :func:`plan_sweep`.
        out: the output folder (created if needed).
        workers: runs trained in parallel local processes (each with ``run.threads`` threads).
        progress: tqdm bars (sweep and run) with ETA.
        extra: fields added to every new record (e.g. the suite name).
        echo: where one-line summaries go (default: ``tqdm.write``).
        executor: ``"local"`` (this machine: ``workers`` processes) or ``"ray"``: every run a Ray task with the
            resources of :func:`ray_resources`, its record and files sent back here and written as the local path
            writes them. Ray connects to ``address`` (``"auto"``: the cluster this node belongs to), or starts a
            local cluster when it is ``None``; a Ray session already open in this process is used as it is.
        address: the Ray cluster (``executor="ray"`` only).

    The sweep holds an OS lock on ``out/.lock`` while it runs (a second sweep into ``out`` is refused with
    :class:`posenc._io.FolderLockedError` naming the first one's PID and command; a killed sweep releases it), so
    only one process ever writes results, checkpoints and models there. A checkpoint that cannot be resumed is
    moved aside (``*.damaged-<time>``) and its run restarts.
    """
    check_int(workers, "workers", minimum=1)
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(map(repr, EXECUTORS))}; got {executor!r}.")
    if executor == "ray" and workers != 1:
        raise ValueError(f"workers={workers} sets local processes; with executor='ray' the cluster's free CPUs and "
                         f"GPUs decide how many runs train at once. Leave workers at 1 (no --workers).")
    if address is not None and executor != "ray":
        raise ValueError(f"address={address!r} names a Ray cluster, which only executor='ray' uses; add "
                         f"--executor ray, or leave --address out.")
    if executor == "ray":
        _import_ray()  # missing: a clear error naming the extra, before the folder is touched
    if executor == "local":
        for run in runs:
            if run.experiment.run.device == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("--device cuda was asked for, but torch.cuda.is_available() is False here; use "
                                   "--device cpu, or --executor ray on a cluster with GPUs.")
    out = check_out_dir(out)
    with FolderLock(out, "sweep"):  # a second sweep into this folder is refused, naming this one's PID and command
        return _run_locked(runs, out, workers=workers, progress=progress, extra=extra, echo=echo, executor=executor,
                           address=address)


def _run_locked(runs: list[PlannedRun], out: Path, *, workers: int, progress: bool, extra: dict | None,
                echo: Callable[[str], None] | None, executor: str, address: str | None) -> list[dict]:
    from tqdm.auto import tqdm

    results = out / RESULTS
    ckpt_dir = out / "checkpoints"
    for folder, prefix in ((out, f".{RESULTS}."), (ckpt_dir, "."), (out / "models", ".")):
        remove_stale_tmp(folder, prefix)  # temporary files of writes killed mid-way (only sweeps write these)
    set_aside_torn_tail(results)  # a record cut off mid-line is set aside with a warning
    records = load_records(results)  # other damage stops the sweep here, before anything is written
    check_plan_against_records(runs, records, results)
    done = {r["run_id"] for r in records}
    todo = [r for r in runs if r.run_id not in done]
    for r in runs:  # a crash between writing a record and removing its checkpoint leaves a stale one
        if r.run_id in done:
            (ckpt_dir / r.checkpoint_name).unlink(missing_ok=True)
    echo = echo or tqdm.write
    echo(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} already recorded in {results}, {len(todo)} to go")
    if not todo:
        return records
    ckpt_dir.mkdir(exist_ok=True)
    bar = tqdm(total=len(todo), desc="sweep", unit="run", disable=not progress, dynamic_ncols=True)

    def finish(run: PlannedRun, record: dict) -> None:
        record.update(extra or {})
        if record["run_id"] != run.run_id:
            raise RuntimeError(f"internal error: run id {record['run_id']} != planned {run.run_id}")
        append_record(results, record)
        records.append(record)
        (ckpt_dir / run.checkpoint_name).unlink(missing_ok=True)
        bar.update(1)
        echo(summary_line(record))

    failed: list[str] = []

    def fail(run: PlannedRun, exc: BaseException) -> None:
        # one broken run must not cost the others: it gets no record (so a rerun retries it) and the sweep fails
        failed.append(f"{run.run_id}: {type(exc).__name__}: {exc}")
        bar.update(1)
        echo(f"FAILED {run.run_id}: {type(exc).__name__}: {exc}")

    start = time.perf_counter()
    try:
        if executor == "ray":
            for run, outcome in _run_on_ray(todo, ckpt_dir, address):
                if isinstance(outcome, BaseException):
                    fail(run, outcome)
                    continue
                record, files = outcome
                for name, data in files.items():  # the model and TensorBoard files the run wrote on its node
                    path = out / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_bytes(path, data)
                finish(run, record)
        elif workers == 1:
            for run in todo:
                try:
                    record = _execute(run, out, progress)
                except Exception as exc:  # noqa: BLE001 (reported, and the sweep fails at the end)
                    fail(run, exc)
                    continue
                finish(run, record)
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(_execute, run, out, False): run for run in todo}
                for future in as_completed(futures):
                    try:
                        record = future.result()
                    except Exception as exc:  # noqa: BLE001
                        fail(futures[future], exc)
                        continue
                    finish(futures[future], record)
    finally:
        bar.close()
        if ckpt_dir.exists() and not any(ckpt_dir.iterdir()):
            ckpt_dir.rmdir()
    echo(f"sweep finished in {time.perf_counter() - start:.0f}s; records in {results}")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(todo)} runs failed (no record written; rerun the same command "
                           f"to retry them): " + "; ".join(failed))
    return records


# -- Ray executor ------------------------------------------------------------------------------------------------------
def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("--executor ray needs Ray: pip install 'posenc[ray]' (on every node of the cluster), or "
                          "run with --executor local.") from None
    return ray


def ray_resources(run: PlannedRun) -> dict:
    """What one run asks Ray for: ``num_gpus=1`` on ``--device cuda`` (and one CPU to drive it), else one CPU per
    torch thread (``--threads``)."""
    if run.experiment.run.device == "cuda":
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": run.experiment.run.threads}


RAY_MARKER = "POSENC_RAY_SWEEP"  # set in the environment of the processes of a local Ray cluster a sweep starts

# The reaper of a local Ray cluster (Linux): a separate process that follows the cluster while the sweep runs and
# ends what is left of it once the sweep's pipe closes (at exit, or because the sweep died: the kernel closes the
# pipe even after SIGKILL, when ray.shutdown() never runs). Ray's dashboard and runtime-env agents outlive a raylet
# that died abruptly, and rename themselves in a way that hides their environment, so the reaper does not look for
# them at the end: every half second it records each process whose environment carries the sweep's marker and every
# descendant of one (the agents are the raylet's children), by PID and start time (a reused PID is not followed).
# Standard library only; in a session of its own, so Ctrl-C or a kill of the sweep's process group spares it.
_REAPER = r"""
import os, select, signal, sys, time

marker, grace = sys.argv[1].encode(), float(sys.argv[2])
followed = {}  # pid -> start time, of the cluster's processes
known = {}  # (pid, start time) -> carries the marker (environments are read once per process)


def table():
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2:].split()
            procs[int(entry)] = (int(fields[1]), fields[19], fields[0])  # ppid, start time, state
    return procs


def follow():
    procs = table()
    for pid, (ppid, start, state) in procs.items():
        if pid == os.getpid() or state == b"Z":
            continue
        if (pid, start) not in known:
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    known[(pid, start)] = marker in f.read().split(b"\0")
            except OSError:
                known[(pid, start)] = False
        parent = procs.get(ppid)
        if known[(pid, start)] or (parent is not None and followed.get(ppid) == parent[1]):
            followed[pid] = start
    return procs


def alive():
    procs = follow()
    return [pid for pid, start in followed.items() if pid in procs and procs[pid][1] == start
            and procs[pid][2] != b"Z"]


while not select.select([sys.stdin], [], [], 0.5)[0]:
    follow()
while os.read(sys.stdin.fileno(), 4096):  # data is never sent: the sweep only ever closes the pipe
    pass
deadline = time.monotonic() + grace  # ray.shutdown() (or Ray's own fate sharing) ends most of them
while alive() and time.monotonic() < deadline:
    time.sleep(0.1)
for sig in (signal.SIGTERM, signal.SIGKILL):
    pids = alive()
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    deadline = time.monotonic() + 5.0
    while pids and alive() and time.monotonic() < deadline:
        time.sleep(0.1)
"""


class SweepTerminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP reached a sweep on Ray: unwound like Ctrl-C, so Ray is shut down and the lock released."""


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`SweepTerminated` while the block runs (main thread only; elsewhere
    signals cannot be handled in Python). Ray's own handler would abort the process without unwinding it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SweepTerminated(f"stopped by {signal.Signals(signum).name}")

    wanted = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, stop) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _start_reaper(marker: str, grace: float = 2.0) -> subprocess.Popen | None:
    """The reaper of the local cluster whose processes carry ``marker`` (``NAME=value``); ``None`` off Linux."""
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc"):
        return None
    env = {k: v for k, v in os.environ.items() if k != RAY_MARKER}
    return subprocess.Popen([sys.executable, "-c", _REAPER, marker, str(grace)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)


@contextlib.contextmanager
def _ray_session(address: str | None):
    """Ray, connected to ``address`` or to a local cluster it starts; a session opened by the caller is kept open.

    A local cluster started here ends with the sweep however the sweep ends: normally or on an error, Ctrl-C,
    SIGTERM or SIGHUP (``ray.shutdown()``, after unwinding), and, on Linux, even SIGKILL (every process Ray started
    for this sweep carries :data:`RAY_MARKER` in its environment, and a reaper process ends those left behind).
    A cluster named by ``address`` or ``RAY_ADDRESS`` is only disconnected from; its processes are not this sweep's.
    """
    ray = _import_ray()
    if ray.is_initialized():  # a notebook or a test connected already: use that cluster and leave it running
        yield ray
        return
    reaper = None
    try:
        if address is None:  # ray.init may start a local cluster: its processes inherit the marker from here
            marker = f"{RAY_MARKER}={uuid.uuid4().hex}"
            reaper = _start_reaper(marker)
            os.environ[RAY_MARKER] = marker.split("=", 1)[1]
        try:
            ray.init(address=address)  # None: start a local cluster (or join the one RAY_ADDRESS names)
        finally:
            os.environ.pop(RAY_MARKER, None)  # what this process starts later is not Ray's
        with _stop_on_signals():
            try:
                yield ray
            finally:
                ray.shutdown()
    finally:
        if reaper is not None:
            reaper.stdin.close()  # the reaper ends what ray.shutdown() left behind
            try:
                reaper.wait(timeout=30)
            except subprocess.TimeoutExpired:  # it goes on by itself; the sweep need not wait for it
                pass


def _check_cluster(ray, runs: list[PlannedRun]) -> None:
    """Refuse runs that no node of the cluster can take (Ray would wait for such a node forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for need in {tuple(sorted(ray_resources(run).items())) for run in runs}:
        wanted = {"CPU" if key == "num_cpus" else "GPU": amount for key, amount in need}
        if not any(all(node.get(kind, 0) >= amount for kind, amount in wanted.items()) for node in nodes):
            have = "; ".join(f"{node.get('CPU', 0):g} CPUs, {node.get('GPU', 0):g} GPUs" for node in nodes)
            asked = " and ".join(f"{amount:g} {kind}s" for kind, amount in wanted.items())
            raise ValueError(f"each run asks Ray for {asked}, but no node of the cluster has that (nodes: {have}). "
                             f"Lower --threads, use --device cpu, or add a node that has them.")


def _execute_remote(run: PlannedRun, checkpoints: str) -> tuple[dict, dict[str, bytes]]:
    """One run as a Ray task, on whichever node Ray chose: its record and the files it wrote, for the driver to write.

    The run writes its model and TensorBoard files into a temporary folder on its node and sends them back, so ``OUT``
    need not be shared between nodes. Its checkpoint goes to the driver's ``OUT/checkpoints`` when this node sees that
    folder (the driver's node, or a file system all nodes share), so a killed sweep resumes the run mid-way as the
    local path does; elsewhere the checkpoint stays in the temporary folder and a killed run starts over.
    """
    with tempfile.TemporaryDirectory(prefix="posenc-run-") as tmp:
        tmp = Path(tmp)
        shared = Path(checkpoints)
        checkpoint = (shared if shared.is_dir() else tmp / "checkpoints") / run.checkpoint_name
        record = _execute(run, tmp, False, checkpoint)
        files = {p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(tmp.rglob("*"))
                 if p.is_file() and p.relative_to(tmp).parts[0] != "checkpoints"}
    return record, files


def _run_on_ray(todo: list[PlannedRun], checkpoints: Path, address: str | None
                ) -> Iterator[tuple[PlannedRun, tuple[dict, dict[str, bytes]] | BaseException]]:
    """Submit every run as a Ray task and yield ``(run, (record, files))`` or ``(run, error)`` as each one ends."""
    with _ray_session(address) as ray:
        _check_cluster(ray, todo)
        remote = ray.remote(max_retries=0)(_execute_remote)  # a failed run is reported; rerunning the sweep retries it
        pending = {remote.options(**ray_resources(run)).remote(run, str(checkpoints)): run for run in todo}
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                run = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the run's own error where Ray kept it, else Ray's
                    outcome = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
                yield run, outcome
        finally:  # interrupted (Ctrl-C, or a write that failed): runs not yet finished are not left training
            for ref in pending:
                ray.cancel(ref)
