"""Add two binary numbers (Delétang et al. 2023, arXiv 2207.02098; the Ruoss et al. 2023 protocol)."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import DeletangTask, register_task, with_output_positions

__all__ = ["BinaryAddition"]


@register_task("binary_addition")
class BinaryAddition(DeletangTask):
    """Encoder: ``a + b`` with ``n``-bit operands written least significant bit first; the ``n + 1``-bit sum (also
    least significant bit first) is read at ``n + 1`` appended output positions.

    Example (length 2: a = 3, b = 1, sum 4):
        inputs  ``1 1 + 1 0 ? ? ?``, targets ``_ _ _ _ _ 0 0 1``.
    """

    vocab = ("0", "1", "+", "?")
    summary = "add two binary numbers, LSB first (Delétang/Ruoss protocol)"

    def sequence_length(self, length: int) -> int:
        return 3 * length + 2

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        a = torch.randint(0, 2, (batch_size, length), generator=generator)  # (B, n), LSB first
        b = torch.randint(0, 2, (batch_size, length), generator=generator)
        total = torch.zeros(batch_size, length + 1, dtype=torch.long)  # ripple-carry addition, exact for any n
        carry = torch.zeros(batch_size, dtype=torch.long)
        for i in range(length):
            s = a[:, i] + b[:, i] + carry
            total[:, i], carry = s % 2, s // 2
        total[:, length] = carry
        plus = torch.full((batch_size, 1), 2, dtype=torch.long)
        return with_output_positions(torch.cat((a, plus, b), dim=1), total, query=3)
