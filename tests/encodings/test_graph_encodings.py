"""Graph encodings: ``laplacian``'s ``normalize`` option (issue 7: laplacian learned nothing on the graph tasks) and
its canonical eigenvectors (the encoding is a function of the graph, not of the eigensolver).

The general graph checks (closed forms, sign flips, spd, rwpe, KV cache) live in test_structured_encodings.py.
"""

import math

import pytest
import torch

from posenc import Positions
from posenc.base import get_encoding
from posenc.encodings.graph import (
    EIGENSPACE_GAP,
    canonical_eigenvectors,
    cycle_adjacency,
    laplacian_eigenvectors,
    normalized_laplacian,
    path_adjacency,
    path_laplacian_eigenvectors,
)
from posenc.lab.tasks.graphs import random_recursive_trees
from posenc.model import Transformer, TransformerConfig

DIM, HEADS, K = 32, 2, 4


def _trees(n: int, batch: int = 6) -> torch.Tensor:
    return random_recursive_trees(torch.Generator().manual_seed(n), batch, n)


@pytest.mark.parametrize("n", [3, 5, 12, 24])  # 3 and 5 have fewer than K + 1 nodes: zero-padded columns
def test_normalize_scales_eigenvectors_to_unit_mean_square(n):
    adj = _trees(n)
    raw = get_encoding("laplacian", dim=DIM, n_heads=HEADS, k=K, normalize=False).eval()
    norm = get_encoding("laplacian", dim=DIM, n_heads=HEADS, k=K, normalize=True).eval()
    pos = torch.arange(n)
    graph = Positions(adjacency=adj)
    f_raw = raw.bind(graph).node_features(pos, adj.shape[0])  # (B, n, K)
    f_norm = norm.bind(graph).node_features(pos, adj.shape[0])
    torch.testing.assert_close(f_norm, f_raw * math.sqrt(n))
    torch.testing.assert_close(f_raw, laplacian_eigenvectors(adj, K))
    real = min(K, n - 1)  # non-trivial eigenvectors that exist; the rest are zero padding
    mean_square = f_norm.pow(2).mean(1)  # (B, K): over the nodes of each graph
    torch.testing.assert_close(mean_square[:, :real], torch.ones(adj.shape[0], real, dtype=torch.float64))
    assert (f_norm[..., real:] == 0).all()


def test_normalize_on_the_default_path_graph():
    n = 10
    raw = get_encoding("laplacian", dim=DIM, n_heads=HEADS, max_seq_len=n, k=K, normalize=False)
    norm = get_encoding("laplacian", dim=DIM, n_heads=HEADS, max_seq_len=n, k=K, normalize=True)
    pos = torch.arange(n)
    torch.testing.assert_close(norm.path_features(pos), raw.path_features(pos) * math.sqrt(n))
    torch.testing.assert_close(norm.path_features(pos).pow(2).mean(0), torch.ones(K, dtype=torch.float64))
    # the closed form and the explicit path graph agree, signs included (both canonical), after scaling
    explicit = norm.bind(Positions(adjacency=path_adjacency(n))).node_features(pos)[0]
    torch.testing.assert_close(explicit, norm.path_features(pos), atol=1e-12, rtol=0)


def test_normalize_keeps_sign_flips_per_graph_and_eigenvector():
    pe = get_encoding("laplacian", dim=DIM, n_heads=HEADS, k=K, normalize=True)
    pe.generator = torch.Generator().manual_seed(0)
    adj = cycle_adjacency(9).expand(20, -1, -1)
    pos = torch.arange(9)
    feats = pe.bind(Positions(adjacency=adj)).node_features(pos, 20)  # (20, 9, K)
    flipped = pe.train().transform_features(feats)
    assert torch.equal(pe.eval().transform_features(feats), feats)
    signs = torch.sign((flipped * feats).sum(1, keepdim=True))  # (20, 1, K): +1 kept, -1 flipped
    assert torch.equal(flipped, feats * signs)  # one sign per graph and eigenvector, shared by all its nodes
    assert set(signs.unique().tolist()) == {-1.0, 1.0}


def _model(**options) -> Transformer:
    cfg = TransformerConfig(kind="encoder", vocab_size=8, dim=64, n_layers=1, n_heads=4, max_seq_len=12,
                            encoding="laplacian", encoding_options={"k": 8, **options})
    return Transformer(cfg)


