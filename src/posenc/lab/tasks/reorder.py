"""Reorder: a synthetic SVO-to-SOV translation (English order to Japanese/Turkish-like order), scored with BLEU.

Relative encodings were introduced for translation (Shaw et al. 2018, arXiv 1803.02155); this task makes the
translation purely positional: every word maps to itself, only the order changes, clause by clause.
"""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks._seq2seq import BOS, EOS, PAD, seq2seq_batch
from posenc.lab.tasks.base import Task, register_task

__all__ = ["Reorder", "to_sov"]

NOUNS = ("cat", "dog", "bird", "fox", "horse", "mouse", "lion", "bear")
VERBS = ("sees", "chases", "helps", "finds", "hears", "pushes")
ADJECTIVES = ("big", "small", "red", "old", "young", "quick")
MAX_CLAUSE = 9  # the (adj adj) N V the (adj adj) N


def to_sov(clauses: list[tuple[list[str], str, list[str]]]) -> list[str]:
    """``[(subject words, verb, object words), ...]`` in SOV order, clauses joined by ``and``."""
    out: list[str] = []
    for i, (subject, verb, obj) in enumerate(clauses):
        out += (["and"] if i else []) + subject + obj + [verb]
    return out


@register_task("reorder")
class Reorder(Task):
    """Encoder-decoder: ``length`` clauses ``the (adj)* N V the (adj)* N`` joined by ``and``, rewritten with the verb
    last in each clause. Scored by exact match and by BLEU (sacrebleu) of greedy translations.

    Example (length 2):
        ``the big cat sees the dog and the fox helps the old bird``
        -> ``the big cat the dog sees and the fox the old bird helps``.
    """

    kind = "encoder_decoder"
    vocab = (PAD, BOS, EOS, "the", "and") + NOUNS + VERBS + ADJECTIVES
    train_lengths = (1, 3)
    eval_lengths = (3, 4, 6)
    paper = "1803.02155"
    bleu = True
    summary = "SVO -> SOV translation, clause by clause; BLEU (sacrebleu) and exact match past the training length"

    def sequence_length(self, length: int) -> int:
        return MAX_CLAUSE * length + length  # the source, the "and"s, and one more for </s> (target side)

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)

        def pick(options) -> str:
            return options[int(torch.randint(len(options), (1,), generator=generator))]

        def noun_phrase() -> list[str]:
            n_adj = int(torch.randint(0, 3, (1,), generator=generator))
            return ["the", *(pick(ADJECTIVES) for _ in range(n_adj)), pick(NOUNS)]

        tok = {w: i for i, w in enumerate(self.vocab)}
        sources, targets = [], []
        for _ in range(batch_size):
            clauses = [(noun_phrase(), pick(VERBS), noun_phrase()) for _ in range(length)]
            source: list[str] = []
            for i, (subject, verb, obj) in enumerate(clauses):
                source += (["and"] if i else []) + subject + [verb] + obj
            sources.append([tok[w] for w in source])
            targets.append([tok[w] for w in to_sov(clauses)])
        n = MAX_CLAUSE * length + length - 1
        return seq2seq_batch(sources, targets, pad=tok[PAD], bos=tok[BOS], eos=tok[EOS], src_len=n, tgt_len=n)
