"""The tunables of :func:`posenc.attention`'s backend choice and block sizes, read at every call.

Set them on this module and the next call uses them::

    import posenc.attention_settings as settings
    settings.FLEX_CPU_MIN_ELEMENTS = 2**26   # let ``auto`` compile FlexAttention on CPU for calls this large

Element counts are of the dense ``(B|1, H, Tq, Tk)`` mask (or scores) that ``dense`` would build; one element is 4
bytes in float32. :func:`posenc.explain` names the setting behind each choice it makes.
"""

from __future__ import annotations

import math

__all__ = ["CHUNK_ELEMENTS", "DENSE_MAX_ELEMENTS", "FLEX_CPU_MIN_ELEMENTS", "FLEX_MIN_ELEMENTS", "TERMS_BUDGET_SHARE",
           "TERMS_MIN_ROWS"]

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
