"""posenc's Transformer learns what x-transformers learns, on the same batches with the same optimisation.

Every lab number rests on this: a model that cannot learn to copy makes every encoding look alike. Each test trains
``posenc`` (``rope``) and x-transformers (``Decoder``/``Encoder(rotary_pos_emb=True)``) side by side
(:func:`posenc.lab.parity.train_side_by_side`: identical batches, AdamW, warmup + cosine, clipping, loss masking and
evaluation batches) and asserts posenc is not worse, within stated margins:

- exact match at most ``EM_MARGIN`` below the peer's;
- held-out loss at most ``LOSS_RATIO`` times the peer's plus ``LOSS_SLACK``.

The recipe before issue 13 (tied head, blocks initialised at std 0.02 beside a unit-scale embedding) fails the fast
decoder test: 0% exact match and held-out loss 1.33 where the peer reaches 29% and 0.41.
"""

from __future__ import annotations

import statistics

import pytest
import torch

pytest.importorskip("x_transformers")

from posenc.lab.parity import train_side_by_side  # noqa: E402


def _assert_not_worse(result: dict, *, em_margin: float, loss_ratio: float, loss_slack: float) -> None:
    ours, peer = result["posenc"], result["x-transformers"]
    summary = (f"posenc: exact match {ours['accuracy']:.3f}, loss {ours['loss']:.4f}; x-transformers: exact match "
               f"{peer['accuracy']:.3f}, loss {peer['loss']:.4f}")
    assert ours["accuracy"] >= peer["accuracy"] - em_margin, summary
    assert ours["loss"] <= loss_ratio * peer["loss"] + loss_slack, summary


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # both contenders run one after the other on identical work: keep the timing honest
    yield
    torch.set_num_threads(threads)


def test_decoder_copy_matches_the_peer_quickly():
    result = train_side_by_side("decoder_copy", steps=500, dim=64, n_layers=2, n_heads=4, lr=3e-3,
                                train_lengths=(1, 6), seed=0)
    assert result["posenc"]["accuracy"] > 0.3, result  # it learns, not merely ties a peer that learned nothing
    _assert_not_worse(result, em_margin=0.10, loss_ratio=1.5, loss_slack=0.05)


def test_encoder_bucket_sort_matches_the_peer_quickly():
    result = train_side_by_side("bucket_sort", steps=300, dim=64, n_layers=2, n_heads=4, lr=3e-3,
                                train_lengths=(1, 10), seed=0)
    assert result["posenc"]["accuracy"] > 0.5, result
    _assert_not_worse(result, em_margin=0.10, loss_ratio=1.5, loss_slack=0.05)


@pytest.mark.slow
def test_decoder_copy_matches_the_peer_at_the_standard_preset():
    # the measurement: dim 128, 2 layers, 4 heads, ffn 2x, AdamW 1e-3, batch 32, 2000 steps, lengths 1..20.
    # Single seeds of either library spread widely at this budget (x-transformers: 48%..97% exact match), so seeds
    # are compared as a group: mean exact match and median held-out loss over three seeds. Measured on this recipe:
    # posenc .902/.918/.949 (loss .0120/.0109/.0081), x-transformers .965/.941/.480 (.0052/.0095/.1033): posenc
    # trails on seeds 0 and 1 and leads on the mean.
    results = [train_side_by_side("decoder_copy", steps=2000, dim=128, n_layers=2, n_heads=4, lr=1e-3,
                                  train_lengths=(1, 20), seed=seed) for seed in (0, 1, 2)]
    ours = [r["posenc"] for r in results]
    peer = [r["x-transformers"] for r in results]
    assert min(o["accuracy"] for o in ours) > 0.8, ours  # every seed learns
    pooled = {name: {"accuracy": statistics.fmean(m["accuracy"] for m in runs),
                     "loss": statistics.median(m["loss"] for m in runs)}
              for name, runs in (("posenc", ours), ("x-transformers", peer))}
    _assert_not_worse(pooled, em_margin=0.05, loss_ratio=1.5, loss_slack=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("task,lengths", [("bucket_sort", (1, 20)), ("reverse_string", (1, 20))])
def test_encoder_tasks_match_the_peer_at_the_standard_preset(task, lengths):
    result = train_side_by_side(task, steps=2000, dim=64, n_layers=2, n_heads=4, lr=3e-3, train_lengths=lengths,
                                seed=0)
    _assert_not_worse(result, em_margin=0.05, loss_ratio=1.5, loss_slack=0.01)
