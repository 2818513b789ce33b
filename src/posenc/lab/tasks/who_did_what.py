"""Who did what: "the cat chases the dog" vs "the dog chases the cat" — order decides the answer.

A bidirectional encoder reads ``[CLS] the (adj) N1 (adv) V the (adj) N2 ? Nq`` and answers at ``[CLS]`` whether
``Nq`` did the action (is ``N1``). Swapping ``N1`` and ``N2`` keeps the bag of words and flips the answer, so an
encoder without position information — which is exactly permutation-equivariant — gives both sentences the same
answer and scores 50% on mirrored pairs. With any positional encoding the same model reaches ~100%.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from posenc.lab.tasks.base import IGNORE, Task, register_task

__all__ = ["LENGTH", "TOKEN", "VOCAB", "WhoDidWhat", "WhoDidWhatTask", "sample_who_did_what"]

NOUNS = ["cat", "dog", "bird", "fox", "horse", "mouse", "lion", "bear", "wolf", "duck", "frog", "owl"]
VERBS = ["chases", "sees", "bites", "follows", "pushes", "helps", "hears", "finds"]
ADJECTIVES = ["big", "small", "red", "old", "young", "quick"]
ADVERBS = ["quickly", "slowly", "often"]
SPECIAL = ["<pad>", "[CLS]", "the", "?", "yes", "no"]
VOCAB = SPECIAL + NOUNS + VERBS + ADJECTIVES + ADVERBS
TOKEN = {w: i for i, w in enumerate(VOCAB)}
LENGTH = 12  # the longest sentence; shorter ones are padded


@dataclass
class WhoDidWhat:
    """A batch: ``tokens`` (B, LENGTH), ``padding_mask`` (B, LENGTH) True on real tokens, ``label`` (B,) 1 = yes.

    Examples come in mirrored pairs (rows ``2i`` and ``2i + 1`` hold the same words with the two nouns swapped and
    opposite labels), so any model blind to order scores exactly 50%.
    """

    tokens: torch.Tensor
    padding_mask: torch.Tensor
    label: torch.Tensor

    def sentence(self, i: int) -> str:
        return " ".join(VOCAB[t] for t in self.tokens[i].tolist() if t != TOKEN["<pad>"])


def sample_who_did_what(generator: torch.Generator, pairs: int, *, length: int = LENGTH) -> WhoDidWhat:
    """``2 * pairs`` examples in mirrored pairs padded to ``length``, deterministic under ``generator``."""

    def pick(options: list[str]) -> str:
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    def maybe(options: list[str]) -> list[str]:
        return [pick(options)] if bool(torch.rand(1, generator=generator) < 0.5) else []

    rows, labels = [], []
    for _ in range(pairs):
        i, j = torch.randperm(len(NOUNS), generator=generator)[:2].tolist()
        n1, n2 = NOUNS[i], NOUNS[j]
        adj1, adv, verb, adj2 = maybe(ADJECTIVES), maybe(ADVERBS), pick(VERBS), maybe(ADJECTIVES)
        query = n1 if bool(torch.rand(1, generator=generator) < 0.5) else n2
        for a, b in ((n1, n2), (n2, n1)):  # the sentence and its mirror: same words, opposite answer
            words = ["[CLS]", "the", *adj1, a, *adv, verb, "the", *adj2, b, "?", query]
            rows.append([TOKEN[w] for w in words] + [TOKEN["<pad>"]] * (length - len(words)))
            labels.append(int(query == a))
    tokens = torch.tensor(rows, dtype=torch.long).reshape(2 * pairs, length)
    return WhoDidWhat(tokens, tokens != TOKEN["<pad>"], torch.tensor(labels, dtype=torch.long))


@register_task("who_did_what")
class WhoDidWhatTask(Task):
    """Encoder classification at ``[CLS]``: did the queried noun do the action? Mirrored pairs make bags of words fail.

    ``length`` is the padded length (>= 12, the longest sentence). The answer (``yes``/``no``) is read at position 0.

    Example:
        >>> task = WhoDidWhatTask()
        >>> batch = task.sample_batch(torch.Generator().manual_seed(0), 2, 12)
        >>> task.decode(batch["inputs"][0])   # e.g. '[CLS] the cat chases the big dog ? dog <pad> <pad> <pad>'
        >>> batch["targets"][0, 0] == task.token("no")  # the cat chased, the dog did not
        >>> # row 1 is the mirror: '[CLS] the dog chases the big cat ? dog ...' with answer 'yes'
    """

    kind = "encoder"
    vocab = tuple(VOCAB)
    train_lengths = (LENGTH, LENGTH)
    eval_lengths = (LENGTH,)
    min_length = LENGTH
    summary = "order decides who did what; without positions an encoder is at chance (50%)"

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        if batch_size % 2:
            raise ValueError(f"task 'who_did_what' draws mirrored pairs, so batch_size must be even; got {batch_size}.")
        batch = sample_who_did_what(generator, batch_size // 2, length=length)
        targets = torch.full_like(batch.tokens, IGNORE)
        targets[:, 0] = torch.where(batch.label == 1, TOKEN["yes"], TOKEN["no"])
        return {"inputs": batch.tokens, "padding_mask": batch.padding_mask, "targets": targets}
