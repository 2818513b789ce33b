"""check_rope: a correct RoPE passes for every scaling and layout; each known bug is named by its own diagnosis.

The candidates here are written independently of the kit's reference (their own rotate_half / interleaved
rotation, angles in a chosen dtype); only the frequencies of the scalings come from ``posenc.rope_scaling``.
"""

from __future__ import annotations

import math

import pytest
import torch

from posenc import get_encoding
from posenc.rope_scaling import SCALING_METHODS, resolve_scaling, scaled_inv_freq
from posenc.testing import check_rope

YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 4096,
        "head_dim": 32}
FAST = {"dtypes": ("float32",)}  # the bugs show in float32; the full dtype matrix runs in the correct-candidate tests


def make_rope(config: dict, *, layout: str = "half", angle_dtype: torch.dtype = torch.float64, q_power: int = 1,
              k_power: int = 1, shift: int = 0, sign: int = 1, base: float | None = None,
              rope_type: str | None = None, partial: str = "slice", freq_dim: int | None = None,
              truncate: bool | None = None, swap_cos_sin: bool = False):
    """A RoPE ``fn(q, k, positions)`` for ``config`` with optional, deliberate bugs."""
    d = config["head_dim"]
    r = int(d * config.get("partial_rotary_factor", 1.0))
    theta = base if base is not None else config.get("rope_theta", 10000.0)
    kind = rope_type or config.get("rope_type", "default")
    params = {key: v for key, v in config.items() if key in SCALING_METHODS[kind].params}
    if kind == "dynamic":
        params.setdefault("original_max_position_embeddings", config.get("max_position_embeddings", 4096))
    if truncate is not None:
        params["truncate"] = truncate
    scaling = resolve_scaling({"rope_type": kind, **params}, max_seq_len=params.get(
        "original_max_position_embeddings", 4096))
    width = r if partial in ("slice", "last", "pairs") else d
    fdim = freq_dim or width

    def fn(q, k, pos):
        seq_len = int(pos.max()) + 1 if pos.numel() else 1  # an empty sequence (T = 0) is in the matrix
        inv, scale = scaled_inv_freq(fdim, theta, scaling, seq_len=seq_len)
        inv = inv[: width // 2]
        ang = (pos + shift).to(angle_dtype)[..., None] * (sign * inv).to(angle_dtype)  # (T, F) or (B, T, F)
        cos, sin = ang.double().cos().float(), ang.double().sin().float()
        if swap_cos_sin:
            cos, sin = sin, cos
        if cos.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, F)

        def rot(x, power):
            xf = x.float()
            c, s = cos * scale ** power, sin * scale ** power
            if partial == "pairs":  # rotate_half over the whole head
                h, f = d // 2, width // 2
                out = xf.clone()
                x1, x2 = xf[..., :f], xf[..., h:h + f]
                out[..., :f], out[..., h:h + f] = x1 * c - x2 * s, x2 * c + x1 * s
                return out.to(x.dtype)
            lo = d - width if partial == "last" else 0
            xr = xf[..., lo:lo + width]
            if layout == "half":
                x1, x2 = xr.chunk(2, dim=-1)
                out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
            else:
                x1, x2 = xr[..., 0::2], xr[..., 1::2]
                out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
            return torch.cat((xf[..., :lo], out, xf[..., lo + width:]), dim=-1).to(x.dtype)

        return rot(q, q_power), rot(k, k_power)

    return fn


LONGROPE = {"rope_type": "longrope", "head_dim": 16, "original_max_position_embeddings": 256, "factor": 8.0,
            "short_factor": [1.0 + 0.1 * i for i in range(8)], "long_factor": [2.0 + 0.5 * i for i in range(8)]}