def test_projection_keeps_its_own_init_in_a_model():
    # the model initialises only its own layers: either branch keeps nn.Linear's default init, U(+-1/sqrt(k))
    torch.manual_seed(0)
    bound = 1 / math.sqrt(8)
    for normalize in (False, True):
        weight = _model(normalize=normalize).pe.proj.weight.detach()  # (64, 8)
        assert float(weight.abs().max()) <= bound and float(weight.std()) > 0.5 * bound / math.sqrt(3)


def test_normalized_branch_is_on_the_token_embedding_scale():
    # Why normalize exists: raw eigenvectors have entries ~1/sqrt(N), so the literal branch is several times smaller
    # than the unit-scale token embeddings at init, and sign-ambiguous eigenvectors give it no consistent gradient
    # to grow from (issue 7). Normalized, it is O(1).
    torch.manual_seed(0)
    adj = _trees(12, batch=16)
    tokens = torch.zeros(16, 12, dtype=torch.long)
    scales = {}
    for normalize in (False, True):
        model = _model(normalize=normalize).eval()
        x = model._embed(tokens, "tokens").detach()  # (16, 12, 64), unit-variance rows
        with torch.no_grad():
            branch = model.pe.bind(Positions(adjacency=adj)).embed(x, torch.arange(12)) - x
        scales[normalize] = float(branch.pow(2).mean().sqrt() / x.pow(2).mean().sqrt())
    assert scales[True] > 0.2 and scales[False] < scales[True] / 2


def test_normalize_state_dicts_are_interchangeable():
    a, b = _model(normalize=False), _model(normalize=True)
    assert a.state_dict().keys() == b.state_dict().keys()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.pe.proj.weight, a.pe.proj.weight)
    assert "normalize=True" in repr(b.pe)


def test_normalize_must_be_a_bool():
    with pytest.raises(TypeError, match="normalize must be a bool"):
        get_encoding("laplacian", dim=DIM, n_heads=HEADS, normalize=1)


# -- canonical eigenvectors: a function of the graph -------------------------------------------------------------------
def _graphs() -> dict[str, torch.Tensor]:
    """``(B, N, N)`` graphs with repeated eigenvalues, symmetries, several components and isolated nodes."""
    g = torch.Generator().manual_seed(3)
    er = (torch.rand(6, 10, 10, generator=g) < 0.35).float().triu(1)
    two = torch.zeros(1, 9, 9)
    two[0, :4, :4] = cycle_adjacency(4)
    two[0, 4:, 4:] = path_adjacency(5)  # two components: eigenvalue 0 twice
    lonely = path_adjacency(8)[None].clone()
    lonely[0, 2, 3] = lonely[0, 3, 2] = 0.0
    lonely[0, 3, 4] = lonely[0, 4, 3] = 0.0  # node 3 isolated
    return {"trees": _trees(14, batch=8).double(), "cycle": cycle_adjacency(8)[None], "random": er + er.mT,
            "two components": two, "isolated node": lonely, "star": _star(9)}


def _star(n: int) -> torch.Tensor:
    adj = torch.zeros(1, n, n)
    adj[0, 0, 1:] = adj[0, 1:, 0] = 1.0  # eigenvalue 1 with multiplicity n - 2
    return adj


def _eigh_in_another_basis(seed: int):
    """``torch.linalg.eigh`` as another LAPACK build may answer: each eigenspace in another orthonormal basis."""
    real_eigh = torch.linalg.eigh
    g = torch.Generator().manual_seed(seed)

    def eigh(matrix):
        vals, vecs = real_eigh(matrix)
        vecs = vecs.clone()
        for b in range(vals.shape[0]):
            space = torch.cat((torch.zeros(1, dtype=torch.long), (vals[b].diff() > EIGENSPACE_GAP).long().cumsum(0)))
            for s in space.unique():
                cols = (space == s).nonzero()[:, 0]
                q = torch.linalg.qr(torch.randn(len(cols), len(cols), generator=g, dtype=vecs.dtype)).Q
                q = q * (torch.randint(0, 2, (len(cols),), generator=g) * 2 - 1)  # random signs too
                vecs[b][:, cols] = vecs[b][:, cols] @ q
        return vals, vecs

    return eigh


@pytest.mark.parametrize("name", list(_graphs()))
def test_laplacian_features_do_not_depend_on_the_eigensolvers_basis(name, monkeypatch):
    # What broke goldens across machines: eigh's sign (and, for repeated eigenvalues, basis) is the LAPACK build's
    # choice; the features must be the same whichever basis of each eigenspace it returns.
    adj = _graphs()[name]
    want = laplacian_eigenvectors(adj, 8)
    for seed in range(3):
        with monkeypatch.context() as m:
            m.setattr(torch.linalg, "eigh", _eigh_in_another_basis(seed))
            got = laplacian_eigenvectors(adj, 8)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", list(_graphs()))
