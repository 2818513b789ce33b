"""What a new user meets first: the README's commands, example and table of encodings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
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


def _lab_section(start: str, end: str) -> str:
    begin = README.index(start)
    return README[begin:README.index(end, begin)]


# Each README paragraph that quotes a committed lab report: (its first words, the words after it, the report's folder)
_LAB_SECTIONS = (("**The standard suite**", "**The frontier encodings in the lab**", "standard"),
                 ("**The frontier encodings in the lab**", "**The model learns what a peer learns.**", "frontier"))


@pytest.mark.parametrize(("start", "end", "folder"), _LAB_SECTIONS, ids=[f for _, _, f in _LAB_SECTIONS])
def test_readme_lab_claims_quote_the_committed_report(start, end, folder):
    """Every figure the README quotes from a committed suite's report (a percentage, a mean ± interval, Kendall's
    tau, a perplexity ratio, a claim's margin) is in that report, so the README cannot drift from the runs."""
    section = " ".join(_lab_section(start, end).split())  # a figure may wrap across lines
    report = " ".join((ROOT / "docs" / "results" / folder / "report.md").read_text().split())
    figures = re.findall(r"margin [+-]\d+\.\d+(?: points)?(?: ± \d+\.\d+(?: points)?)?|\d+\.\d+% ± \d+\.\d+%|"
                         r"\d+\.\d+%|tau [+-]\d\.\d+|\d+\.\d+x", section)
    assert len(figures) >= 10, f"expected the section to quote the report; found only {figures}"
    for figure in figures:
        wanted = figure.replace("tau ", "tau = ") if figure.startswith("tau") else figure
        assert wanted in report, f"README quotes {figure!r}, which docs/results/{folder}/report.md does not contain"


def test_speed_figures_quote_the_committed_measurement():
    """Every min / median / max triple in the Speed section (docs/more.md) is in docs/results/speed/speed.md."""
    import re

    more = (ROOT / "docs" / "more.md").read_text(encoding="utf-8")
    section = more[more.index("## Speed"):more.index("## Numerics")]
    measured = (ROOT / "docs" / "results" / "speed" / "speed.md").read_text(encoding="utf-8")
    triples = re.findall(r"\d+\.\d\d / \d+\.\d\d / \d+\.\d\d", section)
    assert len(triples) >= 10
    missing = [t for t in triples if t not in measured]
    assert not missing, f"README quotes speed figures that docs/results/speed/speed.md does not have: {missing}"
    loads = re.search(r"load\s+average ([\d.]+)-([\d.]+) before each repeat", section)
    assert loads and loads.group(1) in measured and loads.group(2) in measured
