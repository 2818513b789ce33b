"""Selective copying (Gu & Dao 2023, arXiv 2312.00752; CoPE, arXiv 2405.18719): copy the symbols, skip blanks."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import Task, register_task, with_output_positions

__all__ = ["SelectiveCopy"]

ALPHABET = 8
BLANK, QUERY = ALPHABET, ALPHABET + 1


@register_task("selective_copy")
class SelectiveCopy(Task):
    """Encoder: ``length`` tokens, of which ``max(1, length // 4)`` are symbols at random places and the rest blanks
    ``.``; write the symbols in order at the appended output positions.

    Example (length 8, two symbols):
        inputs  ``. c . . . a . . ? ?``, targets ``_ _ _ _ _ _ _ _ c a``.
    """

    kind = "encoder"
    vocab = tuple("abcdefgh") + (".", "?")
    train_lengths = (4, 32)
    eval_lengths = (32, 48, 64)
    min_length = 1
    paper = "2405.18719"
    summary = "copy the symbols scattered among blanks, in order (selective copy)"

    def sequence_length(self, length: int) -> int:
        return length + max(1, length // 4)

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        k = max(1, length // 4)
        places = torch.rand(batch_size, length, generator=generator).argsort(dim=1)[:, :k].sort(dim=1).values
        symbols = torch.randint(0, ALPHABET, (batch_size, k), generator=generator)  # (B, k)
        inputs = torch.full((batch_size, length), BLANK, dtype=torch.long)
        inputs.scatter_(1, places, symbols)
        return with_output_positions(inputs, symbols, query=QUERY)
