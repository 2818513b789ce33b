"""Every guide of the documentation site runs: its ```python blocks are executed in order, in one namespace, as a
reader would paste them (so the guides cannot rot).

A block whose first line is ``# requires: MODULE`` runs only when MODULE is importable (the test says which block it
left out and why); the Ray block also needs ``make test-slow``, since starting a local Ray cluster takes tens of
seconds. Encodings a guide registers are removed afterwards, so the registry is as the other tests expect.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
from pathlib import Path

import pytest

from posenc.base import _REGISTRY, registered_names

GUIDES = Path(__file__).resolve().parent.parent / "docs" / "guides"
GUIDE_FILES = sorted(GUIDES.glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SLOW_MODULES = {"ray"}  # blocks that need these run only under `make test-slow` (HYPOTHESIS_PROFILE=long)


def python_blocks(text: str) -> list[str]:
    """The guide's ```python blocks, in order."""
    return BLOCK.findall(text)


def _requirement(block: str) -> str | None:
    first = block.splitlines()[0] if block.strip() else ""
    match = re.match(r"#\s*requires:\s*([\w.]+)", first)
    return match.group(1) if match else None


def test_every_guide_has_code():
    assert len(GUIDE_FILES) >= 5, [p.name for p in GUIDE_FILES]
    for path in GUIDE_FILES:
        assert python_blocks(path.read_text(encoding="utf-8")), f"{path.name} has no ```python block to run"


def test_block_extraction_keeps_order_and_skips_other_languages():
    text = "# t\n```python\na = 1\n```\n```bash\nexit 1\n```\n```python\n# requires: ray\nb = a\n```\n"
    blocks = python_blocks(text)
    assert blocks == ["a = 1\n", "# requires: ray\nb = a\n"]
    assert [_requirement(b) for b in blocks] == [None, "ray"]


@pytest.mark.parametrize("path", GUIDE_FILES, ids=[p.stem for p in GUIDE_FILES])
def test_guide_runs(path, tmp_path, monkeypatch):
    if path.stem == "port-from-hf":
        pytest.importorskip("transformers", reason="the Hugging Face guide needs the peers extra (transformers)")
    monkeypatch.chdir(tmp_path)  # a guide that writes files writes them here
    before = set(registered_names())
    namespace: dict = {"__name__": f"guide_{path.stem.replace('-', '_')}"}
    skipped = []
    try:
        for i, block in enumerate(python_blocks(path.read_text(encoding="utf-8"))):
            needs = _requirement(block)
            if needs and importlib.util.find_spec(needs) is None:
                skipped.append(f"block {i + 1} needs {needs}, which is not installed")
                continue
            if needs in SLOW_MODULES and os.environ.get("HYPOTHESIS_PROFILE") != "long":
                skipped.append(f"block {i + 1} starts a {needs} cluster: run under make test-slow")
                continue
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(block, f"{path.name} block {i + 1}", "exec"), namespace)  # noqa: S102 - the guide
    finally:
        for name in set(registered_names()) - before:
            del _REGISTRY[name]
    if skipped:
        pytest.skip(f"{path.name}: ran every block but: " + "; ".join(skipped))
