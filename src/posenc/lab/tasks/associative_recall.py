"""Associative recall (Ba et al. 2016, arXiv 1610.06258; the Zoology / H3 formulation): find a key's value."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import Task, register_task, with_output_positions

__all__ = ["AssociativeRecall"]

KEYS = 64
VALUES = 10


@register_task("associative_recall")
class AssociativeRecall(Task):
    """Encoder: ``length`` distinct key-value pairs ``k1 v1 k2 v2 ...``, then one of the keys; answer its value at one
    appended output position. Keys are ``K0..K63`` (so ``length <= 64``), values ``0..9``.

    Example (length 2):
        inputs  ``K5 3 K9 7 K5 ?``, targets ``_ _ _ _ _ 3``.
    """

    kind = "encoder"
    vocab = tuple(f"K{i}" for i in range(KEYS)) + tuple(str(i) for i in range(VALUES)) + ("?",)
    train_lengths = (2, 16)
    eval_lengths = (16, 32, 64)
    paper = "1610.06258"
    summary = "recall the value stored with a key, past the training number of pairs"

    def check_length(self, length: int) -> None:
        super().check_length(length)
        if length > KEYS:
            raise ValueError(f"task 'associative_recall': at most {KEYS} pairs (distinct keys); got {length}.")

    def sequence_length(self, length: int) -> int:
        return 2 * length + 2

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        keys = torch.rand(batch_size, KEYS, generator=generator).argsort(dim=1)[:, :length]  # (B, n) distinct
        values = torch.randint(0, VALUES, (batch_size, length), generator=generator) + KEYS
        asked = torch.randint(0, length, (batch_size,), generator=generator)
        rows = torch.arange(batch_size)
        pairs = torch.stack((keys, values), dim=2).reshape(batch_size, 2 * length)
        inputs = torch.cat((pairs, keys[rows, asked][:, None]), dim=1)
        return with_output_positions(inputs, values[rows, asked][:, None], query=KEYS + VALUES)
