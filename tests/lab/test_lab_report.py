"""The report is built from records alone: mean and 95% interval over seeds, plots, a self-contained HTML, the
paper's ranking beside ours on the runs that learned, with a verdict."""

import base64
import json
import statistics
from html.parser import HTMLParser

import pytest

from posenc.lab.report import encoding_label, paper_comparison, summary_rows, summary_table, write_report
from posenc.lab.sweep import RESULTS, append_record


def _record(task, encoding, seed, values, *, metric="accuracy", train=(1, 4), paper=None, learned=True):
    key = "perplexity" if metric == "perplexity" else "accuracy"
    metrics = {str(length): ({"undefined": "learned: position 7 is past max_seq_len=5"} if v is None else {key: v})
               for length, v in values.items()}
    return {"run_id": f"{task}/{encoding}/seed{seed}/x", "task": task, "encoding": encoding, "seed": seed,
            "metric": metric, "paper": paper, "train_lengths": list(train), "eval_lengths": list(values),
            "metrics": metrics, "final_train_loss": 0.1, "wall_time_s": 1.0, "versions": {"torch": "x"},
            "learned": learned}


def test_summary_is_mean_and_95_percent_interval_over_seeds():
    records = [_record("parity_check", "rope", s, {4: a, 8: b}) for s, (a, b) in enumerate([(1.0, 0.5), (0.8, 0.3)])]
    records.append(_record("parity_check", "learned", 0, {4: 0.9, 8: None}))
    rows = {r["encoding"]: r for r in summary_rows(records)}
    assert rows["rope"]["seeds"] == 2
    half = 12.706 * statistics.stdev([1.0, 0.8]) / 2**0.5  # t_{0.975, 1} * s / sqrt(n)
    assert rows["rope"]["in_distribution"] == pytest.approx((0.9, half))
    assert rows["rope"]["beyond"] == pytest.approx((0.4, 12.706 * statistics.stdev([0.5, 0.3]) / 2**0.5))
    assert rows["learned"]["beyond"] is None
    text = summary_table(records)
    assert f"90.0% ± {half:.1%}" in text and "n/a" in text
    single = next(line for line in text.splitlines() if line.split()[1:2] == ["learned"])
    assert "90.0%" in single and "±" not in single  # one seed: its value alone, no "± 0.0%"


def test_runs_that_did_not_learn_are_marked_and_left_out_of_rankings():
    records = [_record("decoder_copy", enc, 0, {20: 0.95, 40: score}, train=(1, 20))
               for enc, score in (("nope", 0.4), ("t5", 0.5), ("alibi", 0.45), ("sinusoidal", 0.05))]
    records.append(_record("decoder_copy", "rope", 0, {20: 0.3, 40: 0.9}, train=(1, 20), learned=False))
    copy = paper_comparison(records)["decoder_copy"]
    assert [row[0] for row in copy["rows"]] == ["t5", "alibi", "nope", "sinusoidal"]  # rope's 0.9 is not ranked
    assert copy["not_learned"] == ["rope"]
    assert copy["tau"] == pytest.approx(1.0) and copy["verdict"] == "agrees"
    table = summary_table(records)
    assert "30.0% †" in table and "90.0% †" in table and table.count("†") == 2


def test_kendall_tau_and_verdicts():
    from posenc.lab.report import kendall_tau, verdict

    a = {"x": 3.0, "y": 2.0, "z": 1.0}
    assert kendall_tau(a, a) == pytest.approx(1.0)
    assert kendall_tau(a, {"x": 1.0, "y": 2.0, "z": 3.0}) == pytest.approx(-1.0)
    assert kendall_tau(a, {"x": 3.0, "y": 1.0, "z": 2.0}) == pytest.approx(1 / 3)
    assert kendall_tau(a, {"x": 1.0, "y": 1.0, "z": 1.0}) is None  # all ties: no ranking
    assert verdict(1.0, 3) == "agrees" and verdict(1 / 3, 3) == "partly" and verdict(-1 / 3, 3) == "disagrees"
    assert verdict(1.0, 2) == "not comparable" and verdict(None, 4) == "not comparable"


