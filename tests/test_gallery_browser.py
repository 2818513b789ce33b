"""The HTML gallery: its structure (fast), and the whole page loaded in real headless Chromium (slow, browser).

The browser test drives Debian's ``chromium`` over the DevTools protocol with a small standard-library websocket
client: it loads the page from a file URL, checks every image decoded (natural width > 0), that nothing was logged
as an error and nothing was fetched from the network, and takes screenshots. It is marked ``slow`` and ``browser``
(``make test-slow`` runs it) and skips with the reason when no Chromium is installed (``apt-get install chromium``
on Debian, or point ``POSENC_CHROMIUM`` at a Chromium/Chrome binary).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

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


# -- headless Chromium over the DevTools protocol ----------------------------------------------------------------------
def _chromium() -> str | None:
    explicit = os.environ.get("POSENC_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _DevTools:
    """A minimal DevTools-protocol client over a websocket (RFC 6455), standard library only."""

    def __init__(self, ws_url: str, *, timeout: float) -> None:
        url = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {url.path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        self.next_id = 0
        self.events: list[dict] = []

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("DevTools websocket closed")
        return chunk

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self._recv()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            length = bytes([0x80 | n])  # 0x80: client frames are masked
        elif n < 1 << 16:
            length = bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            length = bytes([0x80 | 127]) + struct.pack(">Q", n)
        header = bytes([0x81]) + length  # FIN + text frame
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _message(self) -> dict:
        data = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else b""
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools websocket closed by the browser")
            if opcode in (0x9, 0xA):  # ping / pong: control frames carry no protocol message
                continue
            data += payload
            if b0 & 0x80:
                return json.loads(data)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self._send_text(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = self._message()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, method: str, deadline: float) -> dict:
        for event in self.events:
            if event["method"] == method:
                return event
        while time.monotonic() < deadline:
            msg = self._message()
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg
        raise TimeoutError(f"no {method} before the deadline")


def _launch(binary: str, profile: Path) -> tuple[subprocess.Popen, int]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1280,900", "about:blank"]
    proc = subprocess.Popen([binary, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text().split()[0])
        if proc.poll() is not None:
            raise RuntimeError(f"{binary} exited with code {proc.returncode} before opening DevTools")
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"{binary} did not open a DevTools port within 60 s")


def _errors(events: list[dict]) -> list[str]:
    found = []
    for event in events:
        params = event.get("params", {})
        if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif event["method"] == "Runtime.exceptionThrown":
            found.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:300])
        elif event["method"] == "Log.entryAdded" and params["entry"].get("level") == "error":
            found.append(f"log ({params['entry'].get('source')}): {params['entry'].get('text')}")
    return found


_IMAGE_CHECK = """JSON.stringify({
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth,
                                                 h: i.naturalHeight})),
  sections: document.querySelectorAll('section.encoding').length,
  width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight,
  title: document.title})"""


def _check_in_browser(page: Path, shots: Path, binary: str, tmp_path: Path) -> dict:
    proc, port = _launch(binary, tmp_path / f"profile-{page.parent.name}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as resp:
            targets = json.load(resp)
        target = next(t for t in targets if t["type"] == "page")
        tools = _DevTools(target["webSocketDebuggerUrl"], timeout=120)
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.call(f"{domain}.enable")
        tools.call("Page.navigate", url=page.resolve().as_uri())
        tools.wait_for("Page.loadEventFired", time.monotonic() + 120)
        report = json.loads(tools.call("Runtime.evaluate", expression=_IMAGE_CHECK, returnByValue=True,
                                       awaitPromise=True)["result"]["value"])
        report["errors"] = _errors(tools.events)
        report["requests"] = [e["params"]["request"]["url"][:80] for e in tools.events
                              if e["method"] == "Network.requestWillBeSent"]
        top = tools.call("Page.captureScreenshot", format="png")
        (shots / f"{page.parent.name}_top.png").write_bytes(base64.b64decode(top["data"]))
        height = min(report["height"], 12000)
        full = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": report["width"], "height": height, "scale": 0.35})
        (shots / f"{page.parent.name}_full.png").write_bytes(base64.b64decode(full["data"]))
        tools.call("Browser.close")
    finally:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
    return report


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(1800)  # drawing the whole registry takes ~1.5 CPU-minutes; more on a busy machine
def test_gallery_in_headless_chromium(tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("headless Chromium not found: install Debian's package (apt-get install chromium) or set "
                    "POSENC_CHROMIUM to a Chromium/Chrome binary")
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
