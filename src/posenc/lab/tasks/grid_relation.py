"""Grid relation: two shapes on a grid of patches; is A left of / above B (or how far apart)? Trained on 8x8 grids.

An encoder reads a question token, then the ``side x side`` patches of a small synthetic image in row-major order,
and answers at the question token::

    left?  .  .  .  .        the answer at position 0: "yes" (A's column 1 < B's column 3)
           .  A  .  .
           .  .  .  B
           .  .  .  .

The question is one of ``left?`` (is A's column smaller than B's?), ``above?`` (is A's row smaller?) and, when asked
for, ``dist?`` (the Manhattan distance between A and B, clipped: ``d1 d2 d3 d4+``). The batch carries ``coordinates``
``(B, T, 2)`` as ``(row, col)``: patches at their cell, the question token at ``(-1, -1)`` outside the grid (as a CLS
token, see :func:`posenc.encodings.grid2d.grid_coordinates`). The 2-D encodings (``sinusoidal_2d``, ``axial_rope``,
``rope_mixed``) read them; every other encoding sees the flattened positions ``0 .. side*side`` (1-D baseline).
Evaluating at 12x12 and 16x16 is resolution extrapolation: the same relations at rows and columns never seen in
training, and, for flattened positions, a row stride (``side``) never seen either.

Shortcuts ruled out:

- **Bag of patches.** Every image holds one A, one B and ``side*side - 2`` empty patches, and each yes/no image comes
  with probability equal to that of its A<->B swap, which has the opposite answer. So a model blind to positions
  (``nope`` in an encoder is permutation-invariant at the question token) scores exactly chance: 50% on yes/no
  questions, 25% on distances (the four distance classes are drawn uniformly).
- **Ties.** ``left?`` questions put A and B in different columns, ``above?`` questions in different rows, so the
  answer is never decided by a convention for equal coordinates.
- **Flat order.** With flattened positions ``above?`` follows from the order of A and B (rows differ), but ``left?``
  needs the column ``p mod side``; on ``left?`` questions the flat order agrees with the answer only by chance
  (rows are drawn independently of the label), so it scores about 56% at side 8.

Example (side 2, ``left?``): inputs ``left? A . . B`` -> target ``yes`` at position 0, ``_`` elsewhere;
coordinates ``(-1,-1) (0,0) (0,1) (1,0) (1,1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from posenc.encodings.grid2d import grid_coordinates
from posenc.lab.tasks.base import IGNORE, Task, register_task

__all__ = ["GridRelation", "QUESTIONS", "VOCAB"]

QUESTIONS = ("left", "above", "distance")
MAX_DISTANCE = 4  # distance answers are d1, d2, d3 and d4+ (4 or more)
PATCHES = (".", "A", "B")
QUESTION_TOKENS = {"left": "left?", "above": "above?", "distance": "dist?"}
ANSWERS = ("yes", "no") + tuple(f"d{d}" for d in range(1, MAX_DISTANCE)) + (f"d{MAX_DISTANCE}+",)
VOCAB = PATCHES + tuple(QUESTION_TOKENS.values()) + ANSWERS
TOKEN = {w: i for i, w in enumerate(VOCAB)}
PREFIX = 1  # the question token before the patches


def _distinct_pair(generator: torch.Generator, n: int, side: int) -> tuple[Tensor, Tensor]:
    """Two different values in ``0 .. side-1`` per row, as ``(smaller, larger)``, each ``(n,)``."""
    a = torch.randint(side, (n,), generator=generator)
    b = (a + torch.randint(1, side, (n,), generator=generator)) % side  # uniform over ordered distinct pairs
    return torch.minimum(a, b), torch.maximum(a, b)


@register_task("grid_relation")
class GridRelation(Task):
    """Encoder: is shape A left of / above shape B on a ``side x side`` grid of patches (``length`` = ``side``)?

    Tokens: the question (``left?``, ``above?`` or ``dist?``) then ``side * side`` patches (``.``, ``A``, ``B``)
    row-major; the answer (``yes``/``no``, or ``d1``..``d4+``) is read at position 0. Labels are balanced: each
    question type is equally likely, yes/no 50/50, distance classes uniform (A uniform, then B uniform among the cells
    at the drawn distance class from A).

    Args:
        questions: the question types drawn, a non-empty subset of ``("left", "above", "distance")``. The default
            asks only the two yes/no relations; add ``"distance"`` for the clipped Manhattan distance.
    """

    kind = "encoder"
    vocab = VOCAB
    train_lengths = (8, 8)
    eval_lengths = (8, 12, 16)
    min_length = 2  # two columns (and two rows) so that A and B can differ in both
    coordinate_axes = ("row", "col")
    summary = "is shape A left of / above shape B in a grid of patches (2-D positions; train 8x8, eval up to 16x16)"

    def __init__(self, *, questions: Sequence[str] = ("left", "above")) -> None:
        if isinstance(questions, str) or not isinstance(questions, Sequence):
            raise TypeError(f"task 'grid_relation': questions must be a sequence of names from {QUESTIONS}, e.g. "
                            f"('left', 'above'); got {questions!r}.")
        unknown = [q for q in questions if q not in QUESTIONS]
        if unknown or not questions or len(set(questions)) != len(questions):
            raise ValueError(f"task 'grid_relation': questions must be distinct names from {QUESTIONS} (at least "
                             f"one); got {tuple(questions)!r}.")
        self.questions = tuple(questions)

    def sequence_length(self, length: int) -> int:
        return PREFIX + length * length

    def coordinates(self, side: int) -> Tensor:
        """``(row, col)`` of every token: the question at ``(-1, -1)``, then the grid; int64 ``(1 + side*side, 2)``."""
        return grid_coordinates(side, side, prefix_tokens=PREFIX)

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        side, n = length, batch_size
        kind = torch.randint(len(self.questions), (n,), generator=generator)  # index into self.questions
        yes = torch.rand(n, generator=generator) < 0.5

        # yes/no questions: the asked axis gets two different values; A takes the smaller one iff the answer is yes
        lo, hi = _distinct_pair(generator, n, side)
        free_a = torch.randint(side, (n,), generator=generator)  # the other axis, independent of the label
        free_b = torch.randint(side, (n,), generator=generator)
        a_on, b_on = torch.where(yes, lo, hi), torch.where(yes, hi, lo)
        is_left = torch.tensor([q == "left" for q in self.questions])[kind]
        row_a, col_a = torch.where(is_left, free_a, a_on), torch.where(is_left, a_on, free_a)
        row_b, col_b = torch.where(is_left, free_b, b_on), torch.where(is_left, b_on, free_b)
        answer = torch.where(yes, TOKEN["yes"], TOKEN["no"])

        if "distance" in self.questions:
            cell_a, cell_b, dist_class = self._distance_pairs(generator, n, side)
            is_dist = torch.tensor([q == "distance" for q in self.questions])[kind]
            row_a, col_a = torch.where(is_dist, cell_a // side, row_a), torch.where(is_dist, cell_a % side, col_a)
            row_b, col_b = torch.where(is_dist, cell_b // side, row_b), torch.where(is_dist, cell_b % side, col_b)
            answer = torch.where(is_dist, TOKEN["d1"] + dist_class - 1, answer)

        patches = torch.full((n, side * side), TOKEN["."], dtype=torch.long)
        rows = torch.arange(n)
        patches[rows, row_a * side + col_a] = TOKEN["A"]
        patches[rows, row_b * side + col_b] = TOKEN["B"]
        question = torch.tensor([TOKEN[QUESTION_TOKENS[q]] for q in self.questions])[kind]
        inputs = torch.cat((question[:, None], patches), dim=1)  # (B, 1 + side*side)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, 0] = answer
        coords = self.coordinates(side).expand(n, -1, -1).clone()  # (B, T, 2)
        return {"inputs": inputs, "targets": targets, "coordinates": coords}

    @staticmethod
    def _distance_pairs(generator: torch.Generator, n: int, side: int) -> tuple[Tensor, Tensor, Tensor]:
        """Cells of A and B ``(n,)`` (flat indices) and their distance class ``(n,)`` in ``1 .. MAX_DISTANCE``.

        A is uniform; the class is uniform among those reachable from A (all four once ``side >= 5``); B is uniform
        among the cells in that class.
        """
        cells = torch.arange(side * side)
        cell_a = torch.randint(side * side, (n,), generator=generator)
        rows, cols = cells[None] // side, cells[None] % side  # (1, side*side)
        dist = (rows - cell_a[:, None] // side).abs() + (cols - cell_a[:, None] % side).abs()
        dist_class = dist.clamp(max=MAX_DISTANCE)  # (n, side*side); 0 only at A itself
        reachable = torch.stack([(dist_class == d).any(dim=1) for d in range(1, MAX_DISTANCE + 1)], dim=1)
        chosen = torch.multinomial(reachable.float(), 1, generator=generator).squeeze(1) + 1  # (n,)
        cell_b = torch.multinomial((dist_class == chosen[:, None]).float(), 1, generator=generator).squeeze(1)
        return cell_a, cell_b, chosen
