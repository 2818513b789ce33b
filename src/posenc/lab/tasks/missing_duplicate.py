"""Find the missing symbol of a duplicated string (Delétang et al. 2023, arXiv 2207.02098; Ruoss et al. 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import DeletangTask, register_task, with_output_positions

__all__ = ["MissingDuplicate"]


@register_task("missing_duplicate")
class MissingDuplicate(DeletangTask):
    """Encoder: ``w w`` (``n`` bits each) with one symbol replaced by ``_``; answer the replaced bit.

    Finding it means matching position ``i`` with position ``i + n``: a purely positional lookup.

    Example (length 3, ``w = 1 0 1``, position 4 hidden):
        inputs  ``1 0 1 1 _ 1 ?``, targets ``_ _ _ _ _ _ 0``.
    """

    vocab = ("0", "1", "_", "?")
    summary = "find the hidden symbol of a duplicated bit string (Delétang/Ruoss protocol)"

    def sequence_length(self, length: int) -> int:
        return 2 * length + 1

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        bits = torch.randint(0, 2, (batch_size, length), generator=generator)  # (B, n)
        doubled = bits.repeat(1, 2)  # (B, 2n)
        hidden = torch.randint(0, 2 * length, (batch_size,), generator=generator)  # (B,)
        rows = torch.arange(batch_size)
        answer = doubled[rows, hidden].clone()
        doubled[rows, hidden] = 2
        return with_output_positions(doubled, answer[:, None], query=3)
