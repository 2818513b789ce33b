"""``posenc bench``: RoPE, decode and attention benchmarks side by side, printed as a table and written as JSON.

Examples::

    posenc bench --suite rope --quick                 # seconds, small shapes, no torch.compile
    posenc bench --device cuda --json out/bench.json  # the issue's shapes on a GPU, every suite
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

from posenc.bench import PEERS
from posenc.cli.types import int_in, ranged

__all__ = ["SUITES", "add_commands", "run_bench", "write_json"]

SUITES = ("rope", "decode", "attention", "train", "generate", "all")


def _environment(device: str) -> dict:
    import torch

    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically (a temporary file in the same folder, then rename)."""
    from posenc._io import atomic_write_json

    atomic_write_json(path, payload)


def run_bench(args: argparse.Namespace) -> dict:
    """Run the suites named by ``args`` and return the JSON payload (also printed as a table)."""
    import torch

    from posenc.bench import rope as rope_bench

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch.cuda.is_available() is False here (CPU-only torch or no GPU).")
    suites = ("rope", "decode", "attention", "train", "generate") if args.suite == "all" else (args.suite,)
    rows: list[dict] = []
    messages: list[str] = []
    attention_table = None
    if "rope" in suites:
        rows += rope_bench.run_rope_bench(device=args.device, quick=args.quick, repeats=args.repeats,
                                          compile_peers=False if args.no_compile else None, peers=args.peers)
    if args.numerics:
        rows += rope_bench.run_numerics_bench(device=args.device, length=256 if args.quick else 2048)
    if "decode" in suites:
        rows += rope_bench.run_decode_bench(device=args.device, quick=args.quick)
    if "attention" in suites:
        try:
            from posenc.bench.attention import format_table as attention_table
            from posenc.bench.attention import run_attention_bench
        except ImportError as exc:
            msg = f"attention suite skipped: posenc.bench.attention is not available here ({exc})."
            messages.append(msg)
            rows.append({"suite": "attention", "skipped": msg})
        else:
            kwargs = {"device": args.device, "quick": args.quick}
            if args.lengths:
                kwargs["lengths"] = tuple(args.lengths)
            attention_rows = run_attention_bench(**kwargs)
            rows += [{"suite": "attention", **row} for row in attention_rows]
    train_rows = []
    if "train" in suites:
        from posenc.bench.train import run_train_bench

        train_rows = run_train_bench(quick=args.quick, repeats=args.repeats, device=args.device)
        rows += train_rows
    generate_rows = []
    if "generate" in suites:
        from posenc.bench.generate import run_generate_bench

        generate_rows = run_generate_bench(quick=args.quick, repeats=args.repeats, device=args.device)
        rows += generate_rows
    payload = {"command": "posenc bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
               "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "device": args.device, "quick": args.quick, "cpu_allocator_tamed": rope_bench.allocator_tamed(),
               "environment": _environment(args.device), "messages": messages, "results": rows}
    print(rope_bench.format_table([r for r in rows if r.get("suite") not in ("attention", "train", "generate")
                                   or (r["suite"] == "attention" and attention_table is None)]))
    if attention_table is not None:
        print(f"== attention ==\n{attention_table(attention_rows)}")
    if train_rows:
        from posenc.bench.train import format_rows

        print("== train (tokens/s, posenc vs x-transformers and the bare-PyTorch ceiling, one full training step) ==")
        print("\n".join(format_rows(train_rows)))
    if generate_rows:
        from posenc.bench.generate import format_rows as generate_format

        print("== generate (greedy tokens/s; decode step cost by removal; bare-PyTorch ceiling) ==")
        print("\n".join(generate_format(generate_rows)))
    for msg in messages:
        print(msg)
    if args.json:
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    return payload


def _bench(args: argparse.Namespace) -> int:
    run_bench(args)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark posenc against peers and the copy-bandwidth limit",
                       description="Side-by-side timings in one process: posenc RoPE vs Hugging Face (eager and "
                       "compiled), x-transformers, rotary-embedding-torch, Liger (CUDA) and the same-run copy "
                       "bandwidth; the PE share of a decode step; attention backends; training tokens/s against "
                       "x-transformers. Medians over repeats after "
                       "warm-up. Prints a table; --json writes every row.")
    p.add_argument("--suite", choices=SUITES, default="all", help="what to measure (default: all)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    p.add_argument("--quick", action="store_true", help="small shapes, few repeats, no torch.compile (seconds)")
    p.add_argument("--json", metavar="OUT", default=None, help="write all rows and the environment to this file")
    p.add_argument("--numerics", action="store_true", help="also measure accuracy at positions near 10**6")
    p.add_argument("--repeats", type=int_in(1, 100000), default=None,
                   help=ranged("timed samples per row (default: 20; quick: 5)", int_in(1, 100000)))
    p.add_argument("--threads", type=int_in(1, 4096), default=None,
                   help=ranged("torch CPU threads (default: torch's choice)", int_in(1, 4096)))
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile rows (they compile for ~30 s+)")
    p.add_argument("--peers", nargs="*", choices=PEERS, default=list(PEERS),
                   help=f"peers to include (default: all of {' '.join(PEERS)}; missing packages are reported)")
    p.add_argument("--lengths", type=int_in(1, 1 << 20), nargs="+", default=None,
                   help=ranged("sequence lengths for the attention suite (default: its own)", int_in(1, 1 << 20)))
    p.set_defaults(func=_bench)
