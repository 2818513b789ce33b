"""Plots: the data behind each figure against paper formulas, every kind writes a valid image, clear errors."""

from __future__ import annotations

import functools
import math
import struct
import sys

import pytest
import torch

from posenc import Transformer, TransformerConfig, get_encoding, registered_names, viz
from posenc.cli import main
from posenc.encodings.rope import RoPE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0 and height > 0 and len(data) > 1000


@functools.cache
def _applicable() -> list[tuple[str, str]]:
    """(kind, name) for every registered encoding and every kind its hooks allow."""
    pairs = []
    for name in registered_names():
        pe = viz.resolve_encoding(name)
        pairs += [(kind, name) for kind in viz.applicable_kinds(pe)]
    return pairs


def _first_per_kind() -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for kind, name in _applicable():
        seen.setdefault(kind, name)
    return sorted(seen.items())


def _scaling_available() -> bool:
    import inspect

    return "scaling" in inspect.signature(RoPE.__init__).parameters


SMALL = {"waves": {"length": 24}, "similarity": {"length": 24}, "bias": {"length": 12, "heads": 2},
         "decay": {"max_distance": 64}, "wavelengths": {}, "axes": {}, "grid": {"height": 6, "width": 6, "channels": 2},
         "fourier": {"length": 24}, "phases": {"max_distance": 24, "heads": 2}, "generators": {},
         **{kind: {"text": "to be or not", "heads": 2} for kind in viz.PROBE_KINDS}}


# -- every kind writes an image ---------------------------------------------------------------------------------------
def test_every_kind_except_attention_has_an_encoding():
    kinds = {kind for kind, _ in _applicable()}
    assert kinds == set(viz.PLOT_KINDS) - {"attention"}


@pytest.mark.parametrize("kind,name", _first_per_kind())
def test_plot_writes_png_for_one_encoding_per_kind(kind, name, tmp_path):
    out = tmp_path / f"{kind}_{name}.png"
    fig = viz.plot(kind, name, out=out, **SMALL[kind])
    assert_png(out)
    assert fig.axes and all(ax.get_title() or not ax.get_visible() or ax.get_label() == "<colorbar>"
                            for ax in fig.axes)


@pytest.mark.slow
@pytest.mark.parametrize("kind,name", _applicable())
def test_plot_writes_png_for_every_applicable_encoding(kind, name, tmp_path):
    out = tmp_path / f"{kind}_{name}.png"
    viz.plot(kind, name, out=out, **SMALL[kind])
    assert_png(out)


