"""Context extension: plain RoPE and every scaling are evaluated on the same trained weights, zero-shot and tuned."""

import math

from posenc.lab.config import ModelConfig
from posenc.lab.extension import SCALINGS, TRAINING_FREE, context_extension, extension_table, write_extension
from posenc.lab.report import write_report


def test_every_scaling_is_evaluated_zero_shot_and_fine_tuned(tmp_path):
    rows = context_extension(train_length=8, factor=4, steps=20, finetune_steps=1, eval_tokens=128,
                             model=ModelConfig(dim=32, n_layers=1, n_heads=2))
    assert [(r["variant"], r["finetuned"]) for r in rows] == [(v, f) for v in ("none", *SCALINGS)
                                                              for f in (False, True)] + [
        (v, False) for v in TRAINING_FREE]
    zero_shot = {r["variant"]: r["perplexity"] for r in rows if not r["finetuned"]}
    assert all(set(p) == {"8", "32"} for p in zero_shot.values())
    # the same weights with other rotary frequencies: the scaling reached the encoding and changed the numbers
    assert zero_shot["linear"]["32"] != zero_shot["none"]["32"]
    assert zero_shot["yarn"]["32"] != zero_shot["none"]["32"]
    # Self-Extend and Dual Chunk Attention run on the same weights and change which positions attention sees
    # (their windows, L/2 and 3L/4, are shorter than L, so they act at L too; tests/encodings/ pin their rules)
    for variant in TRAINING_FREE:
        assert zero_shot[variant]["32"] != zero_shot["none"]["32"]
        assert all(math.isfinite(p) for p in zero_shot[variant].values())
    write_extension(rows, tmp_path)
    assert "rope (no scaling)" in extension_table(rows)
    assert "## Context extension" in write_report(tmp_path).read_text()
