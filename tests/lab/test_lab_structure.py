"""Structured batches: an encoding reads a task's coordinates or graph only when it is built for them."""

import pytest
import torch

from posenc import Positions, Transformer, TransformerConfig
from posenc.lab.tasks.base import Task
from posenc.lab.train import _forward, reads_structure, structure


class _GridTask(Task):
    name = "grid_stub"
    kind = "encoder"
    vocab = ("a", "b")
    coordinate_axes = ("row", "col")

    def sample_batch(self, generator, batch_size, length):
        raise NotImplementedError  # not drawn from in these tests


class _GraphTask(_GridTask):
    name = "graph_stub"
    coordinate_axes = ()
    graph = True


def _model(encoding):
    torch.manual_seed(0)
    return Transformer(TransformerConfig(kind="encoder", vocab_size=2, dim=16, n_layers=1, n_heads=2,
                                         max_seq_len=16, encoding=encoding)).eval()


def test_only_encodings_with_the_task_axes_read_coordinates():
    task = _GridTask()
    assert reads_structure(_model("axial_rope").pe, task)
    assert reads_structure(_model("sinusoidal_2d").pe, task)
    assert not reads_structure(_model("rope").pe, task)
    assert not reads_structure(_model("mrope").pe, task)  # three axes (time, height, width), not (row, col)
    assert not reads_structure(_model("laplacian").pe, task)
    assert reads_structure(_model("laplacian").pe, _GraphTask()) and not reads_structure(_model("rope").pe,
                                                                                          _GraphTask())


def test_coordinates_change_a_grid_encoding_for_one_forward_only():
    tokens = torch.tensor([[0, 1, 1, 0]])
    grid = torch.tensor([[[0, 0], [0, 1], [1, 0], [1, 1]]])  # a 2 x 2 grid, not the default 1 x 4 row
    batch = {"inputs": tokens, "coordinates": grid}
    model = _model("axial_rope")
    plain = model(tokens)
    with torch.no_grad():
        read = _forward(model, _GridTask(), batch)
    assert not torch.allclose(read, plain)
    assert torch.equal(model(tokens, positions=Positions(coordinates=grid)), read)
    assert torch.equal(model(tokens), plain)  # the encoding kept no state
    flat = _model("rope")
    assert torch.equal(_forward(flat, _GridTask(), batch), flat(tokens))  # the flat baseline ignores them


def test_graph_tasks_set_the_adjacency_and_missing_entries_are_clear_errors():
    tokens = torch.tensor([[0, 1, 1, 0]])
    path = torch.tensor([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]], dtype=torch.float)
    star = torch.tensor([[0, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.float)
    model = _model("spd")
    with torch.no_grad():
        for p in model.pe.parameters():  # a learned bias per distance (zero at initialisation)
            torch.nn.init.normal_(p)
        a = _forward(model, _GraphTask(), {"inputs": tokens, "adjacency": path[None]})
        b = _forward(model, _GraphTask(), {"inputs": tokens, "adjacency": star[None]})
    assert not torch.allclose(a, b)
    assert model.pe.num_nodes is None  # the graph is input context for one forward only
    with pytest.raises(ValueError, match="no 'adjacency' entry"):
        structure(model, _GraphTask(), {"inputs": tokens})
