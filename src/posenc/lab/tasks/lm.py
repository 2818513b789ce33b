"""Byte-level language modelling on text every Python installation ships, evaluated past the training length.

The corpus is the English prose of ``pydoc_data.topics`` (the Python reference's topic texts) and a fixed list of
standard-library modules, or any ``text=FILE_OR_DIR``. Each document is split at 90% of its bytes: the heads train,
the tails validate, so the split is fixed and does not depend on a seed. Its SHA-256 is recorded
(:attr:`LanguageModel.content_hash`).

Evaluation follows the ALiBi paper (Press et al. 2022, arXiv 2108.12409): the same validation text is cut into
non-overlapping windows of each evaluation length and every token is scored; perplexity is ``exp`` of the mean loss.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path

import torch
from torch import Tensor

from posenc._checks import check_int
from posenc.lab.tasks.base import Task, register_task

__all__ = ["LanguageModel", "load_corpus"]

STDLIB_MODULES = ("argparse.py", "dataclasses.py", "difflib.py", "functools.py", "heapq.py", "textwrap.py",
                  "fractions.py", "statistics.py", "shlex.py", "bisect.py", "json/decoder.py", "json/encoder.py")
TRAIN_SHARE = 0.9


def _documents(text: str | os.PathLike | None) -> list[tuple[str, bytes]]:
    if text is None:
        import pydoc_data.topics

        docs = [(f"topics/{k}", v.encode()) for k, v in sorted(pydoc_data.topics.topics.items())]
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        docs += [(name, (stdlib / name).read_bytes()) for name in STDLIB_MODULES if (stdlib / name).is_file()]
        return docs
    path = Path(text)
    if path.is_file():
        return [(path.name, path.read_bytes())]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"task 'lm': the folder {path} holds no files to read text from.")
        return [(str(p.relative_to(path)), p.read_bytes()) for p in files]
    raise ValueError(f"task 'lm': text={str(text)!r} is neither a file nor a folder. Pass a text file or a folder "
                     f"of them, or leave it unset for the built-in corpus (pydoc topics + standard library).")


def load_corpus(text: str | os.PathLike | None = None) -> tuple[Tensor, Tensor, str]:
    """``(train_bytes, validation_bytes, sha256)``: uint8-valued int64 tensors and the hash of all documents."""
    digest = hashlib.sha256()
    train, valid = [], []
    for name, data in _documents(text):
        digest.update(name.encode() + b"\0" + data)
        cut = int(len(data) * TRAIN_SHARE)
        train.append(data[:cut])
        valid.append(data[cut:])
    to_tensor = lambda parts: torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8).long()  # noqa: E731
    return to_tensor(train), to_tensor(valid), digest.hexdigest()


@register_task("lm")
class LanguageModel(Task):
    """Decoder: predict the next byte. ``length`` is the window length in bytes.

    Training draws random windows from the training text; evaluation reads the same first ``eval_tokens`` bytes of
    validation text as non-overlapping windows at every length (perplexity at 1x, 2x, 4x, 8x and 16x the training
    length by default).

    Args:
        text: a file or folder to read instead of the built-in corpus.
        eval_tokens: validation bytes scored at each evaluation length (rounded down to whole windows).

    Example:
        >>> task = LanguageModel()
        >>> batch = task.sample_batch(torch.Generator().manual_seed(0), 2, 8)
        >>> bytes(batch["inputs"][0].tolist())    # e.g. b'the argu'
        >>> bytes(batch["targets"][0].tolist())   # b'he argum': the next byte at every position
    """

    kind = "decoder"
    vocab = tuple(f"<{i:02x}>" if not 32 <= i < 127 else chr(i) for i in range(256))
    train_lengths = (64, 64)
    eval_lengths = (64, 128, 256, 512, 1024)
    metric = "perplexity"
    paper = "2108.12409"
    summary = "byte-level LM on pydoc topics + stdlib; perplexity at 1x..16x the training length (ALiBi protocol)"
    learned_bar = 0.6  # of the corpus's byte-unigram perplexity (25.3 on the built-in corpus: bar 15.2)

    def __init__(self, *, text: str | None = None, eval_tokens: int = 16384) -> None:
        check_int(eval_tokens, "task 'lm': eval_tokens", minimum=1)
        self.text = text
        self.eval_tokens = eval_tokens
        self.train, self.valid, self.content_hash = load_corpus(text)

    def unigram_perplexity(self) -> float:
        """Validation perplexity of the byte-unigram model of the training text (add-one smoothing): no context."""
        counts = torch.bincount(self.train, minlength=256).double() + 1.0
        log_p = (counts / counts.sum()).log()
        return float((-log_p[self.valid].mean()).exp())

    def bar(self) -> float:
        """A model that learned uses context: its perplexity is at most 0.6x the unigram model's."""
        return self.learned_bar * self.unigram_perplexity()

    @classmethod
    def bar_text(cls) -> str:
        return (f"perplexity <= {cls.learned_bar:g}x the corpus's byte-unigram perplexity in distribution "
                f"(built-in corpus: <= 15.2)")

    def decode(self, ids: Tensor | list[int]) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else ids
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def check_length(self, length: int) -> None:
        super().check_length(length)
        if length + 1 > len(self.train):
            raise ValueError(f"task 'lm': length {length} needs more than the {len(self.train)} training bytes.")

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        starts = torch.randint(0, len(self.train) - length, (batch_size,), generator=generator)  # (B,)
        idx = starts[:, None] + torch.arange(length + 1)  # (B, T + 1)
        window = self.train[idx]
        return {"inputs": window[:, :-1], "targets": window[:, 1:]}

    def eval_batches(self, generator: torch.Generator, batch_size: int, length: int, n_batches: int):
        """Non-overlapping windows of ``length`` over the first ``eval_tokens`` validation bytes (no randomness)."""
        self.check_length(length)
        n_windows = min(self.eval_tokens, len(self.valid) - 1) // length
        if n_windows == 0:
            raise ValueError(f"task 'lm': evaluation length {length} is longer than the {self.eval_tokens} "
                             f"validation bytes scored; raise eval_tokens or lower the length.")
        for first in range(0, n_windows, batch_size):
            starts = torch.arange(first, min(first + batch_size, n_windows)) * length  # (B,)
            idx = starts[:, None] + torch.arange(length + 1)  # (B, T + 1)
            window = self.valid[idx]
            yield {"inputs": window[:, :-1], "targets": window[:, 1:]}
