"""Training runs: science checks on tiny settings, resuming from a checkpoint, evaluation past a learned table."""

import dataclasses
import io
from pathlib import Path

import pytest
import torch

from posenc._io import read_checked
from posenc.lab.config import Experiment, ModelConfig, RunConfig, TaskConfig
from posenc.lab.train import evaluate, source_fingerprint, train_run

TINY = ModelConfig(dim=32, n_layers=1, n_heads=2, ffn_mult=2.0)


def _who(steps: int, **run) -> Experiment:
    return Experiment(TaskConfig("who_did_what"), dataclasses.replace(TINY, n_layers=2, n_heads=4),
                      RunConfig(steps=steps, batch_size=64, lr=3e-3, eval_batches=2, eval_batch_size=100, **run))


def test_encoder_without_positions_is_exactly_at_chance_on_who_did_what():
    # No training needed: a bidirectional encoder without positions is permutation-equivariant for ANY weights, so a
    # sentence and its mirror get the same answer and exactly one of each pair is right.
    record = train_run(_who(5), encoding="nope", seed=0)
    assert record["metrics"]["12"]["accuracy"] == pytest.approx(0.5)
    assert record["learned_bar"] == 0.9 and record["learned"] is False  # at chance: not learned


def test_a_positional_encoding_solves_who_did_what():
    # two layers: the query noun must find its match, then [CLS] must read where that match stands
    record = train_run(_who(250), encoding="sinusoidal", seed=0)
    assert record["metrics"]["12"]["accuracy"] >= 0.9, record["loss_curve"]
    assert record["learned"] is True


def test_learned_is_not_evaluated_past_its_table_and_says_so():
    exp = Experiment(TaskConfig("parity_check", 1, 4, (4, 8)), TINY, RunConfig(steps=2, batch_size=8,
                                                                                eval_batches=1, eval_batch_size=8))
    record = train_run(exp, encoding="learned", seed=0)
    assert record["max_seq_len"] == 5  # 4 bits + 1 output position
    assert "accuracy" in record["metrics"]["4"]
    reason = record["metrics"]["8"]["undefined"]
    assert "past max_seq_len=5" in reason and "interpolate_" in reason and "no interpolation" in reason
    record = train_run(exp, encoding="sinusoidal", seed=0)  # extrapolating encodings are evaluated
    assert "accuracy" in record["metrics"]["8"]


class _Stop(Exception):
    pass


def test_resume_from_checkpoint_follows_the_uninterrupted_run(tmp_path):
    exp = Experiment(TaskConfig("reverse_string", 1, 6, (6,)), TINY,
                     RunConfig(steps=12, batch_size=8, checkpoint_every=4, log_every=1, eval_batches=1,
                               eval_batch_size=16))
    straight = train_run(exp, encoding="rope", seed=1)

    def crash(step, loss):
        if step == 10:  # killed between checkpoints: steps 9 and 10 are redone after resuming from step 8
            raise _Stop

    ckpt = tmp_path / "run.pt"
    with pytest.raises(_Stop):
        train_run(exp, encoding="rope", seed=1, checkpoint=ckpt, on_step=crash)
    payload = read_checked(ckpt, "run checkpoint", "")
    assert torch.load(io.BytesIO(payload), weights_only=True)["step"] == 8
    resumed = train_run(exp, encoding="rope", seed=1, checkpoint=ckpt)
    assert [s for s, _ in resumed["loss_curve"]] == list(range(1, 13))
    torch.testing.assert_close(torch.tensor(resumed["loss_curve"]), torch.tensor(straight["loss_curve"]))
    assert resumed["run_id"] == straight["run_id"]
    assert resumed["metrics"]["6"]["loss"] == pytest.approx(straight["metrics"]["6"]["loss"], rel=1e-5)


