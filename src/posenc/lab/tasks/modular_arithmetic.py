"""Modular arithmetic without brackets (Delétang et al. 2023, arXiv 2207.02098; the Ruoss et al. 2023 protocol)."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.lab.tasks.base import DeletangTask, register_task, with_output_positions

__all__ = ["ModularArithmetic"]

MODULUS = 5
OPS = ("+", "-", "*")


def evaluate_mod(terms: list[int], ops: list[str], modulus: int = MODULUS) -> int:
    """``t0 op0 t1 op1 ...`` with the usual precedence (``*`` before ``+``/``-``), modulo ``modulus``."""
    total, product = 0, terms[0]
    sign = 1
    for op, term in zip(ops, terms[1:]):
        if op == "*":
            product = product * term % modulus
        else:
            total = (total + sign * product) % modulus
            sign, product = (1 if op == "+" else -1), term
    return (total + sign * product) % modulus


@register_task("modular_arithmetic")
class ModularArithmetic(DeletangTask):
    """Encoder: ``n`` terms in ``0..4`` joined by ``+ - *`` (usual precedence), result mod 5 at one output position.

    Example (length 3):
        inputs  ``3 + 4 * 2 ?``, targets ``_ _ _ _ _ 1`` (3 + 8 = 11 = 1 mod 5).
    """

    vocab = ("0", "1", "2", "3", "4", "+", "-", "*", "?")
    summary = "evaluate + - * expressions mod 5 (Delétang/Ruoss protocol)"

    def sequence_length(self, length: int) -> int:
        return 2 * length

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        terms = torch.randint(0, MODULUS, (batch_size, length), generator=generator)  # (B, n)
        ops = torch.randint(0, len(OPS), (batch_size, max(length - 1, 0)), generator=generator)  # (B, n - 1)
        inputs = torch.empty(batch_size, 2 * length - 1, dtype=torch.long)
        inputs[:, 0::2] = terms
        inputs[:, 1::2] = ops + MODULUS
        answers = [evaluate_mod(t, [OPS[o] for o in op]) for t, op in zip(terms.tolist(), ops.tolist())]
        return with_output_positions(inputs, torch.tensor(answers, dtype=torch.long)[:, None], query=8)
