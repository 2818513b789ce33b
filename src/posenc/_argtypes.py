"""argparse ``type=`` helpers: numeric flags state their range, which ``--help`` shows and parsing enforces; JSON flags
say what object they expect.

A value out of range is a usage error (argparse prints the flag, the range and the value, and exits 2), never a
traceback or a silent success on nonsense. Use ``help=ranged("what it is", kind)`` to put the range in the help text.

Standard library only, and below the lab and the command line: the lab builds its flags from its dataclasses with
these (:mod:`posenc.lab.flags`) without importing the CLI, and every ``posenc`` subcommand uses the same ones
(through :mod:`posenc.cli.types`).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable

__all__ = ["UsageError", "float_in", "int_in", "json_object", "ranged"]


class UsageError(ValueError):
    """Arguments that are each valid but do not fit together (or a target a command must not write); ``posenc``
    exits 2 for it, as for argparse errors. A ``ValueError``, so library callers need not know it."""


def _bounds(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    def show(x):
        return str(x) if isinstance(x, int) else f"{x:g}"

    return f"{'(' if lo_open else '['}{show(lo)}, {show(hi)}{')' if hi_open else ']'}"


def int_in(lo: int, hi: int, *, even: bool = False) -> Callable[[str], int]:
    """An integer flag in ``[lo, hi]``; ``even``: a multiple of 2. Every range has a top: 10**30 steps is a typo."""
    text = ("an even integer " if even else "an integer ") + _bounds(lo, hi)

    def parse(value: str) -> int:
        try:
            number = int(value, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {text}; got {value!r}") from None
        if number < lo or number > hi or (even and number % 2):
            raise argparse.ArgumentTypeError(f"expected {text}; got {number}")
        return number

    parse.__name__ = "int"  # argparse names the type in its messages and the metavar in --help
    parse.range, parse.bounds = text, (lo, hi, False, False)  # type: ignore[attr-defined]
    return parse


def float_in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """A finite float flag between ``lo`` and ``hi`` (open ends with ``lo_open``/``hi_open``)."""
    text = "a finite number " + _bounds(lo, hi, lo_open, hi_open)

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {text}; got {value!r}") from None
        ok = math.isfinite(number) and (number > lo if lo_open else number >= lo)
        if ok:
            ok = number < hi if hi_open else number <= hi
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {text}; got {value}")
        return number

    parse.__name__ = "float"
    parse.range, parse.bounds = text, (lo, hi, lo_open, hi_open)  # type: ignore[attr-defined]
    return parse


def ranged(help_text: str, kind: Callable) -> str:
    """``help_text`` with the flag's range appended (``%`` escaped for argparse)."""
    return f"{help_text} [{kind.range}]".replace("%", "%%")  # type: ignore[attr-defined]


def json_object(example: str, *, of_objects: bool = False) -> Callable[[str], dict]:
    """A flag holding a JSON object (``of_objects``: whose values are objects too), e.g. ``--scaling JSON``.

    ``example`` is shown in the error message when the value is not such an object.
    """
    what = "a JSON object of objects" if of_objects else "a JSON object"

    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"expected {what} such as '{example}'; got {text!r} "
                                             f"({exc.msg}).") from None
        if not isinstance(value, dict) or (of_objects and not all(isinstance(v, dict) for v in value.values())):
            raise argparse.ArgumentTypeError(f"expected {what} such as '{example}'; got {text!r}.")
        return value

    parse.__name__ = "JSON"
    return parse
