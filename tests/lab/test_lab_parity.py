"""Peer parity's held-out batches: drawn apart from the training stream, so the score is a held-out score.

:func:`posenc.lab.parity.train_side_by_side` is run with one small posenc contender (no peer library needed) on a
task whose draws are recorded: every ``sample_batch`` call with the generator it drew from, that generator's state
before the draw and the batch it returned.
"""

import torch

from posenc import Transformer, TransformerConfig
from posenc.lab import parity
from posenc.lab.tasks import get_task

SEED, STEPS = 3, (1, 3)
TRAIN = (2, 6)


def _recorded_run(monkeypatch, steps: int) -> tuple[list[dict], list[dict], dict]:
    """Train for ``steps`` steps; ``(training draws, evaluation draws, result)``."""
    draws = []

    def recording_task(name, **options):
        task = get_task(name, **options)
        real = task.sample_batch

        def sample_batch(generator, batch_size, length):
            state = generator.get_state()
            batch = real(generator, batch_size, length)
            draws.append({"generator": generator, "state": state, "batch": batch})
            return batch

        task.sample_batch = sample_batch
        return task

    monkeypatch.setattr(parity, "get_task", recording_task)
    task = get_task("parity_check")
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind=task.kind, vocab_size=task.vocab_size, dim=16, n_layers=1, n_heads=2,
                                          max_seq_len=task.sequence_length(TRAIN[1]), encoding="rope"))
    result = parity.train_side_by_side("parity_check", steps=steps, dim=16, n_layers=1, n_heads=2, lr=1e-3,
                                       train_lengths=TRAIN, batch_size=4, seed=SEED, eval_batches=2,
                                       eval_batch_size=5, contenders={"posenc": model})
    return draws[:steps], draws[steps:], result


def test_held_out_batches_are_independent_of_the_training_stream(monkeypatch):
    runs = {steps: _recorded_run(monkeypatch, steps) for steps in STEPS}
    for steps, (train, held_out, result) in runs.items():
        assert len(train) == steps and len(held_out) == 2 and result["posenc"]["examples"] == 10
        trained_on = {id(d["generator"]) for d in train}
        assert len(trained_on) == 1
        # not the training generator itself (its stream goes on where training stopped) ...
        assert all(id(d["generator"]) not in trained_on for d in held_out)
        # ... nor a copy of it at any point of the training stream, its seeded start included
        seen = [torch.Generator().manual_seed(SEED).get_state(), *(d["state"] for d in train)]
        assert not any(torch.equal(held_out[0]["state"], s) for s in seen)
        for d in held_out:  # and no held-out batch is a batch trained on
            for t in train:
                same_shape = d["batch"]["inputs"].shape == t["batch"]["inputs"].shape
                assert not (same_shape and torch.equal(d["batch"]["inputs"], t["batch"]["inputs"]))
    # the held-out set does not depend on how much of the training stream was drawn before it
    (_, first, _), (_, second, _) = runs[STEPS[0]], runs[STEPS[1]]
    for a, b in zip(first, second, strict=True):
        assert a["batch"].keys() == b["batch"].keys()
        for key in a["batch"]:
            assert torch.equal(a["batch"][key], b["batch"][key]), key
