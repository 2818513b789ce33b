"""``posenc lab export``: a sweep's records as one table, one row per (run, evaluation length), in CSV or Parquet.

CSV needs nothing beyond the standard library; Parquet needs pandas and pyarrow (``pip install 'posenc[export]'``).
Both files are written atomically next to ``results.jsonl`` unless ``out`` says otherwise. The format is the one
asked for, else the one ``out``'s extension names (``.csv``, ``.parquet``), else CSV; an ``out`` whose extension names
another format, or that is one of the sweep's own files (its records, report, lock, checkpoints, ...), is refused
before anything is read or written.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from posenc._argtypes import UsageError
from posenc._io import atomic_write_bytes

FORMATS = ("csv", "parquet")
EXTENSIONS = {".csv": "csv", ".parquet": "parquet"}  # the file extension of each format
# What a sweep folder holds of its own (sweep.RESULTS, the report, FolderLock's file, posenc lab extend's rows, and
# the folders runs write): an export must never be written over any of them.
SWEEP_FILES = ("results.jsonl", "report.md", "report.html", ".lock", "extension.json")
SWEEP_FOLDERS = ("checkpoints", "models", "tensorboard", "plots")
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


def export_format(fmt: str | None, out: str | os.PathLike | None) -> str:
    """The format an export writes: ``fmt`` if given, else the one ``out``'s extension names, else ``"csv"``.

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`.
        UsageError: ``out``'s extension names no format (and ``fmt`` is ``None``), or another format than ``fmt``
            (a CSV file named ``.parquet`` would fool every reader that trusts the name).
    """
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    if out is None:
        return fmt or "csv"
    suffix = Path(out).suffix.lower()
    named = EXTENSIONS.get(suffix)
    if fmt is None:
        if named is None:
            raise UsageError(f"cannot tell the format of {os.fspath(out)!r} from its extension "
                             f"({suffix or 'none'}): name the file .csv or .parquet, or give --format csv|parquet.")
        return named
    if named != fmt:
        raise UsageError(f"--out {os.fspath(out)!r} has the extension {suffix or '(none)'}, but the format is {fmt}: "
                         f"name the file {Path(out).stem}.{fmt}, or give the format its extension names.")
    return fmt


def check_export_target(folder: str | os.PathLike, path: str | os.PathLike) -> None:
    """Refuse an export target that is one of the sweep's own files, or a folder; nothing is touched.

    The sweep's files are its records (``results.jsonl``, and ``results.jsonl.partial-*`` set aside from it), its
    report, its lock, ``extension.json``, the temporary files their atomic writes leave when killed, and everything
    under ``checkpoints/``, ``models/``, ``tensorboard/`` and ``plots/``; links and other spellings of the same file
    (``DIR/./results.jsonl``, a symlink, a hard link) count as the file.
    """
    folder, path = Path(folder), Path(path)
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name such as {path / 'results.csv'}.")
    target, root = path.resolve(), folder.resolve()
    owned = [root / name for name in SWEEP_FILES]
    clash = next((p for p in owned if p == target or (p.exists() and path.exists() and os.path.samefile(p, path))),
                 None)
    if clash is None and any(target.is_relative_to(root / name) for name in SWEEP_FOLDERS):
        clash = target
    if clash is None and target.parent == root and any(  # a set-aside torn tail, or an atomic write's temporary
            target.name.startswith((f"{name}.", f".{name}.")) for name in SWEEP_FILES):
        clash = target
    if clash is not None:
        raise UsageError(f"--out {path} would overwrite the sweep's own {clash.relative_to(root).as_posix()} in "
                         f"{folder}; write the export elsewhere (the default is {folder / 'results.csv'}).")


def export_results(folder: str | os.PathLike, fmt: str | None = None, out: str | os.PathLike | None = None) -> Path:
    """Write the sweep in ``folder`` as ``folder/results.<fmt>`` (or ``out``); returns the path written.

    Args:
        folder: a sweep's output folder (it holds ``results.jsonl``).
        fmt: ``"csv"`` or ``"parquet"``; ``None``: the one ``out``'s extension names (:func:`export_format`), or
            CSV when there is no ``out``.
        out: the file to write (default: ``folder/results.<fmt>``); never one of the sweep's own files
            (:func:`check_export_target`).

    Raises:
        UsageError: (a ``ValueError``) ``out`` is the sweep's own file or a folder, or its extension disagrees with
            ``fmt``; checked before anything is read or written.
    """
    from posenc.lab.sweep import RESULTS, load_records

    folder = Path(folder)
    if out is not None:  # first: `--out DIR/results.jsonl` is refused as the sweep's records, whatever the format
        check_export_target(folder, out)
    fmt = export_format(fmt, out)
    path = Path(out) if out is not None else folder / f"results.{fmt}"
    results = folder / RESULTS
    if not results.is_file():
        raise ValueError(f"{results} does not exist: export reads a sweep folder (posenc lab run --out {folder} "
                         f"writes one).")
    rows = export_rows(load_records(results))
    if not rows:
        raise ValueError(f"{results} holds no finished runs yet; nothing to export.")
    data = _csv_bytes(rows) if fmt == "csv" else _parquet_bytes(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path