CONFIGS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0, "head_dim": 32},
    "default-partial": {"rope_type": "default", "rope_theta": 500000.0, "head_dim": 32, "partial_rotary_factor": 0.5},
    "linear": {"rope_type": "linear", "factor": 4.0, "head_dim": 32},
    "ntk": {"rope_type": "ntk", "factor": 4.0, "head_dim": 32},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0, "head_dim": 32, "max_position_embeddings": 1024},
    "yarn": YARN,
    "yarn-partial": {**YARN, "rope_theta": 1e6, "partial_rotary_factor": 0.25, "head_dim": 64},
    "longrope": LONGROPE,
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "original_max_position_embeddings": 8192,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0, "head_dim": 32},
}


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_correct_implementation_passes_every_scaling_and_layout(name, layout):
    result = check_rope(make_rope(CONFIGS[name], layout=layout), CONFIGS[name], layout=layout)
    assert result.passed, result.table()
    assert result.diagnosis is None and result.conforms and result.verdict == "pass"
    assert {c.name for c in result.cases} >= {"prefill", "offset", "decode", "batch", "gqa", "long-999999",
                                              "prefill-bfloat16", "prefill-float16"}


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_posenc_rope_itself_passes(layout):
    cfg = CONFIGS["yarn-partial"]
    pe = get_encoding("rope", dim=4 * 64, n_heads=4, max_seq_len=4096, base=1e6, layout=layout, rotary_dim=16,
                      scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096})
    assert check_rope(pe, cfg, layout=layout).passed


# (name, config, bug options, layout the kit is told, words the diagnosis must contain)
BUGS = [
    ("layout", CONFIGS["default"], {"layout": "interleaved"}, "half", ["interleaved pairs", "expects half"]),
    ("layout", CONFIGS["default"], {"layout": "half"}, "interleaved", ["half pairs", "expects interleaved"]),
    ("layout", CONFIGS["default-partial"], {"layout": "interleaved"}, "half", ["inside the 16 rotary channels"]),
    ("partial_ignored", CONFIGS["default-partial"], {"partial": "full"}, "half", ["rotates all 32 channels"]),
    ("partial_last", CONFIGS["default-partial"], {"partial": "last"}, "half", ["last 16 channels"]),
    ("partial_pairs", CONFIGS["default-partial"], {"partial": "pairs"}, "half", ["i + 16", "(i, i + 8)"]),
    ("partial_frequencies", CONFIGS["default-partial"], {"freq_dim": 32}, "half", ["base^(-2i/32)"]),
    ("attention_factor_missing", YARN, {"q_power": 0, "k_power": 0}, "half", ["missing", "1.13863"]),
    ("attention_factor_doubled", YARN, {"q_power": 2, "k_power": 2}, "half", ["doubled"]),
    ("attention_factor_q_only", YARN, {"k_power": 0}, "half", ["queries carry", "keys do not"]),
    ("attention_factor_k_only", YARN, {"q_power": 0}, "half", ["keys carry", "queries do not"]),
    ("mscale_wrong_side", YARN, {"q_power": 2, "k_power": 0}, "half", ["wrong side", "logits agree"]),
    ("offset_plus_one", CONFIGS["default"], {"shift": 1}, "half", ["shifted by +1"]),
    ("offset_minus_one", CONFIGS["default"], {"shift": -1}, "half", ["shifted by -1"]),
    ("rotation_reversed", CONFIGS["default"], {"sign": -1}, "half", ["-p * theta"]),
    ("wrong_base", CONFIGS["default-partial"], {"base": 10000.0}, "half", ["base 10000", "rope_theta is 500000"]),
    ("scaling_ignored", YARN, {"rope_type": "default"}, "half", ["plain RoPE", "'yarn'", "ignored"]),
    ("scaling_ignored", CONFIGS["llama3"], {"rope_type": "default"}, "half", ["'llama3'", "fallback"]),
    ("scaling_linear", CONFIGS["ntk"], {"rope_type": "linear"}, "half", ["'linear'", "NTK vs linear"]),
    ("scaling_ntk", CONFIGS["linear"], {"rope_type": "ntk"}, "half", ["'ntk'", "NTK vs linear"]),
    ("scaling_ntk", CONFIGS["dynamic"], {"rope_type": "ntk"}, "half", ["static vs dynamic"]),
    ("scaling_dynamic", CONFIGS["ntk"], {"rope_type": "dynamic"}, "half", ["'dynamic'", "static vs dynamic"]),
    ("scaling_linear", CONFIGS["llama3"], {"rope_type": "linear"}, "half", ["'linear'", "asks for 'llama3'"]),
    ("attention_factor_missing", CONFIGS["longrope"], {"q_power": 0, "k_power": 0}, "half", ["longrope"]),
    ("yarn_truncate", YARN, {"truncate": False}, "half", ["truncate=False"]),
]


