"""Regenerate the README's table of encodings from the registry (``make readme``); a test checks it is current."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from posenc.cli.listing import encodings_table

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- encodings:begin -->", "<!-- encodings:end -->"


def rendered(text: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{README} lacks the {BEGIN} ... {END} markers")
    return pattern.sub(lambda _: f"{BEGIN}\n{encodings_table(markdown=True)}\n{END}", text)


if __name__ == "__main__":
    text = README.read_text()
    new = rendered(text)
    if "--check" in sys.argv:
        sys.exit(0 if new == text else "README's table of encodings is stale: run `make readme`")
    README.write_text(new)
