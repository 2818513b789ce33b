"""VideoRoPE (arXiv 2502.05173) against the paper formula in float64 loops and the authors' code (Wiselnn570/VideoRoPE,
re-derived in ``_video_reference.py``), through the model with a KV cache, and its pitfalls."""

from __future__ import annotations

import pytest
import torch
from _video_reference import apply_m_modify, paper_rotation, qwen2vl_cos_sin, t_scale_rope_index, tokens_for

from posenc import KVCache, Positions, Transformer, TransformerConfig, get_encoding
from posenc.encodings.mrope import mrope_position_ids
from posenc.encodings.videorope import videorope_axes, videorope_position_ids

DIM, HEADS = 64, 4  # head_dim 16: 8 pairs, section (2, 3, 3)
SEGMENTS = [3, (3, 2, 3), 2, (1, 3, 2), 4]  # text, a 3-frame video (2x3 merged), text, an image, text


def _qk(t, d=DIM // HEADS, b=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(5)
    return torch.randn(b, HEADS, t, d, generator=g, dtype=dtype), torch.randn(b, 2, t, d, generator=g, dtype=dtype)


def _model(name="videorope", **options):
    torch.manual_seed(0)
    cfg = TransformerConfig(kind="decoder", vocab_size=40, dim=DIM, n_layers=2, n_heads=HEADS, n_kv_heads=2,
                            max_seq_len=128, encoding=name, encoding_options=options)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("stride", [2, 1, 3, 0.5, 1.25])
def test_position_ids_equal_the_authors_get_t_scale_rope_index(stride):
    ids, grids = tokens_for(SEGMENTS)
    ref, delta = t_scale_rope_index(ids, grids, [stride] * len(grids))
    ours = videorope_position_ids(SEGMENTS, temporal_stride=stride)
    assert ours.dtype == (torch.long if isinstance(stride, int) else torch.float64)
    assert torch.equal(ours.double(), ref.T)  # exact: multiples of 0.25 and small integers
    # the authors' rope_delta: decoding continues at (largest time id + 1), which is what the encoding does past the
    # table (continue_coordinates)
    pe = get_encoding("videorope", dim=DIM, n_heads=HEADS)
    past = pe.continue_coordinates(ours[None].double(), torch.tensor([[len(ids), len(ids) + 1]]))
    assert past[0, :, 0].tolist() == [len(ids) + delta, len(ids) + 1 + delta]


def test_position_ids_per_grid_stride_and_a_worked_example():
    ids, grids = tokens_for(SEGMENTS)
    ref, _ = t_scale_rope_index(ids, grids, [2, 1])
    assert torch.equal(videorope_position_ids(SEGMENTS, temporal_stride=[2, 1]), ref.T.long())
    # by hand: one text token, a 2-frame 2x2 grid (centred: offsets 0, 1 since (2 - 1) // 2 = 0) at stride 2
    assert videorope_position_ids([1, (2, 2, 2), 1]).tolist() == [
        [0, 0, 0], [1, 1, 1], [1, 1, 2], [1, 2, 1], [1, 2, 2], [3, 3, 3], [3, 3, 4], [3, 4, 3], [3, 4, 4], [4, 4, 4]]
    # a 3x3 grid at the start is centred: rows -1, 0, 1 (negative ids, as in the authors' code)
    assert videorope_position_ids([(1, 3, 3)])[:, 1].tolist() == [-1, -1, -1, 0, 0, 0, 1, 1, 1]


def test_axes_table_is_the_authors_reordering():
    # the authors' apply_m_modify_multimodal_rotary_pos_emb on cos = the axis index itself reveals the table
    section = [16, 24, 24]
    cos = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 1, 128)
    q = torch.zeros(1, 1, 1, 128)
    got_cos, _ = apply_m_modify(q + 1, q, cos, torch.zeros_like(cos), section)  # q * cos = cos
    table = got_cos[0, 0, 0, :64].long().tolist()
    assert table == videorope_axes(section) == [1, 2] * 24 + [0] * 16
    assert get_encoding("videorope", dim=128 * 2, n_heads=2).pair_axes == tuple(table)


