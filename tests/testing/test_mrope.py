"""check_mrope: posenc's M-RoPE and an independent blocked / interleaved implementation pass; each M-RoPE bug is
named (blocked vs interleaved sections, layout, height/width swapped, image coordinates ignored, off-by-one)."""

from __future__ import annotations

import pytest
import torch

from posenc import get_encoding
from posenc.testing import check_mrope

QWEN2 = {"head_dim": 32, "rope_theta": 1e6, "mrope_section": [4, 6, 6]}
QWEN3 = {"head_dim": 32, "rope_theta": 5e6, "mrope_section": [6, 5, 5], "mrope_interleaved": True}


def make_mrope(section, base, *, interleaved=False, layout="half", hw_swapped=False, text_only=False, shift=0):
    """An M-RoPE written as Qwen2-VL / Qwen3-VL's HF code does it: per-axis angles, then sections recombined."""
    d = 2 * sum(section)

    def fn(q, k, coords):
        inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        c = coords + shift
        if hw_swapped:
            c = c[..., [0, 2, 1]]
        if text_only:
            c = c[..., [0, 0, 0]]
        freqs = c.permute(2, 0, 1).double()[..., None] * inv  # (3, B, T, F)
        if interleaved:
            out = freqs[0].clone()
            for axis in (1, 2):
                out[..., axis:3 * section[axis]:3] = freqs[axis, ..., axis:3 * section[axis]:3]
        else:
            out = torch.cat([m[i % 3] for i, m in enumerate(freqs.split(list(section), dim=-1))], dim=-1)
        cos, sin = out.cos().float()[:, None], out.sin().float()[:, None]  # (B, 1, T, F)

        def rot(x):
            xf = x.float()
            if layout == "half":
                x1, x2 = xf.chunk(2, -1)
                return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1).to(x.dtype)
            x1, x2 = xf[..., 0::2], xf[..., 1::2]
            return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1).flatten(-2).to(x.dtype)

        return rot(q), rot(k)

    return fn


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_posenc_mrope_passes(layout):
    pe = get_encoding("mrope", dim=4 * 32, n_heads=4, base=1e6, layout=layout, mrope_section=[4, 6, 6])
    assert check_mrope(lambda q, k, c: pe.rotate(q, k, c, c), QWEN2, layout=layout).passed


@pytest.mark.parametrize("cfg", [QWEN2, QWEN3], ids=["blocked", "interleaved"])
def test_an_independent_implementation_passes(cfg):
    fn = make_mrope(cfg["mrope_section"], cfg["rope_theta"], interleaved=cfg.get("mrope_interleaved", False))
    result = check_mrope(fn, cfg)
    assert result.passed, result.table()


BUGS = [
    ("sections_order", QWEN3, {"interleaved": False}, ["blocked sections", "mrope_interleaved=True"]),
    ("sections_order", QWEN2, {"interleaved": True}, ["interleaved sections", "Qwen3-VL"]),
    ("layout", QWEN2, {"layout": "interleaved"}, ["interleaved pairs"]),
    ("height_width_swapped", QWEN2, {"hw_swapped": True}, ["height and width"]),
    ("text_only", QWEN3, {"interleaved": True, "text_only": True}, ["ignore the image coordinates"]),
    ("offset_plus_one", QWEN2, {"shift": 1}, ["shifted by +1"]),
    ("offset_minus_one", QWEN3, {"interleaved": True, "shift": -1}, ["shifted by -1"]),
    ("wrong_base", QWEN2, {}, ["base 10000"]),
]