def test_verdict_boundaries_on_both_sides_and_exactly_at_them():
    # the rule: agrees at tau >= 0.6, partly for 0 < tau < 0.6, disagrees at tau <= 0; 3 encodings make a ranking
    import math

    from posenc.lab.report import verdict

    for tau, word in ((math.nextafter(0.6, 0.0), "partly"), (0.6, "agrees"), (math.nextafter(0.6, 1.0), "agrees"),
                      (math.nextafter(0.0, -1.0), "disagrees"), (0.0, "disagrees"),
                      (math.nextafter(0.0, 1.0), "partly"), (-1.0, "disagrees"), (1.0, "agrees")):
        assert verdict(tau, 3) == word, tau
    assert verdict(0.6, 2) == "not comparable" and verdict(0.6, 3) == "agrees"  # the count's boundary
    assert verdict(0.0, 2) == "not comparable"


def test_a_ranking_with_tau_exactly_0_6_agrees():
    # 5 encodings, 2 of the 10 pairs swapped: tau = (8 - 2) / 10 = 0.6, exactly the float 0.6; one more swap: 0.4
    paper = ["t5", "alibi", "nope", "sinusoidal", "rope"]  # decoder_copy's published order, best first

    def compare(order):
        scores = {enc: 0.9 - 0.1 * order.index(enc) for enc in paper}
        records = [_record("decoder_copy", enc, 0, {20: 0.95, 40: scores[enc]}, train=(1, 20)) for enc in paper]
        return paper_comparison(records)["decoder_copy"]

    at = compare(["alibi", "t5", "nope", "rope", "sinusoidal"])
    assert at["tau"] == 0.6 and (at["agree"], at["pairs"]) == (8, 10)  # exact: 6 / 10.0 rounds to the literal
    assert at["verdict"] == "agrees" and "tau = +0.60 over 5" in at["why"]
    below = compare(["alibi", "nope", "t5", "rope", "sinusoidal"])
    assert below["tau"] == pytest.approx(0.4) and below["verdict"] == "partly"
    above = compare(["alibi", "t5", "nope", "sinusoidal", "rope"])
    assert above["tau"] == pytest.approx(0.8) and above["verdict"] == "agrees"


def test_randomized_is_compared_with_the_encoding_it_wraps():
    from posenc.lab.report import randomized_comparison

    records = []
    for task, base_score, ours in (("reverse_string", 0.2, 0.5), ("bucket_sort", 0.6, 0.7), ("parity_check", 0.5, 0.4)):
        records.append(_record(task, "sinusoidal", 0, {4: 1.0, 8: base_score}))
        records.append(_record(task, "randomized", 0, {4: 1.0, 8: ours}))
    records.append(_record("binary_addition", "sinusoidal", 0, {4: 1.0, 8: 0.1}))
    records.append(_record("binary_addition", "randomized", 0, {4: 0.2, 8: 0.9}, learned=False))
    result = randomized_comparison(records)
    assert [row[0] for row in result["rows"]] == ["bucket_sort", "parity_check", "reverse_string"]
    assert result["mean_gain"] == pytest.approx((0.3 + 0.1 - 0.1) / 3) and result["ahead"] == 2
    assert result["verdict"] == "agrees" and "binary_addition" in result["why"]


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


