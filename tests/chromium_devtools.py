"""Headless Chromium for browser tests, driven over the DevTools protocol with a standard-library websocket client.

Debian's ``chromium`` (``apt-get install chromium``) or any Chromium/Chrome binary named by ``POSENC_CHROMIUM``.
Tests that use it are marked ``browser`` and skip with the reason when none is installed (:func:`require`).
Used by ``tests/test_gallery_browser.py`` and ``tests/lab/test_lab_report_browser.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def find() -> str | None:
    """The Chromium binary: ``POSENC_CHROMIUM``, else the first of the usual names on ``PATH``; ``None`` if none."""
    explicit = os.environ.get("POSENC_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class DevTools:
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


def launch(binary: str, profile: Path) -> tuple[subprocess.Popen, int]:
    """Start headless Chromium with its profile in ``profile``; ``(process, DevTools port)``."""
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


def errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and error log entries among DevTools ``events``."""
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


def require() -> str:
    """The Chromium binary, or skip the test saying how to install one."""
    binary = find()
    if binary is None:
        pytest.skip("headless Chromium not found: install Debian's package (apt-get install chromium) or set "
                    "POSENC_CHROMIUM to a Chromium/Chrome binary")
    return binary


@contextlib.contextmanager
def loaded_page(binary: str, page: Path, profile: Path, *, timeout: float = 120) -> Iterator[DevTools]:
    """Open ``page`` (a file) in a fresh headless Chromium and yield its DevTools session once the page has loaded
    (``Page``, ``Runtime``, ``Log`` and ``Network`` events enabled and collected in ``tools.events``)."""
    proc, port = launch(binary, profile)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as resp:
            targets = json.load(resp)
        target = next(t for t in targets if t["type"] == "page")
        tools = DevTools(target["webSocketDebuggerUrl"], timeout=timeout)
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.call(f"{domain}.enable")
        tools.call("Page.navigate", url=page.resolve().as_uri())
        tools.wait_for("Page.loadEventFired", time.monotonic() + timeout)
        yield tools
        tools.call("Browser.close")
    finally:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def evaluate(tools: DevTools, expression: str):
    """The JSON value of a JavaScript ``expression`` that returns ``JSON.stringify(...)``."""
    result = tools.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
    if "exceptionDetails" in result:
        raise RuntimeError(f"the page's script failed: {json.dumps(result['exceptionDetails'])[:500]}")
    return json.loads(result["result"]["value"])
