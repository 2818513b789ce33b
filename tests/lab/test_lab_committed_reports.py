"""The lab reports committed under docs/results are what `posenc lab report` makes of the records committed beside
them: rebuilt from results.jsonl alone, report.md is the same text (the figures the README quotes come from it)."""

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITES = sorted(p.parent.name for p in (ROOT / "docs" / "results").glob("*/results.jsonl"))


def test_the_committed_suites_are_found():
    assert {"standard", "frontier"} <= set(SUITES)


@pytest.mark.parametrize("suite", SUITES)
def test_committed_report_rebuilds_from_its_records(suite, tmp_path):
    pytest.importorskip("matplotlib")
    from posenc.lab.report import write_report

    folder = ROOT / "docs" / "results" / suite
    shutil.copy(folder / "results.jsonl", tmp_path / "results.jsonl")
    write_report(tmp_path)
    rebuilt, committed = (tmp_path / "report.md").read_text(), (folder / "report.md").read_text()
    assert rebuilt == committed, (f"docs/results/{suite}/report.md is stale: rebuild it with "
                                  f"`posenc lab report docs/results/{suite}` and commit it")
