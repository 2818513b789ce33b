"""The document-structure tasks ``sentence_index`` and ``paragraph_index`` (src/posenc/lab/tasks/hierarchy.py)."""

import pytest
import torch

from posenc.base import get_encoding
from posenc.encodings.hierarchical import hierarchical_levels
from posenc.lab.config import Experiment, ModelConfig, RunConfig, TaskConfig
from posenc.lab.tasks import IGNORE, get_task
from posenc.lab.tasks.hierarchy import TOKEN, build_document, document_answers
from posenc.lab.train import reads_structure, train_run

TASKS = ("sentence_index", "paragraph_index")


def _sample(name, length, *, seed=0, batch=16):
    return get_task(name).sample_batch(torch.Generator().manual_seed(seed), batch, length)


def _parse(row: list[int]) -> tuple[int, int]:
    """(sentence in paragraph, paragraph) of the marker, read off the tokens independently of the sampler."""
    sentence = paragraph = 0
    for token in row:
        if token == TOKEN["*"]:
            return sentence, paragraph
        if token == TOKEN["."]:
            sentence += 1
        elif token == TOKEN["¶"]:
            sentence, paragraph = 0, paragraph + 1
    raise AssertionError("no marker in the row")


@pytest.mark.parametrize("name", TASKS)
def test_deterministic_shapes_and_dtypes(name):
    task = get_task(name)
    a, b, c = _sample(name, 7), _sample(name, 7), _sample(name, 7, seed=1)
    assert set(a) == {"inputs", "targets", "padding_mask", "coordinates"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["inputs"], c["inputs"])
    t = task.sequence_length(7)
    assert a["inputs"].shape == a["targets"].shape == a["padding_mask"].shape == (16, t)
    assert a["coordinates"].shape == (16, t, 3)
    assert a["inputs"].dtype == a["targets"].dtype == a["coordinates"].dtype == torch.long
    assert a["padding_mask"].dtype == torch.bool
    assert task.kind == "encoder" and task.metric == "accuracy" and task.summary
    assert task.coordinate_axes == get_encoding("hierarchical", dim=8, n_heads=2).axis_names


@pytest.mark.parametrize("name", TASKS)
def test_one_answer_at_the_query_and_coordinates_are_the_encodings_levels(name):
    batch = _sample(name, 9, batch=32)
    inputs, targets = batch["inputs"], batch["targets"]
    scored = targets != IGNORE
    assert torch.equal(scored.sum(1), torch.ones(32, dtype=torch.long))
    assert (inputs[scored] == TOKEN["?"]).all()
    assert torch.equal(batch["padding_mask"], inputs != TOKEN["<pad>"])
    assert ((inputs == TOKEN["*"]).sum(1) == 1).all()
    levels = hierarchical_levels(inputs, sentence_end_ids=[TOKEN["."]], paragraph_end_ids=[TOKEN["¶"]])
    assert torch.equal(batch["coordinates"], levels)
    # every document has 9 sentences, each ended by exactly one "." or "¶"
    ends = ((inputs == TOKEN["."]) | (inputs == TOKEN["¶"])).sum(1)
    assert torch.equal(ends, torch.full((32,), 9))


@pytest.mark.parametrize("name, level", [("sentence_index", 0), ("paragraph_index", 1)])
def test_labels_match_an_independent_parse(name, level):
    batch = _sample(name, 12, batch=64)
    for row, target in zip(batch["inputs"].tolist(), batch["targets"]):
        answer = int(target[target != IGNORE]) - TOKEN["0"]
        assert answer == _parse(row)[level]


def test_hand_computed_document():
    a, b, c, d, e, f = (TOKEN[w] for w in "abcdef")
    # sentences "c a", "f" (ends paragraph 0), "b d e"; the marker goes before word 0 of sentence 1
    row = build_document([[c, a], [f], [b, d, e]], [False, True, True], (1, 0))
    assert get_task("sentence_index").decode(row) == "c a . * f ¶ b d e ¶ ?"
    assert document_answers([False, True, True]) == ([0, 1, 0], [0, 0, 1])
    assert _parse(row) == (1, 0)
    levels = hierarchical_levels(torch.tensor(row), sentence_end_ids=[TOKEN["."]], paragraph_end_ids=[TOKEN["¶"]])
    assert levels[3].tolist() == [0, 1, 0]  # the marker: first token of the second sentence of paragraph 0
    assert levels[-1].tolist() == [0, 0, 2]  # the query opens a new paragraph


def test_answer_classes_stay_bounded_beyond_training():
    for name in TASKS:
        targets = _sample(name, 48, batch=64)["targets"]
        answers = targets[targets != IGNORE] - TOKEN["0"]
        assert answers.min() >= 0 and answers.max() <= 3
    # paragraph_index: 2..4 paragraphs however long; sentence_index: at most 4 sentences per paragraph
    inputs = _sample("paragraph_index", 48, batch=64)["inputs"]
    assert ((inputs == TOKEN["¶"]).sum(1) <= 4).all() and ((inputs == TOKEN["¶"]).sum(1) >= 2).all()
    coords = _sample("sentence_index", 48, batch=64)["coordinates"]
    assert coords[..., 1].max() <= 3


@pytest.mark.parametrize("name", TASKS)
def test_bad_length_is_a_clear_error(name):
    with pytest.raises(ValueError, match=f"task '{name}': length must be an int >= 1; got 0"):
        _sample(name, 0)


def test_hierarchical_reads_the_levels_and_flat_encodings_do_not():
    task = get_task("sentence_index")
    assert reads_structure(get_encoding("hierarchical", dim=16, n_heads=2), task)
    for flat in ("rope", "sinusoidal", "nope"):
        assert not reads_structure(get_encoding(flat, dim=16, n_heads=2), task)


def test_train_run_smoke():
    experiment = Experiment(TaskConfig("paragraph_index", 2, 3, (3, 6)), ModelConfig(dim=16, n_layers=1, n_heads=2),
                            RunConfig(steps=3, batch_size=8, eval_batches=1, eval_batch_size=8, checkpoint_every=0))
    record = train_run(experiment, encoding="hierarchical", seed=0)
    assert record["reads_structure"] and set(record["metrics"]) == {"3", "6"}
    assert 0.0 <= record["metrics"]["6"]["accuracy"] <= 1.0
    record = train_run(experiment, encoding="learned", seed=0)
    assert not record["reads_structure"] and "undefined" in record["metrics"]["6"]  # past its table, not stretched
