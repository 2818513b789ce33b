"""``posenc conform``: check a RoPE / M-RoPE / bias implementation, a Hugging Face model or exported cos/sin tables
against posenc's reference, print a pass/fail table per case and name the bug.

Examples::

    posenc conform mypkg.rope:apply_rope --config '{"rope_type": "yarn", "factor": 4, "head_dim": 64,
                                                    "original_max_position_embeddings": 4096}'
    posenc conform path/to/hf_model_dir          # its config.json; the rotary module is built locally, no download
    posenc conform tables.json                   # {"config": {...}, "positions": [...], "cos": [...], "sin": [...]}
    posenc conform mypkg.alibi:bias --kind bias --config '{"type": "alibi", "n_heads": 12, "causal": true}'
    posenc conform posenc.testing.peers:x_transformers --factory --config '{"head_dim": 64}' --layout interleaved

Exit status: 0 when every case passes (with ``--allow-precision`` also when the only failures are the long-position
precision limit of float32 angles); 1 when the check ran and a case fails; 2 when the check could not run: bad
arguments, a target or --config that cannot be read (no config.json in the directory, invalid JSON, a model type
without a rotary module, an invalid configuration), a candidate that cannot be imported, or one that did not finish
within --timeout (or crashed its process, or ended it: ``sys.exit``, ``os._exit``); 130 when interrupted. ``--json``
prints the result as JSON.

Import path: TARGET ``module:function`` is imported from the installed packages first, then from the current
directory (appended last to ``sys.path``, so a file there cannot shadow an installed package of the same name);
``--path DIR`` (repeatable) puts DIR first. (``python -m posenc`` itself puts the current directory first, as
Python does for every ``-m``.)

Timeout: a ``module:function`` candidate runs in a child process that is stopped after ``--timeout`` seconds
(default 120; its import counts): a hanging candidate cannot hang the command. ``--timeout 0`` runs it in this
process, without a limit (and without that guard against ``os._exit``, which ends posenc itself). Hugging Face
directories and tables JSON run no user code and always run in this process.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from posenc.cli.types import UsageError, float_in, int_in, ranged

__all__ = ["add_commands", "run_conform"]

max_position = int_in(1024, 2**53)  # the matrix's long cases sit at 1e5 and 1e6; float64 holds integers to 2^53
timeout_seconds = float_in(0.0, 86_400.0)  # 0: no child process, no limit
DEFAULT_TIMEOUT = 120.0  # a correct candidate takes seconds on the whole matrix; a hang is stopped after two minutes
# The child runs `posenc conform ... --timeout 0` with the parent's import path (argv[1]), so it imports the same
# packages; `python -c` would otherwise put the current directory first.
# It writes its exit status to the file named by argv[2] once main() has returned: a candidate that ends the process
# itself (os._exit(0)) leaves the file empty, and the parent reports that instead of relaying a status of 0.
_CHILD = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); from posenc.cli import main; "
          "rc = main(sys.argv[3:]); open(sys.argv[2], 'w').write(str(rc)); sys.exit(rc)")


def _load_json(text: str, what: str) -> Any:
    path = Path(text)
    try:
        if not text.lstrip().startswith(("{", "[")) and path.is_file():
            return json.loads(path.read_text())
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON (or a JSON file): {exc}") from exc
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {text}: {exc}") from exc


def _read_target_json(path: Path) -> Any:
    """The JSON of a TARGET that is a model directory (its config.json) or a .json file; a usage error otherwise."""
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"{path}: a directory TARGET must hold a Hugging Face config.json; there is none (pass the "
                         f"model directory, a config.json, a tables JSON or module:function)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{file} is not valid JSON: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {file}: {exc}") from exc


def _import_path(extra: list[str] | None) -> list[str]:
    """``sys.path`` for importing TARGET: ``--path`` directories first, the current directory appended last."""
    path = [str(Path(d).resolve()) for d in extra or []]
    for d in path:
        if not Path(d).is_dir():
            raise UsageError(f"--path {d}: not a directory")
    cwd = os.getcwd()
    rest = [p for p in sys.path if p not in path]
    return path + rest + ([] if cwd in rest or "" in rest else [cwd])


def _import_callable(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"expected module:function, got {spec!r}")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc} (the current directory is searched after the "
                         f"installed packages; --path DIR puts DIR first)") from exc
    except Exception as exc:  # noqa: BLE001 - the module's own code failed at import: the check cannot run
        raise UsageError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{spec} is a {type(obj).__name__}, not a callable")
    return obj


def _kind(requested: str, config: Any) -> str:
    if requested != "auto":
        return requested
    if isinstance(config, dict):
        params = config.get("rope_parameters") or config.get("rope_scaling") or {}
        if "mrope_section" in config or (isinstance(params, dict) and "mrope_section" in params):
            return "mrope"
        if config.get("type") in ("alibi", "t5"):
            return "bias"
    return "rope"


def run_conform(args: argparse.Namespace) -> Any:
    """Build and run the check the arguments describe, in this process; returns the ConformanceResult.

    Raises:
        UsageError: the check could not run (a target, --config or configuration that cannot be used, a candidate
            that cannot be imported or built); ``posenc`` exits 2 for it.
    """
    saved = list(sys.path)
    try:
        return _run_check(args)
    except UsageError:
        raise
    except (SystemExit, GeneratorExit) as exc:
        # the candidate (its import, its factory or a call) tried to end the process: with sys.exit(0) posenc would
        # exit 0 -- "every case passes" -- having checked nothing
        what = f"sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else type(exc).__name__
        raise UsageError(f"{args.target} raised {what} during the check (its import, factory or a call), which "
                         f"would end posenc itself; nothing was concluded. A candidate must return its result, not "
                         f"exit.") from exc
    except (ValueError, TypeError, KeyError, OSError) as exc:
        # The kit catches whatever the candidate raises on a case (a row with status "error"), so an exception that
        # gets here comes from setting the check up: the configuration or the target. The check did not run.
        raise UsageError(f"cannot run the check of {args.target}: {' '.join(str(exc).split())}") from exc
    finally:
        sys.path[:] = saved


def _run_check(args: argparse.Namespace) -> Any:
    from posenc.testing import check_hf_model, check_mrope, check_rope
    from posenc.testing.rope import check_rope_tables
    target = args.target
    config = _load_json(args.config, "--config") if args.config is not None else None
    options: dict[str, Any] = {"dtypes": tuple(args.dtypes), "max_position": args.max_position}
    path = Path(target)
    if path.is_dir() or (path.is_file() and path.suffix == ".json"):
        data = _read_target_json(path)
        if isinstance(data, dict) and "cos" in data:
            return check_rope_tables(data, layout=args.layout, dtypes=options["dtypes"], target=str(path))
        if isinstance(data, dict) and "model_type" in data:
            return check_hf_model(data, layout=args.layout, target=str(path), **options)
        raise UsageError(f"{target}: expected a Hugging Face config.json (with model_type) or a tables JSON (with "
                         f"config, positions, cos, sin)")
    if ":" not in target:
        raise UsageError(f"TARGET must be module:function, a model directory or a .json file; got {target!r}")
    if config is None:
        raise UsageError("a callable needs --config (an HF-style JSON dict or a file), e.g. --config "
                         "'{\"rope_type\": \"default\", \"rope_theta\": 10000, \"head_dim\": 64}'")
    sys.path[:] = _import_path(args.path)
    fn = _import_callable(target)
    if args.factory:
        try:
            fn = fn(config)  # a factory builds the candidate from the same config (e.g. posenc.testing.peers)
        except Exception as exc:  # noqa: BLE001 - a factory that cannot build the candidate: nothing to check
            raise UsageError(f"the factory {target} could not build a candidate for this --config: "
                             f"{type(exc).__name__}: {exc}") from exc
    kind = _kind(args.kind, config)
    if kind == "mrope":
        return check_mrope(fn, config, layout=args.layout, target=target, **options)
    if kind == "bias":
        from posenc.testing.bias import check_bias
        return check_bias(fn, config, target=target, max_position=args.max_position)
    return check_rope(fn, config, layout=args.layout, target=target, gqa=not args.no_gqa,
                      batch_positions=not args.no_batch_positions, inplace=args.inplace, **options)


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The same command for the child process, with ``--timeout 0`` (it runs the check itself)."""
    argv = (["--debug"] if getattr(args, "debug", False) else []) + ["conform", args.target, "--timeout", "0",
                                                                      "--kind", args.kind, "--max-position",
                                                                      str(args.max_position), "--dtypes", *args.dtypes]
    for flag, value in (("--config", args.config), ("--layout", args.layout)):
        if value is not None:
            argv += [flag, value]
    for d in args.path or []:
        argv += ["--path", str(Path(d).resolve())]
    for flag, on in (("--factory", args.factory), ("--no-gqa", args.no_gqa),
                     ("--no-batch-positions", args.no_batch_positions), ("--allow-precision", args.allow_precision),
                     ("--json", args.json), ("--inplace", args.inplace)):
        if on:
            argv.append(flag)
    return argv


