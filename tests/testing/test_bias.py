"""check_bias: ALiBi biases and T5 buckets, a correct implementation passes and each bug is named."""

from __future__ import annotations

import math

import pytest
import torch

from posenc import get_encoding
from posenc.testing.bias import check_bias


def paper_slopes(n):
    def pow2(m):
        start = 2 ** (-8 / m)
        return [start ** (i + 1) for i in range(m)]
    p = 2 ** math.floor(math.log2(n))
    return pow2(p) + pow2(2 * p)[0::2][: n - p]


def make_alibi(n, *, symmetric=False, sign=1.0, slopes=None, shift=0, absolute_float32=False):
    m = torch.tensor(slopes or paper_slopes(n), dtype=torch.float64)

    def fn(q_pos, k_pos):
        if absolute_float32:  # -m * i + m * j with the positions in float32 (a long-position precision limit)
            mm = m.float()[:, None, None]
            return -(mm * q_pos.float()[None, :, None]) + mm * k_pos.float()[None, None, :]
        dist = (q_pos[:, None] - k_pos[None, :] - shift).double()
        dist = dist.abs() if symmetric else dist
        return (-sign * m[:, None, None] * dist).float()

    return fn


@pytest.mark.parametrize("n", [8, 12])
def test_correct_alibi_passes(n):
    assert check_bias(make_alibi(n), {"type": "alibi", "n_heads": n, "causal": True}).passed
    assert check_bias(make_alibi(n, symmetric=True), {"type": "alibi", "n_heads": n, "causal": False}).passed


def test_posenc_alibi_passes():
    pe = get_encoding("alibi", dim=96, n_heads=12, causal=True)
    assert check_bias(lambda q, k: pe.bias(q, k), {"type": "alibi", "n_heads": 12, "causal": True}).passed


ALIBI_BUGS = [
    ("sign_flipped", 8, True, {"sign": -1.0}),
    ("slopes_reversed", 8, True, {"slopes": paper_slopes(8)[::-1]}),
    ("offset_plus_one", 8, True, {"shift": 1}),
    ("offset_minus_one", 8, True, {"shift": -1}),
    ("symmetry", 8, False, {"symmetric": False}),
    ("slopes_naive", 12, True, {"slopes": [2 ** (-8 * (h + 1) / 12) for h in range(12)]}),
    ("slopes_truncated", 12, True, {"slopes": paper_slopes(16)[:12]}),
]


@pytest.mark.parametrize(("name", "n", "causal", "bug"), ALIBI_BUGS, ids=[b[0] for b in ALIBI_BUGS])
def test_each_alibi_bug_is_named(name, n, causal, bug):
    fn = make_alibi(n, **({"symmetric": not causal} | bug))
    result = check_bias(fn, {"type": "alibi", "n_heads": n, "causal": causal})
    assert not result.conforms and result.finding.hypothesis == name, result.diagnosis


def test_alibi_from_absolute_float32_positions_is_a_precision_limit():
    result = check_bias(make_alibi(12, absolute_float32=True), {"type": "alibi", "n_heads": 12, "causal": True})
    assert result.verdict == "precision", result.table()
    assert "bias formed from absolute positions in float32" in result.diagnosis


def test_keys_after_the_query_do_not_count_in_a_causal_model():
    def anything_in_the_future(q, k):
        return torch.where(k[None, None, :] > q[None, :, None], torch.tensor(7.0), make_alibi(8)(q, k))
    assert check_bias(anything_in_the_future, {"type": "alibi", "n_heads": 8, "causal": True}).passed
    assert not check_bias(anything_in_the_future, {"type": "alibi", "n_heads": 8, "causal": False,
                                                   "symmetric": False}).passed


T5 = {"type": "t5", "bidirectional": True, "num_buckets": 32, "max_distance": 128}


