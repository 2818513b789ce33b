"""``posenc gallery``: one self-contained HTML page with every registered encoding and its plots.

Example::

    posenc gallery --out gallery/ --lang zh
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_commands"]


def _gallery(args: argparse.Namespace) -> int:
    from posenc.gallery import build_gallery

    page = build_gallery(args.out, lang=args.lang, names=args.encodings, progress=sys.stderr)
    print(f"wrote {page}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gallery", help="write an HTML page with every registered encoding and its plots",
                       description="Write one self-contained HTML page (images embedded, no network) describing "
                                   "every registered encoding with its plots.")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for index.html (created if missing)")
    p.add_argument("--lang", choices=("en", "zh"), default="en", help="caption language (default en)")
    p.add_argument("--encodings", nargs="+", default=None, metavar="NAME",
                   help="only these encodings (default: every registered one)")
    p.set_defaults(func=_gallery)
