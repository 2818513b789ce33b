"""Duplicate a binary string (Delétang et al. 2023, arXiv 2207.02098; the Ruoss et al. 2023 protocol)."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import Task, register_task, with_output_positions

__all__ = ["DuplicateString"]


@register_task("duplicate_string")
class DuplicateString(Task):
    """Encoder: read ``n`` bits ``w``, write ``w w`` at ``2n`` appended output positions.

    Example (length 2):
        inputs  ``1 0 ? ? ? ?``, targets ``_ _ 1 0 1 0``.
    """

    kind = "encoder"
    vocab = ("0", "1", "?")
    train_lengths = (1, 40)
    eval_lengths = (40, 60, 100, 200)
    paper = "2305.16843"
    metric = "token_accuracy"  # Delétang et al.'s score: the share of output tokens right
    summary = "write a bit string twice (Delétang/Ruoss protocol)"

    def sequence_length(self, length: int) -> int:
        return 3 * length

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        bits = torch.randint(0, 2, (batch_size, length), generator=generator)  # (B, n)
        return with_output_positions(bits, bits.repeat(1, 2), query=2)
