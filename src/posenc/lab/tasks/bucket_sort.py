"""Sort a string over a small alphabet (Delétang et al. 2023, arXiv 2207.02098; the Ruoss et al. 2023 protocol)."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import DeletangTask, register_task, with_output_positions

__all__ = ["BucketSort"]

ALPHABET = 5


@register_task("bucket_sort")
class BucketSort(DeletangTask):
    """Encoder: ``n`` symbols from ``a..e``, written sorted at ``n`` appended output positions.

    Example (length 4):
        inputs  ``c a e a ? ? ? ?``, targets ``_ _ _ _ a a c e``.
    """

    vocab = ("a", "b", "c", "d", "e", "?")
    summary = "sort symbols from a 5-letter alphabet (Delétang/Ruoss protocol)"

    def sequence_length(self, length: int) -> int:
        return 2 * length

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        symbols = torch.randint(0, ALPHABET, (batch_size, length), generator=generator)  # (B, n)
        return with_output_positions(symbols, symbols.sort(dim=1).values, query=ALPHABET)
