"""Counting programs (CoPE, arXiv 2405.18719): ``x ++ ;``, ``x = 0 ;``, ``pass ;`` statements, then ``print x``."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import IGNORE, Task, register_task

__all__ = ["Counting"]

VARIABLES = ("x", "y", "z", "u", "v")
MAX_COUNT = 31
VOCAB = tuple(str(i) for i in range(MAX_COUNT + 1)) + VARIABLES + ("++", "=", "pass", ";", "print", "<pad>")
STATEMENTS = {"inc": ("{v}", "++", ";"), "reset": ("{v}", "=", "0", ";"), "pass": ("pass", ";")}


@register_task("counting")
class Counting(Task):
    """Decoder: ``length`` statements on ``n_vars`` variables, then ``print v``; the answer is v's value.

    Statements are ``v ++ ;`` (increment, probability 1/2), ``v = 0 ;`` (reset, 1/10) and ``pass ;`` (2/5); every
    variable starts at 0 (a reset is forced before a count would pass 31). Counting statements since the last reset
    is a *contextual* position, which CoPE was built for. Rows are padded at the end with ``<pad>`` (never attended
    to by the answer, which comes before them in a causal model) to ``4 * length + 3`` tokens.

    Example (length 3, one variable):
        inputs  ``x ++ ; pass ; x ++ ; print x 2 <pad> ...`` without its last token, targets ``_ ... _ 2 _ ...``
        (only the printed value is scored).
    """

    kind = "decoder"
    vocab = VOCAB
    train_lengths = (4, 16)
    eval_lengths = (16, 32, 64)
    paper = "2405.18719"
    summary = "count increments since the last reset (CoPE's counting task)"

    def __init__(self, *, n_vars: int = 1) -> None:
        if not 1 <= n_vars <= len(VARIABLES):
            raise ValueError(f"task 'counting': n_vars must be in 1..{len(VARIABLES)}; got {n_vars}.")
        self.n_vars = n_vars

    def sequence_length(self, length: int) -> int:
        return 4 * length + 2  # the longest program (all resets), "print v", the answer; minus one for inputs

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        tok = {w: i for i, w in enumerate(VOCAB)}
        total = self.sequence_length(length) + 1
        seq = torch.full((batch_size, total), tok["<pad>"], dtype=torch.long)
        targets = torch.full((batch_size, total - 1), IGNORE, dtype=torch.long)
        for row in range(batch_size):
            values = [0] * self.n_vars
            words: list[str] = []
            for _ in range(length):
                var = int(torch.randint(self.n_vars, (1,), generator=generator))
                draw = int(torch.randint(10, (1,), generator=generator))
                kind = "inc" if draw < 5 else "reset" if draw == 5 else "pass"
                if kind == "inc" and values[var] == MAX_COUNT:
                    kind = "reset"
                values[var] = values[var] + 1 if kind == "inc" else 0 if kind == "reset" else values[var]
                words += [w.format(v=VARIABLES[var]) for w in STATEMENTS[kind]]
            asked = int(torch.randint(self.n_vars, (1,), generator=generator))
            words += ["print", VARIABLES[asked], str(values[asked])]
            seq[row, :len(words)] = torch.tensor([tok[w] for w in words])
            targets[row, len(words) - 2] = tok[words[-1]]
        return {"inputs": seq[:, :-1], "targets": targets}
