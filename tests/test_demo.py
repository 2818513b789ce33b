"""The demo's claim on a small fast setting: without positions a bidirectional encoder cannot tell who did what."""

from __future__ import annotations

import pytest
import torch

from posenc.demo import evaluate_who_did_what, sample_who_did_what, train_who_did_what


def test_mirrored_pairs_share_their_bag_of_words():
    batch = sample_who_did_what(torch.Generator().manual_seed(0), 50)
    for i in range(0, 100, 2):
        assert sorted(batch.tokens[i].tolist()) == sorted(batch.tokens[i + 1].tolist())
        assert batch.label[i] != batch.label[i + 1]
    again = sample_who_did_what(torch.Generator().manual_seed(0), 50)
    assert torch.equal(batch.tokens, again.tokens)


def test_without_positions_the_encoder_is_at_chance_because_it_is_blind_to_order():
    test = sample_who_did_what(torch.Generator().manual_seed(123), 100)
    model, _ = train_who_did_what("nope", steps=40, seed=0)
    m = evaluate_who_did_what(model, test)
    assert m["same_answer_for_mirror"] == pytest.approx(1.0, abs=0.02)  # equal up to float rounding of ties
    assert m["accuracy"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("encoding", ["sinusoidal", "rope"])
def test_with_positions_the_encoder_tells_who_did_what(encoding):
    test = sample_who_did_what(torch.Generator().manual_seed(123), 100)
    model, _ = train_who_did_what(encoding, steps=150, seed=0)
    assert evaluate_who_did_what(model, test)["accuracy"] > 0.9
