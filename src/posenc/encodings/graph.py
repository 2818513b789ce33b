"""Graph positional encodings: ``laplacian`` and ``rwpe`` (Dwivedi et al.), ``spd`` (Graphormer, Ying et al. 2021).

Tokens are the nodes of a graph and a token's position is its node index. Give the graph as
``Positions(adjacency=adj)`` -- ``adj`` is a ``(N, N)`` adjacency shared by the batch or ``(B, N, N)`` per sequence
(nonzero = edge; a symmetric matrix for an undirected graph) -- and run the model on ``N`` node tokens with the
default positions ``0 .. N-1`` (or any node indices as positions)::

    logits = model(node_tokens, positions=Positions(adjacency=adj))   # node_tokens: (B, N), adj: (B, N, N)

For a direct hook call, ``pe.bind(Positions(adjacency=adj))`` is the encoding reading that graph.

With no graph set, a sequence is a *path graph* ``0 - 1 - 2 - ... - (max_seq_len - 1)``: ``laplacian`` and ``rwpe``
then use that path's closed-form features (and raise past ``max_seq_len``, as node ``max_seq_len`` does not exist),
and ``spd``'s distance is ``|i - j|`` (a clipped relative bias, defined at any position).

- ``laplacian`` (Dwivedi et al. 2020, arXiv 2003.00982): the eigenvectors of the normalized Laplacian
  ``I - D^-1/2 A D^-1/2`` for the ``k`` smallest eigenvalues after the trivial one (in a canonical basis of each
  eigenspace, see :func:`canonical_eigenvectors`), zero-padded for graphs with fewer than ``k + 1`` nodes, each
  flipped by a random sign per graph while training (the model must not rely on a sign),
  and projected to ``dim`` by a learned linear map added to the node embeddings. By default (``normalize=True``)
  the eigenvectors are rescaled to unit mean square (``sqrt(N) * v``) and the projection keeps its own init; see
  :class:`LaplacianPE` for why.
- ``rwpe`` (Dwivedi et al. 2022, arXiv 2110.07875): the landing probabilities ``[RW_ii, RW^2_ii, ..., RW^k_ii]`` of a
  random walk ``RW = D^-1 A`` returning to its start node, projected to ``dim`` the same way.
- ``spd`` (Graphormer, arXiv 2106.05234): a learned bias per head for each shortest-path distance ``0 ..
  max_distance`` (longer distances share the last entry; unreachable pairs have their own), added to attention scores.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from posenc._checks import check_int, reads_values
from posenc.base import PositionalEncoding, check_positions, register
from posenc.positions import Positions

__all__ = [
    "EIGENSPACE_GAP",
    "GraphEncoding",
    "LaplacianPE",
    "RandomWalkPE",
    "ShortestPathBias",
    "canonical_eigenvectors",
    "cycle_adjacency",
    "laplacian_eigenvectors",
    "normalized_laplacian",
    "path_adjacency",
    "path_laplacian_eigenvectors",
    "path_random_walk_landing",
    "random_walk_landing",
    "shortest_path_distances",
]


# -- graphs and their features (pure functions) ------------------------------------------------------------------------
def path_adjacency(n: int, *, device: torch.device | str | None = None) -> Tensor:
    """Adjacency ``(n, n)`` float32 of the path ``0 - 1 - ... - (n-1)``."""
    i = torch.arange(n - 1, device=device)
    adj = torch.zeros(n, n, device=device)
    adj[i, i + 1] = adj[i + 1, i] = 1.0
    return adj


def cycle_adjacency(n: int, *, device: torch.device | str | None = None) -> Tensor:
    """Adjacency ``(n, n)`` float32 of the cycle ``0 - 1 - ... - (n-1) - 0`` (``n >= 3``)."""
    if n < 3:
        raise ValueError(f"cycle_adjacency: a simple cycle needs n >= 3 nodes; got {n}.")
    adj = path_adjacency(n, device=device)
    adj[0, n - 1] = adj[n - 1, 0] = 1.0
    return adj


def _check_adjacency(adj: Tensor, who: str) -> Tensor:
    if not isinstance(adj, Tensor):
        raise TypeError(f"{who}: adjacency must be a tensor of shape (N, N) or (B, N, N); got {type(adj).__name__}.")
    if adj.dim() not in (2, 3) or adj.shape[-1] != adj.shape[-2] or adj.shape[-1] == 0:
        raise ValueError(f"{who}: adjacency must be square, of shape (N, N) or (B, N, N) with N >= 1; got shape "
                         f"{tuple(adj.shape)}.")
    if adj.is_complex():
        raise TypeError(f"{who}: adjacency must be real or bool; got {adj.dtype}.")
    a = adj.to(torch.float64)
    if reads_values(a) and bool((a < 0).any()):
        raise ValueError(f"{who}: adjacency entries must be non-negative (nonzero = edge); got a minimum of "
                         f"{float(a.min())}.")
    return a


def normalized_laplacian(adj: Tensor) -> Tensor:
    """``I - D^-1/2 A D^-1/2`` in float64 for ``adj`` ``(..., N, N)``; isolated nodes get ``D^-1/2 = 0``."""
    a = _check_adjacency(adj, "normalized_laplacian")
    deg = a.sum(-1)
    inv_sqrt = torch.where(deg > 0, deg.clamp(min=1e-300).rsqrt(), torch.zeros_like(deg))
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return eye - inv_sqrt[..., :, None] * a * inv_sqrt[..., None, :]


# Tolerances of the canonical eigenbasis (float64; eigh's errors here are ~N * 1e-16):
EIGENSPACE_GAP = 1e-6  # eigenvalues closer than this (absolute; the spectrum lies in [0, 2]) share one eigenspace
_DIAGONAL_TIE = 1e-8  # projector diagonals closer than this put two nodes in one class
_NEW_DIRECTION = 1e-6  # a unit reference whose residual in the eigenspace is shorter than this adds no direction


def _canonical_basis(vecs: Tensor, lead: Tensor | None) -> Tensor:
    """The canonical orthonormal basis of the span of ``vecs``: the same for every orthonormal basis of that span.

    Gram-Schmidt of the projections ``P r`` (``P = vecs vecs^T``) of unit reference vectors ``r`` taken in a fixed
    order, skipping any that adds no new direction: ``lead`` (if given); then the indicator of each class of nodes
    with the same projector diagonal ``P_ii``, largest ``P_ii`` first; then the unit vectors ``e_0 .. e_{N-1}``
    (these span everything, so ``d`` directions are always found). Only ``P`` enters, so the result does not depend
    on which basis (signs, rotation) ``vecs`` holds. Worked in eigenspace coordinates ``vecs^T r`` (``d`` numbers
    per reference) rather than ``N``: cheaper, and equal because ``vecs`` has orthonormal columns.

    Args:
        vecs: ``(K, N, d)`` float64, ``K`` subspaces each given by ``d`` orthonormal columns.
        lead: ``(K, N)`` unit (or zero) first reference per subspace, or ``None``.

    Returns:
        float64 ``(K, N, d)``: orthonormal columns spanning the same subspaces.
    """
    k, n, d = vecs.shape
    diag = vecs.pow(2).sum(-1)  # (K, N): P_ii, how much of node i the subspace holds
    ranked, order = diag.sort(dim=-1, descending=True, stable=True)
    starts = torch.cat((torch.zeros_like(ranked[:, :1], dtype=torch.bool), ranked.diff(dim=-1) < -_DIAGONAL_TIE), -1)
    klass = torch.empty_like(order).scatter_(1, order, starts.cumsum(-1))  # (K, N): node class, 0 = largest P_ii
    sums = vecs.new_zeros(k, n, d).scatter_add_(1, klass[..., None].expand(-1, -1, d), vecs)  # (K, classes, d)
    sizes = vecs.new_zeros(k, n).scatter_add_(1, klass, torch.ones_like(diag))  # (K, classes); unused ones: 0
    classes = sums / sizes.clamp(min=1).sqrt()[..., None]  # coordinates of the unit class indicators
    refs = [classes.transpose(1, 2), vecs.transpose(1, 2)]  # (K, d, classes), (K, d, N): e_i's coordinates
    if lead is not None:
        refs.insert(0, (vecs.transpose(1, 2) @ lead[..., None]))  # (K, d, 1)
    coords = torch.cat(refs, dim=-1)  # (K, d, M): every reference in eigenspace coordinates, in priority order
    m = coords.shape[-1]
    index = torch.arange(m, device=vecs.device)
    basis = vecs.new_zeros(k, d, d)  # (K, d, d): canonical columns in eigenspace coordinates
    for r in range(d):
        resid, done = coords, basis[..., :r]  # (K, d, M), (K, d, r)
        for _ in range(2 if r else 0):  # Gram-Schmidt twice: the second pass removes what rounding left behind
            resid = resid - done @ (done.transpose(1, 2) @ resid)
        norm2 = resid.pow(2).sum(1)  # (K, M)
        first = torch.where(norm2 > _NEW_DIRECTION**2, index, m - 1).amin(-1)  # (K,) first new direction
        pick = resid.gather(2, first[:, None, None].expand(-1, d, 1))[..., 0]  # (K, d)
        basis[..., r] = pick * pick.pow(2).sum(1, keepdim=True).rsqrt()
    return vecs @ basis


def canonical_eigenvectors(eigenvalues: Tensor, eigenvectors: Tensor, *, lead: Tensor | None = None) -> Tensor:
    """Eigenvectors of a symmetric matrix in a canonical basis: a function of the matrix, not of the eigensolver.

    ``torch.linalg.eigh`` returns each eigenvector up to sign, and any orthonormal basis of a repeated eigenvalue's
    eigenspace; which one depends on the LAPACK build and the CPU's kernels. This keeps only what is unique -- the
    eigenspaces (eigenvalues within :data:`EIGENSPACE_GAP` form one) -- and picks in each the basis of
    :func:`_canonical_basis`: Gram-Schmidt of the projections of ``lead``, then of node-class indicators (nodes
    with equal projector diagonals), then of ``e_0 .. e_{N-1}``. For a simple eigenvalue this fixes the sign: the
    eigenvector has a positive dot product with the first of those references it is not orthogonal to.

    Relabelling the nodes permutes the output rows the same way wherever ``lead`` and the class indicators (which
    are relabelling-equivariant) determine the basis. Where they do not, the node order decides; that happens
    where a symmetry of the graph maps an eigenvector to its negative or rotates an eigenspace (the odd eigenvectors
    of a path, a cycle's eigenspaces), and there no choice made from the graph alone can be equivariant. The idea
    is that of Ma et al.'s Laplacian canonization (MAP, NeurIPS 2023): project graph-derived axes onto each
    eigenspace.

    Args:
        eigenvalues: ``(..., N)`` ascending, as ``torch.linalg.eigh`` returns them.
        eigenvectors: ``(..., N, N)`` orthonormal columns, column ``j`` for ``eigenvalues[..., j]``.
        lead: ``(..., N)`` optional first reference, e.g. ``sqrt(degree)`` for the normalized Laplacian, whose
            eigenvalue-0 eigenspace then starts with exactly that (normalized) trivial eigenvector.

    Returns:
        float64 ``(..., N, N)``: orthonormal columns in the order of ``eigenvalues``; a column is a unit eigenvector
        (within ``EIGENSPACE_GAP`` for merged eigenvalues).
    """
    n = eigenvalues.shape[-1]
    vals = eigenvalues.detach().to(torch.float64).reshape(-1, n)  # (G, N)
    vecs = eigenvectors.detach().to(torch.float64).reshape(-1, n, n)  # (G, N, N)
    if lead is not None:
        lead = lead.to(torch.float64).expand(*eigenvalues.shape).reshape(-1, n)
        lead = lead / lead.norm(dim=-1, keepdim=True).clamp(min=1e-300)  # unit, or zero (a graph without edges)
    starts = torch.ones_like(vals, dtype=torch.bool)
    starts[:, 1:] = vals.diff(dim=-1) > EIGENSPACE_GAP  # (G, N): column j opens a new eigenspace
    space = starts.cumsum(-1) - 1 + n * torch.arange(vals.shape[0], device=vals.device)[:, None]  # (G, N) global id
    size = torch.bincount(space.flatten(), minlength=vals.numel())  # columns per eigenspace
    graph, first = starts.nonzero(as_tuple=True)  # one entry per eigenspace: its graph and first column
    dims = size[space[graph, first]]
    out = torch.empty_like(vecs)
    rows = torch.arange(n, device=vecs.device)
    for d in dims.unique().tolist():  # eigenspaces of one dimension at a time, batched over graphs
        pick = dims == d
        g, cols = graph[pick], first[pick, None] + torch.arange(d, device=vecs.device)  # (K,), (K, d)
        index = (g[:, None, None], rows[None, :, None], cols[:, None, :])
        out[index] = _canonical_basis(vecs[index], None if lead is None else lead[g])  # (K, N, d)
    return out.reshape(eigenvectors.shape)


def laplacian_eigenvectors(adj: Tensor, k: int) -> Tensor:
    """Eigenvectors of the normalized Laplacian for the ``k`` smallest eigenvalues after the first (trivial) one.

    In the canonical basis of :func:`canonical_eigenvectors`, with ``sqrt(degree)`` as the lead reference (so the
    trivial eigenvector is the one dropped even when the graph is disconnected): the same numbers, up to rounding,
    whichever signs and eigenspace bases the eigensolver returns.

    Args:
        adj: ``(N, N)`` or ``(B, N, N)`` symmetric adjacency.
        k: number of eigenvectors; columns past ``N - 1`` are zero.

    Returns:
        float64 ``(..., N, k)``, unit-norm columns, ordered by increasing eigenvalue.
    """
    a = _check_adjacency(adj, "laplacian_eigenvectors")
    vals, vecs = torch.linalg.eigh(normalized_laplacian(a))  # ascending eigenvalues; (..., N, N) column eigenvectors
    vecs = canonical_eigenvectors(vals, vecs, lead=a.sum(-1).sqrt())[..., :, 1:k + 1]
    pad = k - vecs.shape[-1]
    return torch.nn.functional.pad(vecs, (0, pad)) if pad > 0 else vecs


def path_laplacian_eigenvectors(pos: Tensor, n: int, k: int) -> Tensor:
    """Closed-form :func:`laplacian_eigenvectors` of the path on ``n`` nodes, read at node indices ``pos``.

    The random-walk matrix of a path has eigenvectors ``f_m(j) = cos(pi m j / (n - 1))`` with eigenvalue
    ``cos(pi m / (n - 1))``, so the normalized Laplacian has eigenvalue ``1 - cos(pi m / (n - 1))`` and eigenvector
    ``sqrt(deg_j) f_m(j)`` (normalized); ``m = 1 .. k`` are the non-trivial ones (zero past ``m = n - 1``). The
    eigenvalues are distinct, so each eigenvector is unique up to sign, and the sign is the canonical one of
    :func:`canonical_eigenvectors`: the same numbers as ``laplacian_eigenvectors(path_adjacency(n), k)[pos]``.

    Returns:
        float64 ``(..., k)`` for ``pos`` ``(...)``.
    """
    real = min(k, n - 1)  # a path on n nodes has only n - 1 non-trivial eigenvectors; the rest are zero
    if real < 1:
        return torch.zeros(*pos.shape, k, dtype=torch.float64, device=pos.device)
    m = torch.arange(1, real + 1, device=pos.device, dtype=torch.float64)  # (real,)
    nodes = torch.arange(n, device=pos.device, dtype=torch.float64)
    deg = torch.full((n,), 2.0, dtype=torch.float64, device=pos.device)
    deg[0] = deg[-1] = 1.0
    full = deg.sqrt()[:, None] * torch.cos(math.pi * nodes[:, None] * m / (n - 1))  # (n, real)
    full = full / full.norm(dim=0, keepdim=True)
    lead = (deg.sqrt() / deg.sum().sqrt()).expand(real, n)  # the trivial eigenvector, as laplacian_eigenvectors
    full = _canonical_basis(full.T[..., None], lead)[..., 0].T  # (n, real): canonical signs
    full = torch.nn.functional.pad(full, (0, k - real))
    return full[pos]


def random_walk_landing(adj: Tensor, k: int) -> Tensor:
    """``[RW_ii, (RW^2)_ii, ..., (RW^k)_ii]`` with ``RW = D^-1 A``: float64 ``(..., N, k)`` (isolated nodes: 0)."""
    a = _check_adjacency(adj, "random_walk_landing")
    deg = a.sum(-1, keepdim=True)
    rw = torch.where(deg > 0, a / deg.clamp(min=1e-300), torch.zeros_like(a))  # (..., N, N)
    out, power = [], rw
    for step in range(k):
        out.append(power.diagonal(dim1=-2, dim2=-1))
        if step + 1 < k:
            power = power @ rw
    return torch.stack(out, dim=-1)


def path_random_walk_landing(pos: Tensor, n: int, k: int) -> Tensor:
    """:func:`random_walk_landing` of the path on ``n`` nodes at node indices ``pos``, in ``O(k^3)``.

    A walk of ``s <= k`` steps that returns to node ``j`` never goes further than ``s / 2`` from it, so nodes more
    than ``k / 2`` from both ends all share the value of an infinite line, and each end looks like the end of a
    path on ``2k + 2`` nodes. Returns float64 ``(..., k)``.
    """
    if n <= 2 * k + 2:
        return random_walk_landing(path_adjacency(n, device=pos.device), k)[pos]
    m = 2 * k + 2
    small = random_walk_landing(path_adjacency(m, device=pos.device), k)  # (m, k)
    from_end = (n - 1) - pos
    idx = torch.where(pos <= k, pos, torch.where(from_end <= k, (m - 1) - from_end, torch.full_like(pos, k)))
    return small[idx]


def shortest_path_distances(adj: Tensor) -> Tensor:
    """Hop counts of shortest paths (breadth-first, following edges ``i -> j`` where ``adj[i, j] != 0``).

    Returns:
        int64 ``(..., N, N)``: 0 on the diagonal, -1 where ``j`` cannot be reached from ``i``.
    """
    a = _check_adjacency(adj, "shortest_path_distances") > 0
    n = a.shape[-1]
    reached = torch.eye(n, dtype=torch.bool, device=a.device).expand_as(a).clone()
    dist = torch.where(reached, 0, -1).long()
    frontier = reached
    step = 0
    while bool(frontier.any()):
        step += 1
        nxt = (frontier.to(torch.float32) @ a.to(torch.float32)) > 0  # reachable in one more hop
        frontier = nxt & ~reached
        reached |= frontier
        dist = torch.where(frontier, step, dist)
    return dist


# -- shared plumbing ---------------------------------------------------------------------------------------------------
class GraphEncoding(PositionalEncoding, metaclass=abc.ABCMeta):
    """Base of the graph encodings: reads ``Positions(adjacency=...)``; positions are node indices.

    :meth:`bind` returns a view holding the graph and what the encoding computes from it (:meth:`graph_features`),
    once per forward; the encoding itself stores no graph.
    """

    family = "graph"
    reads = ("adjacency",)
    _adjacency: Tensor | None = None  # (Bg, N, N) float64 of a bound view; None on the encoding itself
    _features: Tensor | None = None

    def bind(self, positions: Positions):
        """A view of the encoding reading ``positions.adjacency`` (features computed once), or ``self``."""
        if positions.adjacency is None:
            return super().bind(positions)
        adjacency, features = self._graph_state(positions.adjacency)
        return self.bound_view(positions, _adjacency=adjacency, _features=features)

    def _graph_state(self, adjacency: Tensor) -> tuple[Tensor, Tensor]:
        a = _check_adjacency(adjacency, self.name or type(self).__name__)
        a = a.unsqueeze(0) if a.dim() == 2 else a  # (Bg, N, N) float64
        return a, self.graph_features(a)

    @property
    def num_nodes(self) -> int | None:
        """Nodes of the graph this view is bound to, or ``None`` (the default path graph)."""
        return None if self._adjacency is None else self._adjacency.shape[-1]

    @abc.abstractmethod
    def graph_features(self, adjacency: Tensor) -> Tensor:
        """What the encoding precomputes from a ``(Bg, N, N)`` float64 adjacency."""

    def _check_nodes(self, pos: Tensor, batch: int | None) -> None:
        n = self.num_nodes
        if n is None:
            return
        top = self.trusted_max(pos)
        if top is None and pos.numel() and reads_values(pos):
            top = int(pos.max())
        if top is not None and top >= n:
            raise ValueError(f"{self.name}: position {top} is not a node of the graph given ({n} nodes); positions "
                             f"are node indices 0 .. {n - 1}.")
        bg = self._adjacency.shape[0]
        if batch is not None and bg not in (1, batch):
            raise ValueError(f"{self.name}: the graph has batch size {bg} but the input has batch size {batch}; set "
                             f"an (N, N) adjacency shared by the batch or one (B, N, N).")

    def check_length(self, pos: Tensor) -> None:
        if self.num_nodes is None:
            super().check_length(pos)
        else:
            self._check_nodes(pos, None)

    def _extend_hint(self) -> str:
        return ", or give the graph explicitly: Positions(adjacency=adj)"


def _gather_nodes(features: Tensor, pos: Tensor) -> Tensor:
    """``features`` ``(Bg, N, F)`` at node indices ``pos`` ``(T,)`` / ``(B, T)`` -> ``(max(Bg, B), T, F)``."""
    if pos.dim() == 1:
        return features[:, pos]
    b = max(features.shape[0], pos.shape[0])
    f, p = features.expand(b, -1, -1), pos.expand(b, -1)
    return torch.gather(f, 1, p.unsqueeze(-1).expand(-1, -1, f.shape[-1]))


class _FeatureProjection(nn.Module):
    """``Linear(k, dim, bias=False)`` that keeps its own init: ``nn.Linear``'s default, uniform in ``+-1/sqrt(k)``.

    Not an ``nn.Linear`` on purpose: :class:`posenc.Transformer` re-initialises every ``nn.Linear`` with std 0.02,
    which makes a node-feature branch about 10x weaker next to the unit-scale token embeddings than in Dwivedi et
    al.'s code (``nn.Linear`` default init added to an ``nn.Embedding``). Same ``weight`` ``(dim, k)`` as
    ``nn.Linear``, so state dicts are interchangeable.
    """

    def __init__(self, k: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, k))  # (dim, k), as nn.Linear
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear.reset_parameters: U(+-1/sqrt(k))

    def forward(self, feats: Tensor) -> Tensor:
        return torch.nn.functional.linear(feats, self.weight)  # (..., k) -> (..., dim)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, bias=False"


class _NodeFeatureEncoding(GraphEncoding):
    """Per-node features ``(N, k)`` projected to ``dim`` and added to token embeddings."""

    extrapolates = False

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int, causal: bool, k: int) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        check_int(k, f"{type(self).name}: k (features per node)", minimum=1)
        self.k = k
        self.proj = nn.Linear(k, dim, bias=False)  # features -> embedding, as Dwivedi et al.'s linear layer

    @abc.abstractmethod
    def path_features(self, pos: Tensor) -> Tensor:
        """float64 ``(..., k)`` features of the default path graph on ``max_seq_len`` nodes at ``pos``."""

    def node_features(self, pos: Tensor, batch: int | None = None) -> Tensor:
        """float64 ``(B|1, T, k)`` features of the nodes at ``pos`` (``(T,)`` or ``(B, T)``)."""
        if self._features is None:
            feats = self.path_features(pos)
            return feats.unsqueeze(0) if pos.dim() == 1 else feats
        self._check_nodes(pos, batch)
        return _gather_nodes(self._features.to(pos.device), pos)

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        """``x`` ``(B, T, dim)`` plus the projected features of nodes ``pos`` ``(T,)`` / ``(B, T)``."""
        if not self.trusts(pos):  # a bound view's own positions were checked where they entered
            check_positions(pos, x.shape[-2], batch=x.shape[0], device=x.device)
            self.check_length(pos)
        feats = self.transform_features(self.node_features(pos, x.shape[0]))  # (B|1, T, k)
        w = self.proj.weight
        return x + self.proj(feats.to(w.dtype)).to(x.dtype)

    def transform_features(self, feats: Tensor) -> Tensor:
        return feats

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}"


@register("laplacian")
class LaplacianPE(_NodeFeatureEncoding):
    """Laplacian eigenvector encoding of graph nodes, random sign flips in training (Dwivedi et al., arXiv 2003.00982).

    See the module docstring for the graph API. Features: the ``k`` non-trivial eigenvectors of the normalized
    Laplacian with the smallest eigenvalues (zero-padded), multiplied by a random ``+-1`` per eigenvector and graph
    while training (``sign_flip=True``), then a learned ``Linear(k, dim)``.

    The eigenvectors are canonical (:func:`canonical_eigenvectors`): ``torch.linalg.eigh`` fixes neither an
    eigenvector's sign nor the basis of a repeated eigenvalue's eigenspace (trees have many), and another LAPACK
    build or CPU picks others, so the raw eigenvectors made the encoding -- and a trained model's outputs -- a
    function of the machine rather than of the graph. A canonical basis rather than an invariant formulation
    (eigenspace projectors, SignNet/BasisNet): it keeps Dwivedi et al.'s features -- eigenvectors through a linear
    map -- and their cost, parameters and state dicts, and the random sign flips in training still teach the model
    not to rely on a sign (which a symmetric graph leaves to the node order).

    Why ``normalize``: the sign of an eigenvector is arbitrary (and flipped at random in training), so no single
    feature correlates with any node label; the projection gets no consistent gradient until attention already
    compares eigenvector entries across nodes (``sum_j c_j v_j(u) v_j(w)``, which is sign-invariant). With the tiny
    default branch (unit-norm eigenvectors, entries ``~1/sqrt(N)``, through a projection that
    :class:`posenc.Transformer` initialises with std 0.02) training does not leave that saddle: on the lab's
    ``graph_distance`` and ``cycle_detection`` the loss follows ``nope``'s. ``normalize=True`` puts the branch on the
    scale of Dwivedi et al.'s model: eigenvectors times ``sqrt(N)`` (unit mean square entries, the same scale for
    every graph size) through a projection that keeps ``nn.Linear``'s default init. The eigenvectors, their order
    and the sign flips are unchanged.

    Args:
        k: number of eigenvectors (Dwivedi et al. use 2 to 20 depending on the graph size).
        sign_flip: randomly flip eigenvector signs while training (set ``pe.generator`` to a CPU
            ``torch.Generator`` for reproducible flips).
        normalize: scale eigenvectors by ``sqrt(N)`` (``N``: nodes of the adjacency, or ``max_seq_len`` for the
            default path) and give the projection its own ``nn.Linear`` default init, which the model's init does
            not overwrite (the default, since the literal form does not train in the lab). ``False``: unit-norm
            eigenvectors through a projection the model initialises like every other linear layer.
    """

    paper = "2003.00982"

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False, k: int = 8,
                 sign_flip: bool = True, normalize: bool = True) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, k=k)
        if not isinstance(normalize, bool):
            raise TypeError(f"laplacian: normalize must be a bool; got {normalize!r}.")
        self.sign_flip = bool(sign_flip)
        self.normalize = normalize
        if normalize:
            self.proj = _FeatureProjection(k, dim)  # same parameter name and shape as the nn.Linear it replaces
        self.generator: torch.Generator | None = None  # a CPU generator, for reproducible sign flips

    def graph_features(self, adjacency: Tensor) -> Tensor:
        vecs = laplacian_eigenvectors(adjacency, self.k)  # (Bg, N, k)
        return vecs * math.sqrt(adjacency.shape[-1]) if self.normalize else vecs

    def path_features(self, pos: Tensor) -> Tensor:
        vecs = path_laplacian_eigenvectors(pos, self.max_seq_len, self.k)  # (..., k)
        return vecs * math.sqrt(self.max_seq_len) if self.normalize else vecs

    def transform_features(self, feats: Tensor) -> Tensor:
        if not (self.training and self.sign_flip):
            return feats
        signs = torch.randint(0, 2, (feats.shape[0], 1, self.k), generator=self.generator) * 2 - 1  # per graph, vector
        return feats * signs.to(feats.device)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sign_flip={self.sign_flip}, normalize={self.normalize}"


@register("rwpe")
class RandomWalkPE(_NodeFeatureEncoding):
    """Random-walk structural encoding of graph nodes: k-step return probabilities (Dwivedi et al., arXiv 2110.07875).

    See the module docstring for the graph API. Features ``[RW_ii, ..., (RW^k)_ii]`` with ``RW = D^-1 A``, then a
    learned ``Linear(k, dim)``. Unlike Laplacian eigenvectors they have no sign ambiguity.

    Args:
        k: number of random-walk steps (16 in the paper's molecular benchmarks).
    """

    paper = "2110.07875"

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 k: int = 16) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal, k=k)

    def graph_features(self, adjacency: Tensor) -> Tensor:
        return random_walk_landing(adjacency, self.k)

    def path_features(self, pos: Tensor) -> Tensor:
        return path_random_walk_landing(pos, self.max_seq_len, self.k)


@register("spd")
class ShortestPathBias(GraphEncoding):
    """Graphormer's spatial encoding: a learned per-head attention bias per shortest-path distance (arXiv 2106.05234).

    ``bias[h, i, j] = table[min(spd(i, j), max_distance), h]``, and a separate learned entry for unreachable pairs.
    See the module docstring for the graph API; on the default path graph ``spd(i, j) = |i - j|``.

    Args:
        max_distance: distances ``>= max_distance`` share one entry (Graphormer clips at 20 hops by default).
        init_std: standard deviation of the normal initialisation of the table.
    """

    paper = "2106.05234"
    extrapolates = True

    def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                 max_distance: int = 20, init_std: float = 0.02) -> None:
        super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
        check_int(max_distance, "spd: max_distance", minimum=1)
        self.max_distance = max_distance
        # rows 0 .. max_distance: distances (clipped); row max_distance + 1: unreachable
        self.table = nn.Parameter(torch.randn(max_distance + 2, n_heads) * init_std)  # (max_distance + 2, H)

    def graph_features(self, adjacency: Tensor) -> Tensor:
        return shortest_path_distances(adjacency)  # (Bg, N, N) int64, -1 unreachable

    def distance_index(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Table rows ``(Tq, Tk)`` or ``(B, Tq, Tk)`` int64 for node positions ``q_pos``, ``k_pos``."""
        if self._features is None:  # the default path graph: |i - j| (broadcasts (T,) against (B, T))
            return (q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)).abs().clamp(max=self.max_distance)
        spd = self._features.to(q_pos.device)  # (Bg, N, N)
        batched = spd.shape[0] > 1 or q_pos.dim() == 2 or k_pos.dim() == 2
        b = max(spd.shape[0], q_pos.shape[0] if q_pos.dim() == 2 else 1, k_pos.shape[0] if k_pos.dim() == 2 else 1)
        qp, kp = q_pos.expand(b, -1), k_pos.expand(b, -1)  # (B, Tq), (B, Tk)
        bi = torch.arange(b, device=q_pos.device) if spd.shape[0] > 1 else torch.zeros(b, dtype=torch.long,
                                                                                      device=q_pos.device)
        d = spd[bi[:, None, None], qp[:, :, None], kp[:, None, :]]  # (B, Tq, Tk)
        d = torch.where(d < 0, self.max_distance + 1, d.clamp(max=self.max_distance))
        return d if batched else d[0]

    def _check(self, q_pos: Tensor, k_pos: Tensor) -> None:
        if not (self.trusts(q_pos) and self.trusts(k_pos)):  # a bound view's own positions were checked on entry
            check_positions(q_pos, q_pos.shape[-1], name="q_pos")
            check_positions(k_pos, k_pos.shape[-1], name="k_pos")
        self._check_nodes(q_pos, q_pos.shape[0] if q_pos.dim() == 2 else None)
        self._check_nodes(k_pos, k_pos.shape[0] if k_pos.dim() == 2 else None)

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """float32 ``(H, Tq, Tk)``, or ``(B, H, Tq, Tk)`` for per-sequence positions or a batch of graphs."""
        self._check(q_pos, k_pos)
        idx = self.distance_index(q_pos, k_pos)  # (Tq, Tk) or (B, Tq, Tk)
        out = self.table[idx]  # (..., Tq, Tk, H)
        out = out.movedim(-1, -3)  # (..., H, Tq, Tk)
        return out.to(torch.promote_types(out.dtype, torch.float32))

    def score_mod(self, q_pos: Tensor, k_pos: Tensor) -> Callable:
        """FlexAttention ``score_mod`` adding ``table[distance, h]``; the same numbers as :meth:`bias`."""
        self._check(q_pos, k_pos)
        table = self.table
        top, unreachable = self.max_distance, self.max_distance + 1
        spd = None if self._features is None else self._features.to(q_pos.device)

        def _pos(p: Tensor, b: Tensor, idx: Tensor) -> Tensor:
            return p[b, idx] if p.dim() == 2 else p[idx]

        def spd_score_mod(score, b, h, q_idx, kv_idx):
            qp, kp = _pos(q_pos, b, q_idx), _pos(k_pos, b, kv_idx)
            if spd is None:
                d = (qp - kp).abs().clamp(max=top)
            else:
                raw = spd[b if spd.shape[0] > 1 else torch.zeros_like(b), qp, kp]
                d = torch.where(raw < 0, unreachable, raw.clamp(max=top))
            return score + table[d, h].to(score.dtype)

        return spd_score_mod

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_distance={self.max_distance}"
