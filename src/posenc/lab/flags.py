"""Command-line flags generated from the lab's config dataclasses, for ``posenc lab run`` and ``python -m
posenc.lab.train``.

One flag per field of :class:`~posenc.lab.config.ModelConfig` and :class:`~posenc.lab.config.RunConfig` and per
length field of :class:`~posenc.lab.config.TaskConfig`: its type from :func:`typing.get_type_hints`, its help from
the field's ``metadata["help"]``, its range from :data:`FLAG_RANGES` and its choices from :data:`FLAG_CHOICES`. A new
field is a new flag with no second list to keep in sync. Every flag defaults to ``None``: a flag left out keeps the
preset. Torch-free, so ``posenc --help`` stays fast.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import types
import typing

from posenc._argtypes import float_in, int_in, json_object, ranged
from posenc.lab.config import LOGGERS, Experiment, ModelConfig, RunConfig, TaskConfig

__all__ = ["FLAG_CHOICES", "FLAG_RANGES", "add_dataclass_flags", "experiment_from_args", "json_options"]

# TaskConfig fields that are not flags: the task comes from --tasks, its options from task-specific flags (--text)
_TASK_FLAGS = ("train_min_length", "train_max_length", "eval_lengths")
_SECTIONS = (("model", ModelConfig, None), ("run", RunConfig, None), ("task", TaskConfig, _TASK_FLAGS))
# The range of every numeric flag generated from those dataclasses (a test checks that none is missing).
_COUNT, _SIZE, _LENGTH = int_in(1, 1 << 20), int_in(1, 1 << 16), int_in(1, 1 << 24)
FLAG_RANGES = {
    "dim": _SIZE, "n_layers": int_in(1, 1024), "n_heads": int_in(1, 1024), "ffn_mult": float_in(0, 1024, lo_open=True),
    "dropout": float_in(0, 1, hi_open=True), "steps": int_in(1, 1 << 30), "batch_size": _COUNT,
    "lr": float_in(0, 10, lo_open=True), "weight_decay": float_in(0, 10), "warmup": float_in(0, 1, hi_open=True),
    "grad_clip": float_in(0, 1e6), "eval_batches": _COUNT, "eval_batch_size": _COUNT,
    "checkpoint_every": int_in(0, 1 << 30), "log_every": int_in(1, 1 << 30), "threads": int_in(1, 4096),
    "train_min_length": _LENGTH, "train_max_length": _LENGTH, "eval_lengths": _LENGTH,
}
FLAG_CHOICES = {"log": LOGGERS}  # string flags generated from those dataclasses that take one of a few values


def _flag_type(hint) -> tuple[type, bool]:
    """``(element type, is_sequence)`` of a resolved type hint: ``int | None`` -> int; ``tuple[int, ...]`` -> (int,
    True)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


json_options = json_object('{"mrope": {"base": 10}}', of_objects=True)  # --encoding-options: options per encoding


def add_dataclass_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per field of ModelConfig, RunConfig and the length fields of TaskConfig (default: the preset)."""
    for section, cls, only in _SECTIONS:
        group = parser.add_argument_group(f"{section} settings (default: the suite's preset)")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if only is not None and f.name not in only:
                continue
            kind, many = _flag_type(hints[f.name])
            parse = FLAG_RANGES.get(f.name) if kind in (int, float) else None
            text = f.metadata.get("help", "")
            choices = FLAG_CHOICES.get(f.name)
            metavar = "JSON" if kind is dict else None if choices else kind.__name__.upper()
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"{section}__{f.name}",
                               type=json_options if kind is dict else parse or kind, nargs="+" if many else None,
                               default=None, metavar=metavar, choices=choices,
                               help=ranged(text, parse) if parse else text.replace("%", "%%"))


def experiment_from_args(experiment: Experiment, args: argparse.Namespace) -> Experiment:
    """A copy of ``experiment`` with every flag that was given applied."""
    experiment = copy.deepcopy(experiment)
    for section, cls, _ in _SECTIONS:
        target = getattr(experiment, section)
        changes = {}
        for f in dataclasses.fields(cls):
            value = getattr(args, f"{section}__{f.name}", None)
            if value is not None:
                changes[f.name] = tuple(value) if isinstance(value, list) else value
        setattr(experiment, section, dataclasses.replace(target, **changes))
    return experiment
