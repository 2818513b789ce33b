"""What the lab holds, readable without importing torch: task metadata and the built-in encoding names.

``posenc lab list`` prints tasks (kind, lengths, summary, bar) and suites (their encodings). The task classes carry
that metadata, but their modules import torch, which takes seconds; so the same facts are kept in a generated file,
:mod:`posenc.lab._catalog`, written from the live registries by ``python -m posenc.lab.catalog --write`` (``make
readme`` runs it) and checked against them by ``tests/lab/test_lab_catalog.py``.

The catalog is only a shortcut. The live registries answer instead whenever they are already loaded in this process
(so tasks or encodings registered by your own code are listed), or when the catalog does not list exactly the task
and encoding modules on disk (a module added or removed since it was written): then the answer is right, only slow.

Example::

    python -m posenc.lab.catalog --check   # exit 1 if the catalog is stale
"""

from __future__ import annotations

import argparse
import json
import pkgutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["TaskInfo", "build_catalog", "encoding_names", "render_catalog", "task_infos"]

_PACKAGE = Path(__file__).resolve().parent.parent  # src/posenc
CATALOG = Path(__file__).resolve().parent / "_catalog.py"


@dataclass(frozen=True)
class TaskInfo:
    """A task's protocol as ``posenc lab list`` shows it (the class attributes of :class:`posenc.lab.tasks.Task`)."""

    name: str  # registry key
    kind: str  # "encoder", "decoder" or "encoder_decoder"
    train_lengths: tuple[int, int]  # (min, max) lengths sampled in training
    eval_lengths: tuple[int, ...]  # lengths evaluated after training
    metric: str  # "accuracy", "token_accuracy" or "perplexity"
    paper: str | None  # arXiv id of the protocol's paper
    summary: str  # one line on what the task measures
    bar_text: str  # the in-distribution bar in words

    @classmethod
    def of(cls, task: type) -> "TaskInfo":
        return cls(task.name, task.kind, tuple(task.train_lengths), tuple(task.eval_lengths), task.metric, task.paper,
                   task.summary, task.bar_text())


def _modules(folder: str) -> tuple[str, ...]:
    """The modules a registry imports from ``posenc/<folder>`` (as its loader picks them: not ``_private``)."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules([str(_PACKAGE / folder)]) if not m.name.startswith("_")))


def _catalog():
    """The generated catalog, or ``None`` when it is missing or lists other modules than those on disk."""
    try:
        from posenc.lab import _catalog
    except ImportError:
        return None
    if _catalog.TASK_MODULES != _modules("lab/tasks") or _catalog.ENCODING_MODULES != _modules("encodings"):
        return None
    return _catalog


def task_infos() -> list[TaskInfo]:
    """Every registered task's metadata, sorted by name; without importing torch when the catalog is current."""
    catalog = None if "posenc.lab.tasks.base" in sys.modules else _catalog()
    if catalog is not None:
        return [TaskInfo(**{**info, "train_lengths": tuple(info["train_lengths"]),
                            "eval_lengths": tuple(info["eval_lengths"])}) for info in catalog.TASKS]
    from posenc.lab.tasks.base import registered_tasks, task_class

    return [TaskInfo.of(task_class(name)) for name in registered_tasks()]


def encoding_names() -> list[str]:
    """Names of every registered encoding, sorted; without importing torch when the catalog is current."""
    catalog = None if "posenc.base" in sys.modules else _catalog()
    if catalog is not None:
        return list(catalog.ENCODINGS)
    from posenc.base import registered_names

    return registered_names()


def build_catalog() -> dict:
    """The catalog's content from the live registries (imports every task and encoding module, so torch)."""
    from posenc.base import encoding_class, registered_names
    from posenc.lab.tasks.base import registered_tasks, task_class

    builtin = sorted(name for name in registered_names()
                     if encoding_class(name).__module__.startswith("posenc.encodings."))
    tasks = [task_class(name) for name in registered_tasks()]
    return {"TASK_MODULES": _modules("lab/tasks"), "ENCODING_MODULES": _modules("encodings"),
            "ENCODINGS": tuple(builtin),
            "TASKS": [asdict(TaskInfo.of(t)) for t in tasks if t.__module__.startswith("posenc.lab.tasks.")]}


def _literal(value) -> str:
    """``value`` as Python source in the house style (double-quoted strings)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid Python string literal
    if isinstance(value, (tuple, list)):
        items = ", ".join(_literal(v) for v in value)
        return f"({items}{',' if len(value) == 1 else ''})" if isinstance(value, tuple) else f"[{items}]"
    return repr(value)


def render_catalog(content: dict) -> str:
    """The source of :mod:`posenc.lab._catalog` for ``content`` (one name or task per line, stable across runs)."""
    lines = ['"""Generated by `python -m posenc.lab.catalog --write` (`make readme`) from the task and encoding',
             'registries, so that `posenc lab list` needs no torch. Do not edit: a test checks it is current."""', ""]
    for key in ("TASK_MODULES", "ENCODING_MODULES", "ENCODINGS"):
        lines.append(f"{key} = (")
        lines += [f"    {_literal(name)}," for name in content[key]]
        lines.append(")")
    lines.append("TASKS = [")  # one task a line: a task's change is a one-line diff
    for info in content["TASKS"]:
        fields = ", ".join(f"{_literal(field)}: {_literal(value)}" for field, value in info.items())
        lines.append(f"    {{{fields}}},")
    lines.append("]")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m posenc.lab.catalog", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {CATALOG.name} from the registries")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if {CATALOG.name} is not current")
    args = parser.parse_args(argv)
    text = render_catalog(build_catalog())
    if args.write:
        CATALOG.write_text(text, encoding="utf-8")
        print(f"wrote {CATALOG}")
        return 0
    if args.check:
        current = CATALOG.exists() and CATALOG.read_text(encoding="utf-8") == text
        if not current:
            print(f"{CATALOG} is stale: run `python -m posenc.lab.catalog --write` (or `make readme`).",
                  file=sys.stderr)
        return 0 if current else 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
