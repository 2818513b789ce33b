"""The kit's engine (posenc.testing.diagnose): which finding explains a failure."""

from __future__ import annotations

import pytest
import torch

from posenc.testing.diagnose import Hypothesis, Probe, diagnose


def _probe(got: float, name: str = "case") -> Probe:
    # the reference is 0, the candidate returns `got` everywhere; tolerance 1e-3 (explicit: no dtype arithmetic)
    return Probe(name, torch.float32, (4,), "0..3", 3, [torch.zeros(4, dtype=torch.float64)],
                 [torch.full((4,), got)], tolerance=1e-3, names=("out",))


@pytest.mark.parametrize("order", ["exact first", "close first"])
def test_of_two_matching_hypotheses_the_closer_one_is_named(order):
    """Both buggy references match within tolerance; the one whose numbers the candidate reproduces exactly wins,
    whatever the order of the list (a kit naming the worse match would send the user after the wrong bug)."""
    exact = Hypothesis("exact", "the exact one", lambda p: [torch.full((4,), 1.0, dtype=torch.float64)])
    close = Hypothesis("close", "the close one", lambda p: [torch.full((4,), 1.0 + 9e-4, dtype=torch.float64)])
    hypotheses = [exact, close] if order == "exact first" else [close, exact]
    result = diagnose("rope", "t", {}, [_probe(1.0), _probe(1.0, "other")], hypotheses, angles=False)
    assert not result.passed
    assert result.finding.hypothesis == "exact", result.diagnosis
    assert result.diagnosis.startswith("the exact one")


def test_a_hypothesis_must_match_every_probe():
    one = Hypothesis("one", "matches the first probe only", lambda p: [torch.full(
        (4,), 1.0 if p.name == "case" else 5.0, dtype=torch.float64)])
    result = diagnose("rope", "t", {}, [_probe(1.0), _probe(1.0, "other")], [one], angles=False)
    assert result.finding.hypothesis == "unexplained"