@pytest.mark.parametrize("kind,name", _applicable())
def test_data_behind_every_applicable_plot_is_finite(kind, name):
    pe = viz.resolve_encoding(name, dim=32, n_heads=2, max_seq_len=64)
    if kind == "waves":
        data = [viz.waves_data(pe, length=8)]
    elif kind == "similarity":
        data = [viz.similarity_data(pe, length=8)]
        assert data[0].shape == (8, 8)
    elif kind == "decay":
        data = list(viz.decay_data(pe, max_distance=16)[1:])
    elif kind == "bias":
        data = [viz.bias_data(pe, length=8)]
        assert data[0].shape == (2, 8, 8)
    elif kind == "wavelengths":
        data = list(viz.wavelengths_data(pe))
    elif kind == "axes":
        data = list(viz.axes_data(pe)[:2])
    elif kind == "grid":
        data = list(viz.grid_data(pe, height=3, width=4))
        assert data[1].shape == (3, 4)
    elif kind == "fourier":
        data = list(viz.fourier_data(pe, length=8))
        assert data[1].shape == data[2].shape == (8, pe.rotary_dim // 2)
    elif kind == "phases":
        data = [t.float() for t in viz.phases_data(pe, max_distance=8)]
        assert data[2].shape == (2, 9)
    elif kind == "generators":
        data = list(viz.generators_data(pe))
        assert data[0].shape[-2:] == (16, 16)
    else:  # one attention call on a sentence: every pair a query may see is finite
        out = getattr(viz, f"{kind}_data")(pe, text="abcdefgh")
        visible = out.visible
        assert visible.shape == (8, 8) and bool(visible.diagonal().all())
        pairs = [t for t in out if isinstance(t, torch.Tensor) and t.shape[-2:] == (8, 8) and t.is_floating_point()]
        assert pairs and all(t.shape == (2, 8, 8) for t in pairs)
        data = [t[:, visible] for t in pairs]
    for tensor in data:
        assert tensor.numel() and bool(torch.isfinite(tensor).all() | torch.isneginf(tensor).all())


def test_svg_output(tmp_path):
    out = tmp_path / "sim.svg"
    viz.plot("similarity", "sinusoidal", length=16, out=out)
    assert out.read_text()[:200].lstrip().startswith("<?xml") and "<svg" in out.read_text()[:2000]


# -- data against formulas --------------------------------------------------------------------------------------------
def test_sinusoidal_waves_match_the_paper():
    dim = 32
    pe = get_encoding("sinusoidal", dim=dim, n_heads=4)
    data = viz.waves_data(pe, length=20, offset=3)
    for p in (3, 10, 22):
        for i in range(dim // 2):
            w = 1 / 10000 ** (2 * i / dim)
            assert data[p - 3, 2 * i] == pytest.approx(math.sin(p * w), abs=1e-6)
            assert data[p - 3, 2 * i + 1] == pytest.approx(math.cos(p * w), abs=1e-6)


def test_rope_waves_are_cos_of_angles():
    pe = get_encoding("rope", dim=64, n_heads=4, base=500.0)
    data = viz.waves_data(pe, length=16)
    theta = 500.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    expected = torch.cos(torch.arange(16, dtype=torch.float64)[:, None] * theta)
    torch.testing.assert_close(data.double(), expected, atol=1e-6, rtol=0)


def test_sinusoidal_similarity_depends_only_on_the_offset():
    dim = 32
    pe = get_encoding("sinusoidal", dim=dim, n_heads=4)
    s = viz.similarity_data(pe, length=40, metric="dot", offset=7)
    # PE(p) . PE(q) = sum_i sin(p w_i) sin(q w_i) + cos(p w_i) cos(q w_i) = sum_i cos((p - q) w_i)
    w = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    offset = torch.arange(40, dtype=torch.float64)
    expected = torch.cos((offset[:, None] - offset[None, :])[..., None] * w).sum(-1)
    torch.testing.assert_close(s.double(), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(s[1:, 1:], s[:-1, :-1])  # Toeplitz: constant along diagonals
    cos = viz.similarity_data(pe, length=40, metric="cosine")
    torch.testing.assert_close(cos.diagonal(), torch.ones(40))


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_similarity_is_a_sum_of_cosines_of_the_offset(layout):
    pe = get_encoding("rope", dim=64, n_heads=4, layout=layout)
    s = viz.similarity_data(pe, length=32, metric="dot", offset=100)
    theta = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    offset = torch.arange(32, dtype=torch.float64)
    expected = 2 * torch.cos((offset[:, None] - offset[None, :])[..., None] * theta).sum(-1)  # |(1, 1)|^2 = 2
    torch.testing.assert_close(s.double(), expected, atol=1e-4, rtol=0)


def test_xpos_similarity_is_relative():
    pe = get_encoding("xpos", dim=64, n_heads=4, max_seq_len=256)
    s = viz.similarity_data(pe, length=48, metric="dot", offset=80)
    torch.testing.assert_close(s[1:, 1:], s[:-1, :-1], atol=1e-4, rtol=1e-4)


def test_decay_bound_matches_su_et_al():
    pe = get_encoding("rope", dim=128, n_heads=1)
    curves = viz.decay_data(pe, max_distance=300)
    n_freq = 64
    # at distance 0 every S_j = j, so the mean of |S_j| over j = 1..F is (F + 1) / 2
    assert float(curves.bound[0]) == pytest.approx((n_freq + 1) / 2)
    theta = [10000.0 ** (-2 * i / 128) for i in range(n_freq)]
    for d in (1, 17, 250):
        partial, total = 0j, 0.0
        for t in theta:
            partial += complex(math.cos(d * t), math.sin(d * t))
            total += abs(partial)
        assert float(curves.bound[d]) == pytest.approx(total / n_freq, rel=1e-9)
    assert float(curves.bound[200:].mean()) < 0.5 * float(curves.bound[:10].mean())  # it decays
    assert float(curves.ones_score[0]) == pytest.approx(1.0, abs=1e-6)


def test_decay_bound_bounds_the_rotated_scores():
    """Abel summation (Su et al. 2021, eq. 36): |q_m . k_n| <= max_i |h_{i+1} - h_i| * sum_j |S_j|, h_F = 0."""
    pe = get_encoding("rope", dim=64, n_heads=1, layout="half")
    n_freq, dist = 32, torch.arange(129)
    curves = viz.decay_data(pe, max_distance=128)
    q, k = torch.randn(5, 64, dtype=torch.float64), torch.randn(5, 64, dtype=torch.float64)
    for qi, ki in zip(q, k):
        qr, kr = pe.rotate(qi.expand(1, 1, 129, 64), ki.expand(1, 1, 129, 64), dist, torch.zeros_like(dist))
        score = (qr * kr).sum(-1)[0, 0]  # q_m . k_0 for m = 0..128
        h = torch.complex(qi[:n_freq], qi[n_freq:]) * torch.complex(ki[:n_freq], -ki[n_freq:])  # half layout pairs
        h = torch.cat((h, torch.zeros(1, dtype=h.dtype)))
        lipschitz = float((h[1:] - h[:-1]).abs().max())
        assert bool((score.abs() <= lipschitz * n_freq * curves.bound + 1e-9).all())


@pytest.mark.skipif(not _scaling_available(), reason="RoPE has no scaling option in this checkout")
def test_decay_of_linear_scaling_is_the_plain_curve_stretched():
    plain = viz.decay_data(get_encoding("rope", dim=64, n_heads=1), max_distance=100)
    pi = viz.decay_data(get_encoding("rope", dim=64, n_heads=1, scaling={"rope_type": "linear", "factor": 2.0}),
                        max_distance=200)
    torch.testing.assert_close(pi.bound[::2], plain.bound, rtol=1e-9, atol=1e-9)


def test_wavelengths_of_plain_rope():
    pe = get_encoding("rope", dim=64, n_heads=2, base=10000.0)
    plain, built = viz.wavelengths_data(pe)
    expected = 2 * math.pi * 10000.0 ** (torch.arange(0, 32, 2, dtype=torch.float64) / 32)
    torch.testing.assert_close(plain, expected)
    torch.testing.assert_close(built, plain)


@pytest.mark.skipif(not _scaling_available(), reason="RoPE has no scaling option in this checkout")
def test_wavelengths_show_the_scaling():
    linear = get_encoding("rope", dim=128, n_heads=1, scaling={"rope_type": "linear", "factor": 4.0})
    plain, built = viz.wavelengths_data(linear)
    torch.testing.assert_close(built, 4 * plain)  # position interpolation stretches every band
    yarn = get_encoding("rope", dim=128, n_heads=1, max_seq_len=2048, scaling={"rope_type": "yarn", "factor": 8.0})
    plain, built = viz.wavelengths_data(yarn)
    assert float(built[0] / plain[0]) == pytest.approx(1.0)  # YaRN keeps the fastest bands
    assert float(built[-1] / plain[-1]) == pytest.approx(8.0)  # and interpolates the slowest
    assert bool((built >= plain * (1 - 1e-9)).all())


def _bias_names() -> list[str]:
    return [kind_name[1] for kind_name in _applicable() if kind_name[0] == "bias"]


@pytest.mark.parametrize("name", _bias_names())
def test_bias_data_is_the_encodings_bias(name):
    for causal in (False, True):
        pe = get_encoding(name, dim=32, n_heads=4, max_seq_len=64, causal=causal).eval()
        data = viz.bias_data(pe, length=10, offset=3)
        pos = torch.arange(3, 13)
        expected = pe.bias(pos, pos)
        torch.testing.assert_close(data, expected.reshape(data.shape).float())
        distance, profile = viz.bias_profile(pe, length=10)
        query = 9 if causal else 5
        torch.testing.assert_close(profile, viz.bias_data(pe, length=10)[:, query, :])
        assert distance.tolist() == list(range(-query, 10 - query))


def test_grid_of_a_1d_encoding_lays_positions_out_row_by_row():
    pe = get_encoding("sinusoidal", dim=16, n_heads=2)
    images, sim = viz.grid_data(pe, height=3, width=5)
    table = pe.table(torch.arange(15))  # (15, 16)
    torch.testing.assert_close(images.permute(1, 2, 0).reshape(15, 16), table)
    assert float(sim[1, 2]) == pytest.approx(1.0, abs=1e-6)  # the centre cell against itself


def test_grid_of_a_2d_encoding_uses_row_column_coordinates():
    two_d = [n for n in registered_names() if get_encoding(n, dim=16, n_heads=2).family == "2d"
             and get_encoding(n, dim=16, n_heads=2).uses_embed]
    if not two_d:
        pytest.skip("no 2-D embed encoding is registered yet")
    pe = get_encoding(two_d[0], dim=16, n_heads=2)
    images, _ = viz.grid_data(pe, height=4, width=3)
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(3), indexing="ij")
    coords = torch.stack((rows.flatten(), cols.flatten()), -1)[None]  # (1, 12, 2)
    expected = pe.embed(torch.zeros(1, 12, 16), coords)[0]  # (12, 16)
    torch.testing.assert_close(images.permute(1, 2, 0).reshape(12, 16), expected)
    # a 2-D encoding is not a 1-D one laid out row by row: moving down a row is not moving 3 positions on
    assert not torch.allclose(expected, pe.embed(torch.zeros(1, 12, 16), torch.arange(12))[0])


# -- attention maps ---------------------------------------------------------------------------------------------------
def _tiny_model(encoding: str, kind: str = "decoder") -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(kind=kind, dim=32, n_heads=2, n_layers=2, max_seq_len=64,
                                         encoding=encoding)).eval()


@pytest.mark.parametrize("encoding", ["rope", "alibi"])
def test_attention_data_matches_a_manual_softmax(encoding):
    if encoding not in registered_names():
        pytest.skip(f"{encoding} is not registered in this checkout")
    model = _tiny_model(encoding)
    text = "to be or not"
    probs = viz.attention_data(model, text)  # (L, H, T, T)
    t = len(text)
    assert probs.shape == (2, 2, t, t)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, t))
    assert float(probs.triu(1).abs().max()) == 0.0  # causal
    # layer 0 by hand: the same projections, rotation and bias, then softmax
    tokens = torch.tensor([list(text.encode())])
    block, pe, pos = model.decoder.blocks[0], model.pe, torch.arange(t)
    x = pe.embed(model.tok_emb(tokens) * math.sqrt(32), pos) if pe.uses_embed else model.tok_emb(tokens) * math.sqrt(32)
    h = block.attn_norm(x)
    q = block.attn.q_proj(h).view(1, t, 2, 16).transpose(1, 2)  # (B, H, T, D)
    k = block.attn.k_proj(h).view(1, t, 2, 16).transpose(1, 2)
    if pe.uses_rotate:
        q, k = pe.rotate(q, k, pos, pos)
    scores = q @ k.transpose(-1, -2) / 4.0
    if pe.uses_bias:
        scores = scores + pe.bias(pos, pos)
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(probs[0], scores.softmax(-1)[0], atol=1e-5, rtol=1e-4)


