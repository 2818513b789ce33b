"""Text-image grounding: a caption names a cell and a colour ("red row 02 col 05 ?"), then the image's patches.

An encoder reads an 8-token caption, then ``side x side`` colour patches row-major, and answers ``yes``/``no`` at the
caption's ``?``: is the patch at that row and column of that colour? Rows and columns are written as two digit tokens
(``0 2`` for row 2, 0-based), so every cell of grids up to 100x100 can be named::

    red row 0 1 col 0 2 ?   [g] [b] [y] [r]      answer at "?": is (row 1, col 2) red?
                            [b] [r] [r] [g]      -> yes
                            ...

The batch carries ``coordinates`` ``(B, T, 3)`` as ``(time, height, width)``, Qwen2-VL's layout built by
:func:`posenc.encodings.mrope.mrope_position_ids`: caption token ``p`` at ``(p, p, p)``, patch ``(r, c)`` at
``(8, 8 + r, 8 + c)``. ``mrope`` reads them; every other encoding sees the flat positions ``0 .. 8 + side*side - 1``.
Trained on 8x8 images and evaluated on 8x8, 12x12 and 16x16. By default (``max_named=8``) questions name only rows and
columns 0..7, the numbers seen in training, so a larger image tests finding a *known* cell among more patches: in
flat positions cell ``(r, c)`` moves from ``8 + 8r + c`` to ``8 + side*r + c``, in M-RoPE it stays at
``(8, 8 + r, 8 + c)``. With ``max_named=None`` questions name any cell, so larger grids also ask about rows and
columns never named in training (their tens digit ``1`` never appeared there).

Shortcuts ruled out:

- **Colour counts.** Each image holds the four colours as equally often as the grid allows (exactly
  ``side*side / 4`` each when 4 divides it, e.g. at 8, 12, 16), shuffled; the named cell is uniform and the named
  colour is its own (yes) or a uniformly drawn other one (no). So the bag of tokens (caption and patches) has the
  same distribution under both answers, and a model blind to positions (``nope``) scores exactly 50% (when 4 does
  not divide ``side*side`` the colours with a spare patch are named slightly more often in yes-questions).
- **Caption words vs patches.** Patch tokens (``[red]``) are distinct from caption words (``red``), so matching must go
  through the named position, not through token identity alone.
- **Row vs column.** ``row 0 2 col 0 5`` and ``row 0 5 col 0 2`` hold the same tokens; only order tells them apart.
"""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.encodings.mrope import mrope_position_ids
from posenc.lab.tasks.base import IGNORE, Task, register_task

__all__ = ["CAPTION", "COLOURS", "TextImageGrounding", "VOCAB"]

COLOURS = ("red", "green", "blue", "yellow")
DIGITS = tuple(str(d) for d in range(10))
VOCAB = COLOURS + tuple(f"[{c}]" for c in COLOURS) + ("row", "col", "?", "yes", "no") + DIGITS
TOKEN = {w: i for i, w in enumerate(VOCAB)}
CAPTION = 8  # colour, "row", 2 digits, "col", 2 digits, "?"
ANSWER_AT = CAPTION - 1  # the "?" token
MAX_SIDE = 100  # two digits per number


@register_task("text_image_grounding")
class TextImageGrounding(Task):
    """Encoder: ``colour row d d col d d ?`` then a ``side x side`` image of colour patches (``length`` = ``side``).

    The answer (``yes``/``no``, balanced) is read at the ``?`` (position 7): is the named cell of the named colour?

    Args:
        max_named: questions name rows and columns ``< max_named`` (capped at the grid side). Default 8, the training
            side: a larger image asks only about numbers seen in training. ``None``: any cell of the grid.
    """

    kind = "encoder"
    vocab = VOCAB
    train_lengths = (8, 8)
    eval_lengths = (8, 12, 16)
    min_length = 2
    coordinate_axes = ("time", "height", "width")
    summary = "does the caption's (colour, row, col) match the image? (M-RoPE vs flat positions; train 8x8, eval 16x16)"

    def __init__(self, *, max_named: int | None = 8) -> None:
        if max_named is not None and (isinstance(max_named, bool) or not isinstance(max_named, int) or max_named < 1):
            raise ValueError(f"task 'text_image_grounding': max_named must be a positive int (questions name rows and "
                             f"columns below it) or None (any cell); got {max_named!r}.")
        self.max_named = max_named

    def check_length(self, length: int) -> None:
        super().check_length(length)
        if length > MAX_SIDE:
            raise ValueError(f"task 'text_image_grounding': the caption writes rows and columns with two digits, so "
                             f"the grid side must be <= {MAX_SIDE}; got {length}.")

    def sequence_length(self, length: int) -> int:
        return CAPTION + length * length

    def coordinates(self, side: int) -> Tensor:
        """``(time, height, width)`` of every token, int64 ``(8 + side*side, 3)`` (Qwen2-VL's rule for one image)."""
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
        yes = torch.rand(n, generator=generator) < 0.5
        actual = image[torch.arange(n), row * side + col]
        other = (actual + torch.randint(1, len(COLOURS), (n,), generator=generator)) % len(COLOURS)
        colour = torch.where(yes, actual, other)

        digit = TOKEN["0"]
        caption = torch.stack((colour + TOKEN[COLOURS[0]], torch.full((n,), TOKEN["row"]), digit + row // 10,
                               digit + row % 10, torch.full((n,), TOKEN["col"]), digit + col // 10, digit + col % 10,
                               torch.full((n,), TOKEN["?"])), dim=1)  # (n, CAPTION)
        inputs = torch.cat((caption, image + TOKEN[f"[{COLOURS[0]}]"]), dim=1)  # (n, CAPTION + cells)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, ANSWER_AT] = torch.where(yes, TOKEN["yes"], TOKEN["no"])
        coords = self.coordinates(side).expand(n, -1, -1).clone()  # (n, T, 3)
        return {"inputs": inputs, "targets": targets, "coordinates": coords}
