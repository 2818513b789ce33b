"""The graph tasks: random graphs as adjacency, labels checked against independent graph algorithms."""

from collections import deque

import pytest
import torch

from posenc.base import get_encoding
from posenc.lab.config import Experiment, ModelConfig, RunConfig, TaskConfig
from posenc.lab.tasks import IGNORE, get_task
from posenc.lab.tasks.graphs import MAX_DISTANCE, on_tree_path, random_recursive_trees
from posenc.lab.train import reads_structure, train_run

NAMES = ("graph_distance", "cycle_detection")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _neighbours(adj: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in adj]


def _bfs(adj: torch.Tensor, source: int) -> list[int]:
    """Hop counts from ``source`` in plain Python (-1: unreachable)."""
    nbrs, dist, todo = _neighbours(adj), [-1] * adj.shape[0], deque([source])
    dist[source] = 0
    while todo:
        u = todo.popleft()
        for v in nbrs[u]:
            if dist[v] < 0:
                dist[v] = dist[u] + 1
                todo.append(v)
    return dist


def _two_core(adj: torch.Tensor) -> list[bool]:
    """Nodes left after repeatedly removing leaves: in a connected graph with one cycle, exactly that cycle."""
    nbrs = [set(n) for n in _neighbours(adj)]
    alive = [True] * len(nbrs)
    leaves = [u for u in range(len(nbrs)) if len(nbrs[u]) <= 1]
    while leaves:
        u = leaves.pop()
        if not alive[u]:
            continue
        alive[u] = False
        for v in nbrs[u]:
            nbrs[v].discard(u)
            if alive[v] and len(nbrs[v]) <= 1:
                leaves.append(v)
        nbrs[u].clear()
    return alive


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_shapes_and_simple_undirected_graphs(name):
    task = get_task(name)
    a = task.sample_batch(_gen(3), 8, 9)
    b = task.sample_batch(_gen(3), 8, 9)
    c = task.sample_batch(_gen(4), 8, 9)
    assert set(a) == {"inputs", "targets", "adjacency"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["adjacency"], c["adjacency"])
    assert a["inputs"].dtype == a["targets"].dtype == torch.long and a["adjacency"].dtype == torch.bool
    assert a["inputs"].shape == a["targets"].shape == (8, 9) and a["adjacency"].shape == (8, 9, 9)
    adj = a["adjacency"]
    assert torch.equal(adj, adj.transpose(1, 2)) and not adj.diagonal(dim1=1, dim2=2).any()
    assert (a["targets"] != IGNORE).all()  # every node is scored
    assert task.graph and task.kind == "encoder" and task.sequence_length(9) == 9
    for row in adj:
        assert min(_bfs(row, 0)) >= 0  # connected


def test_random_recursive_trees_are_trees_with_shuffled_labels():
    adj = random_recursive_trees(_gen(), 200, 8)
    assert (adj.sum((1, 2)) == 2 * 7).all()  # n - 1 edges
    assert all(min(_bfs(row, 0)) >= 0 for row in adj)  # and connected: a tree
    # attachment order is shuffled: node 0 is not always the root, so its degree varies like any node's
    assert adj[:, 0].sum(1).float().mean() == pytest.approx(adj.sum(2).float().mean(), rel=0.25)


def test_graph_distance_labels_are_breadth_first_hop_counts():
    task = get_task("graph_distance")
    batch = task.sample_batch(_gen(1), 32, 12)
    source = task.token("source")
    assert ((batch["inputs"] == source).sum(1) == 1).all()
    for x, y, adj in zip(batch["inputs"], batch["targets"], batch["adjacency"]):
        hops = _bfs(adj, x.tolist().index(source))
        assert task.decode(y).split() == [str(h) if h < MAX_DISTANCE else f"{MAX_DISTANCE}+" for h in hops]
    assert (batch["adjacency"].sum((1, 2)) >= 2 * 11).all()  # a spanning tree, plus chords in some rows


def test_graph_distance_hand_example():
    # the path 2 - 0 - 3 - 1 with the source at node 0, as in the class docstring
    adj = torch.zeros(4, 4, dtype=torch.bool)
    for u, v in ((2, 0), (0, 3), (3, 1)):
        adj[u, v] = adj[v, u] = True
    assert _bfs(adj, 0) == [0, 2, 1, 1]
    from posenc.encodings.graph import shortest_path_distances

    assert shortest_path_distances(adj)[0].tolist() == [0, 2, 1, 1]


