"""The :class:`Task` interface and the task registry (the lab's counterpart of the encoding registry).

A task draws batches at a requested length from a ``torch.Generator``; the same generator state gives the same batch.
Every batch is a dict of int64 / bool tensors with one layout for all tasks, so one training loop serves them all:

- ``inputs``  ``(B, T)`` token ids (the source for encoder-decoder tasks);
- ``targets`` ``(B, T_out)`` token ids to predict, ``IGNORE`` (-100) where nothing is scored. For ``encoder`` tasks
  ``T_out = T`` and the logits at position ``t`` predict ``targets[:, t]`` (answers read at output positions); for
  ``decoder`` tasks ``targets`` are the next tokens (``targets[:, t]`` follows ``inputs[:, t]``); for
  ``encoder_decoder`` tasks they are the next tokens of ``decoder_inputs``;
- optional ``padding_mask`` ``(B, T)`` True on real tokens, and for ``encoder_decoder`` tasks ``decoder_inputs``
  ``(B, T_out)`` and ``decoder_padding_mask``;
- structured tasks add ``coordinates`` ``(B, T, A)`` int64 (axes named by the class's ``coordinate_axes``, e.g.
  ``("row", "col")``), read by encodings with exactly those ``axis_names``; graph tasks (``graph = True``) add
  ``adjacency`` ``(B, N, N)`` over their ``N`` node tokens, read by the graph encodings. Other encodings see plain
  positions ``0 .. T-1`` (see :func:`posenc.lab.train.reads_structure`).

Metrics follow from this: ``accuracy`` is the share of sequences whose every scored token is right (exact match;
with teacher forcing this equals greedy decoding), ``token_accuracy`` the share of scored tokens, ``perplexity``
``exp`` of the mean loss per scored token.
"""

from __future__ import annotations

import abc
import importlib
import pkgutil
from typing import ClassVar

import torch
from torch import Tensor

from posenc._checks import check_int
from posenc.registry import Registry

__all__ = ["IGNORE", "DeletangTask", "Task", "get_task", "learned", "register_task", "registered_tasks", "task_class",
           "uniform_int", "with_output_positions"]

IGNORE = -100  # target id that is not scored (F.cross_entropy's ignore_index)
KINDS = ("encoder", "decoder", "encoder_decoder")


def uniform_int(generator: torch.Generator, low: int, high: int, size: tuple[int, ...] = ()) -> Tensor:
    """Integers uniform in ``[low, high]`` (inclusive), drawn from ``generator``."""
    return torch.randint(low, high + 1, size, generator=generator)


