"""Blind diagnosis (posenc.testing.estimate): planted bugs whose exact parameters no listed hypothesis has are named
by the estimate with their measured value; a correct implementation gives the estimate nothing to say.

Each planted candidate is written here, independently of the kit's reference: ``planted`` rotates any list of
channel pairs at any frequencies, with optional scales, offset and direction per tensor.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from posenc.testing import check_rope
from posenc.testing.estimate import explain_rope
from posenc.testing.rope import rope_spec

sys.path.insert(0, str(Path(__file__).parent))
from test_rope import make_rope  # noqa: E402 - the independent candidate with optional bugs

D = 32
CONFIG = {"rope_type": "default", "rope_theta": 10000.0, "head_dim": D}
FAST = {"dtypes": ("float32",), "max_position": 131071}


def inv_freq(base: float = 10000.0, width: int = D) -> torch.Tensor:
    return base ** (-torch.arange(0, width, 2, dtype=torch.float64) / width)


def half_pairs(width: int = D, start: int = 0) -> list[tuple[int, int]]:
    return [(start + i, start + i + width // 2) for i in range(width // 2)]


def planted(pairs, freqs, *, q_scale=1.0, k_scale=1.0, k_sign=1, shift=0, angle_dtype=torch.float64):
    """``fn(q, k, positions)`` rotating channel ``a`` with ``b`` for each ``(a, b)`` of ``pairs`` by
    ``(p + shift) * freqs[i]`` (float64 angles unless ``angle_dtype``), scaled by ``q_scale`` / ``k_scale``."""
    a = torch.tensor([p[0] for p in pairs])
    b = torch.tensor([p[1] for p in pairs])

    def rot(x, pos, scale, sign):
        ang = (pos + shift).to(angle_dtype)[..., None] * (sign * freqs).to(angle_dtype)  # (T, F) / (B, T, F)
        ang = ang.double()
        cos, sin = ang.cos() * scale, ang.sin() * scale
        if cos.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, F)
        xf = x.double()
        out = xf.clone()
        out[..., a] = xf[..., a] * cos - xf[..., b] * sin
        out[..., b] = xf[..., b] * cos + xf[..., a] * sin
        return out.to(x.dtype)

    def fn(q, k, pos):
        return rot(q, pos, q_scale, 1), rot(k, pos, k_scale, k_sign)
    return fn


YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 4096,
        "head_dim": D}
f = inv_freq()
odd_pair = f.clone()
odd_pair[5] *= 2.0
# name -> (candidate, configuration it is checked against, words the diagnosis must hold: the measured values)
PLANTED = {
    "base-500000": (planted(half_pairs(), inv_freq(500000.0)), CONFIG,
                    ["your frequencies are those of base 500000: the configuration says 10000"]),
    "base-12345": (planted(half_pairs(), inv_freq(12345.0)), CONFIG, ["base 12345: the configuration says 10000"]),
    "offset-plus-2": (planted(half_pairs(), f, shift=2), CONFIG, ["positions are shifted by +2"]),
    "offset-minus-3": (planted(half_pairs(), f, shift=-3), CONFIG, ["positions are shifted by -3"]),
    "rotary-dim-16": (planted(half_pairs(16), inv_freq(width=16)), CONFIG,
                      ["pairs 8–15 are not rotated (channels 16–31 pass through): rotary_dim 16 where the "
                       "configuration implies 32"]),
    "exponent-over-48": (planted(half_pairs(), inv_freq(width=48)[:16]), CONFIG,
                         ["base 464.159", "base 10000 with the exponent over d = 48"]),
    "linear-factor-3": (planted(half_pairs(), f / 3), CONFIG, ["all your frequencies are 0.333333 times"]),
    "q-scaled-1.13": (planted(half_pairs(), f, q_scale=1.13), CONFIG, ["cos/sin scaled by 1.13 on q only"]),
    "both-scaled-0.8": (planted(half_pairs(), f, q_scale=0.8, k_scale=0.8), CONFIG,
                        ["cos/sin scaled by 0.8 on q and k"]),
    "one-pair-doubled": (planted(half_pairs(), odd_pair), CONFIG,
                         ["frequencies of pair(s) 5 differ", "yours / its = 2 .. 2", "the other 15 match"]),
    "k-reversed": (planted(half_pairs(), f, k_sign=-1), CONFIG,
                   ["every pair rotates the other way (angle -p * theta: sin with the wrong sign) (k only)"]),
    "stride-8-pairs": (planted([(i + 8 * (i // 8), i + 8 + 8 * (i // 8)) for i in range(16)], f), CONFIG,
                       ["your channels pair as (0, 8), (1, 9), (2, 10), ..., (23, 31): neither half nor interleaved"]),
    "bf16-angles-and-base-20000": (planted(half_pairs(), inv_freq(20000.0), angle_dtype=torch.bfloat16), CONFIG,
                                   ["base about 2e+04", "your angles are formed in bfloat16"]),
    "interleaved-and-offset-1": (planted([(2 * i, 2 * i + 1) for i in range(16)], f, shift=1), CONFIG,
                                 ["your pairs are interleaved", "positions are shifted by +1"]),
    "yarn-factor-3-for-4": (make_rope({**YARN, "factor": 3.0}), YARN,
                            ["frequencies of pair(s)", "differ from the configuration's", "cos/sin scaled by"]),
    "default-for-yarn-with-base-20000": (planted(half_pairs(), inv_freq(20000.0)), YARN,
                                         ["base 20000: a plain geometric series, where the configuration's 'yarn'"]),
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_each_planted_bug_is_named_by_the_estimate_with_its_value(name):
    candidate, config, words = PLANTED[name]
    result = check_rope(candidate, config, **FAST)
    assert not result.conforms
    assert result.finding.hypothesis == "estimate", result.diagnosis  # no listed hypothesis explains it
    for w in words:
        assert w in result.diagnosis, result.diagnosis
    assert result.estimate is not None and result.to_dict()["estimate"]["q"]["pairs"]


def test_the_estimate_measures_what_it_reports():
    words, est = explain_rope(planted(half_pairs(), inv_freq(500000.0), shift=2, q_scale=1.13), rope_spec(CONFIG))
    want = inv_freq(500000.0)
    assert torch.allclose(torch.tensor(est.q.freqs, dtype=torch.float64), want, rtol=1e-5, atol=1e-9)
    assert est.q.offset == 2 and est.k.offset == 2
    assert abs(est.q.scales[0] - 1.13) < 1e-5 and abs(est.k.scales[0] - 1.0) < 1e-5
    assert est.q.pairs == half_pairs() and not est.q.passthrough
    assert len(words) == 3, words


def normalises(q, k, pos):  # not linear: no rotation of pairs explains it
    qo, ko = make_rope(CONFIG)(q, k, pos)
    return qo / qo.norm(dim=-1, keepdim=True).clamp_min(1e-6), ko


def mixes(q, k, pos):  # a rotation after a fixed mixing of three channels
    qo, ko = make_rope(CONFIG)(q, k, pos)
    qo = qo.clone()
    qo[..., 0] = qo[..., 0] + 0.5 * qo[..., 1] + 0.5 * qo[..., 2]
    return qo, ko


def first_row(q, k, pos):
    return make_rope(CONFIG)(q, k, pos[0] if pos.dim() == 2 else pos)


@pytest.mark.parametrize(("fn", "words"), [
    (normalises, "the estimate cannot describe your implementation: its output is not a linear map"),
    (mixes, "the estimate cannot describe your implementation: channel 1 mixes with channels [0, 17]"),
    (first_row, "every row is rotated at row 0's positions"),
], ids=["not-linear", "mixing", "batch-row-0"])
def test_the_estimate_says_when_it_cannot_describe_the_candidate(fn, words):
    result = check_rope(fn, CONFIG, **FAST)
    assert not result.conforms and words in result.diagnosis, result.diagnosis


def test_the_listed_hypotheses_stay_the_fast_path():
    result = check_rope(planted(half_pairs(), f, shift=1), CONFIG, **FAST)
    assert result.finding.hypothesis == "offset_plus_one" and result.estimate is None


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(
    rope_type=st.sampled_from(["default", "linear", "ntk", "dynamic", "yarn", "llama3"]),
    layout=st.sampled_from(["half", "interleaved"]),
    head_dim=st.sampled_from([8, 16, 24, 64]),
    fraction=st.sampled_from([1.0, 0.5, 0.25]),
    log_base=st.floats(math.log(100.0), math.log(1e7)),
    factor=st.floats(1.0, 16.0),
    angle_dtype=st.sampled_from([torch.float64, torch.float32]),
    memory=st.sampled_from(["contiguous", "transposed", "fused", "aliased"]),
)
def test_fuzz_the_estimate_finds_nothing_in_a_correct_implementation(rope_type, layout, head_dim, fraction, log_base,
                                                                     factor, angle_dtype, memory):
    if int(head_dim * fraction) % 2 or (rope_type in ("ntk", "dynamic") and int(head_dim * fraction) <= 2):
        return
    cfg = {"rope_type": rope_type, "rope_theta": math.exp(log_base), "head_dim": head_dim,
           "partial_rotary_factor": fraction, "max_position_embeddings": 2048}
    if rope_type != "default":
        cfg.update(factor=factor, original_max_position_embeddings=2048)
    if rope_type == "dynamic":
        cfg.pop("original_max_position_embeddings")
    from posenc.testing.rope import arrange
    fn = make_rope(cfg, layout=layout, angle_dtype=angle_dtype)

    def laid_out(q, k, pos):  # the probe's q/k handed over in a caller's memory layout
        q2, k2 = arrange(q, q if memory == "aliased" else k, memory) if memory != "fused" else arrange(q, k, memory)
        return fn(q2, k2, pos)

    words, _ = explain_rope(laid_out, rope_spec(cfg, layout=layout))
    assert words == [], words


def test_a_candidate_that_breaks_only_on_the_estimates_probe_is_reported_not_a_crash():
    wrong = planted(half_pairs(), inv_freq(500000.0))

    def picky(q, k, pos):  # the kit's matrix has 4 heads; the estimate's probe has D
        if q.shape[1] > 8:
            return [q.tolist()], k
        return wrong(q, k, pos)

    result = check_rope(picky, CONFIG, **FAST)
    assert result.finding.hypothesis == "unexplained"
    assert "returned something other than (q, k) tensors" in result.diagnosis, result.diagnosis


def test_the_cli_prints_the_estimate_and_exits_1(tmp_path, monkeypatch, capsys):
    import json

    from posenc.cli import main

    (tmp_path / "base_rope.py").write_text(
        "import torch\n"
        "def rope(q, k, pos):\n"
        "    d = q.shape[-1]\n"
        "    inv = 500000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)\n"
        "    ang = pos.double()[..., None] * inv\n"
        "    cos, sin = torch.cat((ang.cos(), ang.cos()), -1), torch.cat((ang.sin(), ang.sin()), -1)\n"
        "    if cos.dim() == 3:\n"
        "        cos, sin = cos[:, None], sin[:, None]\n"
        "    def rot(x):\n"
        "        x1, x2 = x.double().chunk(2, -1)\n"
        "        return (x.double() * cos + torch.cat((-x2, x1), -1) * sin).to(x.dtype)\n"
        "    return rot(q), rot(k)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("base_rope", None)
    assert main(["conform", "base_rope:rope", "--config", json.dumps(CONFIG), "--dtypes", "float32",
                 "--max-position", "4096", "--json", "--timeout", "0"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["finding"]["hypothesis"] == "estimate"
    assert "your frequencies are those of base 500000: the configuration says 10000" in data["diagnosis"]
    assert len(data["estimate"]["q"]["freqs"]) == D // 2 and data["estimate"]["q"]["offset"] == 0


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
    log_base=st.floats(math.log(50.0), math.log(1e7)),
    shift=st.integers(-200, 200),
    q_scale=st.floats(0.25, 4.0),
    k_scale=st.floats(0.25, 4.0),
    width=st.sampled_from([8, 16, 24, 32]),
    interleaved=st.booleans(),
)
def test_fuzz_the_estimate_measures_planted_parameters(log_base, shift, q_scale, k_scale, width, interleaved):
    base = math.exp(log_base)
    pairs = [(2 * i, 2 * i + 1) for i in range(width // 2)] if interleaved else half_pairs(width)
    fn = planted(pairs, inv_freq(base, width), shift=shift, q_scale=q_scale, k_scale=k_scale)
    words, est = explain_rope(fn, rope_spec(CONFIG))
    want = inv_freq(base, width)
    # frequencies: the angle per step is measured to ~1e-7 rad over 2^15 steps; slow pairs that turn < 1e-3 rad over
    # the probe count as pass-through (nothing to measure)
    turning = [i for i, w in enumerate(want.tolist()) if w * 32768 > 2e-3]
    got = dict(zip(est.q.pairs, est.q.freqs))
    for i in turning:
        assert abs(got[pairs[i]] - float(want[i])) <= 1e-6 * float(want[i]) + 1e-9, (i, got[pairs[i]], want[i])
    assert est.q.offset == shift and est.k.offset == shift
    assert abs(est.q.scales[0] - q_scale) <= 1e-5 * q_scale and abs(est.k.scales[0] - k_scale) <= 1e-5 * k_scale
    assert words  # something differs from the configuration (base 10000 over 32 channels, no offset, scale 1)