def test_attention_from_a_checkpoint_and_an_encoder(tmp_path):
    model = _tiny_model("sinusoidal", kind="encoder")
    path = tmp_path / "enc.pt"
    model.save(path)
    probs = viz.attention_data(str(path), "abc def")
    torch.testing.assert_close(probs, viz.attention_data(model, "abc def"))
    assert float(probs.triu(1).sum()) > 0  # bidirectional: queries see later keys
    out = tmp_path / "attn.png"
    viz.plot("attention", path, text="abc def", out=out)
    assert_png(out)


def test_waves_of_a_trained_learned_table_from_a_checkpoint(tmp_path):
    model = _tiny_model("learned")
    path = tmp_path / "learned.pt"
    model.save(path)
    data = viz.waves_data(viz.resolve_encoding(str(path)), length=10)
    torch.testing.assert_close(data, model.pe.weight[:10].detach())


# -- errors -----------------------------------------------------------------------------------------------------------
def test_unknown_encoding_and_kind():
    with pytest.raises(ValueError, match="unknown encoding 'ropee'.*Did you mean 'rope'"):
        viz.plot("waves", "ropee")
    with pytest.raises(ValueError, match="unknown plot kind 'wave'.*Did you mean 'waves'"):
        viz.plot("wave", "rope")


