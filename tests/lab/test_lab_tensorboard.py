"""`posenc lab run --log tensorboard`: each run's curves in OUT/tensorboard/<run_id>/ hold what its record holds."""

import sys

import numpy as np
import pytest

from posenc.cli import main
from posenc.lab.config import Experiment, ModelConfig, RunConfig, TaskConfig
from posenc.lab.sweep import RESULTS, load_records
from posenc.lab.train import check_log, train_run

TINY = ["--tasks", "parity_check", "--encodings", "rope", "--seeds", "0", "--steps", "6", "--log-every", "2",
        "--dim", "16", "--n-layers", "1", "--n-heads", "2", "--batch-size", "8", "--eval-batches", "1",
        "--eval-batch-size", "8", "--train-max-length", "4", "--eval-lengths", "4", "6", "--no-progress"]


def _scalars(folder) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_log_tensorboard_writes_the_record_s_curve_and_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    assert main(["lab", "run", *TINY, "--log", "tensorboard", "--out", str(tmp_path)]) == 0
    (record,) = load_records(tmp_path / RESULTS)
    scalars = _scalars(tmp_path / "tensorboard" / record["run_id"])
    # TensorBoard keeps float32 scalars: the record's float64 numbers, rounded once, must come back exactly
    as_float32 = lambda x: float(np.float32(x))  # noqa: E731
    assert scalars["train/loss"] == {step: as_float32(loss) for step, loss in record["loss_curve"]}
    assert sorted(scalars["train/loss"]) == [2, 4, 6]
    assert sorted(scalars["train/lr"]) == sorted(scalars["train/grad_norm"]) == [2, 4, 6]  # grad_clip is on
    assert all(v > 0 for v in scalars["train/lr"].values())
    for name in ("accuracy", "token_accuracy", "loss", "perplexity"):
        assert scalars[f"eval/{name}"] == {int(length): as_float32(m[name]) for length, m in record["metrics"].items()}
    assert "eval/examples" not in scalars  # sizes, not metrics


def test_no_log_writes_no_tensorboard_folder(tmp_path):
    assert main(["lab", "run", *TINY, "--out", str(tmp_path)]) == 0
    assert (tmp_path / RESULTS).exists() and not (tmp_path / "tensorboard").exists()


def test_bad_or_unavailable_logger_is_a_clear_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["lab", "run", *TINY, "--log", "wandb", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "invalid choice: 'wandb'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"log must be one of 'none', 'tensorboard'; got 'csv'"):
        check_log("csv")
    exp = Experiment(TaskConfig("parity_check", 1, 3, (3,)), run=RunConfig(steps=1, log="tensorboard"))
    with pytest.raises(ValueError, match="no tensorboard_dir was given"):
        train_run(exp, encoding="nope", seed=0)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'posenc\[tensorboard\]'"):
        check_log("tensorboard")
    assert main(["lab", "run", *TINY, "--log", "tensorboard", "--out", str(tmp_path)]) == 1  # before any work
    assert "pip install 'posenc[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / RESULTS).exists()


def _steps(folder) -> dict[str, list[int]]:
    """Every scalar event's step per tag, repeats kept, after TensorBoard's own purging of restarted runs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_run_killed_before_its_first_checkpoint_restarts_with_a_fresh_curve(tmp_path):
    # the first attempt logs steps 2 and 4 and dies before any checkpoint: the restart begins at step 0, and its
    # curve must replace the dead attempt's, not follow it (steps 2 and 4 shown twice)
    pytest.importorskip("tensorboard")
    exp = Experiment(TaskConfig("parity_check", 1, 4, (4, 6)), ModelConfig(dim=16, n_layers=1, n_heads=2),
                     RunConfig(steps=6, batch_size=8, eval_batches=1, eval_batch_size=8, log_every=2,
                               checkpoint_every=100, log="tensorboard"))
    checkpoint, board = tmp_path / "run.pt", tmp_path / "tensorboard"

    def kill(step, loss):
        if step == 5:
            raise KeyboardInterrupt  # as Ctrl-C or a kill would stop it: no checkpoint written yet

    with pytest.raises(KeyboardInterrupt):
        train_run(exp, encoding="rope", seed=0, checkpoint=checkpoint, tensorboard_dir=board, on_step=kill)
    assert not checkpoint.exists()
    (folder,) = {p.parent for p in board.rglob("events.out.tfevents.*")}
    assert _steps(folder)["train/loss"] == [2, 4]  # what the dead attempt left
    record = train_run(exp, encoding="rope", seed=0, checkpoint=checkpoint, tensorboard_dir=board)
    steps = _steps(folder)
    assert steps["train/loss"] == steps["train/lr"] == steps["train/grad_norm"] == [2, 4, 6]  # each step once
    assert steps["eval/accuracy"] == [4, 6]
    shown = _scalars(folder)["train/loss"]
    assert shown == {step: float(np.float32(loss)) for step, loss in record["loss_curve"]}  # the restart's curve
