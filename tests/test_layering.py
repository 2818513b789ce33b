"""The package's layering (DESIGN.md), checked by the import contracts in ``.importlinter`` on every ``make test``.

Each layer imports only the layers below it: the core (``base``, ``positions``, ``terms``, ``registry``) <- attention
and encodings <- model and hf <- testing and lab <- the faces; kernels are leaves. ``make lint`` runs the same check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter", reason="import-linter comes with the dev extra")
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports (import-linter) is not on the path"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # this checkout's sources, not an installed copy
    out = subprocess.run([exe, "--config", str(ROOT / ".importlinter")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
