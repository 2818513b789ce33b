"""posenc ships its annotations (PEP 561): ``py.typed`` is in the package and in the files setuptools installs, and
``make lint`` type-checks the public core with mypy."""

from __future__ import annotations

import re
from pathlib import Path

import posenc

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = (ROOT / "pyproject.toml").read_text()  # read as text: tomllib is Python 3.11+, posenc supports 3.10


def test_package_is_marked_typed():
    assert (Path(posenc.__file__).parent / "py.typed").is_file()
    package_data = re.search(r"^\[tool\.setuptools\.package-data\]\n(.*?)(?:\n\[|\Z)", PYPROJECT, re.S | re.M)
    assert package_data and re.search(r'^posenc = \[.*"py\.typed".*\]', package_data.group(1), re.M)


def test_mypy_checks_the_public_core():
    """``make lint`` runs mypy on the files pyproject lists: the package's front door and the core are among them."""
    section = re.search(r"^\[tool\.mypy\]\n(.*?)(?:\n\[|\Z)", PYPROJECT, re.S | re.M).group(1)
    files = re.findall(r'"(src/posenc/[\w/.]+)"', re.search(r"^files = \[(.*?)\]", section, re.S | re.M).group(1))
    for module in ("__init__.py", "base.py", "positions.py", "terms.py", "registry.py"):
        assert f"src/posenc/{module}" in files
    assert all((ROOT / f).exists() for f in files)
    lint = (ROOT / "Makefile").read_text().split("lint: $(STAMP)")[1].split("\n\n")[0]
    assert "mypy" in lint