def test_cycle_detection_hand_example():
    # tree 0 - 1 - 2 - 3 plus the edge 0 - 2 closes the cycle 0 - 1 - 2, as in the class docstring
    tree = torch.tensor([[0, 1, 2, 3], [1, 0, 1, 2], [2, 1, 0, 1], [3, 2, 1, 0]])[None]
    assert on_tree_path(tree, torch.tensor([0]), torch.tensor([2])).tolist() == [[True, True, True, False]]
    adj = torch.zeros(4, 4, dtype=torch.bool)
    for u, v in ((0, 1), (1, 2), (2, 3), (0, 2)):
        adj[u, v] = adj[v, u] = True
    assert _two_core(adj) == [True, True, True, False]


def test_cycle_detection_labels_are_the_cycle_of_half_the_rows():
    task = get_task("cycle_detection")
    batch = task.sample_batch(_gen(2), 40, 10)
    edges = batch["adjacency"].sum((1, 2)) // 2
    assert set(edges.tolist()) == {9, 10} and int((edges == 10).sum()) == 20  # half trees, half one extra edge
    for y, adj, e in zip(batch["targets"], batch["adjacency"], edges.tolist()):
        words = task.decode(y).split()
        assert words == ["yes" if c else "no" for c in _two_core(adj)]
        assert words.count("yes") == 0 if e == 9 else words.count("yes") >= 3  # a tree, or one cycle of >= 3 nodes
    assert (batch["inputs"] == task.token("node")).all()


@pytest.mark.parametrize("name", NAMES)
def test_bad_lengths_are_clear_errors(name):
    task = get_task(name)
    with pytest.raises(ValueError, match=f"task '{name}': length must be an int >= {task.min_length}"):
        task.sample_batch(_gen(), 2, task.min_length - 1)
    with pytest.raises(TypeError, match="length must be an int"):
        task.sample_batch(_gen(), 2, 6.0)


@pytest.mark.parametrize("name", NAMES)
def test_graph_encodings_read_the_adjacency_and_flat_ones_do_not(name):
    task = get_task(name)
    for encoding, reads in (("laplacian", True), ("rwpe", True), ("spd", True), ("nope", False), ("rope", False)):
        pe = get_encoding(encoding, dim=32, n_heads=2, max_seq_len=12)
        assert reads_structure(pe, task) is reads, encoding


def _tiny(name: str, steps: int) -> Experiment:
    return Experiment(TaskConfig(name, 5, 7, (7, 10)), ModelConfig(dim=32, n_layers=1, n_heads=2),
                      RunConfig(steps=steps, batch_size=16, eval_batches=1, eval_batch_size=32, checkpoint_every=0))


@pytest.mark.parametrize(("name", "encoding"), [("graph_distance", "spd"), ("cycle_detection", "laplacian"),
                                                 ("graph_distance", "rwpe")])
def test_train_run_smoke_reads_the_graph_and_evaluates_larger_graphs(name, encoding):
    record = train_run(_tiny(name, 3), encoding=encoding, seed=0)
    assert record["reads_structure"] is True and record["max_seq_len"] == 7
    assert set(record["metrics"]) == {"7", "10"}
    assert all(0.0 <= m["accuracy"] <= 1.0 and "token_accuracy" in m for m in record["metrics"].values())


@pytest.mark.parametrize("encoding", ["nope", "spd"])
def test_on_identical_tokens_cycle_detection_is_at_most_the_all_no_rate(encoding):
    # Identical tokens and no node features: the encoder gives every node the same answer, whatever its weights --
    # without a graph (nope) and with one seen only as an attention bias (spd: every value vector is the same). All
    # "no" gets exactly the trees (half of each evenly sized batch); all "yes" only graphs that are one whole cycle.
    record = train_run(_tiny("cycle_detection", 3), encoding=encoding, seed=0)
    assert record["reads_structure"] is (encoding == "spd")
    assert all(m["accuracy"] <= 0.5 for m in record["metrics"].values())
