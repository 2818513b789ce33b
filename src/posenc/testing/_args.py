"""Argument checks shared by the kit's entry points (``check_rope``, ``check_mrope``, ``check_bias``,
``check_rope_tables``): each bad argument raises a ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind,
wrong value) that names the argument, what came in and what would do, before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from posenc._checks import check_int, check_number

__all__ = ["DTYPES", "config_mapping", "require_bool", "require_callable", "require_dtypes", "require_int",
           "require_number", "require_target"]

# The dtypes the kit has tolerances for (diagnose.eps): the reference is float64, outputs are compared in these.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def require_callable(candidate: Any, who: str, signature: str) -> None:
    if not callable(candidate):
        raise TypeError(f"{who}: the candidate must be a callable {signature}; got {type(candidate).__name__} "
                        f"{candidate!r:.60}.")


def require_bool(value: Any, name: str, who: str) -> bool:
    """``value`` itself when it is a real bool; a string such as ``"false"`` would be truthy, so it is refused."""
    if not isinstance(value, bool):
        raise TypeError(f"{who}: {name} must be true or false (a bool); got {type(value).__name__} {value!r}. "
                        f"In JSON write false, not \"false\".")
    return value


def require_int(value: Any, name: str, who: str, *, minimum: int | None = None) -> int:
    return check_int(value, f"{who}: {name}", minimum=minimum)


def require_number(value: Any, name: str, who: str, *, above: float | None = None) -> float:
    """A finite real number (not a bool, not a string: ``"1e4"`` in a config is a quoting mistake)."""
    return check_number(value, f"{who}: {name}", above=above, type_hint="In JSON write it without quotes.")


def require_dtypes(dtypes: Any, who: str) -> list[torch.dtype]:
    """A non-empty list of the kit's dtypes, given by name (``"bfloat16"``) or as torch dtypes."""
    allowed = sorted(DTYPES)
    if isinstance(dtypes, (str, torch.dtype)) or not isinstance(dtypes, Sequence) or not dtypes:
        raise TypeError(f"{who}: dtypes must be a non-empty list of dtype names from {allowed}; got "
                        f"{dtypes!r}. Example: dtypes=('float32', 'bfloat16').")
    out = []
    for i, dt in enumerate(dtypes):
        if isinstance(dt, str) and dt in DTYPES:
            out.append(DTYPES[dt])
        elif isinstance(dt, torch.dtype) and dt in DTYPES.values():
            out.append(dt)
        else:
            raise ValueError(f"{who}: dtypes[{i}] = {dt!r} is not one the kit checks; use names from {allowed} "
                             f"(their tolerances are derived from these dtypes' precision).")
    return out


def require_target(target: Any, who: str) -> None:
    if target is not None and not isinstance(target, str):
        raise TypeError(f"{who}: target (the name shown in the report) must be a str or None; got "
                        f"{type(target).__name__}.")


def config_mapping(config: Any, who: str, example: str) -> Mapping:
    """The key/value view of a configuration: a dict (config.json) or a config object's attributes
    (``PretrainedConfig``). A JSON string, a list or a number is refused with an example."""
    if isinstance(config, Mapping):
        return config
    if isinstance(config, (str, bytes, int, float, Sequence)) or config is None or not hasattr(config, "__dict__"):
        hint = " (a JSON string: json.loads it first)" if isinstance(config, (str, bytes)) else ""
        raise TypeError(f"{who}: the configuration must be a dict or a config object; got "
                        f"{type(config).__name__}{hint}. Example: {example}.")
    return vars(config)