@pytest.mark.parametrize("base", [10000.0, 1e6])
def test_rotation_equals_the_authors_code_and_the_paper_formula(base):
    coords = videorope_position_ids(SEGMENTS)  # (T, 3)
    t = coords.shape[0]
    q, k = _qk(t)
    pe = get_encoding("videorope", dim=DIM, n_heads=HEADS, base=base)
    ours_q, ours_k = pe.rotate(q, k, coords[None], coords[None])
    cos, sin = qwen2vl_cos_sin(coords.T[:, None], DIM // HEADS, base)  # (3, 1, T, D) float64
    ref_q, ref_k = apply_m_modify(q, k, cos, sin, list(pe.mrope_section))
    torch.testing.assert_close(ours_q, ref_q, atol=1e-12, rtol=0)  # both float64 from the same float64 angles
    torch.testing.assert_close(ours_k, ref_k, atol=1e-12, rtol=0)
    naive = paper_rotation(q[0, 1], coords, videorope_axes(pe.mrope_section), base)
    torch.testing.assert_close(ours_q[0, 1], naive, atol=1e-12, rtol=0)


def test_float32_matches_the_authors_float32_path():
    coords = videorope_position_ids(SEGMENTS, temporal_stride=1.25)
    q, k = _qk(coords.shape[0], dtype=torch.float32)
    pe = get_encoding("videorope", dim=DIM, n_heads=HEADS, base=1e6)
    ours_q, _ = pe.rotate(q, k, coords[None], coords[None])
    cos, sin = qwen2vl_cos_sin(coords.T[:, None].float(), DIM // HEADS, 1e6, dtype=torch.float32)
    ref_q, _ = apply_m_modify(q, k, cos, sin, list(pe.mrope_section))
    # the authors form angles in float32: |angle| < 40 here, so their error is < 40 * 2^-24 per angle; |q| < 5
    torch.testing.assert_close(ours_q, ref_q, atol=5 * 40 * 2.0**-23, rtol=0)


def test_text_alone_is_rope():
    pe = get_encoding("videorope", dim=DIM, n_heads=HEADS)
    rope = get_encoding("rope", dim=DIM, n_heads=HEADS)
    q, k = _qk(9)
    pos = torch.arange(9) + 4
    for a, b in zip(pe.rotate(q, k, pos, pos), rope.rotate(q, k, pos, pos)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_pitfall_time_lives_on_the_lowest_frequencies():
    """Moving a token in time alone turns only the last ``section[0]`` pairs (Qwen2-VL turns the first ones)."""
    pe = get_encoding("videorope", dim=DIM, n_heads=HEADS)
    mrope = get_encoding("mrope", dim=DIM, n_heads=HEADS)
    a = torch.tensor([[[5, 7, 9]]])
    b = torch.tensor([[[11, 7, 9]]])  # the same patch, 6 steps later in time, same height and width
    for enc, moved in ((pe, [6, 7]), (mrope, [0, 1])):
        ca, _ = enc.cos_sin(a, dtype=torch.float64)
        cb, _ = enc.cos_sin(b, dtype=torch.float64)
        changed = ((ca - cb).abs() > 1e-12)[0, 0].nonzero().flatten().tolist()
        assert changed == moved


def test_pitfall_text_after_a_video_starts_after_the_largest_time_index():
    """Not after the largest id of all three axes (Qwen2-VL's rule): a centred grid's width ids run ahead of time."""
    ids = videorope_position_ids([1, (2, 1, 4), 1])
    assert ids[:, 2].max() > ids[:, 0].max()  # width runs ahead of time
    assert ids[-1].tolist() == [4, 4, 4]  # time ids 1, 3; text continues at 4
    assert mrope_position_ids([1, (2, 1, 4), 1])[-1, 0] != 4  # Qwen2-VL's rule gives another start


def test_pitfall_far_positions_keep_their_angle():
    """Angles in float64: at 10^6 + a fractional stride the phase is right to ~1e-9 (float32 would be ~0.06 off)."""
    pe = get_encoding("videorope", dim=DIM, n_heads=HEADS)
    coords = torch.tensor([[[10**6 + 0.25, 10**6 + 1.25, 10**6 - 0.75]]], dtype=torch.float64)
    cos, sin = pe.cos_sin(coords, dtype=torch.float64)
    inv = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    axes = videorope_axes(pe.mrope_section)
    exact = torch.stack([coords[0, 0, a] * inv[i] for i, a in enumerate(axes)])
    torch.testing.assert_close(cos[0, 0], exact.cos(), atol=1e-9, rtol=0)
    torch.testing.assert_close(sin[0, 0], exact.sin(), atol=1e-9, rtol=0)


@pytest.mark.parametrize("stride", [2, 1.5])
def test_prefill_then_decode_equals_the_full_forward(stride):
    model = _model()
    prompt = videorope_position_ids([2, (2, 2, 3), 1], temporal_stride=stride)  # 15 tokens
    x = torch.randint(0, 40, (2, prompt.shape[0] + 5), generator=torch.Generator().manual_seed(1))
    top = prompt[:, 0].max()
    rest = (top + 1 + torch.arange(5, dtype=prompt.dtype))[:, None].expand(-1, 3)
    full = model(x, positions=Positions(coordinates=torch.cat((prompt, rest))))
    cache = KVCache()
    steps = [model(x[:, :prompt.shape[0]], positions=Positions(coordinates=prompt), cache=cache)]
    steps += [model(x[:, i:i + 1], cache=cache) for i in range(prompt.shape[0], x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-4)


def test_no_grad_inference_mode_and_compile_agree():
    pe = get_encoding("videorope", dim=DIM, n_heads=HEADS)
    coords = videorope_position_ids(SEGMENTS, temporal_stride=0.5)[None]
    q, k = _qk(coords.shape[1], dtype=torch.float32)
    eager = pe.rotate(q, k, coords, coords)
    with torch.no_grad():
        ng = pe.rotate(q, k, coords, coords)
    with torch.inference_mode():
        im = pe.rotate(q, k, coords, coords)
    compiled = torch.compile(pe.rotate, backend="eager", fullgraph=False)(q, k, coords, coords)
    for out in (ng, im, compiled):
        for a, b in zip(out, eager):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="mrope_section must be three"):
        get_encoding("videorope", dim=DIM, n_heads=HEADS, mrope_section=[1, 1, 1])
    with pytest.raises(ValueError, match="temporal_stride must be a finite number > 0"):
        videorope_position_ids([1, (2, 1, 1)], temporal_stride=0)
    with pytest.raises(ValueError, match="one per grid"):
        videorope_position_ids([1, (2, 1, 1)], temporal_stride=[1, 2])
    with pytest.raises(ValueError, match="segment 1 must be"):
        videorope_position_ids([1, (2, 0, 1)])
    pe = get_encoding("videorope", dim=DIM, n_heads=HEADS)
    bad = torch.tensor([[0.0, float("nan"), 0.0]])
    with pytest.raises(ValueError, match="finite"):
        pe.bind(Positions(coordinates=bad))
    with pytest.raises(TypeError):
        pe.bind(Positions(coordinates=torch.zeros(2, 3, dtype=torch.int16)))


def test_picture_of_the_frequency_allocation_per_axis(tmp_path):
    """The ``axes`` plot kind: VideoRoPE's time holds the longest wavelengths, Qwen2-VL's the shortest, HoPE's none."""
    from posenc import viz

    video = viz.axes_data(get_encoding("videorope", dim=128, n_heads=1))
    assert video.names == ("time", "height", "width")
    time_waves = video.wavelengths[video.axes == 0]
    assert time_waves.min() > video.wavelengths[video.axes > 0].max()  # time on the lowest frequencies
    qwen = viz.axes_data(get_encoding("mrope", dim=128, n_heads=1))
    assert qwen.wavelengths[qwen.axes == 0].max() < qwen.wavelengths[qwen.axes > 0].max()
    hope = viz.axes_data(get_encoding("hope", dim=128, n_heads=1))
    assert (hope.axes == -1).sum() == 16 and (hope.axes == 0).sum() == 0
    assert "axes" in viz.applicable_kinds(get_encoding("videorope", dim=DIM, n_heads=HEADS))
    assert "axes" not in viz.applicable_kinds(get_encoding("rope", dim=DIM, n_heads=HEADS))
    pytest.importorskip("matplotlib")
    viz.plot("axes", "videorope", out=tmp_path / "videorope_axes.png")
    assert (tmp_path / "videorope_axes.png").stat().st_size > 1000
