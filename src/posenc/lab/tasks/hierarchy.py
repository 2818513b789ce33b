"""Document-structure tasks: which sentence / paragraph a marked token is in (issue #7).

A document is ``length`` sentences of 1..5 random words. A sentence ends with ``.``, except the last sentence of a
paragraph, which ends with ``¶`` (a paragraph end also ends its sentence, as in
:func:`posenc.encodings.hierarchical.hierarchical_levels`). One word is preceded by the marker ``*``; after the
document comes the query ``?``, where the answer is read (the Delétang et al. encoder layout). Rows are padded at the
end with ``<pad>`` (``padding_mask`` False) to ``sequence_length(length) = 6 * length + 2`` tokens.

Example (3 sentences; the second paragraph starts at sentence 2)::

    c a . * f ¶ b d e ¶ ? <pad> ...     sentence_index -> 1 (second sentence of its paragraph)
                                        paragraph_index -> 0 (first paragraph)

Every batch carries ``coordinates`` ``(B, T, 3)``: :func:`hierarchical_levels` of the tokens, i.e. exactly the
``(token_in_sentence, sentence_in_paragraph, paragraph_in_document)`` levels the ``hierarchical`` encoding derives
from ``.`` / ``¶``. That encoding reads them; every other encoding sees plain positions ``0 .. T-1``.

``length`` is the number of sentences. Both tasks keep the answer space bounded (``0 .. 3``) at every length, so
longer evaluation documents never ask for an answer class unseen in training:

- ``sentence_index``: paragraphs have 1..4 sentences; longer documents have more paragraphs. The answer is the
  index of the marked sentence *within its paragraph* (the number of ``.`` between the last ``¶`` and the marker).
- ``paragraph_index``: 2..4 paragraphs (at most ``length``), the sentences split among them at random; longer
  documents have longer paragraphs. The answer is the paragraph of the marker (the number of ``¶`` before it).

Shortcuts ruled out:

- *order-free guessing*: the marked word and every other word are drawn uniformly and independently of the answer,
  so an encoder without positions (``nope``; it is permutation-equivariant) sees only the bag of tokens and is left
  with the prior: the answer is drawn uniformly among the classes the document has, so a bag-of-tokens model that
  counts the boundaries still guesses (about 1 / number of classes; the majority class ``0`` is ~28% of answers for
  ``sentence_index`` at length 12 and ~36% for ``paragraph_index``).
- *counting tokens from the start*: sentence lengths (1..5 words) and paragraph sizes are random, so the marker's
  position does not determine its sentence or paragraph; the boundary tokens before it must be found and counted.
  For ``paragraph_index`` the marker's relative position in the document (position / document length) still
  correlates with the answer, which flat encodings can partly exploit in distribution; the random split of
  sentences into paragraphs (any composition is equally likely) keeps that far from sufficient.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from posenc.encodings.hierarchical import hierarchical_levels
from posenc.lab.tasks.base import IGNORE, Task, register_task, uniform_int

__all__ = ["DocumentTask", "ParagraphIndex", "SentenceIndex", "build_document", "document_answers"]

WORDS = ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l")
MAX_CLASSES = 4  # sentences per paragraph (sentence_index), paragraphs per document (paragraph_index)
MIN_WORDS, MAX_WORDS = 1, 5  # words per sentence
ANSWERS = tuple(str(i) for i in range(MAX_CLASSES))
VOCAB = ("<pad>", ".", "¶", "*", "?") + ANSWERS + WORDS
TOKEN = {w: i for i, w in enumerate(VOCAB)}
FIRST_WORD = TOKEN[WORDS[0]]


def build_document(sentences: list[list[int]], paragraph_ends: list[bool], marked: tuple[int, int]) -> list[int]:
    """Token ids of one document: the sentences with their ends, the marker, then the query ``?``.

    Args:
        sentences: word ids of each sentence (each non-empty).
        paragraph_ends: per sentence, whether it is the last of its paragraph (the last sentence always is).
        marked: ``(sentence, word)``: the marker ``*`` goes right before that word.

    Returns:
        ``sum(len(s) + 1 for s in sentences) + 2`` token ids.
    """
    out: list[int] = []
    for s, (words, end) in enumerate(zip(sentences, paragraph_ends)):
        if s == marked[0]:
            words = words[:marked[1]] + [TOKEN["*"]] + words[marked[1]:]
        out += words
        out.append(TOKEN["¶"] if end or s == len(sentences) - 1 else TOKEN["."])
    out.append(TOKEN["?"])
    return out


def document_answers(paragraph_ends: list[bool]) -> tuple[list[int], list[int]]:
    """Per sentence: ``(sentence_in_paragraph, paragraph_in_document)`` lists, from the paragraph ends."""
    in_paragraph, paragraph = [], []
    j = p = 0
    for end in paragraph_ends:
        in_paragraph.append(j)
        paragraph.append(p)
        j, p = (0, p + 1) if end else (j + 1, p)
    return in_paragraph, paragraph


class DocumentTask(Task):
    """Shared sampler of the two tasks; subclasses choose the paragraph split and which level is the answer."""

    kind = "encoder"
    vocab = VOCAB
    train_lengths = (2, 12)
    eval_lengths = (12, 24, 48)
    min_length = 1
    coordinate_axes = ("token_in_sentence", "sentence_in_paragraph", "paragraph_in_document")
    answer_level = 0  # 0: sentence_in_paragraph, 1: paragraph_in_document

    def sequence_length(self, length: int) -> int:
        return length * (MAX_WORDS + 1) + 2  # the longest document (every sentence full), the marker, the query

    @abc.abstractmethod
    def paragraph_ends(self, generator: torch.Generator, batch_size: int, length: int) -> Tensor:
        """bool ``(B, length)``: True on the last sentence of each paragraph (always on the last sentence)."""

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        n_words = uniform_int(generator, MIN_WORDS, MAX_WORDS, (batch_size, length)).tolist()
        words = (uniform_int(generator, 0, len(WORDS) - 1, (batch_size, length, MAX_WORDS)) + FIRST_WORD).tolist()
        ends = self.paragraph_ends(generator, batch_size, length).tolist()
        picks = torch.rand(batch_size, 3, generator=generator, dtype=torch.float64).tolist()
        total = self.sequence_length(length)
        rows, answers = [], []
        for b in range(batch_size):
            level = document_answers(ends[b])[self.answer_level]  # the answer if sentence s were marked
            # answer uniform over the classes this document has, then a sentence and a word uniformly
            classes = sorted(set(level))
            answer = classes[int(picks[b][0] * len(classes))]
            candidates = [s for s in range(length) if level[s] == answer]
            s = candidates[int(picks[b][1] * len(candidates))]
            sentences = [w[:n] for w, n in zip(words[b], n_words[b])]
            row = build_document(sentences, ends[b], (s, int(picks[b][2] * n_words[b][s])))
            rows.append(row + [TOKEN["<pad>"]] * (total - len(row)))
            answers.append((len(row) - 1, TOKEN[ANSWERS[answer]]))
        inputs = torch.tensor(rows, dtype=torch.long).reshape(batch_size, total)
        targets = torch.full((batch_size, total), IGNORE, dtype=torch.long)
        where, answer_ids = torch.tensor(answers, dtype=torch.long).reshape(batch_size, 2).unbind(1)
        targets[torch.arange(batch_size), where] = answer_ids
        padding_mask = inputs != TOKEN["<pad>"]
        coordinates = hierarchical_levels(inputs, sentence_end_ids=[TOKEN["."]], paragraph_end_ids=[TOKEN["¶"]])
        return {"inputs": inputs, "targets": targets, "padding_mask": padding_mask, "coordinates": coordinates}


@register_task("sentence_index")
class SentenceIndex(DocumentTask):
    """Encoder: which sentence of its paragraph (0..3) holds the marked word? Paragraphs have 1..4 sentences.

    ``length`` is the number of sentences; see the module docstring for the layout, an example and the shortcuts
    ruled out. Longer documents have more paragraphs, so the answer classes stay 0..3.
    """

    answer_level = 0
    summary = "index of the marked word's sentence within its paragraph; hierarchical positions give it directly"

    def paragraph_ends(self, generator: torch.Generator, batch_size: int, length: int) -> Tensor:
        sizes = uniform_int(generator, 1, MAX_CLASSES, (batch_size, length))  # enough paragraphs for any row
        last = (sizes.cumsum(1) - 1).clamp(max=length - 1)  # a paragraph's last sentence; later ones fold onto the end
        ends = torch.zeros(batch_size, length, dtype=torch.bool)
        ends.scatter_(1, last, True)
        ends[:, -1] = True
        return ends


@register_task("paragraph_index")
class ParagraphIndex(DocumentTask):
    """Encoder: which paragraph (0..3) holds the marked word? 2..4 paragraphs of random size.

    ``length`` is the number of sentences, split into ``min(uniform(2, 4), length)`` paragraphs at uniformly random
    places; see the module docstring for the layout and the shortcuts ruled out. Longer documents have longer
    paragraphs, so the answer classes stay 0..3.
    """

    answer_level = 1
    summary = "index of the marked word's paragraph in the document; hierarchical positions give it directly"

    def paragraph_ends(self, generator: torch.Generator, batch_size: int, length: int) -> Tensor:
        count = uniform_int(generator, 2, MAX_CLASSES, (batch_size,)).clamp(max=length)
        # a uniformly random set of count - 1 of the length - 1 gaps between sentences: the smallest random keys
        keys = torch.rand(batch_size, length - 1, generator=generator)
        rank = keys.argsort(1).argsort(1)
        breaks = rank < (count - 1).unsqueeze(1)
        return torch.cat((breaks, torch.ones(batch_size, 1, dtype=torch.bool)), dim=1)
