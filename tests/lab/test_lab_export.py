"""`posenc lab export`: one row per (run, evaluation length), CSV with the standard library, Parquet optional."""

import csv

import pytest

from posenc.cli import main
from posenc.lab.export import COLUMNS, export_results
from posenc.lab.sweep import RESULTS, append_record


def _record(task, encoding, seed, values, *, metric="accuracy", train=(1, 4), learned=True, **extra):
    key = "perplexity" if metric == "perplexity" else "accuracy"
    metrics = {str(length): ({"undefined": "learned: position 7 is past max_seq_len=5"} if v is None
                             else {key: v, "loss": 0.5})
               for length, v in values.items()}
    return {"run_id": f"{task}/{encoding}/seed{seed}/x", "task": task, "encoding": encoding, "seed": seed,
            "metric": metric, "paper": None, "train_lengths": list(train), "eval_lengths": list(values),
            "metrics": metrics, "final_train_loss": 0.1, "wall_time_s": 1.5, "versions": {"torch": "x"},
            "learned": learned, "learned_bar": 0.9, "parameters": 1234, **extra}


@pytest.fixture
def sweep(tmp_path):
    for r in (_record("parity_check", "rope", 0, {4: 1.0, 8: 0.5}),
              _record("parity_check", "learned", 1, {4: 0.2, 8: None}, learned=False),
              _record("lm", "mrope", 0, {32: 10.0, 64: 40.0}, metric="perplexity", train=(32, 32),
                      encoding_options={"base": 10})):
        append_record(tmp_path / RESULTS, r)
    return tmp_path


def test_csv_round_trip(sweep, capsys):
    assert main(["lab", "export", str(sweep)]) == 0
    assert "results.csv" in capsys.readouterr().out
    with open(sweep / "results.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert len(rows) == 6  # 3 runs x 2 lengths
    by = {(r["encoding"], int(r["length"])): r for r in rows}
    rope4, rope8 = by["rope", 4], by["rope", 8]
    assert rope4["in_distribution"] == "True" and rope8["in_distribution"] == "False"
    assert float(rope8["accuracy"]) == 0.5 and float(rope8["loss"]) == 0.5 and rope8["perplexity"] == ""
    assert (rope4["train_min"], rope4["train_max"], rope4["seed"]) == ("1", "4", "0")
    assert rope4["learned"] == "True" and float(rope4["learned_bar"]) == 0.9 and rope4["parameters"] == "1234"
    assert float(rope4["wall_time_s"]) == 1.5 and rope4["metric"] == "accuracy"
    gone = by["learned", 8]
    assert gone["learned"] == "False" and "past max_seq_len" in gone["undefined"] and gone["accuracy"] == ""
    lm = by["mrope", 64]
    assert lm["encoding_label"] == 'mrope {"base": 10}' and float(lm["perplexity"]) == 40.0
    assert lm["in_distribution"] == "False" and by["mrope", 32]["in_distribution"] == "True"


def test_out_file_and_errors(sweep, tmp_path, capsys):
    target = tmp_path / "elsewhere" / "table.csv"
    assert export_results(sweep, "csv", target) == target and target.read_text().startswith("run_id,")
    assert not list(target.parent.glob(".*.tmp"))  # written atomically, nothing left behind
    assert main(["lab", "export", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="csv, parquet"):
        export_results(sweep, "xlsx")


def test_parquet(sweep):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    assert main(["lab", "export", str(sweep), "--format", "parquet"]) == 0
    frame = pd.read_parquet(sweep / "results.parquet")
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 6
    row = frame[(frame.encoding == "rope") & (frame.length == 8)].iloc[0]
    assert row.accuracy == 0.5 and not row.in_distribution and row.learned


def test_parquet_without_pandas_names_the_extra(sweep, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("No module named 'pandas'", name="pandas")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ImportError, match=r"posenc\[export\]"):
        export_results(sweep, "parquet")


def _snapshot(folder):
    """Every file under ``folder`` with its bytes (links read through): what a refused export must leave as it was."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_never_overwrites_the_sweep_s_own_files(sweep, capsys):
    (sweep / "report.md").write_text("# report\n")
    (sweep / "report.html").write_text("<p>report</p>\n")
    (sweep / ".lock").write_text("123 posenc lab run\n")
    (sweep / "checkpoints").mkdir()
    (sweep / "checkpoints" / "run.pt").write_bytes(b"ckpt")
    (sweep / "link.csv").symlink_to(sweep / RESULTS)
    import os

    os.link(sweep / RESULTS, sweep / "hard.csv")
    before = _snapshot(sweep)
    targets = {RESULTS: RESULTS, "./results.jsonl": RESULTS, "report.md": "report.md", "report.html": "report.html",
               ".lock": ".lock", "checkpoints/run.pt": "checkpoints/run.pt", "checkpoints/table.csv":
               "checkpoints/table.csv", "link.csv": RESULTS, "hard.csv": RESULTS,
               "results.jsonl.partial-20260101-000000": "results.jsonl.partial-20260101-000000",
               ".results.jsonl.x1.tmp": ".results.jsonl.x1.tmp"}
    for out, owned in targets.items():
        for fmt in ([], ["--format", "csv"]):
            assert main(["lab", "export", str(sweep), *fmt, "--out", str(sweep / out)]) == 2, out
            err = capsys.readouterr().err
            assert f"would overwrite the sweep's own {owned}" in err and "Traceback" not in err, (out, err)
        with pytest.raises(ValueError, match="would overwrite the sweep's own"):  # the library's error, the same
            export_results(sweep, "csv", sweep / out)
    assert _snapshot(sweep) == before  # nothing written, nothing replaced
    assert main(["lab", "export", str(sweep), "--out", str(sweep / "checkpoints")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert _snapshot(sweep) == before
    assert main(["lab", "export", str(sweep), "--out", str(sweep / "table.csv")]) == 0  # beside them: fine
    assert (sweep / RESULTS).read_bytes() == before[RESULTS]


def test_the_sweep_s_records_file_is_the_one_the_sweep_writes():
    from posenc.lab.export import SWEEP_FILES

    assert RESULTS in SWEEP_FILES  # export.py names it without importing the (torch-importing) sweep module


def test_out_extension_must_name_the_format(sweep, capsys):
    before = _snapshot(sweep)
    for fmt, name in (("csv", "y.parquet"), ("parquet", "y.csv"), ("csv", "y.txt"), ("csv", "y")):
        assert main(["lab", "export", str(sweep), "--format", fmt, "--out", str(sweep / name)]) == 2, name
        err = capsys.readouterr().err
        assert f"but the format is {fmt}" in err and "Traceback" not in err, err
    assert main(["lab", "export", str(sweep), "--out", str(sweep / "y.txt")]) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    assert _snapshot(sweep) == before
    assert main(["lab", "export", str(sweep), "--out", str(sweep / "y.CSV")]) == 0  # the format from the extension
    assert capsys.readouterr().out.strip() == f"wrote {sweep / 'y.CSV'} (csv, from the file's extension)"
    assert (sweep / "y.CSV").read_text().startswith("run_id,")


def test_the_format_follows_the_extension_when_not_given(sweep, capsys):
    pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    assert main(["lab", "export", str(sweep), "--out", str(sweep / "t.parquet")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {sweep / 't.parquet'} (parquet, from the file's extension)"
    assert (sweep / "t.parquet").read_bytes()[:4] == b"PAR1"
    assert main(["lab", "export", str(sweep)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {sweep / 'results.csv'} (csv, the default)"
