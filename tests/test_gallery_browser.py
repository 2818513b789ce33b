"""The HTML gallery: its structure (fast), and the whole page loaded in real headless Chromium (slow, browser).

The browser test drives Debian's ``chromium`` over the DevTools protocol (``tests/chromium_devtools.py``, a small
standard-library websocket client): it loads the page from a file URL, checks every image decoded (natural width
> 0), that nothing was logged as an error and nothing was fetched from the network, and takes screenshots. It is
marked ``slow`` and ``browser`` (``make test-slow`` runs it) and skips with the reason when no Chromium is installed
(``apt-get install chromium`` on Debian, or point ``POSENC_CHROMIUM`` at a Chromium/Chrome binary).
"""

from __future__ import annotations

import base64
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest

import chromium_devtools as chromium  # tests/chromium_devtools.py: headless Chromium over the DevTools protocol
from posenc import list_encodings, registered_names, viz
from posenc.cli import main
from posenc.gallery import CAPTIONS, build_gallery, render_gallery

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.links: list[str] = []
        self.external: list[str] = []  # anything that would be fetched when the page loads
        self.sections: list[str] = []
        self.html_lang = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "html":
            self.html_lang = attrs.get("lang")
        if tag == "img":
            self.images.append(attrs)
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "section" and attrs.get("class") == "encoding":
            self.sections.append(attrs["id"])
        for key in ("src", "srcset"):
            if key in attrs and not attrs[key].startswith("data:"):
                self.external.append(attrs[key])
        if tag in ("link", "script", "iframe", "object", "embed"):
            self.external.append(f"<{tag}>")


def _pick(predicate) -> str | None:
    for name in registered_names():
        if predicate(viz.resolve_encoding(name)):
            return name
    return None


def _subset() -> list[str]:
    """A few encodings chosen by their hooks: an absolute one, a bias one, and one with no position-only plot."""
    names = [_pick(lambda pe: pe.uses_embed and not pe.uses_rotate), _pick(lambda pe: pe.uses_bias),
             _pick(lambda pe: not viz.applicable_kinds(pe))]
    return [n for n in dict.fromkeys(names) if n is not None]


def _parse(page: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(page)
    return parser


# -- structure (fast) -------------------------------------------------------------------------------------------------
def test_gallery_page_structure(tmp_path):
    names = _subset()
    path = build_gallery(tmp_path / "g", names=names)
    assert path == tmp_path / "g" / "index.html"
    page = path.read_text(encoding="utf-8")
    parsed = _parse(page)
    assert parsed.html_lang == "en"
    assert parsed.sections == [f"enc-{n}" for n in names]
    assert parsed.external == []  # images embedded, no scripts or styles from elsewhere
    expected_images = sum(len(viz.applicable_kinds(viz.resolve_encoding(n))) for n in names)
    assert len(parsed.images) == expected_images > 0
    for img in parsed.images:
        assert img["src"].startswith("data:image/png;base64,") and img["alt"]
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == PNG_SIGNATURE
    infos = {info.name: info for info in list_encodings()}
    for name in names:
        info = infos[name]
        section = page.split(f'id="enc-{name}"', 1)[1].split("</section>", 1)[0]
        assert f"{info.parameters:,}" in section and info.family in section
        if info.paper:
            assert f"arXiv:{info.paper}" in section
        assert ("<dd>yes</dd>" if info.extrapolates else "<dd>no</dd>") in section
    assert all(link.startswith(("#enc-", "https://arxiv.org/abs/")) for link in parsed.links)


def test_gallery_in_chinese():
    drawn = [n for n in _subset() if viz.applicable_kinds(viz.resolve_encoding(n))]
    names = sorted(drawn, key=lambda n: len(viz.applicable_kinds(viz.resolve_encoding(n))))[:1]  # fewest plots
    page = render_gallery(lang="zh", names=names)
    assert _parse(page).html_lang == "zh-Hans"
    assert "位置编码图集" in page
    kind = viz.applicable_kinds(viz.resolve_encoding(names[0]))[0]
    assert CAPTIONS[kind]["zh"].split("：")[0] in page
    assert CAPTIONS[kind]["en"] not in page


def test_gallery_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown encoding"):
        render_gallery(names=["not_an_encoding"])
    with pytest.raises(ValueError, match="lang must be one of"):
        render_gallery(lang="fr", names=[])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        build_gallery(blocker, names=[])
    assert main(["gallery", "--out", str(blocker), "--encodings", "nope"]) == 1
    assert "is a file" in capsys.readouterr().err


def test_gallery_cli(tmp_path, capsys):
    plain = _pick(lambda pe: not viz.applicable_kinds(pe))
    if plain is None:
        pytest.skip("every registered encoding has plots; nothing cheap to render")
    assert main(["gallery", "--out", str(tmp_path / "g"), "--lang", "zh", "--encodings", plain]) == 0
    assert (tmp_path / "g" / "index.html").read_text(encoding="utf-8").count('class="encoding"') == 1


_IMAGE_CHECK = """JSON.stringify({
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth,
                                                 h: i.naturalHeight})),
  sections: document.querySelectorAll('section.encoding').length,
  width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight,
  title: document.title})"""


def _check_in_browser(page: Path, shots: Path, binary: str, tmp_path: Path) -> dict:
    with chromium.loaded_page(binary, page, tmp_path / f"profile-{page.parent.name}") as tools:
        report = chromium.evaluate(tools, _IMAGE_CHECK)
        report["errors"] = chromium.errors(tools.events)
        report["requests"] = [e["params"]["request"]["url"][:80] for e in tools.events
                              if e["method"] == "Network.requestWillBeSent"]
        top = tools.call("Page.captureScreenshot", format="png")
        (shots / f"{page.parent.name}_top.png").write_bytes(base64.b64decode(top["data"]))
        height = min(report["height"], 12000)
        full = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": report["width"], "height": height, "scale": 0.35})
        (shots / f"{page.parent.name}_full.png").write_bytes(base64.b64decode(full["data"]))
    return report


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(1800)  # drawing the whole registry takes ~1.5 CPU-minutes; more on a busy machine
def test_gallery_in_headless_chromium(tmp_path):
    binary = chromium.require()
    shots = Path(os.environ.get("POSENC_SCREENSHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    pages = {"en": build_gallery(tmp_path / "gallery_en"),  # every registered encoding
             "zh": build_gallery(tmp_path / "gallery_zh", lang="zh", names=_subset())}
    for lang, page in pages.items():
        report = _check_in_browser(page, shots, binary, tmp_path)
        expected = _parse(page.read_text(encoding="utf-8"))
        assert report["sections"] == len(expected.sections) > 0, lang
        assert len(report["images"]) == len(expected.images) > 0, lang
        broken = [img["alt"] for img in report["images"] if not (img["complete"] and img["w"] > 0 and img["h"] > 0)]
        assert broken == [], f"{lang}: images that did not decode: {broken}"
        assert report["errors"] == [], f"{lang}: errors in the browser: {report['errors']}"
        assert all(url.startswith(("file:", "data:")) for url in report["requests"]), report["requests"]
        assert report["width"] <= 1300, f"{lang}: the page scrolls sideways ({report['width']} px)"
        for shot in (f"{page.parent.name}_top.png", f"{page.parent.name}_full.png"):
            data = (shots / shot).read_bytes()
            assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
