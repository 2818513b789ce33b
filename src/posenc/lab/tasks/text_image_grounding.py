"""Text-image grounding: one caption token names a cell (``cell_2_5``), then the image's patches (M-RoPE vs flat).

An encoder reads a 2-token caption, a word then one *query* token naming a cell, then ``side x side`` colour patches
row-major, and answers at the query token (position 1). Each nameable cell is one vocabulary entry (``cell_R_C`` for
``R, C < 16``), so the answer is one hop: the query attends to the patch at a fixed offset from itself and reads its
colour. (An earlier version spelled the cell as ``r2 c5 ?``; the ``?`` then had to gather the row and column tokens
before it could look the patch up, two hops, and no encoding learned it in 800 steps.) Two questions (``question``):

- ``"colour"`` (default): ``what cell_1_2`` -> the colour of patch (row 1, col 2), one of 4 classes;
- ``"match"``: ``red cell_1_2`` -> ``yes``/``no`` (balanced): is that patch red? (the issue's phrasing; one bit per
  example, and the query also reads the caption word just before it)::

    what cell_1_2  [g] [b] [y] [r]      answer at "cell_1_2": the colour of (row 1, col 2)
                   [b] [r] [r] [g]      -> red
                   ...

The batch carries ``coordinates`` ``(B, T, 3)`` as ``(time, height, width)``, Qwen2-VL's layout built by
:func:`posenc.encodings.mrope.mrope_position_ids`: caption token ``p`` at ``(p, p, p)``, patch ``(r, c)`` at
``(2, 2 + r, 2 + c)``. ``mrope`` reads them; every other encoding sees the flat positions ``0 .. 2 + side*side - 1``.
The query sits *before* the image so that the cell it names is at the fixed M-RoPE offset ``(1, 1 + r, 1 + c)``
from it whatever the side (after the image it would start at ``2 + side`` and the offset would depend on the side);
in flat positions the offset is ``1 + side*r + c``, which changes with the side. Trained on sides 4..6 (so flat
positions cannot memorise one raster) and evaluated on 6, 8 and 12. By default (``max_named=6``, the largest training
side) questions name only rows and columns 0..5, the query tokens seen in training, so a larger image tests finding
a *known* cell among more patches. With ``max_named=None`` questions name any cell (sides up to 16), so larger grids
also ask about query tokens never seen in training (their embeddings are untrained).

Note on M-RoPE's sections (it matters here): with Qwen2-VL's split (``default_mrope_section``: 1/4 time, 3/8 height,
3/8 width of the frequencies, consecutively) the width axis gets the slowest frequencies, ``base^(-5/8)`` = 0.003 rad
per column at base 10000 whatever the head size, and height starts at 0.1 rad per row; the fastest quarter goes to
time, which is the same for every patch of an image. So the default ``mrope`` can barely tell columns apart: at
dim 64 / 4 heads it stays at the label prior (25%) even on one 4x4 side after 800 steps, where 1-D ``rope`` reaches
100% in 400. With ``base=10`` it learns 4x4 (97% in 800 steps), with ``base=10, mrope_section=(0, 4, 4)`` (no time
section, height and width share the spectrum) 100%. On sides 4..6 the default ``mrope`` scores exactly like ``nope``.
The lab builds ``mrope`` with its defaults (``ModelConfig`` carries no encoding options), so that is what this task
measures by default.

Shortcuts ruled out:

- **Colour counts.** Each image holds the four colours as equally often as the grid allows (exactly
  ``side*side / 4`` each when 4 divides it, e.g. at 4, 6, 8, 12), shuffled; the named cell is
  uniform, so its colour is (nearly) uniform and a model blind to positions (``nope``) scores 25% on ``colour`` and
  50% on ``match`` (the named colour is the cell's own (yes) or a uniformly drawn other one (no), so the bag of
  tokens has the same distribution under both answers). When 4 does not divide ``side*side`` the colours with a
  spare patch are slightly more likely.
- **Caption words vs patches.** Patch tokens (``[red]``) are distinct from caption words (``red``), so matching must go
  through the named position, not through token identity alone.
- **Query identity alone.** The query token says which cell, never which colour: the image is reshuffled in every
  example, so only the patch's position relative to the query tells the answer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from posenc._checks import check_int
from posenc.encodings.mrope import mrope_position_ids
from posenc.lab.tasks.base import IGNORE, Task, register_task

__all__ = ["CAPTION", "COLOURS", "QUESTIONS", "TextImageGrounding", "VOCAB", "cell_token"]

COLOURS = ("red", "green", "blue", "yellow")
MAX_SIDE = 16  # one query token per cell (row, col) with row, col < MAX_SIDE
QUESTIONS = ("colour", "match")
VOCAB = (COLOURS + tuple(f"[{c}]" for c in COLOURS) + ("what", "yes", "no")
         + tuple(f"cell_{r}_{c}" for r in range(MAX_SIDE) for c in range(MAX_SIDE)))
TOKEN = {w: i for i, w in enumerate(VOCAB)}
CAPTION = 2  # colour (or "what"), then the query token naming the cell
ANSWER_AT = CAPTION - 1  # the query token


def cell_token(row: int, col: int) -> str:
    """The query token naming cell ``(row, col)``, e.g. ``cell_1_2``."""
    return f"cell_{row}_{col}"


@register_task("text_image_grounding")
class TextImageGrounding(Task):
    """Encoder: ``what|colour cell_R_C`` then a ``side x side`` image of colour patches (``length`` = ``side``).

    The answer is read at the query token ``cell_R_C`` (position 1): the named cell's colour (``question="colour"``)
    or whether it has the caption's colour (``question="match"``, ``yes``/``no`` balanced).

    Args:
        question: ``"colour"`` (4 classes, default) or ``"match"`` (yes/no).
        max_named: questions name rows and columns ``< max_named`` (capped at the grid side; at most 16, the cells
            with a query token). Default 6, the largest training side: a larger image asks only about rows and
            columns seen in training. ``None``: any cell.
    """

    kind = "encoder"
    vocab = VOCAB
    train_lengths = (4, 6)
    eval_lengths = (6, 8, 12)
    min_length = 2
    coordinate_axes = ("time", "height", "width")
    summary = "the colour of the patch one query token names by (row, col): M-RoPE vs flat (train sides 4-6, eval 12)"
    learned_bar = 0.75  # four colours: chance is 0.25

    def __init__(self, *, question: str = "colour", max_named: int | None = 6) -> None:
        if question not in QUESTIONS:
            raise ValueError(f"task 'text_image_grounding': question must be one of {QUESTIONS} (the named cell's "
                             f"colour, or yes/no for a named colour); got {question!r}.")
        if max_named is not None:
            check_int(max_named, "task 'text_image_grounding': max_named", minimum=1, maximum=MAX_SIDE,
                      hint="Questions name rows and columns below it (only those cells have query tokens); None "
                           "names any cell.")
        self.question = question
        self.max_named = max_named

    def check_length(self, length: int) -> None:
        super().check_length(length)
        if length > MAX_SIDE:
            raise ValueError(f"task 'text_image_grounding': cells are named by query tokens cell_0_0 .. "
                             f"cell_{MAX_SIDE - 1}_{MAX_SIDE - 1}, so the grid side must be <= {MAX_SIDE}; "
                             f"got {length}.")

    def sequence_length(self, length: int) -> int:
        return CAPTION + length * length

    def coordinates(self, side: int) -> Tensor:
        """``(time, height, width)`` of every token, int64 ``(2 + side*side, 3)`` (Qwen2-VL's rule for one image)."""
        return mrope_position_ids([CAPTION, (1, side, side)])

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        self.check_length(length)
        side, n = length, batch_size
        cells = side * side
        # balanced colours: as equal counts as the grid allows; which colours get the spare patches is random
        spare = torch.rand(n, len(COLOURS), generator=generator).argsort(dim=1)  # (n, 4) a random order of colours
        pool = torch.arange(cells) % len(COLOURS)  # (cells,) equal counts, the first (cells % 4) colours once more
        image = spare.gather(1, pool.expand(n, -1))  # (n, cells) colour indices
        image = image.gather(1, torch.rand(n, cells, generator=generator).argsort(dim=1))  # shuffle the patches

        named = side if self.max_named is None else min(side, self.max_named)
        row = torch.randint(named, (n,), generator=generator)
        col = torch.randint(named, (n,), generator=generator)
        actual = image[torch.arange(n), row * side + col]  # (n,) colour index of the named cell
        if self.question == "colour":
            first = torch.full((n,), TOKEN["what"])
            answer = actual + TOKEN[COLOURS[0]]
        else:
            yes = torch.rand(n, generator=generator) < 0.5
            other = (actual + torch.randint(1, len(COLOURS), (n,), generator=generator)) % len(COLOURS)
            first = torch.where(yes, actual, other) + TOKEN[COLOURS[0]]
            answer = torch.where(yes, TOKEN["yes"], TOKEN["no"])
        query = TOKEN[cell_token(0, 0)] + row * MAX_SIDE + col  # (n,) the token cell_{row}_{col}
        caption = torch.stack((first, query), dim=1)  # (n, CAPTION)
        inputs = torch.cat((caption, image + TOKEN[f"[{COLOURS[0]}]"]), dim=1)  # (n, CAPTION + cells)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, ANSWER_AT] = answer
        coords = self.coordinates(side).expand(n, -1, -1).clone()  # (n, T, 3)
        return {"inputs": inputs, "targets": targets, "coordinates": coords}