def _stop(proc: subprocess.Popen) -> None:
    """Kill the child and whatever it started (its own session), then reap it."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows has no process groups here
            proc.kill()
    except ProcessLookupError:
        pass
    proc.communicate()


def _run_in_child(args: argparse.Namespace) -> int:
    """Run the check in a child process stopped after ``args.timeout`` seconds; relay its output and exit status."""
    fd, status_file = tempfile.mkstemp(prefix="posenc-conform-", suffix=".status")
    os.close(fd)
    try:
        command = [sys.executable, "-c", _CHILD, json.dumps(sys.path), status_file, *_child_argv(args)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=hasattr(os, "killpg"))
        try:
            out, err = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            print(f"posenc conform: error: {args.target} did not finish within {args.timeout:g} s (--timeout): the "
                  f"candidate (or its module's import) hangs or is that slow; the check was stopped and nothing was "
                  f"checked. Raise --timeout for a slow candidate, or --timeout 0 to run it in this process without "
                  f"a limit.", file=sys.stderr)
            return 2
        except BaseException:  # Ctrl-C (or anything else) in the parent: the child in its own session must not
            _stop(proc)        # outlive it
            raise
        sys.stdout.write(out)
        sys.stderr.write(err)
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() else "a signal"
            print(f"posenc conform: error: the process checking {args.target} was killed by {name} (the candidate "
                  f"crashed it, e.g. a segfault in an extension); nothing was checked.", file=sys.stderr)
            return 2
        status = Path(status_file).read_text().strip()
    finally:
        Path(status_file).unlink(missing_ok=True)
    if status != str(proc.returncode):  # the child ended before posenc's main() returned
        print(f"posenc conform: error: the process checking {args.target} ended with status {proc.returncode} before "
              f"the check finished (the candidate ended it itself, e.g. with os._exit); nothing was concluded.",
              file=sys.stderr)
        return 2
    return proc.returncode


def _run(args: argparse.Namespace) -> int:
    if args.timeout > 0 and ":" in args.target and not Path(args.target).exists():
        return _run_in_child(args)
    result = run_conform(args)  # a UsageError is reported by posenc.cli.main: one line, exit status 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.table())
    ok = result.passed or (args.allow_precision and result.conforms)
    return 0 if ok else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("conform", help="check a RoPE/M-RoPE/bias implementation, HF model or cos/sin tables against "
                       "the reference and name the bug", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n\n".join(
                           __doc__.split("\n\n")[1:]))
    p.add_argument("target", metavar="TARGET",
                   help="module:function, a Hugging Face model directory / config.json, or a tables JSON")
    p.add_argument("--config", default=None, metavar="JSON",
                   help="HF-style configuration for a callable: a JSON dict or a file holding one")
    p.add_argument("--factory", action="store_true",
                   help="TARGET is a factory: call it with the config to get the candidate")
    p.add_argument("--kind", choices=("auto", "rope", "mrope", "bias"), default="auto",
                   help="what the callable implements (default: from the config)")
    p.add_argument("--layout", choices=("half", "interleaved"), default=None,
                   help="pair layout the checkpoint expects (default: half, as Hugging Face)")
    p.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16", "float16", "float64"),
                   default=["float32", "bfloat16", "float16"], help="input dtypes (the first gets the full matrix)")
    p.add_argument("--max-position", type=max_position, default=1_000_000,
                   help=ranged("largest position to try (default: 10^6)", max_position))
    p.add_argument("--no-gqa", action="store_true", help="skip the case with fewer key heads than query heads")
    p.add_argument("--no-batch-positions", action="store_true", help="skip (B, T) positions")
    p.add_argument("--allow-precision", action="store_true",
                   help="exit 0 when the only failures are the long-position precision of float32 angles")
    p.add_argument("--json", action="store_true", help="print the result as JSON (for CI)")
    p.add_argument("--inplace", action="store_true",
                   help="the RoPE callable rotates q and k in place (by contract): writes into q/k are allowed, "
                        "it must still return them rotated, also when q and k are one tensor")
    p.add_argument("--timeout", type=timeout_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=ranged("stop a module:function candidate that runs longer (it runs in a child process; "
                               "exit 2); 0 runs it in this process without a limit (default: 120)", timeout_seconds))
    p.add_argument("--path", action="append", default=None, metavar="DIR",
                   help="import TARGET's module with DIR first on the import path (repeatable); without it the "
                        "current directory is searched after the installed packages")
    p.set_defaults(func=_run)