@pytest.mark.parametrize(("name", "cfg", "bug", "words"), BUGS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BUGS)])
def test_each_mrope_bug_is_named(name, cfg, bug, words):
    base = 10000.0 if name == "wrong_base" else cfg["rope_theta"]
    fn = make_mrope(cfg["mrope_section"], base, **{"interleaved": cfg.get("mrope_interleaved", False), **bug})
    result = check_mrope(fn, cfg, dtypes=("float32",))
    assert not result.conforms and result.finding.hypothesis == name, result.diagnosis
    assert all(word in result.diagnosis for word in words), result.diagnosis


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.given(section=st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(0, 8)).filter(
    lambda s: sum(s) > 0), interleaved=st.booleans(), layout=st.sampled_from(["half", "interleaved"]),
    base=st.sampled_from([100.0, 10000.0, 1e6]))
def test_fuzz_a_correct_mrope_is_never_flagged(section, interleaved, layout, base):
    cfg = {"head_dim": 2 * sum(section), "rope_theta": base, "mrope_section": list(section),
           "mrope_interleaved": interleaved}
    fn = make_mrope(section, base, interleaved=interleaved, layout=layout)
    assert check_mrope(fn, cfg, layout=layout, dtypes=("float32",)).passed


def test_an_mrope_right_only_on_contiguous_inputs_names_the_memory_layout():
    good = make_mrope(QWEN2["mrope_section"], QWEN2["rope_theta"])

    def assumes_contiguous(q, k, coords):  # reads the storage as if q/k were contiguous (B, H, T, D)
        def read(x):
            return x.as_strided(x.shape, torch.empty(x.shape).stride(), x.storage_offset())
        return good(read(q), read(k), coords)

    result = check_mrope(assumes_contiguous, QWEN2)
    assert {c.memory for c in result.cases if c.status != "pass"} == {"transposed", "fused"}, result.table()
    assert result.finding.hypothesis == "memory_layout" and "transposed" in result.diagnosis


@pytest.mark.parametrize(("config", "kwargs", "error", "words"), [
    ({**QWEN2, "mrope_interleaved": "false"}, {}, TypeError, ["mrope_interleaved must be true or false"]),
    ({**QWEN2, "rope_theta": "1e6"}, {}, TypeError, ["rope_theta must be a number"]),
    ({**QWEN2, "mrope_section": ["4", 6, 6]}, {}, TypeError, ["mrope_section must be a list of three ints"]),
    ({**QWEN2, "mrope_section": [4, 6, 5]}, {}, ValueError, ["summing to head_dim / 2 = 16"]),
    (QWEN2, {"dtypes": ("float8",)}, ValueError, ["'float8'"]),
    (QWEN2, {"max_position": "1e6"}, TypeError, ["max_position must be an int"]),
    (QWEN2, {"seed": 1.5}, TypeError, ["seed must be an int"]),
])
def test_bad_mrope_arguments_raise_clearly(config, kwargs, error, words):
    calls = []
    good = make_mrope(QWEN2["mrope_section"], QWEN2["rope_theta"])

    def spy(q, k, coords):
        calls.append(coords)
        return good(q, k, coords)

    with pytest.raises(error) as info:
        check_mrope(spy, config, **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert not calls
    with pytest.raises(TypeError, match="callable"):
        check_mrope("not a function", QWEN2)


@pytest.mark.parametrize("model_type", ["ernie4_5_vl_moe_text", "openpangu_vl_text", "bailing_moe_v3_vl",
                                        "hunyuan_vl_text"])
def test_a_family_with_its_own_layout_is_refused_not_misjudged(model_type):
    """Ernie-4.5-VL, openPangu, Bailing and Hunyuan-VL read mrope_section their own way: a Qwen reference would
    call a correct implementation wrong (or a wrong one right)."""
    from posenc.testing.mrope import mrope_spec

    config = {"model_type": model_type, "head_dim": 16, "rope_theta": 1e4,
              "rope_parameters": {"mrope_section": [2, 3, 3], "mrope_interleaved": True}}
    with pytest.raises(ValueError, match="model_type .* lays its M-RoPE pairs out its own way"):
        mrope_spec(config)
    assert mrope_spec({**config, "model_type": "qwen3_vl_text"}).interleaved  # the Qwen families still pass
