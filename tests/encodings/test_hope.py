"""HoPE (arXiv 2505.20444) against the paper formula in float64 loops and the authors' code (hrlics/HoPE,
``modeling_hope.py``, re-derived in ``_video_reference.py``), through the model with a KV cache, and its pitfalls."""

from __future__ import annotations

import pytest
import torch
from _video_reference import apply_m_modify, paper_rotation, qwen2vl_cos_sin, t_scale_rope_index, tokens_for

from posenc import KVCache, Positions, Transformer, TransformerConfig, get_encoding
from posenc.encodings.hope import HOPE_TRAIN_SCALES, hope_axes, hope_position_ids
from posenc.encodings.mrope import NO_AXIS

DIM, HEADS = 64, 4  # head_dim 16: 8 pairs, section (2, 3, 3)
SEGMENTS = [3, (3, 2, 3), 2, (2, 3, 2), 4]


def _qk(t, d=DIM // HEADS, dtype=torch.float64):
    g = torch.Generator().manual_seed(6)
    return torch.randn(1, HEADS, t, d, generator=g, dtype=dtype), torch.randn(1, 2, t, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("scales", [[s, s] for s in HOPE_TRAIN_SCALES] + [[0.75, 1.25]])
def test_position_ids_equal_the_authors_get_dynamic_rope_index(scales):
    ids, grids = tokens_for(SEGMENTS)
    ref, _ = t_scale_rope_index(ids, grids, scales)  # get_dynamic_rope_index with its random.choice made explicit
    ours = hope_position_ids(SEGMENTS, temporal_scale=scales)
    assert ours.dtype == torch.float64
    assert torch.equal(ours, ref.T)  # exact: multiples of 0.25 and small integers


def test_axes_table_is_the_authors_hybrid_allocation():
    section = [16, 24, 24]
    cos = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 1, 128) + 2  # axis a shows as a + 2; NoPE shows as 1
    q = torch.zeros(1, 1, 1, 128)
    got_cos, _ = apply_m_modify(q + 1, q, cos, torch.zeros_like(cos), section, zero_time=True)
    table = [int(v) - 2 for v in got_cos[0, 0, 0, :64].tolist()]
    assert table == hope_axes(section) == [1, 2] * 24 + [NO_AXIS] * 16


@pytest.mark.parametrize("scale", [1, 0.75])
def test_rotation_equals_the_authors_code_and_the_paper_formula(scale):
    coords = hope_position_ids(SEGMENTS, temporal_scale=scale)
    q, k = _qk(coords.shape[0])
    pe = get_encoding("hope", dim=DIM, n_heads=HEADS, base=1e6)
    ours_q, ours_k = pe.rotate(q, k, coords[None], coords[None])
    cos, sin = qwen2vl_cos_sin(coords.T[:, None], DIM // HEADS, 1e6)
    ref_q, ref_k = apply_m_modify(q, k, cos, sin, list(pe.mrope_section), zero_time=True)
    torch.testing.assert_close(ours_q, ref_q, atol=1e-12, rtol=0)
    torch.testing.assert_close(ours_k, ref_k, atol=1e-12, rtol=0)
    naive = paper_rotation(k[0, 1], coords, hope_axes(pe.mrope_section), 1e6)
    torch.testing.assert_close(ours_k[0, 1], naive, atol=1e-12, rtol=0)


def test_pitfall_time_alone_moves_nothing_but_the_diagonal_does():
    """Zero temporal frequencies: a pure change of the time coordinate leaves q unchanged; the diagonal layout's
    shift of height/width with time still tells frames apart."""
    pe = get_encoding("hope", dim=DIM, n_heads=HEADS)
    q, k = _qk(1)
    a, b = torch.tensor([[[2.0, 5.0, 6.0]]]), torch.tensor([[[40.0, 5.0, 6.0]]])
    assert torch.equal(pe.rotate(q, k, a, a)[0], pe.rotate(q, k, b, b)[0])
    ids = hope_position_ids([(2, 1, 1)], temporal_scale=1)
    assert ids[1, 1] - ids[0, 1] == 1  # the next frame's height (and width) moved with its time


def test_pitfall_text_is_not_plain_rope():
    """Unlike mrope and videorope, text rotates only on the spatial pairs: partial RoPE, not RoPE."""
    pe = get_encoding("hope", dim=DIM, n_heads=HEADS)
    rope = get_encoding("rope", dim=DIM, n_heads=HEADS)
    q, k = _qk(6)
    pos = torch.arange(6) + 3
    assert not torch.allclose(pe.rotate(q, k, pos, pos)[0], rope.rotate(q, k, pos, pos)[0])
    cos, sin = pe.cos_sin(torch.stack((pos,) * 3, -1), dtype=torch.float64)
    assert torch.equal(cos[..., -2:], torch.ones_like(cos[..., -2:]))  # the last section[0] = 2 pairs stay still
    assert torch.equal(sin[..., -2:], torch.zeros_like(sin[..., -2:]))


def test_pitfall_inference_needs_a_chosen_scale():
    with pytest.raises(TypeError):
        hope_position_ids([1, (2, 1, 1)])  # the authors assert a user-chosen scale at inference
    with pytest.raises(ValueError, match="temporal_stride must be a finite number > 0"):
        hope_position_ids([1, (2, 1, 1)], temporal_scale=-0.5)


@pytest.mark.parametrize("scale", [1, 0.75])
def test_prefill_then_decode_equals_the_full_forward(scale):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=40, dim=DIM, n_layers=2, n_heads=HEADS,
                                          n_kv_heads=2, max_seq_len=128, encoding="hope")).eval()
    prompt = hope_position_ids([2, (3, 2, 2), 1], temporal_scale=scale)
    x = torch.randint(0, 40, (2, prompt.shape[0] + 4), generator=torch.Generator().manual_seed(1))
    rest = (prompt[:, 0].max() + 1 + torch.arange(4, dtype=prompt.dtype))[:, None].expand(-1, 3)
    full = model(x, positions=Positions(coordinates=torch.cat((prompt, rest))))
    cache = KVCache()
    steps = [model(x[:, :prompt.shape[0]], positions=Positions(coordinates=prompt), cache=cache)]
    steps += [model(x[:, i:i + 1], cache=cache) for i in range(prompt.shape[0], x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-4)


def test_no_grad_inference_mode_and_compile_agree():
    pe = get_encoding("hope", dim=DIM, n_heads=HEADS)
    coords = hope_position_ids(SEGMENTS, temporal_scale=1.25)[None]
    q, k = _qk(coords.shape[1], dtype=torch.float32)
    eager = pe.rotate(q, k, coords, coords)
    with torch.no_grad():
        ng = pe.rotate(q, k, coords, coords)
    with torch.inference_mode():
        im = pe.rotate(q, k, coords, coords)
    compiled = torch.compile(pe.rotate, backend="eager")(q, k, coords, coords)
    for out in (ng, im, compiled):
        for a, b in zip(out, eager):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_far_positions_in_float64():
    pe = get_encoding("hope", dim=DIM, n_heads=HEADS)
    coords = torch.tensor([[[1e6 + 0.75, 1e6 + 0.75, 1e6 - 0.25]]], dtype=torch.float64)
    cos, _ = pe.cos_sin(coords, dtype=torch.float64)
    inv0 = 1.0  # pair 0 reads height at frequency base^0
    assert abs(float(cos[0, 0, 0]) - float(torch.tensor(1e6 + 0.75, dtype=torch.float64).mul(inv0).cos())) < 1e-12


def test_errors():
    with pytest.raises(ValueError, match="mrope_section must be three"):
        get_encoding("hope", dim=DIM, n_heads=HEADS, mrope_section=[8, 0, 1])
    with pytest.raises(ValueError, match="segment 0 must be"):
        hope_position_ids([(1, 2)], temporal_scale=1)
