"""Decoder-only SCAN as Kazemnejad et al. run it: one causal sequence, loss on the actions, the whole test split."""

import pytest
import torch

from posenc.lab.tasks import IGNORE, get_task
from posenc.lab.tasks.scan import TRAIN_MAX_ACTIONS, scan_commands


def test_sequence_is_command_arrow_actions_and_only_the_actions_are_scored():
    task = get_task("scan_decoder")
    batch = task.sample_batch(torch.Generator().manual_seed(0), 16, TRAIN_MAX_ACTIONS)
    commands = {c: a for c, a in scan_commands()}
    for inputs, targets in zip(batch["inputs"].tolist(), batch["targets"].tolist()):
        words = [task.vocab[i] for i in inputs]
        arrow = words.index("->")
        command = " ".join(words[:arrow])
        actions = list(commands[command])
        assert len(actions) <= TRAIN_MAX_ACTIONS
        scored = [task.vocab[t] for t in targets if t != IGNORE]
        assert scored == actions + ["</s>"]
        assert all(t == IGNORE for t in targets[:arrow])  # the command itself is given, not predicted
        assert words[arrow + 1:arrow + 1 + len(actions)] == actions  # teacher forcing feeds the actions


def test_evaluation_past_the_training_split_reads_the_whole_test_split_once():
    task = get_task("scan_decoder")
    seen = []
    for batch in task.eval_batches(torch.Generator().manual_seed(0), 500, 48, n_batches=1):
        for row in batch["inputs"].tolist():
            words = [task.vocab[i] for i in row]
            seen.append(" ".join(words[:words.index("->")]))
    test_split = [c for c, a in scan_commands() if len(a) > TRAIN_MAX_ACTIONS]
    assert len(test_split) == 3920 and sorted(seen) == sorted(test_split)


class _Oracle(torch.nn.Module):
    """Reads the answer off a table of every command: greedy exact match 1.0 unless ``wrong`` flips one action."""

    def __init__(self, task, wrong: bool = False) -> None:
        super().__init__()
        from posenc.base import get_encoding

        self.task, self.wrong = task, wrong
        self.pe = get_encoding("nope", dim=8, n_heads=1)
        self.table = {c: a for c, a in scan_commands()}

    def forward(self, inputs, padding_mask=None):
        vocab = self.task.vocab
        logits = torch.zeros(*inputs.shape, len(vocab))
        for r, row in enumerate(inputs.tolist()):
            words = [vocab[i] for i in row]
            arrow = words.index("->")
            answer = [*self.table[" ".join(words[:arrow])], "</s>"]
            if self.wrong and r % 2 == 0:
                answer[0] = "WALK" if answer[0] != "WALK" else "RUN"
            for j, word in enumerate(answer):
                logits[r, arrow + j, vocab.index(word)] = 1.0
        return logits


@pytest.mark.parametrize("wrong", [False, True])
def test_exact_match_on_the_test_split(wrong):
    from posenc.lab.train import evaluate

    task = get_task("scan_decoder")
    m = evaluate(_Oracle(task, wrong), task, 48, seed=0, batch_size=980, n_batches=1, device=torch.device("cpu"))
    assert m["examples"] == 3920
    assert m["accuracy"] == pytest.approx(0.5 if wrong else 1.0)


def test_a_decoder_trains_on_it():
    from posenc.lab.config import Experiment, ModelConfig, RunConfig, TaskConfig
    from posenc.lab.train import train_run

    exp = Experiment(TaskConfig("scan_decoder", eval_lengths=(22,)), ModelConfig(dim=32, n_layers=1, n_heads=2),
                     RunConfig(steps=3, batch_size=8, eval_batches=1, eval_batch_size=8))
    record = train_run(exp, encoding="rope", seed=0)
    assert record["kind"] == "decoder" and 0.0 <= record["metrics"]["22"]["accuracy"] <= 1.0
