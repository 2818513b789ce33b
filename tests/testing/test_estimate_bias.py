"""Blind diagnosis of biases: ALiBi slopes per head, distance offset, sign and symmetry; T5 bucket counts,
saturation and edges. Planted bugs with parameters no listed hypothesis has are named with their measured values."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from posenc.encodings.alibi import alibi_slopes
from posenc.testing.bias import check_bias
from posenc.testing.estimate import explain_alibi, explain_t5

sys.path.insert(0, str(Path(__file__).parent))
from test_bias import T5, hf_t5_bucket, make_alibi, paper_slopes  # noqa: E402 - independent candidates

ALIBI = {"type": "alibi", "n_heads": 8, "causal": True}
S = paper_slopes(8)
PLANTED = {
    "slopes-doubled": (make_alibi(8, slopes=[2 * m for m in S]), ALIBI,
                       ["all your slopes are 2 times the configuration's (head 0: 1 where it is 0.5)"]),
    "slopes-for-16-heads": (make_alibi(8, slopes=paper_slopes(16)[:8]), ALIBI,
                            ["slopes of head(s) 0–7 differ", "geometric series 2^-(0.5 + 0.5 h)",
                             "0.707107 where it is 0.5"]),
    "slopes-rotated": (make_alibi(8, slopes=S[1:] + S[:1]), ALIBI,
                       ["another head order: head h gets the slope of head [1, 2, 3, 4, 5, 6, 7, 0]"]),
    "one-head-slope": (make_alibi(8, slopes=S[:3] + [0.3] + S[4:]), ALIBI,
                       ["slopes of head(s) 3 differ", "0.3 where it is 0.0625"]),
    "distance-off-by-2": (make_alibi(8, shift=2), ALIBI, ["your distances are off by +2", "(-m * (i - j - 2))"]),
    "t5-max-distance-100": (lambda r: hf_t5_bucket(r, max_distance=100), T5,
                            ["stop changing at relative positions -73 and 73; the configuration's at -91 and 91"]),
    "t5-24-buckets": (lambda r: hf_t5_bucket(r, num_buckets=24), T5,
                      ["you use 23 distinct buckets (0..23); the configuration uses 31 (0..31)"]),
    "t5-one-edge-moved": (lambda r: hf_t5_bucket(r) + (r.abs() == 5).long(), T5,
                          ["first difference is at relative position 5: bucket 22 where the configuration has 21"]),
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_each_planted_bias_bug_is_named_by_the_estimate(name):
    fn, config, words = PLANTED[name]
    result = check_bias(fn, config)
    assert result.finding.hypothesis == "estimate", result.diagnosis
    for w in words:
        assert w in result.diagnosis, result.diagnosis


def test_a_bias_that_is_not_alibi_is_said_to_be_beyond_the_estimate():
    m = torch.tensor(S, dtype=torch.float64)

    def log_distance(q_pos, k_pos):  # x-transformers' dynamic-bias flavour: -m * log(1 + |i - j|)
        return (-m[:, None, None] * torch.log1p((q_pos[:, None] - k_pos[None, :]).abs().double())).float()

    result = check_bias(log_distance, ALIBI)
    assert result.finding.hypothesis == "unexplained"
    assert "not a straight line in the distance" in result.diagnosis, result.diagnosis


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(n=st.integers(1, 24), causal=st.booleans())
def test_fuzz_the_alibi_estimate_finds_nothing_in_a_correct_bias(n, causal):
    fn = make_alibi(n, symmetric=not causal)
    assert explain_alibi(fn, alibi_slopes(n, dtype=torch.float64), causal=causal, symmetric=not causal) == []


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(bidirectional=st.booleans(), num_buckets=st.integers(4, 64), max_distance=st.integers(8, 256))
def test_fuzz_the_t5_estimate_finds_nothing_in_correct_buckets(bidirectional, num_buckets, max_distance):
    from posenc.encodings.t5 import t5_relative_position_bucket
    hypothesis.assume(max_distance > num_buckets // (4 if bidirectional else 2))
    kw = {"bidirectional": bidirectional, "num_buckets": num_buckets, "max_distance": max_distance}
    assert explain_t5(lambda r: hf_t5_bucket(r, **kw),
                      lambda r: t5_relative_position_bucket(r, **kw), max_distance=max_distance) == []


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(n=st.sampled_from([4, 8, 12]), factor=st.floats(0.1, 10.0), shift=st.integers(-20, 20))
def test_fuzz_the_alibi_estimate_measures_planted_slopes_and_offsets(n, factor, shift):
    import re
    hypothesis.assume(abs(factor - 1) > 1e-2)
    fn = make_alibi(n, slopes=[factor * m for m in paper_slopes(n)], shift=shift)
    words = " ".join(explain_alibi(fn, alibi_slopes(n, dtype=torch.float64), causal=True, symmetric=False))
    measured = float(re.search(r"all your slopes are (\S+) times", words).group(1))
    assert abs(measured - factor) <= 1e-5 * factor, words
    if shift:
        assert f"your distances are off by {shift:+d}" in words, words
    else:
        assert "off by" not in words, words
