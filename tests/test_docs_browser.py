"""The built documentation site (``make docs``) in real headless Chromium: the home page, one encoding page, the API
page and a guide render, their links resolve, their images decode, math is typeset by the bundled KaTeX, and
nothing is fetched from the network.

Marked ``slow`` and ``browser``: ``make test-docs`` builds the site and runs it (``make test-slow`` runs it too
when a site is built). It skips with the reason when Chromium or the built site (``site/``) is absent.
"""

from __future__ import annotations

import base64
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

import chromium_devtools as chromium  # tests/chromium_devtools.py: headless Chromium over the DevTools protocol

SITE = Path(os.environ.get("POSENC_SITE", Path(__file__).resolve().parent.parent / "site"))
PAGES = ["index.html", "encodings/rope.html", "api/posenc.html", "guides/your-attention.html",
         "zh/encodings/alibi.html"]

pytestmark = [pytest.mark.slow, pytest.mark.browser]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])
        for key in ("src",):
            if attrs.get(key):
                self.sources.append(attrs[key])
        if tag == "link" and attrs.get("href"):
            self.sources.append(attrs["href"])


def broken_links(page: Path, site: Path) -> list[str]:
    """Links and sources of ``page`` (a file of ``site``) that point at no file of the site (external links are not
    followed: the site must not need them to render, which the browser test checks by watching requests)."""
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    broken = []
    for href in parser.hrefs + parser.sources:
        url = urlparse(href)
        if url.scheme in ("http", "https", "mailto", "data") or href.startswith("#"):
            continue
        target = (page.parent / unquote(url.path)).resolve()
        if url.path.endswith("/"):
            target = target / "index.html"
        if not target.exists() or site.resolve() not in target.parents:
            broken.append(href)
    return broken


def test_broken_links_finds_a_missing_page(tmp_path):
    (tmp_path / "a.html").write_text('<a href="b.html">b</a><a href="a.html#x">a</a><a href="https://x.org">x</a>'
                                     '<img src="img/c.png">')
    assert broken_links(tmp_path / "a.html", tmp_path) == ["b.html", "img/c.png"]


_CHECK = """JSON.stringify({
  title: document.title,
  h1: (document.querySelector("article h1") || {}).textContent || "",
  katex: document.querySelectorAll(".katex").length,
  katexErrors: document.querySelectorAll(".katex-error").length,
  untypeset: Array.from(document.querySelectorAll(".arithmatex")).filter(e => !e.querySelector(".katex")).length,
  images: Array.from(document.images).map(i => ({src: i.getAttribute("src"), ok: i.complete && i.naturalWidth > 0})),
  apiObjects: document.querySelectorAll(".doc-object, .doc-heading").length,
  codeBlocks: document.querySelectorAll("pre code").length,
  textLength: document.body.innerText.length,
})"""


@pytest.fixture(scope="module")
def site() -> Path:
    binary = chromium.require()
    if not (SITE / "index.html").exists():
        pytest.skip(f"no built site at {SITE}: run `make docs` first (or `make test-docs`, which builds it)")
    return Path(binary), SITE


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_offline(site, page, tmp_path):
    binary, root = site
    path = root / page
    assert path.exists(), f"{page} is missing from the built site"
    assert broken_links(path, root) == []
    with chromium.loaded_page(str(binary), path, tmp_path / "profile") as tools:
        report = chromium.evaluate(tools, _CHECK)
        shot = tools.call("Page.captureScreenshot", format="png")
        (tmp_path / "page.png").write_bytes(base64.b64decode(shot["data"]))
        errors = chromium.errors(tools.events)
        requests = [e["params"]["request"]["url"] for e in tools.events if e["method"] == "Network.requestWillBeSent"]
    if os.environ.get("POSENC_SCREENSHOTS"):  # keep the screenshots to look at
        out = Path(os.environ["POSENC_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        (out / (page.replace("/", "_") + ".png")).write_bytes((tmp_path / "page.png").read_bytes())
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:", "blob:"))] == []
    assert report["textLength"] > 200 and report["h1"]
    assert all(image["ok"] for image in report["images"]), report["images"]
    if page.endswith(("rope.html", "alibi.html")):
        assert report["katex"] > 0 and report["katexErrors"] == 0 and report["untypeset"] == 0, report
        assert report["images"], "an encoding page shows the gallery's pictures"
    if page.startswith("api/"):
        assert report["apiObjects"] > 20, report
    if page.startswith("guides/"):
        assert report["codeBlocks"] >= 3, report


def test_built_site_is_current():
    """The built site has a page for every encoding registered now, each with its current summary: a site built
    before an encoding was added (or its docstring changed) fails here until `make docs` runs again."""
    import html

    from posenc import list_encodings

    if not (SITE / "index.html").exists():
        pytest.skip(f"no built site at {SITE}: run `make docs` first (or `make test-docs`, which builds it)")
    stale = []
    for info in list_encodings():
        for page in (SITE / "encodings" / f"{info.name}.html", SITE / "zh" / "encodings" / f"{info.name}.html"):
            text = html.unescape(page.read_text(encoding="utf-8")) if page.exists() else ""
            summary = info.summary.replace("``", "").replace("`", "")
            if not text or summary[:60] not in re.sub(r"<[^>]+>", "", text):
                stale.append(page.relative_to(SITE).as_posix())
    assert stale == [], f"stale or missing pages (rebuild with make docs): {stale}"