def test_canonical_eigenvectors_are_an_orthonormal_eigenbasis_of_the_same_eigenspaces(name):
    adj = _graphs()[name].double()
    lap = normalized_laplacian(adj)
    vals, vecs = torch.linalg.eigh(lap)
    canon = canonical_eigenvectors(vals, vecs, lead=adj.sum(-1).sqrt())  # (B, N, N)
    eye = torch.eye(adj.shape[-1], dtype=torch.float64)
    torch.testing.assert_close(canon.mT @ canon, eye.expand_as(canon), atol=1e-12, rtol=0)
    torch.testing.assert_close(lap @ canon, canon * vals[:, None, :], atol=1e-12, rtol=0)  # L v = lambda v
    # every eigenspace is the same subspace: equal projectors onto the span of its columns
    for b in range(adj.shape[0]):
        for lam in vals[b].unique():
            cols = (vals[b] - lam).abs() <= EIGENSPACE_GAP
            torch.testing.assert_close(canon[b][:, cols] @ canon[b][:, cols].T, vecs[b][:, cols] @ vecs[b][:, cols].T,
                                       atol=1e-12, rtol=0)


def test_the_trivial_eigenvector_is_the_one_dropped_even_for_a_disconnected_graph():
    adj = _graphs()["two components"]
    vecs = laplacian_eigenvectors(adj, 3)[0]  # (9, 3)
    trivial = adj[0].sum(-1).double().sqrt()
    lap = normalized_laplacian(adj)[0]
    first = vecs[:, 0]  # the other eigenvalue-0 vector: constant on each component (times sqrt(degree))
    torch.testing.assert_close(lap @ first, torch.zeros(9, dtype=torch.float64), atol=1e-12, rtol=0)
    assert abs(float(first @ trivial)) < 1e-12  # orthogonal to the trivial eigenvector, which was dropped


def test_laplacian_features_follow_a_relabelling_of_the_nodes():
    # Relabelling the nodes of a graph without symmetries permutes the features' rows, signs included: the
    # canonical basis is chosen from relabelling-equivariant references (sqrt(degree), classes of nodes).
    nx = pytest.importorskip("networkx")  # a dependency of torch
    from networkx.algorithms.isomorphism import GraphMatcher

    g = torch.Generator().manual_seed(0)
    upper = (torch.rand(16, 10, 10, generator=g) < 0.35).float().triu(1)
    graphs = [a for a in upper + upper.mT
              if sum(1 for _ in GraphMatcher(nx.from_numpy_array(a.numpy()), nx.from_numpy_array(a.numpy()))
                     .isomorphisms_iter()) == 1]  # only the identity maps the graph onto itself
    assert len(graphs) >= 8
    adj = torch.stack(graphs)
    want = laplacian_eigenvectors(adj, 6)
    for _ in range(3):
        perm = torch.randperm(10, generator=g)
        relabelled = adj[:, perm][:, :, perm]  # node i of the new labels is node perm[i] of the old ones
        torch.testing.assert_close(laplacian_eigenvectors(relabelled, 6), want[:, perm], atol=1e-10, rtol=0)


def test_where_a_symmetry_leaves_the_sign_open_a_relabelling_can_flip_it():
    # Reversing a path maps its odd eigenvectors to their negatives: no rule reading the graph alone can pick
    # their sign consistently, so the node order does (then a relabelling may flip them, as the training-time sign
    # flips do anyway); the even ones are symmetric, and follow the relabelling exactly.
    n = 9
    forward = laplacian_eigenvectors(path_adjacency(n), n - 1)
    reversed_ = laplacian_eigenvectors(path_adjacency(n).flip(0, 1), n - 1)  # the same graph, nodes n-1 .. 0
    torch.testing.assert_close(reversed_.abs(), forward.flip(0).abs(), atol=1e-12, rtol=0)
    torch.testing.assert_close(reversed_[:, 1::2], forward.flip(0)[:, 1::2], atol=1e-12, rtol=0)  # m = 2, 4, ...


@pytest.mark.parametrize("n", [2, 3, 9, 16])
def test_the_closed_form_path_features_are_the_canonical_eigenvectors(n):
    k = 6  # more than a 2- or 3-node path has: zero padding
    torch.testing.assert_close(path_laplacian_eigenvectors(torch.arange(n), n, k),
                               laplacian_eigenvectors(path_adjacency(n), k), atol=1e-12, rtol=0)
