"""The ``posenc`` command: the top-level parser and :func:`main`; one module in this package per subcommand.

Each module in :data:`COMMAND_MODULES` defines ``add_commands(subparsers)``, which adds its subcommand with
``set_defaults(func=handler)``. The modules import only the standard library and :mod:`posenc.cli.types` at the top,
so ``posenc --help`` and ``posenc lab list`` never import torch; handlers import what they run.

Exit codes: 0 success, 1 a failure reported in one line (``--debug`` shows the traceback), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from posenc.cli.types import UsageError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

# One module per subcommand, named after it (``list`` is ``listing``: a module may not shadow the builtin), in the
# order ``posenc --help`` lists them. ``lab`` holds the ``posenc lab ...`` group.
COMMAND_MODULES = tuple(f"posenc.cli.{name}" for name in (
    "listing", "demo", "numerics", "bench", "rope_scaling", "plot", "gallery", "lab", "conform"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posenc", description="Positional encodings for Transformers: "
                                     "list, demo, benchmark, plot and experiment.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    # the errors posenc raises say what to do; anything else gets its type and the way to see more
    known = isinstance(exc, (ValueError, TypeError, OSError, RuntimeError, ImportError))
    return text if known else f"{type(exc).__name__}: {text} (rerun with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `posenc list | head`: the reader left; not an error worth a message
        sys.stderr.close()
        return 0
    except UsageError as exc:  # flags that do not fit together: a usage error, like argparse's own
        if args.debug:
            raise
        print(f"posenc {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback without --debug
        if args.debug:
            raise
        print(f"posenc {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
