"""The one validator of integer and real-number arguments (sizes, counts, lengths, scales) used across posenc.

``check_int(value, "shaw: max_relative_position", minimum=1)`` returns ``value`` or raises a ``TypeError`` (not an
int; ``bool`` is refused although it subclasses ``int``, as is ``1.0``) or a ``ValueError`` (out of range) whose message
names the argument, says what was expected and what came in, and ends with the caller's hint. ``check_bool`` does
the same for flags (``bool("False")`` is ``True``, so only a real bool passes). Tensors are checked elsewhere
(:func:`posenc.base.check_integer_tensor`).
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["check_bool", "check_int", "check_number", "is_int", "is_number", "reads_values"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (a Python or NumPy int), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (int or float, Python or NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _extra(type_hint: str) -> str:
    return f" {type_hint.strip()}" if type_hint else ""


def _range(minimum, maximum, *, above=None) -> str:
    parts = [f"{op} {bound:g}" if isinstance(bound, float) else f"{op} {bound}"
             for op, bound in ((">", above), (">=", minimum), ("<=", maximum)) if bound is not None]
    return " and ".join(parts)


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None,
              hint: str = "", type_hint: str = "") -> int:
    """``value`` as an ``int`` if it is an integer in ``[minimum, maximum]`` (either bound optional).

    ``hint`` ends every message; ``type_hint`` only the one for a value of the wrong type (e.g. "In config.json
    write it without quotes.").

    Raises:
        TypeError: ``value`` is not an integer (floats and bools included).
        ValueError: it is out of range.
    """
    hint = f" {hint.strip()}" if hint else ""
    if not is_int(value):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}.{hint}{_extra(type_hint)}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int {_range(minimum, maximum)}; got {value}.{hint}")
    return value


def check_bool(value: Any, name: str, *, hint: str = "") -> bool:
    """``value`` if it is a ``bool``; anything else (``"False"``, ``0``, ``None``, a tensor) raises ``TypeError``.

    ``bool(value)`` would turn the string ``"False"`` into ``True`` and a list into a guess.
    """
    if not isinstance(value, bool):
        hint = f" {hint.strip()}" if hint else ""
        raise TypeError(f"{name} must be True or False (a bool); got {type(value).__name__} {value!r}.{hint}")
    return value


def check_number(value: Any, name: str, *, minimum: float | None = None, above: float | None = None,
                 maximum: float | None = None, hint: str = "", type_hint: str = "") -> float:
    """``value`` as a ``float`` if it is a finite real number (not a bool) ``>= minimum``, ``> above``, ``<= maximum``.

    Raises:
        TypeError: ``value`` is not a real number (a string, a bool, a tensor, ...).
        ValueError: it is NaN, infinite, or out of range.
    """
    hint = f" {hint.strip()}" if hint else ""
    if not is_number(value):
        raise TypeError(f"{name} must be a number; got {type(value).__name__} {value!r}.{hint}{_extra(type_hint)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value}.{hint}")
    if (minimum is not None and value < minimum) or (above is not None and value <= above) or \
            (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be a number {_range(minimum, maximum, above=above)}; got {value}.{hint}")
    return value


def reads_values(t: torch.Tensor) -> bool:
    """Whether a check may read ``t``'s values (a host sync): not while torch.compile traces (the values are symbolic)
    and not for a meta tensor (it has none; a forward on meta tensors computes shapes only). Checks that read values
    are skipped then, as they are under torch.compile."""
    import torch  # loaded already (t is a tensor); not at module scope, so that the CLI's help stays torch-free

    return t.device.type != "meta" and not torch.compiler.is_compiling()
