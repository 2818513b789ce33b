"""The lab report's HTML in real headless Chromium: Markdown rendered (no ``**`` or backtick left in the text a
reader sees), every table row as wide as its header, every plot decoded, nothing fetched, no error logged.

Marked ``browser``; skipped with the reason when no Chromium is installed (``apt-get install chromium``, or
``POSENC_CHROMIUM``). Driven by ``tests/chromium_devtools.py``, as the gallery's browser test is.
"""

from __future__ import annotations

import pytest

import chromium_devtools as chromium
from posenc.lab.report import encoding_label, write_report
from posenc.lab.sweep import RESULTS, append_record

_PAGE_CHECK = """JSON.stringify({
  text: document.body.innerText,
  tables: Array.from(document.querySelectorAll('table')).map(t =>
      Array.from(t.rows).map(r => Array.from(r.cells).map(c => c.innerText))),
  images: Array.from(document.images).map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0})),
  strong: document.querySelectorAll('strong').length, code: document.querySelectorAll('code').length,
  width: document.documentElement.scrollWidth})"""


def _record(encoding, seed, beyond, **extra):
    return {"run_id": f"decoder_copy/{encoding}/seed{seed}/x", "task": "decoder_copy", "encoding": encoding,
            "seed": seed, "metric": "accuracy", "paper": None, "train_lengths": [1, 20], "eval_lengths": [20, 40],
            "metrics": {"20": {"accuracy": 0.95}, "40": {"accuracy": beyond}}, "final_train_loss": 0.1,
            "wall_time_s": 1.0, "versions": {"torch": "x"}, "learned": True, **extra}


@pytest.mark.browser
@pytest.mark.timeout(600)
def test_report_in_headless_chromium_shows_no_markdown(tmp_path):
    binary = chromium.require()
    out = tmp_path / "sweep"
    out.mkdir()
    for enc, score in (("t5", 0.6), ("alibi", 0.5), ("nope", 0.4), ("sinusoidal", 0.1), ("rope", 0.05)):
        append_record(out / RESULTS, _record(enc, 0, score))
    piped = _record("rope", 1, 0.2, encoding_options={"sep": "a|b"})  # a `|` in a cell used to split it
    piped["run_id"] = "decoder_copy/rope/seed1/piped"
    append_record(out / RESULTS, piped)
    write_report(out)
    with chromium.loaded_page(binary, out / "report.html", tmp_path / "profile") as tools:
        page = chromium.evaluate(tools, _PAGE_CHECK)
        errors = chromium.errors(tools.events)
        requests = [e["params"]["request"]["url"][:80] for e in tools.events
                    if e["method"] == "Network.requestWillBeSent"]
    assert "**" not in page["text"] and "`" not in page["text"], "Markdown shown raw in the page"
    assert "The papers beside ours" in page["text"] and page["strong"] > 0 and page["code"] > 0
    assert len(page["tables"]) >= 4
    for table in page["tables"]:
        header, *rows = table
        assert rows and all(len(row) == len(header) for row in rows), table
    summary = next(t for t in page["tables"] if t[0][:2] == ["task", "encoding"])
    assert encoding_label(piped) in [row[1] for row in summary[1:]]
    assert len(page["images"]) == 2 and all(image["ok"] for image in page["images"]), page["images"]
    assert errors == [] and all(url.startswith(("file:", "data:")) for url in requests), (errors, requests)
    assert page["width"] <= 1300, f"the page scrolls sideways ({page['width']} px)"
