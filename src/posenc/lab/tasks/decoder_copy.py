"""Copy and reverse with a decoder-only model (Kazemnejad et al. 2023, arXiv 2305.19466, "copy random" / "reverse").

The sequence is ``x_1 .. x_n > y_1 .. y_n .`` with ``y = x`` (copy) or ``y = reversed(x)`` (reverse). The model is
trained on ``n <= 20`` and tested on ``21..40``; only ``y`` and the final ``.`` are scored, and a row counts as right
when every scored token is (teacher-forced exact match, equal to greedy decoding's exact match).
"""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import IGNORE, Task, register_task

__all__ = ["DecoderCopy", "DecoderReverse"]

ALPHABET = 16
VOCAB = tuple(f"s{i}" for i in range(ALPHABET)) + (">", ".")
SEP, EOS = ALPHABET, ALPHABET + 1


class _DecoderSequenceTask(Task):
    kind = "decoder"
    vocab = VOCAB
    train_lengths = (1, 20)
    eval_lengths = (20, 30, 40)
    paper = "2305.19466"
    reverse = False

    def sequence_length(self, length: int) -> int:
        return 2 * length + 1  # inputs drop the last token of x > y .

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        x = torch.randint(0, ALPHABET, (batch_size, length), generator=generator)  # (B, n)
        y = x.flip(1) if self.reverse else x
        sep = torch.full((batch_size, 1), SEP, dtype=torch.long)
        eos = torch.full((batch_size, 1), EOS, dtype=torch.long)
        seq = torch.cat((x, sep, y, eos), dim=1)  # (B, 2n + 2)
        targets = seq[:, 1:].clone()
        targets[:, :length] = IGNORE  # the prompt x and the separator are given, not predicted
        return {"inputs": seq[:, :-1], "targets": targets}


@register_task("decoder_copy")
class DecoderCopy(_DecoderSequenceTask):
    """Decoder: copy ``n`` random symbols after ``>``, then ``.``.

    Example (length 2):
        inputs  ``s3 s7 > s3 s7``, targets ``_ _ s3 s7 .``.
    """

    summary = "decoder-only copy (Kazemnejad protocol: train n <= 20, test 21..40, exact match)"


@register_task("decoder_reverse")
class DecoderReverse(_DecoderSequenceTask):
    """Decoder: write ``n`` random symbols reversed after ``>``, then ``.``.

    Example (length 2):
        inputs  ``s3 s7 > s7 s3``, targets ``_ _ s7 s3 .``.
    """

    reverse = True
    summary = "decoder-only reverse (Kazemnejad protocol: train n <= 20, test 21..40, exact match)"