def hf_t5_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128):
    """Hugging Face's T5Attention._relative_position_bucket, verbatim in substance."""
    ret = 0
    if bidirectional:
        num_buckets //= 2
        ret += (rel > 0).to(torch.long) * num_buckets
        rel = torch.abs(rel)
    else:
        rel = -torch.min(rel, torch.zeros_like(rel))
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    large = max_exact + (torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return ret + torch.where(is_small, rel, large)


def test_hf_t5_buckets_pass():
    assert check_bias(hf_t5_bucket, T5).passed
    assert check_bias(lambda r: hf_t5_bucket(r, bidirectional=False), {**T5, "bidirectional": False}).passed


@pytest.mark.parametrize(("name", "fn"), [
    ("bidirectional", lambda r: hf_t5_bucket(r, bidirectional=False)),
    ("sign_flipped", lambda r: hf_t5_bucket(-r)),
    ("max_distance_256", lambda r: hf_t5_bucket(r, max_distance=256)),
    ("num_buckets_64", lambda r: hf_t5_bucket(r, num_buckets=64)),
])
def test_each_t5_bug_is_named(name, fn):
    result = check_bias(fn, T5)
    assert result.finding.hypothesis == name, result.diagnosis


def test_bad_bias_config():
    with pytest.raises(ValueError, match="'type': 'alibi' or 't5'"):
        check_bias(hf_t5_bucket, {"type": "kerple"})


ALIBI4 = {"type": "alibi", "n_heads": 4, "causal": True}


@pytest.mark.parametrize(("candidate", "config", "kwargs", "error", "words"), [
    # slopes of another length than n_heads used to crash inside the reference (RuntimeError / IndexError)
    (make_alibi(4), {**ALIBI4, "slopes": [0.5, 0.25]}, {}, ValueError, ["slopes has 2 values", "n_heads is 4"]),
    (make_alibi(4), {**ALIBI4, "slopes": "0.5"}, {}, TypeError, ["slopes must be a list of 4 numbers"]),
    (make_alibi(4), {**ALIBI4, "slopes": [0.5, 0.25, "x", 0.1]}, {}, TypeError, ["slopes[2]"]),
    (make_alibi(4), {**ALIBI4, "slopes": [0.5, 0.25, -1.0, 0.1]}, {}, ValueError, ["slopes[2]", "> 0"]),
    # "false" is truthy: it used to check a causal bias against a bidirectional configuration's intent silently
    (make_alibi(4), {**ALIBI4, "causal": "false"}, {}, TypeError, ["causal must be true or false", '"false"']),
    (make_alibi(4), {**ALIBI4, "symmetric": 0}, {}, TypeError, ["symmetric must be true or false"]),
    (make_alibi(4), {**ALIBI4, "casual": False}, {}, ValueError, ["unknown key(s) ['casual']"]),
    (make_alibi(4), {"type": "alibi", "causal": True}, {}, ValueError, ["'n_heads'"]),
    (make_alibi(4), {**ALIBI4, "n_heads": "4"}, {}, TypeError, ["n_heads must be an int", "'4'"]),
    (make_alibi(4), ["alibi", 4], {}, TypeError, ["must be a dict", "got list"]),
    (3, ALIBI4, {}, TypeError, ["candidate must be a callable", "got int"]),
    (make_alibi(4), ALIBI4, {"max_position": "big"}, TypeError, ["max_position must be an int"]),
    (make_alibi(4), ALIBI4, {"max_position": 0}, ValueError, ["max_position must be an int >= 1"]),
    (make_alibi(4), ALIBI4, {"target": 7}, TypeError, ["target"]),
    (hf_t5_bucket, {**T5, "num_buckets": "32"}, {}, TypeError, ["num_buckets must be an int"]),
    (hf_t5_bucket, {**T5, "num_buckets": 32.7}, {}, TypeError, ["num_buckets must be an int", "32.7"]),
    (hf_t5_bucket, {**T5, "bidirectional": "true"}, {}, TypeError, ["bidirectional must be true or false"]),
    (hf_t5_bucket, {**T5, "max_distance": 0}, {}, ValueError, ["max_distance must be an int >= 1"]),
], ids=lambda v: None)
def test_bad_bias_arguments_raise_clearly_before_anything_runs(candidate, config, kwargs, error, words):
    calls = []

    def spy(*args):
        calls.append(args)
        return candidate(*args)

    with pytest.raises(error) as info:
        check_bias(spy if callable(candidate) else candidate, config, **kwargs)
    assert not isinstance(info.value, (IndexError, KeyError, RuntimeError))
    for word in words:
        assert word in str(info.value), str(info.value)
    assert not calls  # refused before the candidate ran


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.given(n=st.integers(1, 40), causal=st.booleans())
def test_fuzz_correct_alibi_is_never_flagged(n, causal):
    result = check_bias(make_alibi(n, symmetric=not causal), {"type": "alibi", "n_heads": n, "causal": causal},
                        max_position=131071)
    assert result.passed, result.table()


@hypothesis.given(bidirectional=st.booleans(), num_buckets=st.sampled_from([8, 16, 32, 64]),
                  max_distance=st.sampled_from([20, 64, 128, 300]))
def test_fuzz_hf_t5_buckets_are_never_flagged(bidirectional, num_buckets, max_distance):
    per = num_buckets // 2 if bidirectional else num_buckets
    if max_distance <= per // 2:
        return
    cfg = {"type": "t5", "bidirectional": bidirectional, "num_buckets": num_buckets, "max_distance": max_distance}
    fn = lambda r: hf_t5_bucket(r, bidirectional, num_buckets, max_distance)  # noqa: E731
    assert check_bias(fn, cfg).passed
