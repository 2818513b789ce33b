"""The ``posenc`` command. Each feature module contributes subcommands through ``add_commands(subparsers)``.

Exit codes: 0 success, 1 a failure reported in one line (``--debug`` shows the traceback), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from posenc._cli_types import UsageError

# Modules that define ``add_commands(subparsers)``; each adds its subcommands with ``set_defaults(func=...)``.
COMMAND_MODULES = (
    "posenc.commands",
    "posenc.bench.cli",
    "posenc.rope_scaling_cli",
    "posenc.viz_cli",
    "posenc.lab.cli",
    "posenc.testing.cli",
)


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


if __name__ == "__main__":
    sys.exit(main())
