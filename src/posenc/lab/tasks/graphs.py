"""Graph tasks on random graphs: shortest-path distance to a marked node, and which nodes lie on a cycle.

The tokens are the ``N`` nodes of a random graph (task length = ``N``, token ``i`` = node ``i``) and every batch
carries its ``adjacency`` ``(B, N, N)`` (bool, symmetric, no self loops). The model attends fully, so it knows the
graph only through a graph encoding that reads the adjacency (``laplacian``, ``rwpe``, ``spd``; see
:mod:`posenc.encodings.graph`). Training uses small graphs, evaluation adds larger ones.

Graphs start from a random recursive tree: nodes are taken in a random order and each attaches to a uniformly
random earlier one (depth ``O(log N)``), so distances stay small as graphs grow.

Shortcuts ruled out:

- *Sequence order.* Node ids are a uniformly random relabelling (the random attachment order), so the index of a
  token (all that ``rope``, ``sinusoidal``, ... see) says nothing about its place in the graph.
- *Token content.* Every node has the same token (except the marked source of ``graph_distance``), so an encoder
  without a graph encoding is permutation-equivariant over identical tokens: it gives every unmarked node the same
  answer. Its best is the majority answer: about 0.5 exact match on ``cycle_detection`` (trees answer all ``no``)
  and near 0 on ``graph_distance`` beyond the tiniest graphs.

An attention-bias encoding (``spd``) is just as blind on ``cycle_detection``: when every token is the same, every
value vector is the same, so any attention weights average them to the same output at every node. Graphormer
adds a degree ("centrality") embedding to the tokens for this reason; here the node-feature encodings (``rwpe``,
``laplacian``) are the ones that can break the symmetry. On ``graph_distance`` the marked source breaks it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.encodings.graph import shortest_path_distances
from posenc.lab.tasks.base import Task, register_task

__all__ = ["MAX_DISTANCE", "CycleDetection", "GraphDistance", "on_tree_path", "random_recursive_trees"]

MAX_DISTANCE = 4  # graph_distance: distances >= MAX_DISTANCE share the answer "4+"


def random_recursive_trees(generator: torch.Generator, batch_size: int, n: int) -> Tensor:
    """Random recursive trees on ``n`` randomly labelled nodes: ``(B, n, n)`` bool symmetric adjacency.

    The ``k``-th node of a random order (``k >= 1``) attaches to a uniformly random one of the ``k`` nodes before it.
    """
    order = torch.rand(batch_size, n, generator=generator).argsort(dim=1)  # (B, n): node ids in attachment order
    earlier = (torch.rand(batch_size, n - 1, generator=generator) * torch.arange(1, n)).long()  # (B, n-1) rank < k
    child, parent = order[:, 1:], order.gather(1, earlier)  # (B, n-1) each
    adj = torch.zeros(batch_size, n, n, dtype=torch.bool)
    rows = torch.arange(batch_size)[:, None]
    adj[rows, child, parent] = True
    adj[rows, parent, child] = True
    return adj


def on_tree_path(tree_distances: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Nodes on the tree path from ``u`` to ``v``: ``w`` with ``d(u, w) + d(w, v) = d(u, v)``.

    Args:
        tree_distances: ``(B, n, n)`` int64 hop counts in a tree.
        u, v: ``(B,)`` int64 end nodes.

    Returns:
        ``(B, n)`` bool, True on the path (ends included).
    """
    rows = torch.arange(tree_distances.shape[0])
    du, dv = tree_distances[rows, u], tree_distances[rows, v]  # (B, n) each
    return du + dv == du.gather(1, v[:, None])


class _GraphTask(Task):
    """Shared protocol: ``length`` = nodes = tokens; train on 6..12 nodes, evaluate up to 24."""

    kind = "encoder"
    graph = True
    train_lengths = (6, 12)
    eval_lengths = (12, 16, 24)
    metric = "accuracy"
    paper = None


