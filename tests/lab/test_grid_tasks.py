"""The 2-D lab tasks: ``grid_relation`` (2-D patch encodings) and ``text_image_grounding`` (M-RoPE)."""

import pytest
import torch

from posenc.base import get_encoding
from posenc.encodings.grid2d import grid_coordinates
from posenc.encodings.mrope import mrope_position_ids
from posenc.lab.config import Experiment, ModelConfig, RunConfig, TaskConfig
from posenc.lab.tasks import IGNORE, get_task
from posenc.lab.tasks.text_image_grounding import COLOURS, cell_token
from posenc.lab.train import _forward, build_model, reads_structure, structure, train_run

TASKS = ("grid_relation", "text_image_grounding")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _grid_answer(task, tokens: list[int], side: int) -> str:
    """The answer to a grid_relation example, worked out from its tokens with plain Python."""
    words = [task.vocab[t] for t in tokens]
    question, patches = words[0], words[1:]
    assert len(patches) == side * side and sorted(patches).count(".") == side * side - 2
    ra, ca = divmod(patches.index("A"), side)
    rb, cb = divmod(patches.index("B"), side)
    if question == "left?":
        assert ca != cb  # no ties
        return "yes" if ca < cb else "no"
    if question == "above?":
        assert ra != rb
        return "yes" if ra < rb else "no"
    assert question == "dist?"
    d = abs(ra - rb) + abs(ca - cb)
    return f"d{d}" if d < 4 else "d4+"


def _grounding_answer(task, tokens: list[int], side: int) -> str:
    """The answer to a text_image_grounding example, worked out from its tokens with plain Python."""
    words = [task.vocab[t] for t in tokens]
    first, query = words[:2]
    _, row, col = query.split("_")  # "cell_1_2"
    patches = words[2:]
    assert len(patches) == side * side
    cell = patches[int(row) * side + int(col)]
    if first == "what":
        return cell[1:-1]  # "[red]" -> "red"
    return "yes" if cell == f"[{first}]" else "no"


# -- sampling ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("side", [2, 5, 8, 16])
def test_deterministic_shapes_and_coordinates(name, side):
    task = get_task(name)
    a, b, c = (task.sample_batch(_gen(s), 6, side) for s in (3, 3, 4))
    assert set(a) == {"inputs", "targets", "coordinates"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["inputs"], c["inputs"])
    t = task.sequence_length(side)
    assert a["inputs"].shape == a["targets"].shape == (6, t)
    assert a["coordinates"].shape == (6, t, len(task.coordinate_axes))
    assert a["inputs"].dtype == a["targets"].dtype == a["coordinates"].dtype == torch.long
    assert 0 <= a["inputs"].min() and a["inputs"].max() < task.vocab_size
    scored = a["targets"] != IGNORE
    assert scored.sum(1).tolist() == [1] * 6  # one answer per example


def test_coordinates_are_the_encodings_own_layouts():
    grid = get_task("grid_relation").sample_batch(_gen(), 2, 3)["coordinates"]
    assert torch.equal(grid[1], grid_coordinates(3, 3, prefix_tokens=1))
    assert grid[1, :4].tolist() == [[-1, -1], [0, 0], [0, 1], [0, 2]]  # the question token sits outside the grid
    text = get_task("text_image_grounding").sample_batch(_gen(), 2, 3)["coordinates"]
    assert torch.equal(text[1], mrope_position_ids([2, (1, 3, 3)]))
    assert text[1, 1:4].tolist() == [[1, 1, 1], [2, 2, 2], [2, 2, 3]]  # the query, then patch (0, 0), patch (0, 1)


@pytest.mark.parametrize("side", [4, 6, 12])
def test_grounding_named_cell_is_a_fixed_mrope_offset_from_the_query(side):
    """The point of the task: in M-RoPE the named patch sits at (1, 1 + r, 1 + c) from the query for every side;
    in flat positions at 1 + side*r + c, which moves with the side."""
    task = get_task("text_image_grounding")
    coords = task.sample_batch(_gen(), 1, side)["coordinates"][0]  # (T, 3)
    query = 1
    for r, c in [(0, 0), (2, 3), (3, 1)]:
        patch = 2 + r * side + c
        assert (coords[patch] - coords[query]).tolist() == [1, 1 + r, 1 + c]
        assert patch - query == 1 + side * r + c


