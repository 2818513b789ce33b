"""Structured encodings: hierarchical, 2-D, multimodal, graph and adaptive (issue 7).

Each is checked against a closed form, a hand computation or a peer implementation (Hugging Face's Qwen2-VL rotary
code, MAE's 2-D sin-cos table), plus the invariances that define it.
"""

from __future__ import annotations

import inspect
import math
import types

import numpy as np
import pytest
import torch

import posenc
from posenc import KVCache, Positions, Transformer, TransformerConfig, get_encoding
from posenc.encodings.graph import (
    cycle_adjacency,
    laplacian_eigenvectors,
    path_adjacency,
    path_laplacian_eigenvectors,
    path_random_walk_landing,
    random_walk_landing,
    shortest_path_distances,
)
from posenc.encodings.grid2d import grid_coordinates, sinusoidal_2d_table
from posenc.encodings.hierarchical import hierarchical_levels
from posenc.encodings.mrope import mrope_position_ids
from posenc.encodings.sinusoidal import sinusoidal_table

DIM, HEADS, D = 32, 4, 8


def _qk(b=2, t=10, h=HEADS, hkv=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    return torch.randn(b, h, t, D, generator=g, dtype=dtype), torch.randn(b, hkv, t, D, generator=g, dtype=dtype)


def _scores(q, k):
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    return q.double() @ k.double().transpose(-2, -1)  # (B, H, Tq, Tk)


def _model(name, **options):
    torch.manual_seed(0)
    cfg = TransformerConfig(kind="decoder", vocab_size=40, dim=DIM, n_layers=1, n_heads=HEADS, n_kv_heads=2,
                            max_seq_len=64, encoding=name, encoding_options=options)
    return Transformer(cfg).eval()


def _kv_decode(model, x, split=4, positions=None):
    cache = KVCache()  # it keeps the structure of the first call's positions for the steps after it
    steps = [model(x[:, :split], positions=positions, cache=cache)]
    steps += [model(x[:, i:i + 1], cache=cache) for i in range(split, x.shape[1])]
    return torch.cat(steps, dim=1)


# -- hierarchical ------------------------------------------------------------------------------------------------------
TEXT = "Hi. Go now.\nNew start. End"
# (token in sentence, sentence in paragraph, paragraph), worked out by hand: "." ends a sentence and "\n" a
# paragraph; a boundary token belongs to the unit it ends, so the "\n" right after "now." is a sentence of its own.
LEVELS_BY_HAND = (
    [(i, 0, 0) for i in range(3)]  # "Hi."
    + [(i, 1, 0) for i in range(8)]  # " Go now."
    + [(0, 2, 0)]  # "\n"
    + [(i, 0, 1) for i in range(10)]  # "New start."
    + [(i, 1, 1) for i in range(4)]  # " End"
)


def _text_tokens(text=TEXT):
    return torch.tensor(list(text.encode()))


def test_hierarchical_levels_of_a_known_text():
    tokens = _text_tokens()
    assert len(LEVELS_BY_HAND) == len(TEXT)
    levels = hierarchical_levels(tokens, sentence_end_ids=[ord(".")], paragraph_end_ids=[ord("\n")])
    assert levels.tolist() == [list(r) for r in LEVELS_BY_HAND]
    batch = hierarchical_levels(tokens.expand(3, -1), sentence_end_ids=[ord(".")], paragraph_end_ids=[ord("\n")])
    assert batch.shape == (3, len(TEXT), 3) and (batch == levels).all()


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_hierarchical_embedding_is_the_per_level_tables(combine):
    pe = get_encoding("hierarchical", dim=DIM, n_heads=HEADS, combine=combine, sentence_end_ids=[ord(".")],
                      paragraph_end_ids=[ord("\n")])
    tokens = _text_tokens()[None]  # (1, T)
    levels = hierarchical_levels(tokens, sentence_end_ids=[ord(".")], paragraph_end_ids=[ord("\n")])
    x = torch.zeros(1, tokens.shape[1], DIM)
    if combine == "sum":
        expected = sum(sinusoidal_table(levels[..., a], DIM) for a in range(3))
    else:
        expected = torch.cat([sinusoidal_table(levels[..., a], w) for a, w in enumerate((12, 10, 10))], dim=-1)
    from_tokens = pe.bind(Positions(token_ids=tokens)).embed(x, torch.arange(tokens.shape[1]))
    torch.testing.assert_close(from_tokens, expected)
    torch.testing.assert_close(pe.embed(x, levels), expected)  # (B, T, 3) levels straight to the hook
    # nothing set: one sentence in one paragraph
    plain = pe.embed(x, torch.arange(tokens.shape[1]))
    zeros = torch.zeros_like(levels[..., 0])
    one = torch.stack((torch.arange(tokens.shape[1])[None], zeros, zeros), dim=-1)
    torch.testing.assert_close(plain, pe.embed(x, one))


def test_hierarchical_model_kv_cache_reads_the_same_levels():
    model = _model("hierarchical", sentence_end_ids=[ord(".") % 40], paragraph_end_ids=[ord("\n") % 40])
    x = (_text_tokens() % 40)[None].expand(2, -1)
    full = model(x, positions=Positions(token_ids=x))
    stepped = _kv_decode(model, x, positions=Positions(token_ids=x))  # levels of every position, as a table
    torch.testing.assert_close(stepped, full, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(full, model(x))  # the levels changed the output


def test_hierarchical_learned_limits_and_bad_input():
    pe = get_encoding("hierarchical", dim=DIM, n_heads=HEADS, kind="learned", max_sentences=2)
    assert not pe.extrapolates
    levels = torch.tensor([[[0, 0, 0], [0, 2, 0]]])
    with pytest.raises(ValueError, match="max_sentences"):
        pe.embed(torch.zeros(1, 2, DIM), levels)
    with pytest.raises(ValueError, match="boundary ids"):
        pe.bind(Positions(token_ids=torch.tensor([1, 2])))
    with pytest.raises(ValueError, match="shape"):
        pe.bind(Positions(coordinates=torch.zeros(4, 2, dtype=torch.long)))
    with pytest.raises(TypeError, match="integer"):
        pe.bind(Positions(coordinates=torch.zeros(4, 3)))
    with pytest.raises(ValueError, match="not both"):
        pe.bind(Positions(coordinates=torch.zeros(4, 3, dtype=torch.long), token_ids=torch.tensor([1, 2])))
    with pytest.raises(ValueError, match="kind"):
        get_encoding("hierarchical", dim=DIM, n_heads=HEADS, kind="rope")


# -- 2-D ---------------------------------------------------------------------------------------------------------------
def _mae_2d_sincos(embed_dim, grid_h, grid_w):
    """MAE's get_2d_sincos_pos_embed (numpy), written from the paper's code for comparison."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    grid = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))  # w first
    grid = np.stack(grid, axis=0).reshape(2, 1, grid_h, grid_w)
    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


def test_sinusoidal_2d_matches_mae():
    coords = grid_coordinates(3, 5)
    ours = sinusoidal_2d_table(coords, DIM)
    torch.testing.assert_close(ours, torch.from_numpy(_mae_2d_sincos(DIM, 3, 5)).float())
    pe = get_encoding("sinusoidal_2d", dim=DIM, n_heads=HEADS)
    x = torch.randn(2, 15, DIM)
    torch.testing.assert_close(pe.bind(Positions(coordinates=coords)).embed(x, torch.arange(15)), x + ours)
    torch.testing.assert_close(pe.embed(x, coords[None]), x + ours)


def test_grid_coordinates_layout():
    assert grid_coordinates(2, 2, prefix_tokens=1).tolist() == [[-1, -1], [0, 0], [0, 1], [1, 0], [1, 1]]


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_axial_rope_on_a_1xN_grid_is_1d_rope(layout):
    axial = get_encoding("axial_rope", dim=DIM, n_heads=HEADS, layout=layout, base=10000.0)
    rope = get_encoding("rope", dim=DIM, n_heads=HEADS, layout=layout, base=10000.0, rotary_dim=D // 2)
    q, k = _qk()
    pos = torch.arange(5, 15)
    qa, ka = axial.rotate(q, k, pos, pos)
    qr, kr = rope.rotate(q, k, pos, pos)
    torch.testing.assert_close(qa, qr, atol=0, rtol=0)
    torch.testing.assert_close(ka, kr, atol=0, rtol=0)
    coords = torch.stack((torch.zeros_like(pos), pos), dim=-1)[None]  # explicit (0, p)
    torch.testing.assert_close(axial.rotate(q, k, coords, coords)[0], qr, atol=0, rtol=0)


def test_axial_rope_matches_rotary_embedding_torch():
    peer = pytest.importorskip("rotary_embedding_torch")
    rows, cols = 3, 4
    rot = peer.RotaryEmbedding(dim=D // 2, freqs_for="lang", theta=100)
    freqs = rot.get_axial_freqs(cols, rows)  # (cols, rows, D): first half by column, second by row, interleaved
    coords = grid_coordinates(rows, cols)
    q = torch.randn(1, HEADS, rows * cols, D, dtype=torch.float64)
    theirs = peer.apply_rotary_emb(freqs[coords[:, 1], coords[:, 0]].double(), q)
    pe = get_encoding("axial_rope", dim=DIM, n_heads=HEADS, layout="interleaved", base=100.0)
    ours = pe.rotate(q, q[:, :2], coords[None], coords[None])[0]
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)  # their angles are float32


@pytest.mark.parametrize("name,options", [("axial_rope", {}), ("rope_mixed", {}), ("rope_mixed", {"freq_heads": 2})])
def test_2d_rope_scores_are_translation_invariant(name, options):
    pe = get_encoding(name, dim=DIM, n_heads=HEADS, **options)
    q, k = _qk(t=12)
    coords = grid_coordinates(3, 4)[None]  # (1, 12, 2)
    shift = torch.tensor([7, -3])
    base = _scores(*pe.rotate(q, k, coords, coords))
    moved = _scores(*pe.rotate(q, k, coords + shift + 5, coords + shift + 5))
    torch.testing.assert_close(moved, base, atol=1e-4, rtol=1e-4)
    # but not invariant to swapping rows and columns: it does see 2-D structure
    swapped = coords.flip(-1)
    assert not torch.allclose(_scores(*pe.rotate(q, k, swapped, swapped)), base, atol=1e-3)


def test_rope_mixed_axial_init_equals_axial_rope():
    mixed = get_encoding("rope_mixed", dim=DIM, n_heads=HEADS, init="axial", base=100.0)
    axial = get_encoding("axial_rope", dim=DIM, n_heads=HEADS, base=100.0)
    q, k = _qk(t=12)
    coords = grid_coordinates(3, 4)[None]
    for a, b in zip(mixed.rotate(q, k, coords, coords), axial.rotate(q, k, coords, coords)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_grid_errors():
    with pytest.raises(ValueError, match="multiple of 4"):
        get_encoding("axial_rope", dim=24, n_heads=4)  # head_dim 6
    pe = get_encoding("rope_mixed", dim=DIM, n_heads=HEADS, freq_heads=4)
    q, k = _qk()
    with pytest.raises(ValueError, match="freq_heads"):
        pe.rotate(q, k, torch.arange(10), torch.arange(10))  # 2 kv heads cannot use 4 frequency sets
    with pytest.raises(ValueError, match="shape"):
        pe.bind(Positions(coordinates=torch.zeros(10, 3, dtype=torch.long)))
    pe = get_encoding("axial_rope", dim=DIM, n_heads=HEADS).bind(Positions(coordinates=grid_coordinates(2, 2)))
    with pytest.raises(ValueError, match="past the 4 coordinates"):
        pe.rotate(q, k, torch.arange(10), torch.arange(10))


# -- multimodal RoPE ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_mrope_on_text_equals_rope(layout):
    mrope = get_encoding("mrope", dim=DIM, n_heads=HEADS, layout=layout)
    rope = get_encoding("rope", dim=DIM, n_heads=HEADS, layout=layout)
    q, k = _qk()
    pos = torch.arange(3, 13).expand(2, -1)
    for a, b in zip(mrope.rotate(q, k, pos, pos), rope.rotate(q, k, pos, pos)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    text_ids = mrope_position_ids([10])
    bound = mrope.bind(Positions(coordinates=text_ids + 3))
    torch.testing.assert_close(bound.rotate(q, k, torch.arange(10), torch.arange(10))[0],
                               rope.rotate(q, k, pos, pos)[0], atol=0, rtol=0)


def test_mrope_matches_hf_qwen2_vl():
    modeling = pytest.importorskip("transformers.models.qwen2_vl.modeling_qwen2_vl")
    from transformers import Qwen2VLConfig

    head_dim, section = 16, [4, 2, 2]
    cfg = Qwen2VLConfig(text_config=dict(hidden_size=head_dim * 2, num_attention_heads=2, num_key_value_heads=2,
                                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                          "mrope_section": section}))
    hf_rope = modeling.Qwen2VLRotaryEmbedding(cfg.text_config)
    ids = mrope_position_ids([3, (2, 2, 3), 2])  # (T, 3): text, a 2-frame 2x3 grid, text
    t = ids.shape[0]
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, t, head_dim, generator=g), torch.randn(1, 2, t, head_dim, generator=g)
    cos, sin = hf_rope(q, ids.T[:, None, :])  # position_ids (3, B, T)
    hq, hk = modeling.apply_rotary_pos_emb(q, k, cos, sin)
    pe = get_encoding("mrope", dim=head_dim * 2, n_heads=2, mrope_section=section)
    oq, ok = pe.rotate(q, k, ids[None], ids[None])
    torch.testing.assert_close(oq, hq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ok, hk, atol=1e-5, rtol=1e-5)


def test_mrope_position_ids_match_hf_get_rope_index():
    modeling = pytest.importorskip("transformers.models.qwen2_vl.modeling_qwen2_vl")
    get_rope_index = modeling.Qwen2VLModel.get_rope_index
    if "mm_token_type_ids" not in inspect.signature(get_rope_index).parameters:
        pytest.skip("this transformers version has another get_rope_index signature")
    # get_rope_index reads only config.vision_config.spatial_merge_size and get_vision_position_ids from self
    vision = types.SimpleNamespace(spatial_merge_size=1)
    owner = types.SimpleNamespace(config=types.SimpleNamespace(vision_config=vision))
    owner.get_vision_position_ids = types.MethodType(modeling.Qwen2VLModel.get_vision_position_ids, owner)
    segments = [3, (1, 2, 3), 2, (1, 4, 2), 1]
    kinds = []
    for seg in segments:  # 0 = text, 1 = image
        kinds += [0] * seg if isinstance(seg, int) else [1] * math.prod(seg)
    kinds = torch.tensor([kinds])
    hf, _ = get_rope_index(owner, torch.zeros_like(kinds), kinds, image_grid_thw=torch.tensor([[1, 2, 3], [1, 4, 2]]))
    assert torch.equal(hf[:, 0].T, mrope_position_ids(segments))


def test_mrope_position_ids_by_hand():
    ids = mrope_position_ids([2, (1, 2, 3), 2])
    assert ids.tolist() == [[0, 0, 0], [1, 1, 1],
                            [2, 2, 2], [2, 2, 3], [2, 2, 4], [2, 3, 2], [2, 3, 3], [2, 3, 4],
                            [5, 5, 5], [6, 6, 6]]
    video = mrope_position_ids([(3, 1, 1)])
    assert video.tolist() == [[0, 0, 0], [1, 0, 0], [2, 0, 0]]
    with pytest.raises(ValueError, match="segment 1"):
        mrope_position_ids([2, (1, 0, 3)])


def test_mrope_scores_invariant_to_a_shift_on_all_axes():
    pe = get_encoding("mrope", dim=DIM, n_heads=HEADS)
    q, k = _qk(t=10)
    ids = mrope_position_ids([2, (1, 2, 3), 2])[None]
    base = _scores(*pe.rotate(q, k, ids, ids))
    moved = _scores(*pe.rotate(q, k, ids + 11, ids + 11))
    torch.testing.assert_close(moved, base, atol=1e-4, rtol=1e-4)


def test_mrope_model_generation_after_an_image():
    model = _model("mrope")
    x = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(1))
    prompt_ids = mrope_position_ids([2, (1, 2, 2)])  # text then an image; the rest of x continues as text
    full_ids = torch.cat((prompt_ids, prompt_ids.max() + 1 + torch.arange(6)[:, None].expand(-1, 3)))
    full = model(x, positions=Positions(coordinates=full_ids))
    # positions past the table continue as text (Qwen2-VL's rope_deltas)
    stepped = _kv_decode(model, x, split=6, positions=Positions(coordinates=prompt_ids))
    torch.testing.assert_close(stepped, full, atol=2e-5, rtol=1e-4)


def test_mrope_bad_section():
    with pytest.raises(ValueError, match="mrope_section"):
        get_encoding("mrope", dim=DIM, n_heads=HEADS, mrope_section=[1, 1, 1])


# -- graphs ------------------------------------------------------------------------------------------------------------
def test_laplacian_of_a_path_matches_the_closed_form_up_to_sign():
    n, k = 9, 5
    vecs = laplacian_eigenvectors(path_adjacency(n), k)  # (n, k)
    j = torch.arange(n, dtype=torch.float64)
    deg = torch.tensor([1.0] + [2.0] * (n - 2) + [1.0], dtype=torch.float64)
    for m in range(1, k + 1):
        u = deg.sqrt() * torch.cos(math.pi * m * j / (n - 1))
        u = u / u.norm()
        assert torch.allclose(vecs[:, m - 1].abs(), u.abs(), atol=1e-10) and abs(float(vecs[:, m - 1] @ u)) > 1 - 1e-10
    torch.testing.assert_close(path_laplacian_eigenvectors(torch.arange(n), n, k).abs(), vecs.abs())


def test_laplacian_of_a_cycle_spans_the_closed_form_eigenspaces():
    n = 8  # eigenvalues 1 - cos(2 pi m / n): m = 1, 2, 3 twice each, then m = 4 once
    vecs = laplacian_eigenvectors(cycle_adjacency(n), 7)
    j = torch.arange(n, dtype=torch.float64)
    for m, cols in ((1, [0, 1]), (2, [2, 3]), (3, [4, 5])):
        basis = torch.stack((torch.cos(2 * math.pi * m * j / n), torch.sin(2 * math.pi * m * j / n)), dim=1)
        basis = torch.linalg.qr(basis).Q
        got = vecs[:, cols]
        torch.testing.assert_close(got @ got.T, basis @ basis.T, atol=1e-10, rtol=0)  # same 2-D eigenspace
    alternating = torch.cos(math.pi * j) / math.sqrt(n)
    assert abs(float(vecs[:, 6] @ alternating)) > 1 - 1e-10


def test_laplacian_encoding_uses_the_graph_and_flips_signs_only_in_training():
    pe = get_encoding("laplacian", dim=DIM, n_heads=HEADS, k=3, normalize=False)
    adj = cycle_adjacency(6)
    graph = pe.bind(Positions(adjacency=adj))
    feats = graph.node_features(torch.arange(6))
    torch.testing.assert_close(feats[0], laplacian_eigenvectors(adj, 3))
    pe.train()
    flipped = pe.transform_features(feats)
    assert torch.equal(flipped.abs(), feats.abs())
    flips = []
    for _ in range(2):  # a generator makes the flips reproducible
        pe.generator = torch.Generator().manual_seed(5)
        flips.append(pe.transform_features(feats.expand(20, -1, -1)))
    assert torch.equal(flips[0], flips[1])
    signs = torch.sign((flips[0] * feats).sum(1))  # (20 graphs, k): +1 kept, -1 flipped
    assert set(signs.flatten().tolist()) == {-1.0, 1.0} and signs.unique(dim=0).shape[0] > 1
    pe.eval()
    assert torch.equal(pe.transform_features(feats), feats)
    x = torch.zeros(1, 6, DIM)
    graph = pe.bind(Positions(adjacency=adj))  # a view: it reads the training mode of the moment it is bound
    torch.testing.assert_close(graph.embed(x, torch.arange(6)), pe.proj(feats.float()))
    with pytest.raises(ValueError, match="not a node"):
        graph.embed(torch.zeros(1, 7, DIM), torch.arange(7))
    with pytest.raises(ValueError, match="max_seq_len"):
        pe.embed(torch.zeros(1, 1, DIM), torch.tensor([5000]))


def test_rwpe_by_hand():
    star = torch.zeros(4, 4)
    star[0, 1:] = star[1:, 0] = 1  # center 0, leaves 1..3
    rw = random_walk_landing(star, 4)
    torch.testing.assert_close(rw[0], torch.tensor([0, 1, 0, 1], dtype=torch.float64))
    torch.testing.assert_close(rw[1], torch.tensor([0, 1 / 3, 0, 1 / 3], dtype=torch.float64))
    triangle = cycle_adjacency(3)  # P = (J - I) / 2: closed walks of length 2 and 3 from a node
    torch.testing.assert_close(random_walk_landing(triangle, 3)[0],
                               torch.tensor([0, 1 / 2, 1 / 4], dtype=torch.float64))
    n = 50  # the O(k^3) path shortcut equals the dense computation
    torch.testing.assert_close(path_random_walk_landing(torch.arange(n), n, 6),
                               random_walk_landing(path_adjacency(n), 6))
    pe = get_encoding("rwpe", dim=DIM, n_heads=HEADS, k=4)
    graph = pe.bind(Positions(adjacency=star[None].expand(2, -1, -1)))
    torch.testing.assert_close(graph.node_features(torch.arange(4)), rw[None].expand(2, -1, -1))


def test_spd_bias_by_hand_and_score_mod_agrees():
    torch.testing.assert_close(shortest_path_distances(path_adjacency(4)),
                               (torch.arange(4)[:, None] - torch.arange(4)).abs())
    two = torch.zeros(4, 4)
    two[0, 1] = two[1, 0] = 1  # nodes 2, 3 unreachable from 0, 1
    d = shortest_path_distances(two)
    assert d[0, 1] == 1 and d[0, 2] == -1 and d[2, 2] == 0
    pe = get_encoding("spd", dim=DIM, n_heads=HEADS, max_distance=2)
    adj = torch.stack((cycle_adjacency(6), path_adjacency(6)))
    pos = torch.arange(6)
    graph = pe.bind(Positions(adjacency=adj))
    bias = graph.bias(pos, pos)  # (2, H, 6, 6)
    assert bias.shape == (2, HEADS, 6, 6) and bias.dtype == torch.float32
    torch.testing.assert_close(bias[0, :, 0, 3], pe.table[2].detach())  # cycle: 3 hops, clipped to 2
    torch.testing.assert_close(bias[1, :, 0, 5], pe.table[2].detach())
    torch.testing.assert_close(bias[1, :, 2, 3], pe.table[1].detach())
    mod = graph.score_mod(pos, pos)
    grid = (torch.arange(2)[:, None, None, None], torch.arange(HEADS)[None, :, None, None],
            pos[None, None, :, None], pos[None, None, None, :])
    torch.testing.assert_close(mod(torch.zeros(2, HEADS, 6, 6), *grid), bias)
    assert torch.equal(pe.bind(Positions(adjacency=two)).bias(pos[:4], pos[:4])[:, 0, 2],
                       pe.table[3].detach())  # unreachable row


def test_spd_on_the_default_path_is_relative():
    pe = get_encoding("spd", dim=DIM, n_heads=HEADS)
    pos = torch.arange(12)
    torch.testing.assert_close(pe.bias(pos + 1000, pos + 1000), pe.bias(pos, pos), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["laplacian", "rwpe", "spd"])
def test_graph_model_uses_the_graph_and_kv_cache_agrees(name):
    model = _model(name)
    x = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(2))
    adj = torch.stack((cycle_adjacency(7), path_adjacency(7)))  # a different graph per sequence
    full = model(x, positions=Positions(adjacency=adj))
    stepped = _kv_decode(model, x, positions=Positions(adjacency=adj))
    torch.testing.assert_close(stepped, full, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(full[0], model(x)[0], atol=1e-4)  # a cycle is not the default path graph
    assert model.pe.num_nodes is None  # the graph was input to those forwards, not state of the encoding


def test_graph_errors():
    pe = get_encoding("rwpe", dim=DIM, n_heads=HEADS)
    with pytest.raises(ValueError, match="square"):
        pe.bind(Positions(adjacency=torch.zeros(3, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        pe.bind(Positions(adjacency=-torch.ones(3, 3)))
    with pytest.raises(ValueError, match="k"):
        get_encoding("laplacian", dim=DIM, n_heads=HEADS, k=0)


# -- adaptive ----------------------------------------------------------------------------------------------------------
COMPONENTS = ("alibi", "t5", "fire")


def _needs(*names):
    missing = [n for n in names if n not in posenc.registered_names()]
    return pytest.mark.skipif(bool(missing), reason=f"components not registered: {missing}")


@_needs(*COMPONENTS)
@pytest.mark.parametrize("which", range(3))
@pytest.mark.parametrize("causal", [False, True])
def test_adaptive_one_hot_is_exactly_the_component(which, causal):
    pe = get_encoding("adaptive", dim=DIM, n_heads=HEADS, causal=causal)
    with torch.no_grad():
        pe.mix_logits.fill_(float("-inf"))
        pe.mix_logits[:, which] = 0.0
    comp = pe.components[which]
    pos = torch.arange(3, 13)
    assert torch.equal(pe.bias(pos, pos), comp.bias(pos, pos))
    q, k = _qk()
    v = torch.randn_like(k)
    for backend in ("reference", "sdpa"):  # no_grad: SDPA picks another CPU kernel when the mask needs gradients
        with torch.no_grad():
            torch.testing.assert_close(
                posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=causal, backend=backend),
                posenc.attention(q, k, v, comp, q_pos=pos, k_pos=pos, causal=causal, backend=backend), atol=0, rtol=0)


@_needs(*COMPONENTS)
def test_adaptive_mixture_is_the_weighted_sum_relative_and_flex_consistent():
    pe = get_encoding("adaptive", dim=DIM, n_heads=HEADS)
    with torch.no_grad():
        pe.mix_logits.copy_(torch.randn(HEADS, 3))
    pos = torch.arange(10)
    w = torch.softmax(pe.mix_logits.detach(), -1)
    expected = sum(w[:, c, None, None] * comp.bias(pos, pos) for c, comp in enumerate(pe.components))
    torch.testing.assert_close(pe.bias(pos, pos), expected)
    torch.testing.assert_close(pe.bias(pos + 500, pos + 500), pe.bias(pos, pos), atol=1e-5, rtol=1e-5)
    mod = pe.score_mod(pos, pos)
    grid = (torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.arange(HEADS)[None, :, None, None],
            pos[None, None, :, None], pos[None, None, None, :])
    torch.testing.assert_close(mod(torch.zeros(1, HEADS, 10, 10), *grid)[0], pe.bias(pos, pos))


def test_adaptive_with_built_components():
    a, b = (get_encoding("spd", dim=DIM, n_heads=HEADS, max_distance=d) for d in (3, 5))
    pe = get_encoding("adaptive", dim=DIM, n_heads=HEADS, components=(a, b))
    with torch.no_grad():
        pe.mix_logits.copy_(torch.tensor([[0.0, float("-inf")]] * 2 + [[float("-inf"), 0.0]] * 2))
    pos = torch.arange(8)
    out = pe.bias(pos, pos)
    assert torch.equal(out[:2], a.bias(pos, pos)[:2]) and torch.equal(out[2:], b.bias(pos, pos)[2:])
    with pytest.raises(ValueError, match="pure attention-bias"):
        get_encoding("adaptive", dim=DIM, n_heads=HEADS, components=("rope",))
    with pytest.raises(ValueError, match="non-empty"):
        get_encoding("adaptive", dim=DIM, n_heads=HEADS, components=())


class _DistanceBias(posenc.PositionalEncoding):
    """A bias encoding with no score_mod: ``-0.1 * |i - j|`` on every head."""

    def bias(self, q_pos, k_pos):
        return (-0.1 * (q_pos[:, None] - k_pos[None]).abs().float()).expand(self.n_heads, -1, -1)


def test_adaptive_score_mod_covers_components_without_one():
    comps = (_DistanceBias(dim=DIM, n_heads=HEADS), get_encoding("spd", dim=DIM, n_heads=HEADS))
    pe = get_encoding("adaptive", dim=DIM, n_heads=HEADS, components=comps)
    with torch.no_grad():
        pe.mix_logits.copy_(torch.randn(HEADS, 2))
    pos = torch.arange(4, 11)
    grid = (torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.arange(HEADS)[None, :, None, None],
            torch.arange(7)[None, None, :, None], torch.arange(7)[None, None, None, :])
    torch.testing.assert_close(pe.score_mod(pos, pos)(torch.zeros(1, HEADS, 7, 7), *grid)[0], pe.bias(pos, pos))
    content = get_encoding("adaptive", dim=DIM, n_heads=HEADS, components=comps, content=True)
    with pytest.raises(ValueError, match="attention term"):
        content.score_mod(pos, pos)


@_needs(*COMPONENTS)
def test_adaptive_content_starts_as_the_static_mixture():
    static = get_encoding("adaptive", dim=DIM, n_heads=HEADS, causal=True)
    content = get_encoding("adaptive", dim=DIM, n_heads=HEADS, causal=True, content=True)
    content.load_state_dict(static.state_dict(), strict=False)
    q, k = _qk()
    v = torch.randn_like(k)
    pos = torch.arange(10)
    ref = posenc.attention(q, k, v, static, q_pos=pos, k_pos=pos, causal=True, backend="reference")
    torch.testing.assert_close(posenc.attention(q, k, v, content, q_pos=pos, k_pos=pos, causal=True), ref)
    with torch.no_grad():
        content.content_proj.normal_()
    assert not torch.allclose(posenc.attention(q, k, v, content, q_pos=pos, k_pos=pos, causal=True), ref)


@_needs("kerple")
def test_dape_starts_as_its_base_and_refines_per_pair():
    pe = get_encoding("dape", dim=DIM, n_heads=HEADS, causal=True)
    q, k = _qk()
    v = torch.randn_like(k)
    pos = torch.arange(10)
    ref = posenc.attention(q, k, v, pe.base, q_pos=pos, k_pos=pos, causal=True, backend="reference")
    torch.testing.assert_close(posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True), ref)
    with torch.no_grad():
        for p in pe.mlp.parameters():
            p.normal_()
    # the paper's formula, one (i, j) pair at a time: A_ij = L_ij + B_ij + MLP([L_ij; B_ij]) across heads
    kk = k.repeat_interleave(2, dim=1)
    logits = (q @ kk.transpose(-2, -1)) / math.sqrt(D)
    bias = pe.base.bias(pos, pos)
    scores = torch.empty_like(logits)
    for b in range(2):
        for i in range(10):
            for j in range(10):
                feat = torch.cat((logits[b, :, i, j], bias[:, i, j]))
                scores[b, :, i, j] = logits[b, :, i, j] + bias[:, i, j] + pe.mlp(feat)
    scores = scores.masked_fill(torch.ones(10, 10, dtype=torch.bool).triu(1), float("-inf"))
    expected = torch.softmax(scores, -1) @ v.repeat_interleave(2, dim=1)
    torch.testing.assert_close(posenc.attention(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True), expected,
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pure attention-bias"):
        get_encoding("dape", dim=DIM, n_heads=HEADS, base="sinusoidal")


def test_hierarchical_default_tells_reordered_levels_apart():
    # with one sinusoid per level summed, (2, 1, 5) and (5, 2, 1) would get the same vector: concat is the default
    x = torch.zeros(1, 2, DIM)
    levels = torch.tensor([[[2, 1, 5], [5, 2, 1]]])
    out = get_encoding("hierarchical", dim=DIM, n_heads=HEADS).embed(x, levels)
    assert (out[0, 0] - out[0, 1]).abs().max() > 0.5
    summed = get_encoding("hierarchical", dim=DIM, n_heads=HEADS, combine="sum").embed(x, levels)
    torch.testing.assert_close(summed[0, 0], summed[0, 1])  # the symmetry the default avoids
