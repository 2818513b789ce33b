"""``posenc demo``: tiny encoders trained on who-did-what (:mod:`posenc.demo`); without positions they are at chance."""

from __future__ import annotations

import argparse

from posenc.cli.types import int_in, ranged

__all__ = ["add_commands"]


def _demo(args: argparse.Namespace) -> int:
    from posenc.demo import run_demo

    run_demo(encodings=args.encodings, steps=args.steps, seed=args.seed, threads=args.threads)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train tiny encoders on who-did-what: without positions they are at chance")
    p.add_argument("--encodings", nargs="+", default=["nope", "sinusoidal", "learned", "rope"],
                   help="encodings to compare (default: nope sinusoidal learned rope)")
    steps, seed, threads = int_in(1, 1 << 30), int_in(0, 2**63 - 1), int_in(1, 4096)
    p.add_argument("--steps", type=steps, default=300, help=ranged("training steps per encoding (default: 300)", steps))
    p.add_argument("--seed", type=seed, default=0, help=ranged("random seed (default: 0)", seed))
    p.add_argument("--threads", type=threads, default=None,
                   help=ranged("torch threads (default: torch's choice)", threads))
    p.set_defaults(func=_demo)
