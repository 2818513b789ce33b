"""Graph encodings: ``laplacian``'s ``normalize`` option (issue 7: laplacian learned nothing on the graph tasks).

The general graph checks (closed forms, sign flips, spd, rwpe, KV cache) live in test_structured_encodings.py.
"""

import math

import pytest
import torch

from posenc import Positions
from posenc.base import get_encoding
from posenc.encodings.graph import cycle_adjacency, laplacian_eigenvectors, path_adjacency
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
    # the closed form and the explicit path graph still agree (up to sign) after scaling
    explicit = norm.bind(Positions(adjacency=path_adjacency(n))).node_features(pos)[0]
    torch.testing.assert_close(explicit.abs(), norm.path_features(pos).abs())


def test_normalize_keeps_sign_flips_per_graph_and_eigenvector():
    pe = get_encoding("laplacian", dim=DIM, n_heads=HEADS, k=K, normalize=True)
    pe.generator = torch.Generator().manual_seed(0)
    adj = cycle_adjacency(9).expand(20, -1, -1)
    pos = torch.arange(9)
    feats = pe.bind(Positions(adjacency=adj)).node_features(pos, 20)  # (20, 9, K)
    flipped = pe.train().transform_features(feats)
    assert torch.equal(pe.eval().transform_features(feats), feats)
    ratio = flipped / feats.where(feats != 0, torch.ones_like(feats))
    signs = ratio[:, :1, :]  # (20, 1, K): one sign per graph and eigenvector, shared by all nodes
    assert torch.equal(ratio.where(feats != 0, signs.expand_as(ratio)), signs.expand_as(ratio))
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
