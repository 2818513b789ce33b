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
precision limit of float32 angles), 1 when a case fails, 2 for bad arguments. ``--json`` prints the result as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from posenc.cli.types import UsageError, int_in, ranged

__all__ = ["add_commands", "run_conform"]

max_position = int_in(1024, 2**53)  # the matrix's long cases sit at 1e5 and 1e6; float64 holds integers to 2^53


def _load_json(text: str, what: str) -> Any:
    path = Path(text)
    try:
        if not text.lstrip().startswith(("{", "[")) and path.is_file():
            return json.loads(path.read_text())
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON (or a JSON file): {exc}") from exc


def _import_callable(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"expected module:function, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `posenc conform mymodule:fn` from the directory that holds mymodule.py
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
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
    """Build and run the check the arguments describe; returns the ConformanceResult."""
    from posenc.testing import check_hf_model, check_mrope, check_rope
    from posenc.testing.rope import check_rope_tables
    target = args.target
    config = _load_json(args.config, "--config") if args.config is not None else None
    options: dict[str, Any] = {"dtypes": tuple(args.dtypes), "max_position": args.max_position}
    path = Path(target)
    if path.is_dir() or (path.is_file() and path.suffix == ".json"):
        data = json.loads((path / "config.json").read_text()) if path.is_dir() else json.loads(path.read_text())
        if isinstance(data, dict) and "cos" in data:
            return check_rope_tables(data, layout=args.layout, dtypes=options["dtypes"], target=str(path))
        if isinstance(data, dict) and "model_type" in data:
            return check_hf_model(data, layout=args.layout, target=str(path), **options)
        raise UsageError(f"{target}: expected a Hugging Face config.json (with model_type) or a tables JSON (with "
                         f"config, positions, cos, sin)")
    if ":" not in target:
        raise UsageError(f"TARGET must be module:function, a model directory or a .json file; got {target!r}")
    fn = _import_callable(target)
    if args.factory and config is not None:
        fn = fn(config)  # a factory builds the candidate from the same config (e.g. posenc.testing.peers adapters)
    if config is None:
        raise UsageError("a callable needs --config (an HF-style JSON dict or a file), e.g. --config "
                         "'{\"rope_type\": \"default\", \"rope_theta\": 10000, \"head_dim\": 64}'")
    kind = _kind(args.kind, config)
    if kind == "mrope":
        return check_mrope(fn, config, layout=args.layout, target=target, **options)
    if kind == "bias":
        from posenc.testing.bias import check_bias
        return check_bias(fn, config, target=target, max_position=args.max_position)
    return check_rope(fn, config, layout=args.layout, target=target, gqa=not args.no_gqa,
                      batch_positions=not args.no_batch_positions, **options)


def _run(args: argparse.Namespace) -> int:
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
    p.set_defaults(func=_run)
