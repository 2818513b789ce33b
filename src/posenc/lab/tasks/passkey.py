"""Passkey retrieval (Mohtashami & Jaggi 2023, arXiv 2305.16300): find a number hidden in filler text."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import IGNORE, Task, register_task

__all__ = ["Passkey"]

FILLER = ("the", "grass", "is", "green", ".")
KEY_PREFIX = ("the", "pass", "key", "is")
QUESTION = ("what", "is", "the", "pass", "key", "?")
DIGITS = 5
WORDS = ("the", "grass", "is", "green", ".", "pass", "key", "what", "?")
VOCAB = WORDS + tuple(str(i) for i in range(10))


@register_task("passkey")
class Passkey(Task):
    """Decoder: ``length`` filler sentences with ``the pass key is d d d d d .`` inserted between two of them, then
    ``what is the pass key ?`` and the five digits, which are scored.

    Example (length 1):
        inputs  ``the pass key is 4 0 9 1 7 . the grass is green . what is the pass key ? 4 0 9 1``,
        targets ``_ ... _ 4 0 9 1 7``.
    """

    kind = "decoder"
    vocab = VOCAB
    train_lengths = (1, 8)
    eval_lengths = (8, 16, 32)
    paper = "2305.16300"
    summary = "retrieve a 5-digit key hidden in filler text longer than the training texts"

    def sequence_length(self, length: int) -> int:
        return len(FILLER) * length + len(KEY_PREFIX) + DIGITS + 1 + len(QUESTION) + DIGITS - 1

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        tok = {w: i for i, w in enumerate(VOCAB)}
        rows = []
        for _ in range(batch_size):
            digits = [str(d) for d in torch.randint(0, 10, (DIGITS,), generator=generator).tolist()]
            where = int(torch.randint(0, length + 1, (1,), generator=generator))  # before filler sentence `where`
            words: list[str] = []
            for i in range(length + 1):
                if i == where:
                    words += [*KEY_PREFIX, *digits, "."]
                if i < length:
                    words += FILLER
            rows.append([tok[w] for w in (*words, *QUESTION, *digits)])
        seq = torch.tensor(rows, dtype=torch.long)
        targets = torch.full_like(seq[:, 1:], IGNORE)
        targets[:, -DIGITS:] = seq[:, -DIGITS:]
        return {"inputs": seq[:, :-1], "targets": targets}