def test_kind_that_does_not_fit_the_encoding():
    with pytest.raises(ValueError, match="cannot draw 'bias' for sinusoidal: it adds no attention bias.*waves"):
        viz.bias("sinusoidal")
    with pytest.raises(ValueError, match="not a RoPE"):
        viz.decay_data(get_encoding("sinusoidal", dim=16, n_heads=2))


def test_too_long_for_a_dense_heatmap():
    with pytest.raises(ValueError, match=r"too long for a dense.*Hint"):
        viz.similarity_data(get_encoding("sinusoidal", dim=16, n_heads=2), length=viz.MAX_DENSE + 1)
    with pytest.raises(ValueError, match="grid"):
        viz.grid_data(get_encoding("sinusoidal", dim=16, n_heads=2), height=100, width=100)


def test_unwritable_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*mkdir"):
        viz.plot("waves", "sinusoidal", out=tmp_path / "missing" / "w.png")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="does not exist"):
        viz.plot("waves", "sinusoidal", out=blocker / "w.png")
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        viz.plot("waves", "sinusoidal", out=tmp_path / "w.jpg")
    (tmp_path / "adir.png").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        viz.plot("waves", "sinusoidal", out=tmp_path / "adir.png")


def test_bad_attention_inputs(tmp_path):
    model = _tiny_model("rope")
    with pytest.raises(ValueError, match="non-empty"):
        viz.attention_data(model, "")
    with pytest.raises(TypeError, match="posenc.Transformer"):
        viz.attention_data(get_encoding("rope", dim=32, n_heads=2), "hi")
    with pytest.raises(ValueError, match="does not exist"):
        viz.attention_data(tmp_path / "nope.pt", "hi")


