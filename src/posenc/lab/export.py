"""``posenc lab export``: a sweep's records as one table, one row per (run, evaluation length), in CSV or Parquet.

CSV needs nothing beyond the standard library; Parquet needs pandas and pyarrow (``pip install 'posenc[export]'``).
Both files are written atomically next to ``results.jsonl`` unless ``out`` says otherwise.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from posenc._io import atomic_write_bytes

FORMATS = ("csv", "parquet")
METRICS = ("accuracy", "token_accuracy", "loss", "perplexity")
COLUMNS = ("run_id", "task", "encoding", "encoding_label", "seed", "metric", "train_min", "train_max", "length",
           "in_distribution", *METRICS, "undefined", "learned", "learned_bar", "wall_time_s", "parameters")


def _scalar(value):
    """A cell: numbers, text, booleans and None as they are; anything else as JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def export_rows(records: list[dict]) -> list[dict]:
    """One dict per (run, evaluation length) with :data:`COLUMNS` as keys, sorted by task, encoding, seed, length."""
    from posenc.lab.report import encoding_label, record_learned

    rows = []
    for r in records:
        train = r.get("train_lengths") or [None, None]
        learned = record_learned(r)
        for key, values in r["metrics"].items():
            length = int(key)
            values = values if isinstance(values, dict) else {}
            rows.append({
                "run_id": r["run_id"], "task": r["task"], "encoding": r["encoding"],
                "encoding_label": encoding_label(r), "seed": r["seed"], "metric": r.get("metric"),
                "train_min": train[0], "train_max": train[1], "length": length,
                "in_distribution": None if train[1] is None else length <= train[1],
                **{m: _scalar(values.get(m)) for m in METRICS}, "undefined": _scalar(values.get("undefined")),
                "learned": learned, "learned_bar": _scalar(r.get("learned_bar")),
                "wall_time_s": r.get("wall_time_s"), "parameters": r.get("parameters"),
            })
    rows.sort(key=lambda row: (row["task"], row["encoding_label"], row["seed"], row["length"]))
    return rows


def _csv_bytes(rows: list[dict]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buf.getvalue().encode("utf-8")


def _parquet_bytes(rows: list[dict]) -> bytes:
    try:
        import pandas as pd
        import pyarrow  # noqa: F401 - pandas' parquet engine
    except ImportError as exc:
        raise ImportError(f"posenc lab export --format parquet needs pandas and pyarrow ({exc.name} is missing): "
                          f"pip install 'posenc[export]', or use --format csv, which needs neither.") from exc
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    buf = io.BytesIO()
    frame.to_parquet(buf, engine="pyarrow", index=False)
    return buf.getvalue()


def export_results(folder: str | os.PathLike, fmt: str = "csv", out: str | os.PathLike | None = None) -> Path:
    """Write the sweep in ``folder`` as ``folder/results.<fmt>`` (or ``out``); returns the path written."""
    from posenc.lab.sweep import RESULTS, load_records

    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    folder = Path(folder)
    results = folder / RESULTS
    if not results.is_file():
        raise ValueError(f"{results} does not exist: export reads a sweep folder (posenc lab run --out {folder} "
                         f"writes one).")
    rows = export_rows(load_records(results))
    if not rows:
        raise ValueError(f"{results} holds no finished runs yet; nothing to export.")
    path = Path(out) if out is not None else folder / f"results.{fmt}"
    data = _csv_bytes(rows) if fmt == "csv" else _parquet_bytes(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path
