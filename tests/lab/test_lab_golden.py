"""The lab's training numerics, pinned: a sweep resumed with newer code must continue the numbers an older one wrote.

These are the seed-dependent numbers the house style otherwise avoids, on purpose: a long sweep's records (and its
checkpoints) were produced by this loop, and a refactor of the loop, the model or the CLI must leave every recorded
loss, metric and checkpoint resume bit-identical. The expected values were recorded before the training loops of
the demo, the lab and the context-extension experiment were merged into one (issue 16). A change that alters them
changes what a resumed sweep computes: rerun the sweep, then record the new values here, and say so in the commit.
"""

from __future__ import annotations

import pytest

from posenc.lab.config import Experiment, ModelConfig, RunConfig, TaskConfig
from posenc.lab.train import train_run

SEED = 3

GOLDEN = {
    ("parity_check", "nope"): {
        "loss_curve": [[5, 1.1796870231628418], [10, 0.9264938831329346], [15, 0.7536359429359436],
                       [20, 0.7045453786849976], [25, 0.8012479543685913], [30, 0.8231863379478455]],
        "metrics": {"6": {"accuracy": 0.5, "token_accuracy": 0.5, "loss": 0.8185153007507324,
                          "perplexity": 2.267131329357714, "examples": 16, "tokens": 16},
                    "9": {"accuracy": 0.25, "token_accuracy": 0.25, "loss": 0.8229390978813171,
                          "perplexity": 2.277182875034272, "examples": 16, "tokens": 16}},
        "final_train_loss": 0.8231863379478455,
    },
    ("parity_check", "rope"): {
        "loss_curve": [[5, 1.179756760597229], [10, 0.9029006361961365], [15, 0.7377911806106567],
                       [20, 0.6881060004234314], [25, 0.7859953045845032], [30, 0.8021889925003052]],
        "metrics": {"6": {"accuracy": 0.625, "token_accuracy": 0.625, "loss": 0.8125441670417786,
                          "perplexity": 2.2536343213763534, "examples": 16, "tokens": 16},
                    "9": {"accuracy": 0.5, "token_accuracy": 0.5, "loss": 0.8094010949134827,
                          "perplexity": 2.2465621062167838, "examples": 16, "tokens": 16}},
        "final_train_loss": 0.8021889925003052,
    },
    ("decoder_copy", "nope"): {
        "loss_curve": [[5, 2.931105136871338], [10, 2.8465323448181152], [15, 2.8225838343302407],
                       [20, 2.83958371480306], [25, 2.729339361190796], [30, 2.677849451700846]],
        "metrics": {"5": {"accuracy": 0.0, "token_accuracy": 0.13541666666666666, "loss": 2.824275334676107,
                          "perplexity": 16.848730870037237, "examples": 16, "tokens": 96},
                    "8": {"accuracy": 0.0, "token_accuracy": 0.09027777777777778, "loss": 2.85709465874566,
                          "perplexity": 17.41086886713065, "examples": 16, "tokens": 144}},
        "final_train_loss": 2.677849451700846,
    },
    ("decoder_copy", "rope"): {
        "loss_curve": [[5, 2.9380993843078613], [10, 2.8469173908233643], [15, 2.834110895792643],
                       [20, 2.858359972635905], [25, 2.7392690181732178], [30, 2.706562360127767]],
        "metrics": {"5": {"accuracy": 0.0, "token_accuracy": 0.14583333333333334, "loss": 2.819370905558268,
                          "perplexity": 16.76629976773789, "examples": 16, "tokens": 96},
                    "8": {"accuracy": 0.0, "token_accuracy": 0.09027777777777778, "loss": 2.8463211059570312,
                          "perplexity": 17.224298768286147, "examples": 16, "tokens": 144}},
        "final_train_loss": 2.706562360127767,
    },
}
LENGTHS = {"parity_check": (1, 6, (6, 9)), "decoder_copy": (1, 5, (5, 8))}  # an encoder task and a decoder task


def _experiment(task: str, **run) -> Experiment:
    lo, hi, evals = LENGTHS[task]
    settings = {"steps": 30, "batch_size": 8, "lr": 3e-3, "eval_batches": 1, "eval_batch_size": 16,
                "checkpoint_every": 0, "log_every": 5, "threads": 1, **run}
    return Experiment(TaskConfig(task, lo, hi, evals), ModelConfig(dim=16, n_layers=1, n_heads=2),
                      RunConfig(**settings))


def _numbers(record: dict) -> dict:
    return {key: record[key] for key in ("loss_curve", "metrics", "final_train_loss")}  # not wall_time_s


@pytest.mark.parametrize("task, encoding", list(GOLDEN), ids="/".join)
def test_a_tiny_run_reproduces_its_recorded_numbers_exactly(task, encoding):
    assert _numbers(train_run(_experiment(task), encoding=encoding, seed=SEED)) == GOLDEN[task, encoding]


class _Stop(Exception):
    pass


def test_a_run_resumed_from_its_checkpoint_reproduces_the_recorded_numbers(tmp_path):
    ckpt = tmp_path / "run.pt"

    def stop(step, loss):
        if step == 13:  # killed after the checkpoint at step 10
            raise _Stop

    exp = _experiment("decoder_copy", checkpoint_every=10)
    with pytest.raises(_Stop):
        train_run(exp, encoding="rope", seed=SEED, checkpoint=ckpt, on_step=stop)
    assert _numbers(train_run(exp, encoding="rope", seed=SEED, checkpoint=ckpt)) == GOLDEN["decoder_copy", "rope"]