@pytest.mark.parametrize("side", [2, 8, 13])
def test_grid_relation_labels_match_the_image(side):
    task = get_task("grid_relation", questions=("left", "above", "distance"))
    batch = task.sample_batch(_gen(1), 64, side)
    for tokens, targets in zip(batch["inputs"].tolist(), batch["targets"].tolist()):
        assert task.vocab[targets[0]] == _grid_answer(task, tokens, side)
        assert targets[1:] == [IGNORE] * side * side


def test_grid_relation_hand_example():
    task = get_task("grid_relation")
    left = [task.token(w) for w in "left? A . . B".split()]  # A at (0, 0), B at (1, 1)
    above = [task.token(w) for w in "above? . B A .".split()]  # B at (0, 1), A at (1, 0)
    assert _grid_answer(task, left, 2) == "yes" and _grid_answer(task, above, 2) == "no"


@pytest.mark.parametrize("question", ["colour", "match"])
@pytest.mark.parametrize("max_named,side", [(6, 5), (6, 16), (None, 16)])
def test_grounding_labels_match_the_image(question, max_named, side):
    task = get_task("text_image_grounding", question=question, max_named=max_named)
    batch = task.sample_batch(_gen(1), 64, side)
    rows, cols = [], []
    for tokens, targets in zip(batch["inputs"].tolist(), batch["targets"].tolist()):
        assert task.vocab[targets[1]] == _grounding_answer(task, tokens, side)
        assert targets[:1] + targets[2:] == [IGNORE] * (1 + side * side)
        _, row, col = task.vocab[tokens[1]].split("_")
        rows.append(int(row))
        cols.append(int(col))
        assert task.vocab[tokens[0]] in (("what",) if question == "colour" else COLOURS)
    limit = side if max_named is None else min(side, max_named)
    assert max(rows + cols) < limit
    if max_named is None:
        assert max(rows + cols) >= 6  # rows/columns never named in training are asked about


def test_grounding_hand_example():
    task = get_task("text_image_grounding", question="match")
    image = "[red] [green] [blue] [yellow] [red] [green] [yellow] [blue] [red]".split()  # 3x3, (1, 1) is red
    assert cell_token(1, 1) == "cell_1_1"
    tokens = [task.token(w) for w in "red cell_1_1".split() + image]
    assert _grounding_answer(task, tokens, 3) == "yes"
    tokens[0] = task.token("blue")
    assert _grounding_answer(task, tokens, 3) == "no"
    tokens[:2] = task.token("what"), task.token("cell_1_2")  # (1, 2) is green
    assert _grounding_answer(task, tokens, 3) == "green"
    # and the sampler writes exactly this layout: the word, the query token, then the patches
    batch = task.sample_batch(_gen(5), 1, 3)
    words = task.decode(batch["inputs"][0]).split()
    assert words[0] in COLOURS and words[1].startswith("cell_") and all(w.startswith("[") for w in words[2:])
    assert batch["targets"][0, 1] == task.token(_grounding_answer(task, batch["inputs"][0].tolist(), 3))


@pytest.mark.parametrize("name,options,answers", [
    ("grid_relation", {}, ("yes", "no")),
    ("text_image_grounding", {"question": "match"}, ("yes", "no")),
    ("text_image_grounding", {}, ("red", "green", "blue", "yellow")),
])
def test_labels_balanced_and_bag_of_tokens_uninformative(name, options, answers):
    task = get_task(name, **options)
    batch = task.sample_batch(_gen(2), 2000, 8)
    scored = batch["targets"][batch["targets"] != IGNORE]
    shares = [float((scored == task.token(a)).float().mean()) for a in answers]
    assert sum(shares) == pytest.approx(1.0)
    assert all(abs(share - 1 / len(answers)) < 0.04 for share in shares), shares
    # every image has the same bag of patches, so only positions can tell the answers apart
    start = 1 if name == "grid_relation" else 2
    bags = batch["inputs"][:, start:].sort(dim=1).values
    assert (bags == bags[0]).all()


