"""Reverse a binary string (Delétang et al. 2023, arXiv 2207.02098; the Ruoss et al. 2023 protocol)."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import DeletangTask, register_task, with_output_positions

__all__ = ["ReverseString"]


@register_task("reverse_string")
class ReverseString(DeletangTask):
    """Encoder: read ``n`` bits, write them reversed at ``n`` appended output positions.

    Example (length 3):
        inputs  ``1 0 0 ? ? ?``, targets ``_ _ _ 0 0 1`` (``_`` = not scored).
    """

    vocab = ("0", "1", "?")
    summary = "reverse a bit string (Delétang/Ruoss protocol: train 1..40, test longer)"

    def sequence_length(self, length: int) -> int:
        return 2 * length

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        bits = torch.randint(0, 2, (batch_size, length), generator=generator)  # (B, n)
        return with_output_positions(bits, bits.flip(1), query=2)
