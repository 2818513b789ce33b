"""The report is built from records alone: mean +- std over seeds, plots, a self-contained HTML, paper ranking."""

import base64
import json
import statistics

import pytest

from posenc.lab.report import paper_comparison, summary_rows, summary_table, write_report
from posenc.lab.sweep import RESULTS, append_record


def _record(task, encoding, seed, values, *, metric="accuracy", train=(1, 4), paper=None):
    key = "perplexity" if metric == "perplexity" else "accuracy"
    metrics = {str(length): ({"undefined": "learned: position 7 is past max_seq_len=5"} if v is None else {key: v})
               for length, v in values.items()}
    return {"run_id": f"{task}/{encoding}/seed{seed}/x", "task": task, "encoding": encoding, "seed": seed,
            "metric": metric, "paper": paper, "train_lengths": list(train), "eval_lengths": list(values),
            "metrics": metrics, "final_train_loss": 0.1, "wall_time_s": 1.0, "versions": {"torch": "x"}}


def test_summary_is_mean_and_std_over_seeds():
    records = [_record("parity_check", "rope", s, {4: a, 8: b}) for s, (a, b) in enumerate([(1.0, 0.5), (0.8, 0.3)])]
    records.append(_record("parity_check", "learned", 0, {4: 0.9, 8: None}))
    rows = {r["encoding"]: r for r in summary_rows(records)}
    assert rows["rope"]["seeds"] == 2
    assert rows["rope"]["in_distribution"] == pytest.approx((0.9, statistics.stdev([1.0, 0.8])))
    assert rows["rope"]["beyond"] == pytest.approx((0.4, statistics.stdev([0.5, 0.3])))
    assert rows["learned"]["beyond"] is None
    text = summary_table(records)
    assert "90.0% ± 14.1%" in text and "n/a" in text


def test_perplexity_ratio_and_paper_ranking():
    records = [_record("lm", enc, 0, {32: 10.0, 256: ppl}, metric="perplexity", train=(32, 32))
               for enc, ppl in (("sinusoidal", 200.0), ("rope", 40.0), ("alibi", 11.0))]
    ratio = {r["encoding"]: r["ratio"][0] for r in summary_rows(records)}
    assert ratio == pytest.approx({"sinusoidal": 20.0, "rope": 4.0, "alibi": 1.1})
    lm = paper_comparison(records)["lm"]
    assert [row[0] for row in lm["rows"]] == ["alibi", "rope", "sinusoidal"]  # the paper's order, best first
    assert lm["agree"] == lm["pairs"] == 3


def test_write_report_md_html_and_plots(tmp_path):
    for s in (0, 1):
        append_record(tmp_path / RESULTS, _record("bucket_sort", "rope", s, {4: 1.0, 8: 0.2 + 0.1 * s}))
        append_record(tmp_path / RESULTS, _record("bucket_sort", "learned", s, {4: 0.9, 8: None}))
    path = write_report(tmp_path)
    md = path.read_text()
    assert "## bucket_sort" in md and "![bucket_sort](plots/bucket_sort.png)" in md
    assert "past max_seq_len=5" in md  # the reason learned has no number past its table
    png = (tmp_path / "plots" / "bucket_sort.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    page = (tmp_path / "report.html").read_text()
    assert base64.b64encode(png).decode()[:200] in page and "src=\"plots/" not in page  # self-contained
    assert json.loads((tmp_path / RESULTS).read_text().splitlines()[0])["seed"] == 0


def test_report_without_records_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="holds no records"):
        write_report(tmp_path)


def test_ties_share_a_rank_and_do_not_count_as_agreement():
    records = [_record("decoder_copy", enc, 0, {20: 0.5, 40: 0.0}, train=(1, 20))
               for enc in ("nope", "t5", "rope")]
    copy = paper_comparison(records)["decoder_copy"]
    assert {row[0]: row[4] for row in copy["rows"]} == {"nope": 1, "t5": 1, "rope": 1}
    assert copy["pairs"] == 0 and copy["agree"] == 0


def test_runs_with_encoding_options_are_reported_apart():
    from posenc.lab.report import aggregate, encoding_label

    base = {"task": "t", "seed": 0, "metric": "accuracy", "train_lengths": [1, 2], "eval_lengths": [2],
            "metrics": {"2": {"accuracy": 0.5}}}
    plain = {**base, "encoding": "mrope"}
    tuned = {**base, "encoding": "mrope", "encoding_options": {"base": 10}, "metrics": {"2": {"accuracy": 0.9}}}
    assert encoding_label(plain) == "mrope" and encoding_label(tuned) == 'mrope {"base": 10}'
    assert aggregate([plain, tuned])["t"]["encodings"] == {"mrope": {2: [0.5]}, 'mrope {"base": 10}': {2: [0.9]}}