class Task(abc.ABC):
    """A synthetic or text task that draws batches at a requested length.

    Subclasses set the class attributes and implement :meth:`sample_batch`; register with ``@register_task("name")``.

    Attributes:
        kind: ``"encoder"``, ``"decoder"`` or ``"encoder_decoder"`` (the :class:`posenc.TransformerConfig` kind).
        vocab: the token strings; ``vocab_size = len(vocab)``.
        train_lengths: ``(min, max)`` lengths sampled during training (inclusive), as the paper's protocol has it.
        eval_lengths: lengths evaluated after training (the first ones in distribution, the rest beyond).
        metric: the headline metric of reports: ``"accuracy"`` (exact match per example), ``"token_accuracy"`` (the
            share of scored tokens right: the score Delétang et al. and Ruoss et al. report, so their tasks use it)
            or ``"perplexity"`` (lower is better).
        paper: arXiv id of the paper whose protocol the task follows, or ``None``.
        summary: one line on what the task measures.
        learned_bar: the in-distribution bar of ``metric``: a run whose mean over the evaluation lengths inside the
            training range stays below it (accuracy) or above it (perplexity) did not learn the task, and reports
            leave it out of every ranking beyond the training length.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "encoder"
    vocab: ClassVar[tuple[str, ...]] = ()
    train_lengths: ClassVar[tuple[int, int]] = (1, 40)
    eval_lengths: ClassVar[tuple[int, ...]] = (40, 60, 100)
    metric: ClassVar[str] = "accuracy"  # "accuracy" (exact match), "token_accuracy" or "perplexity"
    paper: ClassVar[str | None] = None
    summary: ClassVar[str] = ""
    learned_bar: ClassVar[float] = 0.9  # `metric` in distribution (perplexity tasks: an upper bound)
    min_length: ClassVar[int] = 1  # the shortest length sample_batch accepts
    coordinate_axes: ClassVar[tuple[str, ...]] = ()  # axes of the batch's ``coordinates`` (B, T, A), if it has them
    graph: ClassVar[bool] = False  # True: batches carry ``adjacency`` (B, N, N) over the N node tokens

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def bar(self) -> float:
        """The value of :attr:`learned_bar` for this instance (a text task may derive it from its corpus)."""
        return self.learned_bar

    @classmethod
    def bar_text(cls) -> str:
        """The bar in words, for ``posenc lab list`` and reports."""
        if cls.metric == "perplexity":
            return f"perplexity <= {cls.learned_bar:g} in distribution"
        what = "token accuracy" if cls.metric == "token_accuracy" else "exact match"
        return f"{what} >= {cls.learned_bar:.0%} in distribution"

    def learned(self, in_distribution: float | None) -> bool:
        """Whether an in-distribution score (mean over the lengths inside the training range) meets the bar."""
        return learned(self.metric, self.bar(), in_distribution)

    def token(self, word: str) -> int:
        return self.vocab.index(word)

    def decode(self, ids: Tensor | list[int]) -> str:
        """Token ids as words (``IGNORE`` and padding shown as ``_``)."""
        ids = ids.tolist() if isinstance(ids, Tensor) else ids
        return " ".join(self.vocab[i] if 0 <= i < len(self.vocab) else "_" for i in ids)

    def check_length(self, length: int) -> None:
        """Raise a clear ``ValueError`` for a length this task cannot produce."""
        check_int(length, f"task {self.name!r}: length", minimum=self.min_length)

    def sequence_length(self, length: int) -> int:
        """Tokens the model sees for a task length (the encoding's ``max_seq_len`` must cover the training ones)."""
        return length

    @abc.abstractmethod
    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        """A batch of ``batch_size`` examples at task length ``length``, deterministic under ``generator``."""

    def eval_batches(self, generator: torch.Generator, batch_size: int, length: int, n_batches: int):
        """Evaluation batches at ``length``; the default draws fresh samples, :mod:`lm` reads held-out text."""
        for _ in range(n_batches):
            yield self.sample_batch(generator, batch_size, length)


def learned(metric: str, bar: float, in_distribution: float | None) -> bool:
    """``in_distribution`` meets ``bar``: at least it for accuracy, at most it for perplexity (``None``: no)."""
    if in_distribution is None:
        return False
    return in_distribution <= bar if metric == "perplexity" else in_distribution >= bar


# -- registry ----------------------------------------------------------------------------------------------------------
_TASKS: Registry[type[Task]] = Registry("task", Task, example="parity_check", decorator="register_task",
                                      attribute="kind", allowed=KINDS)


def register_task(name: str):
    """Class decorator: make a task available as ``get_task(name)``."""
    return _TASKS.register(name)


_LOADED = False


def _load() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from posenc.lab import tasks

        for module in sorted(m.name for m in pkgutil.iter_modules(tasks.__path__)):
            if not module.startswith("_") and module != "base":
                importlib.import_module(f"posenc.lab.tasks.{module}")


def registered_tasks() -> list[str]:
    """Names of every registered task, sorted."""
    _load()
    return _TASKS.names()


def get_task(name: str, **options) -> Task:
    """Build the task registered as ``name`` (options go to its constructor)."""
    return task_class(name)(**options)


def task_class(name: str) -> type[Task]:
    """The class registered as ``name`` (its class attributes describe the protocol without building it)."""
    _load()
    return _TASKS.lookup(name)


class DeletangTask(Task):
    """The algorithmic tasks of Delétang et al. (arXiv 2207.02098) as Ruoss et al. (arXiv 2305.16843) run them.

    An encoder reads the input and writes the answer at appended output positions (:func:`with_output_positions`);
    trained on lengths 1..40, evaluated at 40 and beyond, scored as those papers score it: the share of output
    tokens right. Subclasses give the vocabulary, the summary, :meth:`sequence_length` and :meth:`sample_batch`.
    """

    kind = "encoder"
    train_lengths = (1, 40)
    eval_lengths = (40, 60, 100, 200)
    paper = "2305.16843"
    metric = "token_accuracy"


def with_output_positions(inputs: Tensor, outputs: Tensor, *, query: int) -> dict[str, Tensor]:
    """The Delétang et al. (arXiv 2207.02098) encoder layout: the input, then one ``query`` token per answer token.

    Args:
        inputs: ``(B, n)`` input ids.
        outputs: ``(B, m)`` answer ids, read at the ``m`` appended output positions.
        query: id of the placeholder token at the output positions.

    Returns:
        ``inputs`` ``(B, n + m)`` and ``targets`` ``(B, n + m)`` (``IGNORE`` on the input part).
    """
    b, m = outputs.shape
    placeholders = torch.full((b, m), query, dtype=torch.long)
    ignored = torch.full_like(inputs, IGNORE)
    return {"inputs": torch.cat((inputs, placeholders), dim=1), "targets": torch.cat((ignored, outputs), dim=1)}