@register_task("graph_distance")
class GraphDistance(_GraphTask):
    """Encoder: every node answers its shortest-path distance to the one marked ``source`` node (``4+`` past 3).

    The graph is a random recursive tree plus ``N // 4`` candidate chords, each kept with probability 1/2 (chords
    between random node pairs; one that repeats an edge adds nothing), so it is connected and has cycles and
    shortcuts. Inputs are ``node`` everywhere but ``source`` at one random node; every node is scored.

    Example (4 nodes, the path 2 - 0 - 3 - 1, source at node 0; token ``i`` is node ``i``):
        inputs ``source node node node``, targets ``0 2 1 1`` (node 1 is two hops away, via node 3).
    """

    vocab = ("node", "source", *(str(d) for d in range(MAX_DISTANCE)), f"{MAX_DISTANCE}+")
    min_length = 2
    summary = "each node's shortest-path hop count to a marked node (clipped at 4) on random graphs"

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        n = length
        adj = random_recursive_trees(generator, batch_size, n)
        m = max(1, n // 4)
        i = torch.randint(n, (batch_size, m), generator=generator)
        j = (i + torch.randint(1, n, (batch_size, m), generator=generator)) % n  # j != i: no self loops
        keep = torch.rand(batch_size, m, generator=generator) < 0.5
        rows = torch.arange(batch_size)[:, None].expand(-1, m)[keep]
        adj[rows, i[keep], j[keep]] = True
        adj[rows, j[keep], i[keep]] = True
        source = torch.randint(n, (batch_size,), generator=generator)  # (B,)
        dist = shortest_path_distances(adj)[torch.arange(batch_size), source]  # (B, n); connected, so no -1
        inputs = torch.full((batch_size, n), self.token("node"), dtype=torch.long)
        inputs[torch.arange(batch_size), source] = self.token("source")
        targets = self.token("0") + dist.clamp(max=MAX_DISTANCE)
        return {"inputs": inputs, "targets": targets, "adjacency": adj}


@register_task("cycle_detection")
class CycleDetection(_GraphTask):
    """Encoder: every node answers ``yes`` if it lies on a cycle, else ``no``.

    Half the rows of a batch (shuffled) are random recursive trees (every answer ``no``); the other half are such a
    tree plus one edge between a uniformly random pair of non-adjacent nodes, which closes exactly one cycle: the
    tree path between them (length 3 .. N). Every input token is ``node``, every node is scored.

    Example (4 nodes, tree 0 - 1 - 2 - 3 plus the edge 0 - 2):
        inputs ``node node node node``, targets ``yes yes yes no``.
    """

    vocab = ("node", "no", "yes")
    min_length = 3  # a tree needs a non-adjacent pair to close a cycle
    summary = "whether each node lies on a cycle (half trees, half unicyclic graphs) on random graphs"
    learned_bar = 0.75  # exact match per graph; answering "no cycle" everywhere scores 0.5

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        n = length
        adj = random_recursive_trees(generator, batch_size, n)
        cyclic = (torch.arange(batch_size) < (batch_size + 1) // 2)[torch.randperm(batch_size, generator=generator)]
        non_edges = ~adj & torch.ones(n, n, dtype=torch.bool).triu(1)  # (B, n, n) pairs u < v, not yet adjacent
        pair = torch.multinomial(non_edges.flatten(1).float(), 1, generator=generator).squeeze(1)  # (B,)
        u, v = pair // n, pair % n
        on_cycle = on_tree_path(shortest_path_distances(adj), u, v) & cyclic[:, None]  # (B, n)
        rows = torch.arange(batch_size)[cyclic]
        adj[rows, u[cyclic], v[cyclic]] = True
        adj[rows, v[cyclic], u[cyclic]] = True
        inputs = torch.full((batch_size, n), self.token("node"), dtype=torch.long)
        targets = torch.where(on_cycle, self.token("yes"), self.token("no"))
        return {"inputs": inputs, "targets": targets, "adjacency": adj}
