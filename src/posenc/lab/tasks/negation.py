"""Negation: the sentiment depends on which adjective "not" stands before, so a bag of words cannot solve it."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import IGNORE, Task, register_task

__all__ = ["NegationTask"]

POSITIVE = ["good", "great", "fun", "clever", "warm", "fresh"]
NEGATIVE = ["bad", "dull", "slow", "cold", "silly", "stale"]
SUBJECTS = ["film", "book", "meal", "show", "game", "song"]
INTENSIFIERS = ["really", "very", "quite"]
SPECIAL = ["<pad>", "[CLS]", "the", "was", "and", "not", "positive", "negative"]
VOCAB = tuple(SPECIAL + POSITIVE + NEGATIVE + SUBJECTS + INTENSIFIERS)
LENGTH = 10  # the longest sentence: [CLS] the S was (int) (not) A and (int) (not) B


@register_task("negation")
class NegationTask(Task):
    """Encoder classification at ``[CLS]``: ``the S was A and B`` with one positive and one negative adjective and one
    "not". "not" before the positive one makes both clauses negative; before the negative one, both positive.

    Rows come in mirrored pairs with the same words and opposite labels ("not" moved to the other adjective), so a
    model blind to order scores 50%. ``length`` is the padded length (>= 10).

    Example:
        >>> task = NegationTask()
        >>> batch = task.sample_batch(torch.Generator().manual_seed(0), 2, 10)
        >>> # row 0: '[CLS] the film was not good and dull' -> negative
        >>> # row 1: '[CLS] the film was good and not dull' -> positive
    """

    kind = "encoder"
    vocab = VOCAB
    train_lengths = (LENGTH, LENGTH)
    eval_lengths = (LENGTH,)
    min_length = LENGTH
    summary = "which adjective 'not' negates decides the sentiment; a bag of words is at chance (50%)"

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        if batch_size % 2:
            raise ValueError(f"task 'negation' draws mirrored pairs, so batch_size must be even; got {batch_size}.")

        def pick(options: list[str]) -> str:
            return options[int(torch.randint(len(options), (1,), generator=generator))]

        def maybe(options: list[str]) -> list[str]:
            return [pick(options)] if bool(torch.rand(1, generator=generator) < 0.5) else []

        rows, labels = [], []
        for _ in range(batch_size // 2):
            subject, pos, neg = pick(SUBJECTS), pick(POSITIVE), pick(NEGATIVE)
            first, second = (pos, neg) if bool(torch.rand(1, generator=generator) < 0.5) else (neg, pos)
            int1, int2 = maybe(INTENSIFIERS), maybe(INTENSIFIERS)
            for negate_first in (True, False):  # the mirror moves "not" to the other adjective
                words = ["[CLS]", "the", subject, "was", *int1, *(["not"] if negate_first else []), first, "and",
                         *int2, *([] if negate_first else ["not"]), second]
                negated = first if negate_first else second
                rows.append([VOCAB.index(w) for w in words] + [0] * (length - len(words)))
                labels.append("negative" if negated in POSITIVE else "positive")
        inputs = torch.tensor(rows, dtype=torch.long)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, 0] = torch.tensor([VOCAB.index(label) for label in labels])
        return {"inputs": inputs, "padding_mask": inputs != 0, "targets": targets}
