"""Flip-flop language modelling (Liu et al. 2023, arXiv 2306.00946; used by CoPE, arXiv 2405.18719)."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import IGNORE, Task, register_task

__all__ = ["FlipFlop"]

WRITE, IGNORE_OP, READ = 0, 1, 2  # instruction tokens w, i, r; bits are tokens 3 (0) and 4 (1)


@register_task("flip_flop")
class FlipFlop(Task):
    """Decoder: ``length`` instructions ``w b`` (write bit b), ``i b`` (ignore) or ``r b`` (read); after every ``r`` the
    model must output the most recently *written* bit. The first instruction writes, the last reads.

    Instructions are ignore / write / read with probabilities ``p_ignore`` and ``(1 - p_ignore) / 2`` each (the
    paper's FFL(0.8) by default), so the model must look back past a variable number of distractors.

    Example (length 4):
        inputs  ``w 1 i 0 r 1 r``, targets ``_ _ _ _ 1 _ 1`` (only the bits after a read are scored).
    """

    kind = "decoder"
    vocab = ("w", "i", "r", "0", "1")
    train_lengths = (8, 32)
    eval_lengths = (32, 64, 128)
    min_length = 2
    paper = "2306.00946"
    summary = "remember the last written bit across ignored ones (flip-flop; CoPE's in/out-of-distribution test)"

    def __init__(self, *, p_ignore: float = 0.8) -> None:
        if not 0.0 <= p_ignore < 1.0:
            raise ValueError(f"task 'flip_flop': p_ignore must be in [0, 1); got {p_ignore}.")
        self.p_ignore = p_ignore

    def sequence_length(self, length: int) -> int:
        return 2 * length - 1

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        u = torch.rand(batch_size, length, generator=generator)
        half = (1 - self.p_ignore) / 2
        ops = torch.where(u < self.p_ignore, IGNORE_OP, torch.where(u < self.p_ignore + half, WRITE, READ))
        ops[:, 0], ops[:, -1] = WRITE, READ
        bits = torch.randint(0, 2, (batch_size, length), generator=generator)
        memory = bits[:, 0].clone()
        for t in range(length):  # a read's bit is the last written one
            written = ops[:, t] == WRITE
            memory = torch.where(written, bits[:, t], memory)
            bits[:, t] = torch.where(ops[:, t] == READ, memory, bits[:, t])
        seq = torch.stack((ops, bits + 3), dim=2).reshape(batch_size, 2 * length)  # (B, 2n): op, bit, op, bit ...
        targets = seq[:, 1:].clone()
        is_read_bit = torch.zeros_like(seq, dtype=torch.bool)
        is_read_bit[:, 1::2] = ops == READ
        targets[~is_read_bit[:, 1:]] = IGNORE
        return {"inputs": seq[:, :-1], "targets": targets}