def test_records_carry_the_fingerprint_of_the_code_that_made_them(tmp_path):
    import shutil

    import posenc
    copy = tmp_path / "posenc"
    shutil.copytree(Path(posenc.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_fingerprint(str(copy)) == source_fingerprint()  # contents and paths, not where it lives
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "x.cpython-311.py").write_text("cache")
    assert source_fingerprint(str(copy)) == source_fingerprint.__wrapped__(str(copy)) == source_fingerprint()
    model = copy / "model.py"
    model.write_text(model.read_text() + "\n# one more line\n")
    assert source_fingerprint.__wrapped__(str(copy)) != source_fingerprint()  # one edited file changes it
    exp = Experiment(TaskConfig("reverse_string", 1, 4, (4,)), TINY,
                     RunConfig(steps=1, batch_size=4, eval_batches=1, eval_batch_size=4))
    assert train_run(exp, encoding="rope", seed=0)["versions"]["source"] == source_fingerprint()


def test_bad_lengths_and_names_are_clear_errors():
    with pytest.raises(ValueError, match="train_min_length=5 is larger than train_max_length=3"):
        train_run(Experiment(TaskConfig("parity_check", 5, 3), TINY, RunConfig(steps=1)), encoding="rope", seed=0)
    with pytest.raises(ValueError, match="eval length must be an int >= 12"):
        train_run(Experiment(TaskConfig("who_did_what", eval_lengths=(8,)), TINY, RunConfig(steps=1)),
                  encoding="rope", seed=0)
    with pytest.raises(ValueError, match="unknown encoding 'ropee'"):
        train_run(Experiment(TaskConfig("parity_check"), TINY, RunConfig(steps=1)), encoding="ropee", seed=0)


def test_lm_perplexity_is_scored_on_every_token():
    exp = Experiment(TaskConfig("lm", 16, 16, (16, 32), {"eval_tokens": 256}), TINY,
                     RunConfig(steps=3, batch_size=4, eval_batch_size=8))
    record = train_run(exp, encoding="alibi" if "alibi" in _names() else "rope", seed=0)
    for length in ("16", "32"):
        m = record["metrics"][length]
        assert m["tokens"] == 256 and m["perplexity"] == pytest.approx(torch.tensor(m["loss"]).exp().item(), rel=1e-5)
    assert len(record["content_hash"]) == 64


def test_evaluate_reports_exact_match_and_token_accuracy():
    # a model that always answers "1" on parity: token accuracy equals the share of odd rows, exact match too
    from posenc.lab.tasks import get_task
    from posenc.lab.train import build_model

    task = get_task("parity_check")
    exp = Experiment(TaskConfig("parity_check"), TINY, RunConfig())
    model = build_model(exp, task, "nope", 8)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[1] = 1.0  # logits favour token "1" whatever the hidden state ...
        model.decoder.norm.weight.zero_()
        model.decoder.norm.bias.fill_(1.0)  # ... because the final norm outputs all ones
    m = evaluate(model, task, 7, seed=0, batch_size=50, n_batches=2, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(0 + 1_000_003 + 7)
    odd = torch.cat([b["targets"][:, -1] for b in task.eval_batches(gen, 50, 7, 2)]).float().mean().item()
    assert m["accuracy"] == pytest.approx(odd) and m["token_accuracy"] == pytest.approx(odd)
    assert m["examples"] == 100 and m["tokens"] == 100


class _ReverseOracle(torch.nn.Module):
    """Answers reverse_string from its input, but gets the first answer token wrong in every other row."""

    def __init__(self, n_bits: int) -> None:
        super().__init__()
        from posenc.base import get_encoding

        self.n = n_bits
        self.pe = get_encoding("nope", dim=8, n_heads=1)

    def forward(self, inputs, padding_mask=None):  # (B, 2n) -> logits (B, 2n, 3)
        answer = inputs.clone()
        answer[:, self.n:] = inputs[:, :self.n].flip(1)
        answer[::2, self.n] = 1 - answer[::2, self.n]  # rows 0, 2, 4, ...: one wrong bit
        return torch.nn.functional.one_hot(answer, 3).float()


def test_evaluate_tells_exact_match_from_token_accuracy():
    # multi-token answers: one wrong token in every other row gives exact match 1/2 and token accuracy 1 - 1/(2n),
    # so swapping the two metrics (or scoring only the last token) fails here
    from posenc.lab.tasks import get_task

    n = 5
    task = get_task("reverse_string")
    m = evaluate(_ReverseOracle(n), task, n, seed=0, batch_size=10, n_batches=2, device=torch.device("cpu"))
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["token_accuracy"] == pytest.approx(1 - 1 / (2 * n))
    assert m["examples"] == 20 and m["tokens"] == 20 * n


def _names():
    from posenc.base import registered_names

    return registered_names()


def test_experiment_round_trips_through_a_dict():
    exp = Experiment(TaskConfig("lm", 8, 8, (8, 16), {"eval_tokens": 64}), TINY, RunConfig(steps=3))
    assert Experiment.from_dict(exp.to_dict()) == exp
    assert dataclasses.asdict(exp)["task"]["eval_lengths"] == (8, 16)


def test_encoder_decoder_run_reports_bleu_and_exact_match():
    exp = Experiment(TaskConfig("reorder", 1, 1, (1, 2)), TINY, RunConfig(steps=2, batch_size=4, eval_batches=1,
                                                                           eval_batch_size=4))
    record = train_run(exp, encoding="rope", seed=0)
    for length in ("1", "2"):
        m = record["metrics"][length]
        assert 0.0 <= m["bleu"] <= 100.0 and 0.0 <= m["generated_exact_match"] <= 1.0
    assert record["kind"] == "encoder_decoder"
