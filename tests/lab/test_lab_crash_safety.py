"""Crash safety of lab results: torn record files, interrupted checkpoint writes."""

from __future__ import annotations

import json
import os

import pytest

from posenc.lab.sweep import RESULTS, load_records, set_aside_torn_tail
from posenc.lab.train import atomic_write_bytes


def _record(i: int) -> str:
    return json.dumps({"run_id": f"r{i}", "task": "t", "encoding": "nope", "seed": i, "metrics": {}})


def test_a_torn_last_line_is_set_aside_and_nothing_else_is_lost(tmp_path):
    results = tmp_path / RESULTS
    torn = _record(3)[:25]
    results.write_text(_record(1) + "\n" + _record(2) + "\n" + torn)
    with pytest.warns(RuntimeWarning, match="cut off mid-record"):
        aside = set_aside_torn_tail(results)
    assert aside is not None and aside.read_text() == torn
    assert [r["run_id"] for r in load_records(results)] == ["r1", "r2"]
    assert set_aside_torn_tail(results) is None  # idempotent


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    results = tmp_path / RESULTS
    results.write_text(_record(1) + "\n" + _record(2))
    assert set_aside_torn_tail(results) is None
    assert len(load_records(results)) == 2


def test_damage_in_the_middle_is_an_error_and_the_file_is_untouched(tmp_path):
    results = tmp_path / RESULTS
    content = _record(1) + "\n{broken\n" + _record(2) + "\n"
    results.write_text(content)
    assert set_aside_torn_tail(results) is None
    with pytest.raises(ValueError, match="line 2"):
        load_records(results)
    assert results.read_text() == content


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    ckpt = tmp_path / "run.pt"
    atomic_write_bytes(ckpt, b"previous checkpoint")

    def killed(*args, **kwargs):  # the process dies between writing the temporary file and the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(ckpt, b"new checkpoint, never finished")
    assert ckpt.read_bytes() == b"previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left behind


def test_a_full_disk_fails_at_start_with_a_clear_message(tmp_path, monkeypatch):
    import errno

    from posenc.lab.sweep import check_out_dir

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="not writable.*No space left on device"):
        check_out_dir(tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # the probe was removed
