"""Parity of a binary string (Delétang et al. 2023, arXiv 2207.02098; the Ruoss et al. 2023 protocol)."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import DeletangTask, register_task, with_output_positions

__all__ = ["ParityCheck"]


@register_task("parity_check")
class ParityCheck(DeletangTask):
    """Encoder: is the number of ``1`` bits odd? One answer token at one appended output position.

    Example (length 4):
        inputs  ``1 0 1 1 ?``, targets ``_ _ _ _ 1``.
    """

    vocab = ("0", "1", "?")
    summary = "parity of a bit string (Delétang/Ruoss protocol)"

    def sequence_length(self, length: int) -> int:
        return length + 1

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        bits = torch.randint(0, 2, (batch_size, length), generator=generator)  # (B, n)
        return with_output_positions(bits, bits.sum(1, keepdim=True) % 2, query=2)
