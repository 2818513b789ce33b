"""The tunables of :func:`posenc.attention`'s backend choice and block sizes, read at every call.

Set them on this module and the next call uses them::

    import posenc.attention_settings as settings
    settings.FLEX_CPU_MIN_ELEMENTS = 2**26   # let ``auto`` compile FlexAttention on CPU for calls this large

Element counts are of the dense ``(B|1, H, Tq, Tk)`` mask (or scores) that ``dense`` would build; one element is 4
bytes in float32. :func:`posenc.explain` names the setting behind each choice it makes. The backends read each
setting through :func:`get`, which checks it: a value of the wrong type or range raises a ``TypeError`` or
``ValueError`` naming the setting and its default, never a bare ``ZeroDivisionError`` deep in ``chunked``.
"""

from __future__ import annotations

import math
import sys

import torch

from posenc._checks import check_int, check_number

__all__ = ["CHUNK_ELEMENTS", "DENSE_MAX_ELEMENTS", "FLEX_CPU_MIN_ELEMENTS", "FLEX_MIN_ELEMENTS", "TERMS_BUDGET_SHARE",
           "TERMS_MIN_ROWS", "get"]

# Above this many mask elements (64 MiB in float32) ``auto`` leaves ``dense`` for ``chunked`` (or ``flex``).
DENSE_MAX_ELEMENTS: int = 2**24

# On GPU, smaller calls (decode steps) stay on ``dense``: no compile, no shape churn.
FLEX_MIN_ELEMENTS: int = 2**20

# ``auto`` never picks compiled FlexAttention on CPU by default: torch 2.13's CPU flex template fails to compile some
# score_mods (inductor C++ error "cur_qSplitSize<N> was not declared"; seen for sandwich, and for every bias over
# (B, T) positions with Tq != Tk). Set a finite number of mask elements to opt in (2**26 pays for the ~30 s compile).
FLEX_CPU_MIN_ELEMENTS: float = math.inf

# ``chunked`` sizes its query blocks so that one block's mask holds about this many elements (at least 16 rows).
CHUNK_ELEMENTS: int = 2**22

# With attention terms the budget is ``CHUNK_ELEMENTS // TERMS_BUDGET_SHARE``, shared by the terms' ``pair_tensors``
# score-sized tensors of one block, and blocks may be as small as ``TERMS_MIN_ROWS`` rows: the backward pass keeps
# nothing but one block and the gradients, so smaller blocks do pay (Shaw at T=4096: 8 rows cost 4 MiB beyond the
# output and gradients, 28 rows 15 MiB), at some time per block.
TERMS_BUDGET_SHARE: int = 4
TERMS_MIN_ROWS: int = 4

# What each setting may hold: block sizes and shares divide and count rows (ints >= 1); the thresholds are only
# compared with element counts (numbers >= 0, math.inf meaning "never").
_BLOCK_SIZES = ("CHUNK_ELEMENTS", "TERMS_BUDGET_SHARE", "TERMS_MIN_ROWS")
_THRESHOLDS = ("DENSE_MAX_ELEMENTS", "FLEX_MIN_ELEMENTS", "FLEX_CPU_MIN_ELEMENTS")
_DEFAULTS = {name: globals()[name] for name in (*_BLOCK_SIZES, *_THRESHOLDS)}
_THIS = sys.modules[__name__]


def get(name: str) -> int | float:
    """The current value of setting ``name``, after checking it (see the comments above each setting).

    Raises:
        TypeError: the setting holds something other than an int (block sizes) or a number (thresholds).
        ValueError: it is out of range (a block size < 1, a threshold < 0 or NaN).
    """
    value = getattr(_THIS, name)  # (not globals(): dynamo cannot trace that builtin)
    if torch.compiler.is_compiling():  # checked when the call ran eagerly; dynamo traces the plain read
        return value
    what = f"posenc.attention_settings.{name}"
    hint = f"Its default is {_DEFAULTS[name]}."
    if name in _BLOCK_SIZES:
        return check_int(value, what, minimum=1, hint=hint)
    if value == math.inf and not isinstance(value, bool):
        return value
    return check_number(value, what, minimum=0, hint=f"math.inf means never. {hint}")