def test_options_only_apply_by_name():
    with pytest.raises(TypeError, match="only apply when the encoding is given by name"):
        viz.resolve_encoding(get_encoding("rope", dim=32, n_heads=2), base=5.0)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'posenc\[viz\]'"):
        viz.waves("sinusoidal", length=8)
    assert viz.waves_data(get_encoding("sinusoidal", dim=8, n_heads=2), length=4).shape == (4, 8)  # data needs none


def test_viz_data_imports_and_computes_without_matplotlib(fresh_python):
    """``posenc.viz.data`` needs only torch: in a fresh interpreter where any import of matplotlib fails, importing it
    (and with it the ``posenc.viz`` package) and computing a similarity map still work."""
    code = ("import sys\n"
            "sys.modules['matplotlib'] = None\n"  # from here on, importing matplotlib or a submodule raises ImportError
            "from posenc.viz.data import resolve_encoding, similarity_data\n"
            "print(tuple(similarity_data(resolve_encoding('rope'), length=8).shape))\n")
    assert fresh_python(code).strip() == "(8, 8)"


# -- CLI --------------------------------------------------------------------------------------------------------------
def test_cli_plot(tmp_path, capsys):
    out = tmp_path / "sim.png"
    assert main(["plot", "similarity", "sinusoidal", "--length", "16", "--out", str(out)]) == 0
    assert_png(out)
    out = tmp_path / "decay.svg"
    assert main(["plot", "decay", "rope", "--length", "64", "--option", "base=500000", "--out", str(out)]) == 0
    assert "<svg" in out.read_text()


@pytest.mark.skipif(not _scaling_available(), reason="RoPE has no scaling option in this checkout")
def test_cli_wavelengths_with_scaling(tmp_path):
    out = tmp_path / "bands.png"
    assert main(["plot", "wavelengths", "rope", "--scaling", '{"rope_type": "yarn", "factor": 4.0}',
                 "--out", str(out)]) == 0
    assert_png(out)


def test_cli_attention_from_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    _tiny_model("rope").save(path)
    out = tmp_path / "attn.png"
    assert main(["plot", "attention", str(path), "--text", "hello", "--out", str(out)]) == 0
    assert_png(out)


def test_cli_errors(tmp_path, capsys):
    assert main(["plot", "waves", "ropee", "--out", str(tmp_path / "x.png")]) == 1
    assert "unknown encoding 'ropee'" in capsys.readouterr().err
    assert main(["plot", "waves", "rope", "--out", str(tmp_path / "no" / "x.png")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["plot", "bias", "rope", "--out", str(tmp_path / "x.png")]) == 1
    assert "adds no attention bias" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["plot", "nonsense", "rope", "--out", str(tmp_path / "x.png")])
    assert exc.value.code == 2