@pytest.mark.parametrize(("name", "config", "bug", "layout", "words"), BUGS,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BUGS)])
def test_each_bug_is_named(name, config, bug, layout, words):
    result = check_rope(make_rope(config, **bug), config, layout=layout, **FAST)
    assert not result.passed and not result.conforms
    assert result.finding.hypothesis == name, result.diagnosis
    assert result.finding.severity == "bug"
    for word in words:
        assert word in result.diagnosis, result.diagnosis
    assert "worst input" in result.diagnosis and result.finding.worst["error"] > 0
    assert any(c.status == "fail" and c.worst for c in result.cases)


def test_a_bug_with_float32_angles_is_still_named():
    """Ports often have a bug *and* HF-style float32 angles; the bug is named and the angles mentioned."""
    result = check_rope(make_rope(YARN, q_power=0, k_power=0, angle_dtype=torch.float32), YARN, **FAST)
    assert result.finding.hypothesis == "attention_factor_missing"
    assert "and angles formed in float32" in result.diagnosis


def test_float32_angles_are_a_precision_limit_not_a_bug():
    cfg = CONFIGS["default"]
    result = check_rope(make_rope(cfg, angle_dtype=torch.float32), cfg)
    assert not result.passed and result.conforms and result.verdict == "precision"
    assert result.finding.hypothesis == "angles_float32" and result.finding.severity == "precision"
    assert "angles formed in float32" in result.diagnosis and "case 'long-999999'" in result.diagnosis
    assert 1_000_000 - 16 <= result.finding.worst["position"] < 1_000_000  # the worst error sits at ~10^6
    long = next(c for c in result.cases if c.name == "long-999999")
    assert long.status == "precision" and 1e-3 < long.error < 0.5
    assert next(c for c in result.cases if c.name == "prefill").status == "pass"  # tiny angles round exactly


@pytest.mark.parametrize(("dtype", "name"), [(torch.bfloat16, "angles_bfloat16"), (torch.float16, "angles_float16")])
def test_half_precision_angles_are_a_bug(dtype, name):
    cfg = CONFIGS["default"]
    result = check_rope(make_rope(cfg, angle_dtype=dtype), cfg, max_position=4096, **FAST)
    assert not result.conforms and result.finding.hypothesis == name, result.diagnosis


def test_a_candidate_that_raises_is_reported_per_case():
    cfg = CONFIGS["default"]
    good = make_rope(cfg)

    def no_batch_positions(q, k, pos):
        if pos.dim() == 2:
            raise ValueError("positions must be 1-D")
        return good(q, k, pos)

    result = check_rope(no_batch_positions, cfg, **FAST)
    assert [c.name for c in result.cases if c.status == "error"] == ["batch", "batch-transposed"]
    assert result.finding.hypothesis == "raised" and "positions must be 1-D" in result.diagnosis
    assert check_rope(no_batch_positions, cfg, batch_positions=False, **FAST).passed


def test_wrong_shapes_and_dtypes_are_errors():
    cfg = CONFIGS["default"]
    good = make_rope(cfg)
    result = check_rope(lambda q, k, p: tuple(t.float() for t in good(q, k, p)), cfg, dtypes=("bfloat16",))
    assert "returned q in float32 for bfloat16 input" in result.diagnosis


