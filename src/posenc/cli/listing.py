"""``posenc list``: the registered encodings as a table (the README's table is its ``--markdown`` form)."""

from __future__ import annotations

import argparse

__all__ = ["add_commands", "encodings_table"]


def encodings_table(markdown: bool = False) -> str:
    """The registry as a table (the README's table is this with ``markdown=True``)."""
    from posenc.base import list_encodings

    rows = [("name", "family", "params", "past max_seq_len", "paper", "what it is")]
    for info in list_encodings():
        paper = f"arXiv {info.paper}" if info.paper else "-"
        if markdown and info.paper:
            paper = f"[{info.paper}](https://arxiv.org/abs/{info.paper})"
        rows.append((f"`{info.name}`" if markdown else info.name, info.family, f"{info.parameters:,}",
                     "yes" if info.extrapolates else "no", paper, info.summary.replace("``", "`")))
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)).rstrip() for r in rows)


def _list(args: argparse.Namespace) -> int:
    print(encodings_table(markdown=args.markdown))
    if not args.markdown:
        print("\n(parameters counted at dim=512, n_heads=8, max_seq_len=2048)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered encodings")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (as in the README)")
    p.set_defaults(func=_list)
