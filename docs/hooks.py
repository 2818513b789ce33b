"""MkDocs hooks of the documentation site: the generated pages (:mod:`posenc.docsite`) join the hand-written ones.

The encoding pages, the overview in English and Chinese, the API reference stubs and the CLI page are generated from
the registry and the code on every build and handed to MkDocs in memory, so nothing generated is committed and no
page can go stale. ``POSENC_DOCS_FIGURES=0`` skips the pictures (a faster build for checking text).
"""

from __future__ import annotations

import os
from pathlib import Path

from mkdocs.structure.files import File

from posenc.docsite import nav, site_pages

_PAGES: dict[str, str | bytes] = {}
DOCS = Path(__file__).resolve().parent


def on_config(config):
    _PAGES.clear()
    _PAGES.update(site_pages(figures=os.environ.get("POSENC_DOCS_FIGURES", "1") != "0"))
    # the guides in the order a newcomer reads them; a guide added later joins at the end
    order = ["your-attention", "port-from-hf", "extend-rope", "lab-sweep", "add-encoding"]
    found = sorted((DOCS / "guides").glob("*.md"),
                   key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.stem))
    guides = [p.relative_to(DOCS).as_posix() for p in found] + [t for t in ("attention.md", "more.md")
                                                                if (DOCS / t).exists()]
    results = ["conformance.md", "numerics.md", "results/standard/report.md", "results/standard/timing.md",
               "results/frontier/report.md", "results/calibration.md", "mutation.md"]
    config["nav"] = nav(_PAGES, guides, [r for r in results if (DOCS / r).exists()])
    return config


def on_files(files, config):
    for path, content in _PAGES.items():
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, path, content=content))
    return files