def test_an_unlisted_bug_is_named_by_the_estimate_with_the_worst_input():
    cfg = CONFIGS["default"]
    result = check_rope(make_rope(cfg, swap_cos_sin=True), cfg, **FAST)
    assert result.finding.hypothesis == "estimate"  # no listed hypothesis: the blind estimate names it
    assert "constant phase of +90° (cos and sin swapped" in result.diagnosis, result.diagnosis
    assert "every pair rotates the other way" in result.diagnosis and "at position" in result.diagnosis


def test_result_serialises_and_prints():
    import json
    cfg = CONFIGS["default"]
    result = check_rope(make_rope(cfg, shift=1), cfg, target="mine", **FAST)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["verdict"] == "fail" and data["finding"]["hypothesis"] == "offset_plus_one"
    assert len(data["cases"]) == len(result.cases) and data["cases"][0]["status"] == "fail"
    table = result.table()
    assert "prefill" in table and "rope mine: fail - your output equals" in table


def test_bad_configs_raise_clearly():
    with pytest.raises(ValueError, match="head_dim"):
        check_rope(make_rope(CONFIGS["default"]), {"rope_type": "default"})
    with pytest.raises(ValueError, match="unknown rope_type"):
        check_rope(make_rope(CONFIGS["default"]), {"rope_type": "nope", "head_dim": 32})
    with pytest.raises(ValueError, match="factor"):
        check_rope(make_rope(CONFIGS["default"]), {"rope_type": "linear", "factor": 0.5, "head_dim": 32})


