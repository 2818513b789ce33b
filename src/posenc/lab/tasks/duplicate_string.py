"""Duplicate a binary string (Delétang et al. 2023, arXiv 2207.02098; the Ruoss et al. 2023 protocol)."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import DeletangTask, register_task, with_output_positions

__all__ = ["DuplicateString"]


@register_task("duplicate_string")
class DuplicateString(DeletangTask):
    """Encoder: read ``n`` bits ``w``, write ``w w`` at ``2n`` appended output positions.

    Example (length 2):
        inputs  ``1 0 ? ? ? ?``, targets ``_ _ 1 0 1 0``.
    """

    vocab = ("0", "1", "?")
    summary = "write a bit string twice (Delétang/Ruoss protocol)"

    def sequence_length(self, length: int) -> int:
        return 3 * length

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        bits = torch.randint(0, 2, (batch_size, length), generator=generator)  # (B, n)
        return with_output_positions(bits, bits.repeat(1, 2), query=2)