def test_grid_relation_distance_classes_are_balanced():
    task = get_task("grid_relation", questions=("distance",))
    answers = task.sample_batch(_gen(3), 4000, 8)["targets"][:, 0]
    counts = torch.bincount(answers, minlength=task.vocab_size)[[task.token(f"d{d}") for d in (1, 2, 3)]
                                                                 + [task.token("d4+")]]
    assert counts.sum() == 4000 and counts.min() > 850


# -- errors --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TASKS)
def test_bad_lengths_are_clear_errors(name):
    task = get_task(name)
    with pytest.raises(ValueError, match=f"task '{name}': length must be an int >= 2; got 1"):
        task.sample_batch(_gen(), 2, 1)
    with pytest.raises(TypeError, match="length must be an int"):
        task.sample_batch(_gen(), 2, 8.0)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="so the grid side must be <= 16; got 17"):
        get_task("text_image_grounding").sample_batch(_gen(), 1, 17)
    with pytest.raises(ValueError, match="question must be one of"):
        get_task("text_image_grounding", question="where")
    for bad in (0, 17):
        with pytest.raises(ValueError, match="max_named must be an int >= 1 and <= 16"):
            get_task("text_image_grounding", max_named=bad)
    with pytest.raises(TypeError, match="max_named must be an int; got bool"):
        get_task("text_image_grounding", max_named=True)
    with pytest.raises(ValueError, match="questions must be distinct names from"):
        get_task("grid_relation", questions=("left", "diagonal"))
    with pytest.raises(ValueError, match="at least one"):
        get_task("grid_relation", questions=())
    with pytest.raises(TypeError, match="questions must be a sequence"):
        get_task("grid_relation", questions="left")


# -- structure reaches the intended encodings --------------------------------------------------------------------
@pytest.mark.parametrize("name,structured,flat", [
    ("grid_relation", ("sinusoidal_2d", "axial_rope", "rope_mixed"), ("rope", "sinusoidal", "nope", "mrope")),
    ("text_image_grounding", ("mrope",), ("rope", "nope", "axial_rope")),
])
def test_reads_structure(name, structured, flat):
    task = get_task(name)
    for enc in structured:
        assert reads_structure(get_encoding(enc, dim=16, n_heads=2), task), enc
    for enc in flat:
        assert not reads_structure(get_encoding(enc, dim=16, n_heads=2), task), enc


@pytest.mark.parametrize("name,encoding", [("grid_relation", "axial_rope"), ("text_image_grounding", "mrope")])
def test_structured_forward_uses_the_coordinates(name, encoding):
    task = get_task(name)
    exp = Experiment(TaskConfig(name), ModelConfig(dim=16, n_layers=1, n_heads=2))
    torch.manual_seed(0)
    model = build_model(exp, task, encoding, task.sequence_length(4)).eval()
    batch = task.sample_batch(_gen(), 2, 4)
    with torch.no_grad():
        structured = _forward(model, task, batch)
        flat = model(batch["inputs"])
        positions = structure(model, task, batch)
        assert torch.equal(positions.coordinates, batch["coordinates"])
        assert torch.equal(model(batch["inputs"], positions=positions), structured)
    assert not torch.allclose(structured, flat)


# -- end to end ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,encoding", [("grid_relation", "axial_rope"), ("grid_relation", "rope"),
                                           ("text_image_grounding", "mrope")])
def test_train_run_smoke(name, encoding):
    exp = Experiment(TaskConfig(name, 4, 4, (4, 6)), ModelConfig(dim=16, n_layers=1, n_heads=2),
                     RunConfig(steps=3, batch_size=8, eval_batches=1, eval_batch_size=8, checkpoint_every=0))
    record = train_run(exp, encoding=encoding, seed=0)
    assert record["reads_structure"] == (encoding != "rope")
    assert set(record["metrics"]) == {"4", "6"}
    assert all(0.0 <= m["accuracy"] <= 1.0 and m["examples"] == 8 for m in record["metrics"].values())