class _Page(HTMLParser):
    """The tables of a page (rows of cell texts, header first), its text outside code, and the tags it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


ODD_OPTIONS = {"sep": "a|b", "note": "*x* <b>bold</b> `q`"}  # Markdown and HTML markers in data


def _odd_sweep(folder):
    """A sweep whose report has every kind of section: papers, tables, an encoding label full of markers, and a
    reason with backticks."""
    for enc, score in (("t5", 0.6), ("alibi", 0.5), ("nope", 0.4), ("sinusoidal", 0.1), ("rope", 0.05)):
        append_record(folder / RESULTS, _record("decoder_copy", enc, 0, {20: 0.95, 40: score}, train=(1, 20)))
    odd = _record("decoder_copy", "rope", 1, {20: 0.9, 40: None}, train=(1, 20))
    odd["encoding_options"] = ODD_OPTIONS
    odd["run_id"] = "decoder_copy/rope/seed1/odd"
    odd["metrics"]["40"] = {"undefined": "`rope` | *cannot* run at 41 tokens"}
    append_record(folder / RESULTS, odd)
    return encoding_label(odd), odd["metrics"]["40"]["undefined"]


def test_report_html_is_its_markdown_rendered_with_data_shown_verbatim(tmp_path):
    label, reason = _odd_sweep(tmp_path)
    text = write_report(tmp_path).read_text(encoding="utf-8")
    assert "a\\|b" in text and "\\*x\\*" in text  # escaped in report.md, so its tables hold
    page = _Page()
    page.feed((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert len(page.tables) >= 4
    for table in page.tables:
        header, *rows = table
        assert rows and all(len(row) == len(header) for row in rows), table
    summary = next(t for t in page.tables if t[0][:2] == ["task", "encoding"])
    assert label in [row[1] for row in summary[1:]]  # the label, whole, in its one cell
    shown = "".join(page.text)
    assert reason in shown
    rest = shown.replace(label, "").replace(reason, "")
    assert "**" not in rest and "`" not in rest and "|" not in rest  # no Markdown left unrendered
    assert {"strong", "code", "ul", "li", "h2", "h3", "table"} <= set(page.tags)
    assert "b" not in page.tags and "script" not in page.tags  # HTML in data is text, never markup


def test_report_names_the_code_fingerprints_of_its_records(tmp_path):
    for s, source in ((0, "aaaaaaaaaaaa"), (1, "aaaaaaaaaaaa"), (2, "bbbbbbbbbbbb")):
        record = _record("bucket_sort", "rope", s, {4: 1.0, 8: 0.5})
        record["versions"] = {"torch": "x", "source": source}
        append_record(tmp_path / RESULTS, record)
    md = write_report(tmp_path).read_text()
    assert "posenc source aaaaaaaaaaaa (2 runs), bbbbbbbbbbbb (1 run)" in md
    assert "source aaaa" not in md.replace("posenc source aaaa", "")  # not repeated per version line


def test_report_without_records_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="holds no records"):
        write_report(tmp_path)


def test_ties_share_a_rank_and_do_not_count_as_agreement():
    records = [_record("decoder_copy", enc, 0, {20: 0.5, 40: 0.0}, train=(1, 20))
               for enc in ("nope", "t5", "rope")]
    copy = paper_comparison(records)["decoder_copy"]
    assert {row[0]: row[4] for row in copy["rows"]} == {"nope": 1, "t5": 1, "rope": 1}
    assert copy["pairs"] == 0 and copy["agree"] == 0
    assert copy["tau"] is None and copy["verdict"] == "not comparable" and "tie" in copy["why"]


def test_runs_with_encoding_options_are_reported_apart():
    from posenc.lab.report import aggregate, encoding_label

    base = {"task": "t", "seed": 0, "metric": "accuracy", "train_lengths": [1, 2], "eval_lengths": [2],
            "metrics": {"2": {"accuracy": 0.5}}}
    plain = {**base, "encoding": "mrope"}
    tuned = {**base, "encoding": "mrope", "encoding_options": {"base": 10}, "metrics": {"2": {"accuracy": 0.9}}}
    assert encoding_label(plain) == "mrope" and encoding_label(tuned) == 'mrope {"base": 10}'
    assert aggregate([plain, tuned])["t"]["encodings"] == {"mrope": {2: [0.5]}, 'mrope {"base": 10}': {2: [0.9]}}


def test_heatmap_of_encodings_by_task(tmp_path):
    records = [_record("parity_check", enc, s, {4: a, 8: b}, learned=enc != "nope")
               for enc, a, b in (("rope", 1.0, 0.5), ("nope", 0.3, 0.2)) for s in (0, 1)]
    records.append(_record("reverse_string", "rope", 0, {4: 0.9, 8: None}, metric="token_accuracy"))
    records.append(_record("lm", "rope", 0, {4: 10.0, 8: 20.0}, metric="perplexity"))
    for r in records:
        append_record(tmp_path / RESULTS, r)
    md = write_report(tmp_path).read_text(encoding="utf-8")
    png = (tmp_path / "plots" / "heatmap.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert "![heatmap](plots/heatmap.png)" in md and "Perplexity tasks" in md and "lm (see their sections)" in md
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="heatmap"' in page


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_heatmap_row_labels_stay_clear_of_the_cells():
    # long row labels (an encoding with its options) used to run from the right panel over the left panel's cells
    from posenc.lab.report import _heatmap_figure

    options = {"mrope": {"base": 10}, "randomized": {"randomized": {"base": "sinusoidal", "max_len": 2048}}}
    records = []
    for task in ("parity_check", "bucket_sort", "reverse_string"):
        for enc in ("rope", "mrope", "randomized", "alibi"):
            record = _record(task, enc, 0, {4: 0.95, 8: 0.5})
            if enc in options:
                record["encoding_options"] = options[enc]
            records.append(record)
    fig, _ = _heatmap_figure(records)
    try:
        fig.canvas.draw()  # lays the figure out: extents in display pixels
        renderer = fig.canvas.get_renderer()
        panels = [ax for ax in fig.axes if ax.get_images()]  # the two heatmaps (not the colour bar)
        assert len(panels) == 2
        cells = [ax.get_window_extent(renderer) for ax in panels]
        labels = [t for ax in fig.axes for t in (*ax.get_yticklabels(), *ax.get_xticklabels())
                  if t.get_visible() and t.get_text()]
        assert len([t for t in panels[0].get_yticklabels() if t.get_visible() and t.get_text()]) == 4
        for label in labels:
            box = label.get_window_extent(renderer)
            hits = [i for i, c in enumerate(cells) if _overlaps(box, c)]
            assert hits == [], f"label {label.get_text()!r} overlaps heatmap panel(s) {hits}"
        boxes = [t.get_window_extent(renderer) for t in labels]
        clashes = [(labels[i].get_text(), labels[j].get_text()) for i in range(len(boxes))
                   for j in range(i + 1, len(boxes)) if _overlaps(boxes[i], boxes[j])]
        assert clashes == []
        width, height = fig.canvas.get_width_height()
        for label in labels:  # nothing cut off at the figure's edge
            box = label.get_window_extent(renderer)
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, label.get_text()
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_no_heatmap_without_accuracy_tasks(tmp_path):
    append_record(tmp_path / RESULTS, _record("lm", "rope", 0, {4: 10.0, 8: 20.0}, metric="perplexity"))
    md = write_report(tmp_path).read_text(encoding="utf-8")
    assert "heatmap" not in md and not (tmp_path / "plots" / "heatmap.png").exists()


def test_report_says_how_much_of_its_suite_is_recorded_and_where_the_time_went(tmp_path):
    from posenc.lab.config import SUITES, suite_encodings
    from posenc.lab.report import cost_table, suite_progress

    quick = SUITES["quick"]
    planned = [(t, e, s) for t in quick.experiments for e in suite_encodings(quick, t)[0] for s in quick.seeds_for(t)]
    records = [dict(_record(t, e, s, {4: 1.0}), suite="quick", wall_time_s=10.0 * (i + 1))
               for i, (t, e, s) in enumerate(planned[:3])]
    text = suite_progress(records)
    assert text.startswith(f"**Partial: 3 of the {len(planned)} runs of the `quick` suite")
    assert suite_progress([dict(_record(t, e, s, {4: 1.0}), suite="quick") for t, e, s in planned]) == (
        f"All {len(planned)} runs of the `quick` suite are recorded.")
    assert suite_progress([_record("parity_check", "rope", 0, {4: 1.0})]) is None  # no suite named: nothing said
    table = cost_table(records)  # the three runs are of one task: 10 + 20 + 30 s
    assert f"| {planned[0][0]} | 3 | 1.0 | 20 | 100% |" in table and "| all | 3 | 1.0 | - | 100% |" in table
    for r in records:
        append_record(tmp_path / RESULTS, r)
    report = write_report(tmp_path).read_text(encoding="utf-8")
    assert "Partial: 3 of the" in report and "## Where the time goes" in report
    assert "Partial: 3 of the" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_randomized_comparison_finds_runs_with_options_as_the_standard_suite_records_them():
    # the standard suite runs randomized with {"sample_at_eval": true} (Ruoss et al.'s protocol): its summary row is
    # labelled with the options, and the comparison must still find it (it once looked for the bare name)
    from posenc.lab.report import randomized_comparison

    options = {"sample_at_eval": True}
    records = [_record("parity_check", "sinusoidal", 0, {4: 1.0, 8: 0.5}),
               dict(_record("parity_check", "randomized", 0, {4: 1.0, 8: 0.6}), encoding_options=options,
                    config={"model": {"encoding_options": {"randomized": options}}})]
    result = randomized_comparison(records)
    assert result is not None and [row[:2] for row in result["rows"]] == [("parity_check", "sinusoidal")]
    assert result["mean_gain"] == pytest.approx(0.1)
    assert result["verdict"] == "not comparable" and "needs at least 3" in result["why"]  # one task is no verdict


# -- the frontier papers: a second published table on one task, and claims stated in words ---------------------------


def _with_bar(record: dict, bar: float) -> dict:
    return {**record, "learned_bar": bar}


def test_a_second_paper_on_a_task_is_ranked_beside_the_first(tmp_path):
    # flip_flop has CoPE's table and PaTH's (Table 1: rope 0.597 < stick_breaking 0.611 < fox 0.637 < path ~1)
    beyond = {"rope": 0.3, "stick_breaking": 0.5, "fox": 0.6, "path": 0.99, "learned": 0.4, "cope": 0.9}
    records = [_record("flip_flop", enc, 0, {32: 1.0, 64: score}, train=(8, 32)) for enc, score in beyond.items()]
    comparison = paper_comparison(records)
    cope, path = comparison["flip_flop"], comparison["flip_flop (PaTH)"]
    assert cope["task"] == path["task"] == "flip_flop"
    assert [row[0] for row in path["rows"]] == ["path", "fox", "stick_breaking", "rope"]  # the paper's order
    assert path["tau"] == pytest.approx(1.0) and path["verdict"] == "agrees"
    assert [row[0] for row in cope["rows"]] == ["cope", "rope", "learned"]  # CoPE's own three, unchanged
    for record in records:
        append_record(tmp_path / RESULTS, record)
    text = write_report(tmp_path).read_text()
    assert text.count("### flip_flop: the paper's ranking beside ours") == 2
    assert "**PaTH (Yang et al., arXiv 2505.16381)**, `flip_flop`: **agrees**" in text


def test_a_paper_with_only_two_encodings_run_says_they_were_not_all_run():
    records = [_record("lm", enc, 0, {32: 10.0, 256: ppl}, metric="perplexity", train=(32, 32))
               for enc, ppl in (("rope", 40.0), ("alibi", 11.0), ("fox", 10.5))]
    lm = paper_comparison(records)["lm"]
    assert lm["verdict"] == "not comparable" and "were run here and learned" in lm["why"]


def test_difference_interval_is_welchs():
    from posenc.lab.report import difference_interval

    # equal sizes and variances: Welch's degrees of freedom are 2 (n - 1) = 4, t_{0.975, 4} = 2.776
    diff, half = difference_interval([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])
    assert diff == pytest.approx(-2.0) and half == pytest.approx(2.776 * (1 / 3 + 1 / 3) ** 0.5)
    # one side constant: df = n_other - 1 = 2, t = 4.303
    diff, half = difference_interval([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])
    assert diff == pytest.approx(0.3) and half == pytest.approx(4.303 * (0.01 / 3) ** 0.5)
    assert difference_interval([0.5], [0.1, 0.2]) == (pytest.approx(0.35), None)  # one seed: no interval
    assert difference_interval([1.0, 1.0], [1.0, 1.0]) == (0.0, 0.0)


def test_claim_verdict_on_both_sides_of_the_spread():
    from posenc.lab.report import claim_verdict

    assert claim_verdict(0.3, 0.1, "better") == "agrees"
    assert claim_verdict(0.1, 0.1, "better") == "not settled"  # exactly at the spread: not past it
    assert claim_verdict(-0.05, 0.1, "better") == "not settled"
    assert claim_verdict(-0.3, 0.1, "better") == "disagrees"
    assert claim_verdict(0.0, 0.0, "better") == "not settled"  # a tie is not ahead
    assert claim_verdict(0.2, None, "better") == "agrees"  # one seed: the direction alone
    assert claim_verdict(-0.05, 0.1, "not_worse") == "agrees"  # behind within the spread: competitive
    assert claim_verdict(-0.3, 0.1, "not_worse") == "disagrees"
    assert claim_verdict(0.0, 0.0, "not_worse") == "agrees"
    with pytest.raises(ValueError, match="'better' or 'not_worse'"):
        claim_verdict(0.1, 0.1, "ahead")


def _lm(encoding, seed, ppl_train, ppl_long, *, learned=True):
    return _with_bar(_record("lm", encoding, seed, {64: ppl_train, 1024: ppl_long}, metric="perplexity",
                             train=(64, 64), learned=learned), 15.0)


def test_claims_in_words_read_the_margin_on_the_seeds_that_learned():
    from posenc.lab.report import claim_checks

    claim = {"paper": "FoX", "task": "lm", "claim": "fox extrapolates better than rope", "encoding": "fox",
             "baseline": "rope", "kind": "better", "at": "longest", "verified": "[V]"}
    records = [_lm("fox", s, 4.0, v) for s, v in enumerate((4.0, 4.2, 4.4))]
    records += [_lm("rope", s, 4.5, v) for s, v in enumerate((30.0, 35.0, 40.0))]
    records.append(_lm("rope", 3, 20.0, 3.0, learned=False))  # did not learn: its 3.0 at 1024 must not count
    (check,) = claim_checks(records, (claim,))
    diff, half = 35.0 - 4.2, 4.303 * ((25.0 / 3) + (0.04 / 3)) ** 0.5  # Welch: df = floor(2.0...) = 2
    assert check["margin"] == pytest.approx(diff)  # lower perplexity is ahead: a positive margin
    assert check["spread"] == pytest.approx(half, rel=1e-3)
    assert check["verdict"] == "agrees"
    assert "rope 3/4" in check["why"] and "fox 3/3" in check["why"] and "at length 1024" in check["why"]
    assert "smallest margin to the in-distribution bar: fox +11.00, rope +10.50" in check["why"]
    # the same claim with the baseline ahead: disagrees; with the two within the seed spread: not settled
    flipped = [_lm("fox", s, 4.0, v) for s, v in enumerate((50.0, 55.0, 60.0))] + records[3:6]
    assert claim_checks(flipped, (claim,))[0]["verdict"] == "disagrees"
    close = [_lm("fox", s, 4.0, v) for s, v in enumerate((28.0, 36.0, 44.0))] + records[3:6]
    assert claim_checks(close, (claim,))[0]["verdict"] == "not settled"
    # no seed of the encoding learned: not comparable, and why
    none = [_lm("fox", s, 40.0, 4.0, learned=False) for s in range(3)] + records[3:6]
    check = claim_checks(none, (claim,))[0]
    assert check["verdict"] == "not comparable" and "fox learned on no seed" in check["why"]
    assert claim_checks(records[3:], (claim,)) == []  # an encoding not run: no check at all


def test_claims_in_words_in_distribution_and_a_narrow_call(tmp_path, monkeypatch):
    from posenc.lab.report import claim_checks

    claim = {"paper": "DeBERTa", "task": "negation", "claim": "relative positions carry word order",
             "encoding": "deberta", "baseline": "learned", "kind": "not_worse", "at": "in_distribution",
             "verified": "[V] abstract"}
    records = [_with_bar(_record("negation", enc, s, {10: v}, train=(10, 10)), 0.9)
               for enc, values in (("deberta", (0.96, 0.97, 0.98)), ("learned", (1.0, 1.0, 1.0)))
               for s, v in enumerate(values)]
    (check,) = claim_checks(records, (claim,))
    # behind by 3 points, with an interval of 4.303 * 0.01 / sqrt(3) ~ 2.5 points: past it, so the claim fails
    assert check["margin"] == pytest.approx(-0.03) and check["verdict"] == "disagrees"
    assert "-3.0 points ± 2.5 points" in check["why"] and "a narrow call" in check["why"]
    for record in records:
        append_record(tmp_path / RESULTS, record)
    monkeypatch.setattr("posenc.lab.report.CLAIMS", (claim,))
    text = write_report(tmp_path).read_text()
    assert "### negation: the papers' claims in words" in text
    assert text.count("**DeBERTa**, `negation`: relative positions carry word order: **disagrees**") == 2