@pytest.mark.parametrize(("config", "kwargs", "error", "words"), [
    ({"head_dim": 32}, {"dtypes": ("float8",)}, ValueError, ["dtypes[0] = 'float8'", "float32"]),  # was KeyError
    ({"head_dim": 32}, {"dtypes": "float32"}, TypeError, ["dtypes must be a non-empty list"]),  # was KeyError 'f'
    ({"head_dim": 32}, {"dtypes": ()}, TypeError, ["non-empty"]),
    ({"head_dim": 32}, {"dtypes": (torch.int64,)}, ValueError, ["dtypes[0]"]),
    ({"head_dim": 32, "rope_theta": "abc"}, {}, TypeError, ["rope_theta must be a number", "'abc'"]),
    ({"head_dim": 32, "rope_theta": "10000"}, {}, TypeError, ["rope_theta must be a number"]),  # was accepted
    ({"head_dim": 32, "rope_theta": 0.5}, {}, ValueError, ["rope_theta", "> 1"]),
    ({"head_dim": "32"}, {}, TypeError, ["head_dim must be an int"]),
    ({"head_dim": 32, "partial_rotary_factor": "0.5"}, {}, TypeError, ["partial_rotary_factor must be a number"]),
    ('{"head_dim": 32}', {}, TypeError, ["must be a dict", "json.loads"]),
    ({"head_dim": 32}, {"max_position": -5}, ValueError, ["max_position must be an int >= 1"]),
    ({"head_dim": 32}, {"max_position": 1e6}, TypeError, ["max_position must be an int"]),
    ({"head_dim": 32}, {"cases": [1, 2]}, TypeError, ["cases must be a list of RopeCase"]),  # was AttributeError
    ({"head_dim": 32}, {"cases": []}, ValueError, ["cases is empty"]),
    ({"head_dim": 32}, {"seed": "x"}, TypeError, ["seed must be an int"]),  # was a TypeError from str + int
    ({"head_dim": 32}, {"gqa": "no"}, TypeError, ["gqa must be true or false"]),
    ({"head_dim": 32}, {"target": 3}, TypeError, ["target"]),
])
def test_bad_rope_arguments_raise_clearly_before_anything_runs(config, kwargs, error, words):
    calls = []
    good = make_rope(CONFIGS["default"])

    def spy(q, k, pos):
        calls.append(pos)
        return good(q, k, pos)

    with pytest.raises(error) as info:
        check_rope(spy, config, **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert not calls


def _tables(positions):
    pos = torch.tensor([float(p) for p in positions], dtype=torch.float64)
    ang = pos[:, None] * 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    emb = torch.cat((ang, ang), -1)
    return {"config": {"head_dim": 16}, "positions": positions, "cos": emb.cos().tolist(), "sin": emb.sin().tolist()}


def test_tables_with_fractional_positions_are_refused_not_truncated():
    from posenc.testing.rope import check_rope_tables

    assert check_rope_tables(_tables(list(range(40)))).passed
    assert check_rope_tables(_tables([float(p) for p in range(40)])).passed  # integral floats (numpy's tolist)
    with pytest.raises(ValueError, match=r"positions\[3\] = 2.5 is fractional"):
        check_rope_tables(_tables([0, 1, 2, 2.5, 4, 5]))  # was silently read as position 2
    with pytest.raises(TypeError, match=r"positions\[1\] = '1' is not an integer"):
        check_rope_tables({**_tables([0, 1]), "positions": [0, "1"]})
    with pytest.raises(TypeError, match="'cos' must be a list of rows of numbers"):
        check_rope_tables({**_tables([0, 1]), "cos": [["a"], ["b"]]})
    with pytest.raises(TypeError, match="must be an object"):
        check_rope_tables([1, 2])


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.given(
    rope_type=st.sampled_from(["default", "linear", "ntk", "dynamic", "yarn", "llama3"]),
    layout=st.sampled_from(["half", "interleaved"]),
    head_dim=st.sampled_from([8, 16, 24, 64]),
    fraction=st.sampled_from([1.0, 0.5, 0.25]),
    log_base=st.floats(math.log(100.0), math.log(1e7)),
    factor=st.floats(1.0, 16.0),
    angle_dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_fuzz_a_correct_implementation_is_never_flagged_as_a_bug(rope_type, layout, head_dim, fraction, log_base,
                                                                  factor, angle_dtype):
    if int(head_dim * fraction) % 2 or (rope_type in ("ntk", "dynamic") and int(head_dim * fraction) <= 2):
        return
    cfg = {"rope_type": rope_type, "rope_theta": math.exp(log_base), "head_dim": head_dim,
           "partial_rotary_factor": fraction, "max_position_embeddings": 2048}
    if rope_type != "default":
        cfg.update(factor=factor, original_max_position_embeddings=2048)
    if rope_type == "dynamic":
        cfg.pop("original_max_position_embeddings")
    result = check_rope(make_rope(cfg, layout=layout, angle_dtype=angle_dtype), cfg, layout=layout,
                        dtypes=("float32", "bfloat16"))
    if angle_dtype == torch.float64:
        assert result.passed, result.table()
    else:  # HF-style float32 angles: never a bug, at most the long-position precision limit
        assert result.conforms, result.table()


# -- memory layouts: what Hugging Face's attention really passes -------------------------------------------------------
def contiguous_strides(shape):
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def assumes_contiguous(fn):
    """``fn`` behind a kernel-style read that indexes the storage with contiguous strides: right on contiguous q/k,
    wrong on a transposed view (the planted bug of the issue: error ~6 on HF's ``(B, T, H, D)`` views)."""
    def wrapped(q, k, pos):
        def read(x):
            return x.as_strided(x.shape, contiguous_strides(x.shape), x.storage_offset())
        return fn(read(q), read(k), pos)
    return wrapped


def test_arrange_gives_the_same_values_in_each_memory_layout():
    from posenc.testing.rope import arrange

    q, k, k_mha = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 4, 5, 8)
    for memory in ("contiguous", "transposed", "fused", "fused_heads"):
        k_in = k_mha if memory == "fused_heads" else k  # GPT-NeoX's per-head layout has no GQA
        qa, ka = arrange(q, k_in, memory)
        assert torch.equal(qa, q) and torch.equal(ka, k_in)
        assert qa.data_ptr() != q.data_ptr()  # fresh storage: a candidate writing into it cannot spoil the reference
        assert qa.is_contiguous() == (memory == "contiguous")
    qt, _ = arrange(q, k, "transposed")
    assert qt.stride() == (5 * 4 * 8, 8, 4 * 8, 1)  # (B, T, H, D) storage
    qf, kf = arrange(q, k, "fused")
    width = (4 + 2 * 2) * 8
    assert qf.stride() == (5 * width, 8, width, 1) and kf.storage_offset() == 4 * 8
    qh, kh = arrange(q, k_mha, "fused_heads")  # GPT-NeoX: q, k, v side by side in each head
    assert qh.stride() == (5 * 4 * 24, 24, 4 * 24, 1) and kh.storage_offset() == 8
    with pytest.raises(ValueError, match="as many key heads"):
        arrange(q, k, "fused_heads")
    with pytest.raises(ValueError, match="memory layout"):
        arrange(q, k, "strided")


def test_a_rope_right_only_on_contiguous_inputs_fails_and_names_the_layout():
    cfg = CONFIGS["default"]
    result = check_rope(assumes_contiguous(make_rope(cfg)), cfg)
    assert not result.passed and not result.conforms
    assert all(c.status == "pass" for c in result.cases if c.memory == "contiguous"), result.table()
    failed = {c.name: c for c in result.cases if c.status != "pass"}
    assert {"prefill-transposed", "batch-transposed", "gqa-fused", "prefill-transposed-bfloat16"} <= set(failed)
    assert {c.memory for c in failed.values()} == {"transposed", "fused", "fused_heads"}
    assert failed["prefill-transposed"].error > 1.0  # not a rounding matter: the values are read from wrong places
    assert result.finding.hypothesis == "memory_layout" and result.finding.severity == "bug"
    for words in ("right for contiguous q/k", "transposed", "(B, T, H, D) storage", "fused", ".contiguous()"):
        assert words in result.diagnosis, result.diagnosis
    assert "transposed" in result.table() and "memory" in result.table().splitlines()[0]


def test_a_rope_that_raises_on_non_contiguous_inputs_names_the_layout():
    cfg = CONFIGS["default"]
    good = make_rope(cfg)

    def flattens_with_view(q, k, pos):  # .view needs strides that merge: only contiguous q/k have them
        B, H, T, D = q.shape
        return good(q.view(B * H * T, D).view(B, H, T, D), k.view(-1, D).view(k.shape), pos)

    result = check_rope(flattens_with_view, cfg, **FAST)
    errors = {c.memory for c in result.cases if c.status == "error"}
    assert errors == {"transposed", "fused", "fused_heads"}, result.table()
    assert result.finding.hypothesis == "memory_layout" and "raises on q/k in another memory layout" in \
        result.diagnosis and ".reshape" in result.diagnosis


def test_hugging_face_apply_rotary_pos_emb_passes_on_every_layout():
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cfg = CONFIGS["default"]

    def hf_style(q, k, pos):  # HF's rotation on q/k as they come (no copy, no assumption about memory)
        inv = 10000.0 ** (-torch.arange(0, 32, 2, dtype=torch.float64) / 32)
        emb = pos.double()[..., None] * inv  # float64 angles: exact, so the check must pass
        emb = torch.cat((emb, emb), -1)
        cos, sin = emb.cos().float(), emb.sin().float()
        cos, sin = (cos[None], sin[None]) if cos.dim() == 2 else (cos, sin)  # (B or 1, T, D)
        qo, ko = apply_rotary_pos_emb(q.float(), k.float(), cos, sin)
        return qo.to(q.dtype), ko.to(k.dtype)

    result = check_rope(hf_style, cfg)
    assert result.passed, result.table()
    assert {c.memory for c in result.cases} == {"contiguous", "transposed", "fused", "fused_heads", "aliased"}
