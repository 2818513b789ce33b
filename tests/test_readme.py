"""What a new user meets first: the README's commands, example and table of encodings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_shows_the_two_commands():
    assert "make demo" in README and "make test" in README


def test_readme_table_of_encodings_is_current():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "update_readme.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_readme_python_example_runs():
    block = re.search(r"## Use an encoding in your own attention code.*?```python\n(.*?)```", README, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    assert namespace["out"].shape == (2, 8, 128, 64) and torch.isfinite(namespace["out"]).all()
    assert namespace["x"].shape == (2, 128, 512)


def test_readme_conformance_example_runs_and_names_the_layout(capsys):
    block = re.search(r"## Check your implementation: `posenc conform`.*?```python\n(.*?)```", README, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    assert namespace["result"].finding.hypothesis == "layout"
    assert "interleaved pairs" in namespace["result"].diagnosis
    assert namespace["ok"].verdict == "precision" and namespace["ok"].conforms


def _standard_suite_section() -> str:
    start = README.index("**The standard suite**")
    return README[start:README.index("**The model learns what a peer learns.**", start)]


def test_readme_lab_claims_quote_the_committed_report():
    """Every figure the README quotes from the standard suite (a percentage, a mean ± interval, Kendall's tau, a
    perplexity ratio) is in the committed report, so the README cannot drift from the runs."""
    section = " ".join(_standard_suite_section().split())  # a figure may wrap across lines
    report = (ROOT / "docs" / "results" / "standard" / "report.md").read_text()
    figures = re.findall(r"\d+\.\d+% ± \d+\.\d+%|\d+\.\d+%|tau [+-]\d\.\d+|\d+\.\d+x", section)
    assert len(figures) >= 10, f"expected the section to quote the report; found only {figures}"
    for figure in figures:
        wanted = figure.replace("tau ", "tau = ") if figure.startswith("tau") else figure
        assert wanted in report, f"README quotes {figure!r}, which docs/results/standard/report.md does not contain"
