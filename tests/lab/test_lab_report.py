"""The report is built from records alone: mean and 95% interval over seeds, plots, a self-contained HTML, the
paper's ranking beside ours on the runs that learned, with a verdict."""

import base64
import json
import statistics
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, from the PNG's IHDR chunk."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _is_grey(color) -> bool:
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(color)
    return r == g == b


def test_plot_draws_the_mean_and_interval_of_each_encoding_with_the_training_range_shaded(tmp_path):
    from matplotlib.colors import to_rgb

    from posenc.lab.report import _plot, _plot_figure, aggregate, mean_interval

    records = [_record("parity_check", "rope", s, {2: 1.0, 4: 0.9, 8: 0.5 + 0.1 * s}, train=(2, 4)) for s in (0, 1)]
    records.append(_record("parity_check", "nope", 0, {2: 0.4, 4: 0.3, 8: 0.2}, train=(2, 4), learned=False))
    records.append(_record("parity_check", "learned", 0, {2: 1.0, 4: 0.9, 8: None}, train=(2, 4)))
    t = aggregate(records)["parity_check"]
    fig = _plot_figure("parity_check", t)
    try:
        ax = fig.axes[0]
        (span,) = ax.patches  # the training lengths 2..4, shaded from half a step before to half a step after
        assert (span.get_x(), span.get_x() + span.get_width()) == (1.5, 4.5)
        assert _is_grey(span.get_facecolor()) and to_rgb(span.get_facecolor())[0] > 0.7  # light: the lines show
        lines = {c.get_label(): c for c in ax.containers}
        assert set(lines) == {"rope", "learned", "nope (not learned)"}
        rope = mean_interval([0.5, 0.6])
        data, caps, (bars,) = lines["rope"].lines
        assert data.get_xdata().tolist() == [2, 4, 8]
        assert data.get_ydata().tolist() == pytest.approx([1.0, 0.9, rope[0]])
        # error bars: the 95% interval (none at a length where both seeds agree)
        ends = [y for segment in bars.get_segments() for y in segment[:, 1]]  # (bottom, top) per point
        assert ends == pytest.approx([1.0, 1.0, 0.9, 0.9, rope[0] - rope[1], rope[0] + rope[1]])
        assert lines["learned"].lines[0].get_xdata().tolist() == [2, 4]  # undefined at 8: no point there
        for c in lines.values():  # every measured point marked, every bar capped
            assert c.lines[0].get_marker() not in ("", " ", "None", None)
            assert c.lines[1] and all(cap.get_markersize() > 0 for cap in c.lines[1])
        not_learned = lines["nope (not learned)"].lines[0]
        assert not_learned.get_linestyle() == "--" and _is_grey(not_learned.get_color())
        assert not_learned.get_alpha() < 1
        for name in ("rope", "learned"):  # the runs that learned: solid and in colour
            assert lines[name].lines[0].get_linestyle() == "-" and not _is_grey(lines[name].lines[0].get_color())
        legend = [text.get_text() for text in ax.get_legend().get_texts()]
        assert legend == ["training lengths", "learned", "nope (not learned)", "rope"]
        assert ax.get_xlabel() == "evaluation length" and ax.get_ylabel() == "accuracy (exact match)"
        assert ax.get_ylim() == pytest.approx((-0.02, 1.02)) and ax.get_yscale() == "linear"
        assert ax.get_title() == "parity_check: accuracy vs evaluation length"
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    _plot("parity_check", t, tmp_path / "p.png")
    assert _png_size((tmp_path / "p.png").read_bytes()) == (640, 400)  # 6.4 x 4 inches at 100 dpi


def test_plot_axes_follow_the_metric():
    import matplotlib.pyplot as plt

    from posenc.lab.report import _plot_figure, aggregate

    lm = aggregate([_record("lm", "rope", 0, {32: 10.0, 256: 40.0}, metric="perplexity", train=(32, 32))])["lm"]
    fig = _plot_figure("lm", lm)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert ax.get_ylabel() == "perplexity (log scale)" and ax.get_title() == "lm: perplexity vs evaluation length"
    assert ax.get_ylim()[1] > 40  # not clipped to the accuracies' 0..1
    plt.close(fig)
    rev = aggregate([_record("reverse_string", "rope", 0, {4: 0.9, 8: 0.5}, metric="token_accuracy")])
    fig = _plot_figure("reverse_string", rev["reverse_string"])
    ax = fig.axes[0]
    assert ax.get_ylabel() == "token accuracy"
    assert ax.get_title() == "reverse_string: token accuracy vs evaluation length"
    assert ax.get_xscale() == ax.get_yscale() == "linear"
    plt.close(fig)


def test_heatmap_cells_hold_the_means_marks_and_readable_text():
    import math

    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    from posenc.lab.report import NOT_LEARNED, _heatmap_figure

    records = [_record("parity_check", enc, s, {4: a, 8: b + 0.1 * s}, learned=enc != "nope")
               for enc, a, b in (("rope", 1.0, 0.5), ("nope", 0.3, 0.2)) for s in (0, 1)]
    records.append(_record("reverse_string", "rope", 0, {4: 0.6, 8: None}, metric="token_accuracy"))
    records.append(_record("bucket_sort", "alibi", 0, {4: 0.7, 8: 0.65}, train=(1, 8)))  # nothing beyond training
    records.append(_record("lm", "rope", 0, {4: 10.0, 8: 20.0}, metric="perplexity"))
    fig, left_out = _heatmap_figure(records)
    try:
        assert left_out == ["lm"]  # perplexity has no common scale with accuracies
        inside, beyond = [ax for ax in fig.axes if ax.get_images()]
        assert (inside.get_title(), beyond.get_title()) == ("headline metric, in distribution", "beyond training")
        tasks, encodings = ["bucket_sort", "parity_check", "reverse_string"], ["alibi", "nope", "rope"]
        for ax in (inside, beyond):
            assert [t.get_text() for t in ax.get_xticklabels()] == tasks
            assert all(t.get_rotation() == 35 and t.get_ha() == "right" for t in ax.get_xticklabels())
            (image,) = ax.get_images()
            assert (image.norm.vmin, image.norm.vmax, image.get_cmap().name) == (0.0, 1.0, "viridis")
        assert [t.get_text() for t in inside.get_yticklabels()] == encodings
        assert not any(t.get_visible() and t.get_text() for t in beyond.get_yticklabels())  # named once, on the left

        def grid(ax):  # row by row (encoding), column by column (task); None: NaN, nothing to show
            return [None if math.isnan(v) else v for row in ax.get_images()[0].get_array().filled(math.nan)
                    for v in row]

        assert grid(inside) == pytest.approx([0.675, None, None, None, 0.3, None, None, 1.0, 0.6])
        assert grid(beyond) == pytest.approx([None, None, None, None, 0.25, None, None, 0.55, None])

        def cells(ax):
            return {(round(t.get_position()[1]), round(t.get_position()[0])): (t.get_text(), to_rgb(t.get_color()))
                    for t in ax.texts}

        black, white = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        shown = cells(inside)  # (row = encoding, column = task) -> (text, colour); blank where nothing ran
        assert {k: v[0] for k, v in shown.items()} == {(0, 0): "68%", (1, 1): f"30% {NOT_LEARNED}", (2, 1): "100%",
                                                        (2, 2): "60%"}
        assert shown[(0, 0)][1] == black and shown[(2, 1)][1] == black  # dark text on the bright cells (> 60%)
        assert shown[(2, 2)][1] == white  # light text on the dark ones (60% and below)
        assert _is_grey(shown[(1, 1)][1])
        shown = cells(beyond)
        assert {k: v[0] for k, v in shown.items()} == {(0, 0): "n/a", (1, 1): f"25% {NOT_LEARNED}", (2, 1): "55%",
                                                        (2, 2): "n/a"}
        assert shown[(2, 1)][1] == white and _is_grey(shown[(0, 0)][1])
        for ax in (inside, beyond):  # the encoding that did not learn: its cell hatched grey, exactly the cell
            (patch,) = ax.patches
            assert (patch.get_xy(), patch.get_width(), patch.get_height()) == ((0.5, 0.5), 1, 1)
            assert patch.get_hatch() and _is_grey(patch.get_facecolor())
        (bar,) = [ax for ax in fig.axes if not ax.get_images()]
        assert bar.get_ylabel() == "accuracy (mean over seeds)"
    finally:
        plt.close(fig)


def test_heatmap_wraps_long_row_labels_and_grows_with_the_table():
    import matplotlib.pyplot as plt

    from posenc.lab.report import _heatmap_figure

    options = {"randomized": {"base": "sinusoidal", "max_len": 2048}}
    record = _record("parity_check", "randomized", 0, {4: 0.9, 8: 0.5})
    record["encoding_options"] = options
    fig, _ = _heatmap_figure([record])
    try:
        label = next(ax for ax in fig.axes if ax.get_images()).get_yticklabels()[0].get_text()
        assert label.replace("\n", " ") == 'randomized {"randomized": {"base": "sinusoidal", "max_len": 2048}}'
        assert label.count("\n") >= 2 and max(len(line) for line in label.split("\n")) <= 28
        small = fig.get_size_inches()
    finally:
        plt.close(fig)
    records = [_record(task, enc, 0, {4: 0.9, 8: 0.5}) for task in ("a", "b", "c", "d") for enc in "pqrstuvw"]
    fig, _ = _heatmap_figure(records)
    try:
        big = fig.get_size_inches()
        assert big[0] > small[0] and big[1] > small[1]  # more tasks: wider; more encodings: taller
    finally:
        plt.close(fig)


def _tau_b_textbook(a: dict, b: dict) -> float | None:
    """Kendall's tau-b as the textbook writes it: (n_c - n_d) / sqrt((n0 - n1)(n0 - n2)), n1 and n2 the pairs tied in
    a and in b (tie groups of size t contribute t (t - 1) / 2 each)."""
    keys = list(a)
    n0 = len(keys) * (len(keys) - 1) // 2
    sign = [((a[x] > a[y]) - (a[x] < a[y])) * ((b[x] > b[y]) - (b[x] < b[y]))
            for i, x in enumerate(keys) for y in keys[i + 1:]]
    n1 = sum(t * (t - 1) // 2 for t in Counter(a.values()).values())
    n2 = sum(t * (t - 1) // 2 for t in Counter(b.values()).values())
    denom = ((n0 - n1) * (n0 - n2)) ** 0.5
    return None if denom == 0 else (sign.count(1) - sign.count(-1)) / denom


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=2, max_size=8))
def test_kendall_tau_is_tau_b_with_ties(pairs):
    from posenc.lab.report import kendall_tau

    a = {f"e{i}": float(x) for i, (x, _) in enumerate(pairs)}  # few distinct values: ties in a, in b, in both
    b = {f"e{i}": float(y) for i, (_, y) in enumerate(pairs)}
    want = _tau_b_textbook(a, b)
    got = kendall_tau(a, b)
    assert got == (None if want is None else pytest.approx(want, abs=1e-12))
    assert kendall_tau(b, a) == got  # symmetric


def test_kendall_tau_on_a_hand_counted_ranking_with_ties():
    from posenc.lab.report import kendall_tau

    # pairs: (x,y) tied in a only, (x,z) (y,z) concordant, (w,*) tied in both with x... counted by hand below
    a = {"w": 1.0, "x": 1.0, "y": 1.0, "z": 0.0}
    b = {"w": 2.0, "x": 2.0, "y": 3.0, "z": 0.0}
    # (w,x): tied in both, left out; (w,y), (x,y): tied in a only; (w,z), (x,z), (y,z): concordant
    assert kendall_tau(a, b) == pytest.approx(3 / ((3 + 0) * (3 + 2)) ** 0.5)



def test_length_table_marks_the_training_lengths_and_formats_each_metric():
    from posenc.lab.report import _length_table, aggregate

    records = [_record("parity_check", "rope", s, {2: 1.0, 4: 0.9, 8: 0.5 + 0.1 * s}, train=(2, 4)) for s in (0, 1)]
    records.append(_record("parity_check", "learned", 0, {2: 1.0, 4: 0.8, 8: None}, train=(2, 4)))
    header, rows = _length_table(aggregate(records)["parity_check"])
    assert header == ["encoding", "2 (train)", "4 (train)", "8"]  # 4 is the longest training length: still inside
    half = 12.706 * statistics.stdev([0.5, 0.6]) / 2**0.5
    assert rows == [["learned", "100.0%", "80.0%", "n/a"],  # one seed: its value alone
                    ["rope", "100.0% ± 0.0%", "90.0% ± 0.0%", f"55.0% ± {half:.1%}"]]
    lm = [_record("lm", "rope", s, {32: 10.0 + 2 * s, 64: 12.5}, metric="perplexity", train=(32, 32)) for s in (0, 1)]
    assert _length_table(aggregate(lm)["lm"]) == (["encoding", "32 (train)", "64"],
                                                  [["rope", "11.00 ± 12.71", "12.50 ± 0.00"]])  # t * s / sqrt(2)
    assert _length_table(aggregate(lm[:1])["lm"])[1] == [["rope", "10.00", "12.50"]]


def test_papers_section_gives_one_verdict_line_per_paper_and_task():
    from posenc.lab.report import _papers_section

    comparison = {"lm": {"task": "lm", "verdict": "agrees", "why": "tau = +1.00 over 3"},
                  "decoder_reverse": {"task": "decoder_reverse", "verdict": "partly", "why": "a|b *c*"},
                  "unknown_task": {"task": "unknown_task", "verdict": "disagrees", "why": "not a paper's task"}}
    lines = _papers_section(comparison, {"verdict": "not comparable", "why": "1 task; needs 3"})
    assert lines == [
        "## The papers beside ours", "",
        "- **ALiBi (Press et al., arXiv 2108.12409)**, `lm`: **agrees** — tau = +1.00 over 3.",
        "- **Kazemnejad et al. (arXiv 2305.19466)**, `decoder_reverse`: **partly** — a\\|b \\*c\\*.",
        "- **Ruoss et al. (arXiv 2305.16843)**, randomized positions vs the encoding they wrap: **not comparable** — "
        "1 task; needs 3.",
        ""]
    assert _papers_section({}, None) == []  # nothing to compare: no section at all
    assert _papers_section({}, {"verdict": "agrees", "why": "w"})[2].startswith("- **Ruoss")


def test_cost_table_sorts_tasks_by_time_and_counts_a_missing_wall_time_as_zero():
    from posenc.lab.report import cost_table

    records = [dict(_record("lm", "rope", s, {4: 10.0}, metric="perplexity"), wall_time_s=300.0) for s in (0, 1)]
    records += [dict(_record("parity_check", "rope", 0, {4: 1.0}), wall_time_s=120.0)]
    untimed = _record("parity_check", "alibi", 0, {4: 1.0})
    del untimed["wall_time_s"]
    table = cost_table(records + [untimed]).splitlines()
    assert table[2:] == ["| lm | 2 | 10.0 | 300 | 83% |", "| parity_check | 2 | 2.0 | 60 | 17% |",
                         "| all | 4 | 12.0 | - | 100% |"]  # parity_check: (120 + 0) s over 2 runs
    zero = [dict(_record("lm", "rope", 0, {4: 10.0}, metric="perplexity"), wall_time_s=0.0)]
    assert cost_table(zero).splitlines()[2] == "| lm | 1 | 0.0 | 0 | - |"  # no time at all: no share


def test_suite_progress_counts_each_tasks_seeds_and_lists_the_missing_tasks_in_suite_order():
    from posenc.lab.config import SUITES, suite_encodings
    from posenc.lab.report import suite_progress

    standard = SUITES["standard"]
    assert len({standard.seeds_for(t) for t in standard.experiments}) > 1  # some tasks run more seeds
    planned = [(t, e, s) for t in standard.experiments for e in suite_encodings(standard, t)[0]
               for s in standard.seeds_for(t)]
    every = [dict(_record(t, e, s, {4: 1.0}), suite="standard") for t, e, s in planned]
    assert suite_progress(every) == f"All {len(planned)} runs of the `standard` suite are recorded."
    first, later = list(standard.experiments)[0], "bucket_sort"  # first in the suite, earlier in the alphabet
    assert first > later
    some = [r for r in every if r["task"] not in (first, later)]
    assert suite_progress(some) == (
        f"**Partial: {len(some)} of the {len(planned)} runs of the `standard` suite are recorded**; tasks with runs "
        f"still to come: {first}, {later}. The same `posenc lab run --suite standard --out DIR` resumes it; rankings "
        "below use what is recorded so far.")



def test_versions_line_lists_what_the_records_hold_and_nothing_for_a_record_without_versions():
    from posenc.lab.report import _versions_line

    old = _record("lm", "rope", 0, {4: 10.0}, metric="perplexity")
    del old["versions"]  # a record from before versions were recorded
    new = dict(_record("lm", "alibi", 0, {4: 10.0}, metric="perplexity"), content_hash="0123456789abcdef" * 4,
               versions={"torch": "2.x", "numpy": "1.y", "source": "f00d"})
    assert _versions_line([old, new]) == ("Versions: torch 2.x numpy 1.y; posenc source f00d (1 run), not recorded "
                                          "(1 run). LM corpus sha256: 0123456789abcdef.")
    assert _versions_line([old]) == "Versions: not recorded."  # and no fingerprint, no corpus hash



def test_summary_table_for_the_terminal_is_aligned_and_says_where_nothing_lies_beyond_training():
    records = [_record("lm", "rope", 0, {32: 10.0, 128: 30.0}, metric="perplexity", train=(32, 32)),
               _record("bucket_sort", "alibi", 0, {4: 0.75, 8: 0.5}, train=(1, 8))]  # nothing past length 8
    assert summary_table(records).splitlines() == [
        "task         encoding  learned  in distribution  beyond  longest / train (ppl)",
        "-" * (11 + 8 + 7 + 15 + 6 + 21 + 2 * 6),
        "bucket_sort  alibi     1/1      62.5%            -",
        "lm           rope      1/1      10.00            30.00   3.00x"]


def _decoder_copy(scores: dict, **learned) -> list[dict]:
    return [_record("decoder_copy", enc, 0, {20: 0.95, 40: score}, train=(1, 20), learned=learned.get(enc, True))
            for enc, score in scores.items()]


def test_paper_comparison_says_why_a_ranking_cannot_be_compared():
    two = paper_comparison(_decoder_copy({"t5": 0.5, "alibi": 0.4, "rope": 0.3}, rope=False))["decoder_copy"]
    assert two["verdict"] == "not comparable" and [row[0] for row in two["rows"]] == ["t5", "alibi"]
    assert two["why"] == ("only 2 of the paper's encodings were run here and learned (rope did not); a ranking "
                         "needs 3")
    one = paper_comparison(_decoder_copy({"t5": 0.5, "rope": 0.3}, rope=False))["decoder_copy"]  # 1 + 1: still shown
    assert one["why"] == ("only 1 of the paper's encodings were run here and learned (rope did not); a ranking "
                         "needs 3")
    assert one["not_learned"] == ["rope"] and one["tau"] is None
    plain = paper_comparison(_decoder_copy({"t5": 0.5, "alibi": 0.4}))["decoder_copy"]
    assert plain["why"] == "only 2 of the paper's encodings were run here and learned; a ranking needs 3"
    assert "decoder_copy" not in paper_comparison(_decoder_copy({"t5": 0.5}))  # one encoding: nothing to say
    tie = paper_comparison(_decoder_copy({"t5": 0.5, "alibi": 0.5, "nope": 0.5}))["decoder_copy"]
    assert tie["why"] == "our scores tie on every encoding, so there is no ranking to compare"


def test_paper_comparison_skips_encodings_the_paper_lacks_and_goes_on_after_a_task_it_skips():
    # "fire" (sorted between alibi and nope) is not in the paper's table; lm has one encoding only, so it is skipped,
    # and decoder_copy, later in the table of papers, is still compared
    records = _decoder_copy({"alibi": 0.5, "fire": 0.9, "nope": 0.4, "t5": 0.6})
    records.append(_record("lm", "rope", 0, {32: 10.0, 64: 20.0}, metric="perplexity", train=(32, 32)))
    found = paper_comparison(records)
    assert "lm" not in found
    assert [row[0] for row in found["decoder_copy"]["rows"]] == ["t5", "alibi", "nope"]


def test_paper_comparison_reads_each_task_at_the_lengths_its_paper_measured():
    # ALiBi's lm is compared at the longest length, Kazemnejad's decoder_copy over every length beyond training
    lm = [_record("lm", enc, 0, {32: 10.0, 64: mid, 128: last}, metric="perplexity", train=(32, 32))
          for enc, mid, last in (("alibi", 30.0, 11.0), ("rope", 12.0, 40.0), ("sinusoidal", 13.0, 90.0))]
    assert [row[3] for row in paper_comparison(lm)["lm"]["rows"]] == [11.0, 40.0, 90.0]
    copy = [_record("decoder_copy", enc, 0, {20: 0.9, 30: a, 40: b}, train=(1, 20))
            for enc, a, b in (("t5", 0.8, 0.2), ("alibi", 0.5, 0.4), ("nope", 0.1, 0.6))]
    assert [row[3] for row in paper_comparison(copy)["decoder_copy"]["rows"]] == pytest.approx([0.5, 0.45, 0.35])


def _randomized_vs_base(gains: dict, base: str = "sinusoidal") -> list[dict]:
    """A sinusoidal (or ``base``) run at 0.5 beyond training and a randomized one at 0.5 + gain, per task."""
    records = []
    for task, gain in gains.items():
        records.append(_record(task, base, 0, {4: 1.0, 8: 0.5}))
        records.append(_record(task, "randomized", 0, {4: 1.0, 8: 0.5 + gain}))
    return records


@pytest.mark.parametrize("gains, verdict", [
    ((0.25, 0.125, -0.125), "agrees"),  # ahead on average and on most tasks
    ((0.5, -0.125, -0.125), "partly"),  # ahead on average, behind on most
    ((0.125, 0.125, -0.5), "partly"),  # ahead on most, behind on average
    ((0.125, 0.125, -0.25), "partly"),  # ahead on most, exactly even on average: not ahead
    ((0.25, -0.125, -0.125), "disagrees"),  # exactly even on average, ahead on one task of three
    ((0.125, -0.25, -0.25), "disagrees"),
    ((0.25, 0.25, -0.125, -0.125), "partly"),  # ahead on average, on half the tasks: not on most
    ((0.125, 0.125, -0.25, -0.25), "disagrees"),  # behind on average, ahead on half
    ((0.0, 0.0, 0.5), "partly"),  # an even task is not a task where randomized is ahead
])
def test_randomized_verdict_needs_a_mean_gain_and_a_majority_of_tasks(gains, verdict):
    from posenc.lab.report import randomized_comparison

    tasks = ("bucket_sort", "parity_check", "reverse_string", "duplicate_string")[:len(gains)]
    result = randomized_comparison(_randomized_vs_base(dict(zip(tasks, gains))))
    assert result["verdict"] == verdict
    assert result["ahead"] == sum(g > 0 for g in gains) and result["mean_gain"] == sum(gains) / len(gains)
    assert result["why"] == (f"randomized is {sum(gains) / len(gains):+.1%} on average beyond the training length, "
                             f"ahead on {result['ahead']} of {len(gains)} tasks where both learned (paper: +12.0% "
                             "mean over 15 tasks)")  # three tasks or more, none left out: nothing more to say


def test_randomized_comparison_finds_its_base_and_says_what_it_left_out():
    from posenc.lab.report import randomized_comparison

    records = _randomized_vs_base({"bucket_sort": 0.25}, base="rope")
    records.append(_record("bucket_sort", "sinusoidal", 0, {4: 1.0, 8: 0.0}))  # the default base: not this one
    records[1]["config"] = {"model": {"encoding_options": {"randomized": {"base": "rope"}}}}
    records.append(_record("parity_check", "randomized", 0, {4: 1.0, 8: 0.9}))  # its base was not run
    records += _randomized_vs_base({"reverse_string": 0.1})
    records[-2]["learned"] = False  # the base did not learn: no comparison on that task
    result = randomized_comparison(records)
    assert result["rows"] == [("bucket_sort", "rope", 0.5, 0.75, 0.25)]
    assert result["why"] == ("randomized is +25.0% on average beyond the training length, ahead on 1 of 1 tasks "
                             "where both learned (paper: +12.0% mean over 15 tasks); a verdict needs at least 3 "
                             "such tasks; left out (one of the two did not learn or was not run): parity_check, "
                             "reverse_string")
    assert randomized_comparison(records[4:]) is None  # no task with both: nothing to compare


GOLDEN_REPORT = Path(__file__).resolve().parents[1] / "data" / "lab_report.md"


def _golden_sweep(folder: Path) -> None:
    """Records (and an extension table) that bring out every section and note of a report: the papers' rankings
    (ALiBi's lm, Kazemnejad's decoder_copy) with a run that did not learn, Ruoss's randomized comparison on three
    tasks, the heatmap with a perplexity task left out, a length where an encoding is undefined, an encoding with
    options, code fingerprints and an LM corpus hash, a record without versions or wall time, context extension."""
    records = []
    for enc, ppl in (("sinusoidal", 90.0), ("rope", 30.0), ("alibi", 11.0)):
        record = _record("lm", enc, 0, {32: 10.0, 128: ppl}, metric="perplexity", train=(32, 32))
        record.update(content_hash="ab" * 32, versions={"torch": "2.x", "source": "f00d" * 3}, wall_time_s=120.0)
        records.append(record)
    for enc, score in (("t5", 0.6), ("alibi", 0.5), ("nope", 0.45), ("sinusoidal", 0.1)):
        records.append(_record("decoder_copy", enc, 0, {20: 0.95, 40: score}, train=(1, 20)))
    records.append(_record("decoder_copy", "rope", 0, {20: 0.4, 40: 0.3}, train=(1, 20), learned=False))
    odd = _record("decoder_copy", "learned", 0, {20: 0.9, 40: None}, train=(1, 20))
    odd["encoding_options"] = {"max_len": 24}
    records.append(odd)
    for task, base, ours in (("parity_check", 0.5, 0.7), ("bucket_sort", 0.6, 0.5), ("reverse_string", 0.2, 0.4)):
        for seed in (0, 1):
            records.append(_record(task, "sinusoidal", seed, {4: 1.0, 8: base + 0.05 * seed}))
            records.append(_record(task, "randomized", seed, {4: 1.0, 8: ours}))
    del records[-1]["versions"], records[-1]["wall_time_s"]
    for r in records:
        append_record(folder / RESULTS, r)
    from posenc.lab.extension import write_extension

    write_extension([{"variant": v, "finetuned": f, "perplexity": {"8": 5.0 + f, "32": 9.5 - 2 * f}}
                     for v in ("none", "linear") for f in (False, True)], folder)


def test_report_md_is_the_reviewed_document(tmp_path):
    """The whole report.md of :func:`_golden_sweep`, compared with tests/data/lab_report.md: a change of wording,
    numbers or layout shows as a diff to read. After an intended change, rewrite it with
    ``PYTHONPATH=src python tests/lab/test_lab_report.py --record`` and review the diff before committing it."""
    _golden_sweep(tmp_path)
    got = write_report(tmp_path).read_text(encoding="utf-8")
    # Exact on any machine: the records hold hand-written numbers and the report's statistics are Python float
    # arithmetic (IEEE 754 double, no BLAS, no CPU-dependent kernels), formatted to a few digits.
    assert got == GOLDEN_REPORT.read_text(encoding="utf-8")


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="Rewrite the reviewed lab report (tests/data/lab_report.md).")
    parser.add_argument("--record", action="store_true", help=f"(re)write {GOLDEN_REPORT}")
    if parser.parse_args().record:
        with tempfile.TemporaryDirectory() as folder:
            _golden_sweep(Path(folder))
            GOLDEN_REPORT.write_text(write_report(folder).read_text(encoding="utf-8"), encoding="utf-8")
        print(f"wrote {GOLDEN_REPORT}")


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


# -- surviving mutants of the seed-2 sample (report) ------------------------------------------------------------------


def _negation(values_by_encoding, bar=None):
    records = [_record("negation", enc, s, {10: v}, train=(10, 10))
               for enc, values in values_by_encoding.items() for s, v in enumerate(values)]
    return records if bar is None else [_with_bar(r, bar) for r in records]


_NEGATION_CLAIM = {"paper": "DeBERTa", "task": "negation", "claim": "relative positions carry word order",
                   "encoding": "deberta", "baseline": "learned", "kind": "not_worse", "at": "in_distribution",
                   "verified": "[V] abstract"}


def test_the_bar_margin_of_an_accuracy_task_is_score_minus_bar():
    from posenc.lab.report import claim_checks

    records = _negation({"deberta": (0.96, 0.97, 0.98), "learned": (0.92, 1.0, 1.0)}, bar=0.9)
    (check,) = claim_checks(records, (_NEGATION_CLAIM,))
    # higher accuracy is ahead: the smallest margins are 0.96 - 0.9 and 0.92 - 0.9
    assert "smallest margin to the in-distribution bar: deberta +6.0 points, learned +2.0 points" in check["why"]


def test_a_claim_without_a_bar_ends_with_the_seed_counts():
    from posenc.lab.report import claim_checks

    (check,) = claim_checks(_negation({"deberta": (0.96, 0.97, 0.98), "learned": (1.0, 1.0, 1.0)}),
                            (_NEGATION_CLAIM,))
    assert "bar" not in check["why"]
    assert check["why"].split("; a narrow call")[0].endswith("seeds that learned: deberta 3/3, learned 3/3")


def test_a_seed_evaluated_at_fewer_lengths_has_no_value_at_the_others():
    from posenc.lab.report import aggregate

    full = _record("parity_check", "rope", 0, {4: 1.0, 8: 0.5})
    short = _record("parity_check", "rope", 1, {4: 0.8, 8: 0.3})
    del short["metrics"]["8"]  # a run stopped before its last evaluation
    assert aggregate([full, short])["parity_check"]["encodings"]["rope"] == {4: [1.0, 0.8], 8: [0.5, None]}


def test_figures_keep_their_small_fonts_and_shared_rows():
    import matplotlib.pyplot as plt

    from posenc.lab.report import _heatmap_figure, _plot_figure, aggregate

    records = [_record(task, enc, 0, {4: 0.9, 8: 0.4}) for task in ("parity_check", "bucket_sort")
               for enc in ("rope", "alibi")]
    fig, _ = _heatmap_figure(records)
    try:
        fig.canvas.draw()
        inside, beyond = [ax for ax in fig.axes if ax.get_images()]
        assert inside.title.get_fontsize() == beyond.title.get_fontsize() == 10  # under the default 12: they fit
        assert inside.get_shared_y_axes().joined(inside, beyond)  # one set of rows, named on the left
    finally:
        plt.close(fig)
    fig = _plot_figure("parity_check", aggregate(records)["parity_check"])
    try:
        (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        assert {t.get_fontsize() for t in legend.get_texts()} == {8}
    finally:
        plt.close(fig)


# -- surviving mutants of the seed-3 sample (report) ------------------------------------------------------------------


def test_claim_numbers_are_signed_only_as_differences():
    from posenc.lab.report import _claim_fmt

    assert (_claim_fmt(3.85, "perplexity"), _claim_fmt(3.85, "perplexity", signed=True)) == ("3.85", "+3.85")
    assert (_claim_fmt(0.912, "accuracy"), _claim_fmt(0.082, "accuracy", signed=True)) == ("91.2%", "+8.2 points")


def test_a_claim_neither_side_learned_names_both():
    from posenc.lab.report import claim_checks

    records = [dict(r, learned=False) for r in _negation({"deberta": (0.5, 0.5), "learned": (0.5, 0.5)})]
    (check,) = claim_checks(records, (_NEGATION_CLAIM,))
    assert check["verdict"] == "not comparable" and check["why"] == "deberta and learned learned on no seed"


def test_a_record_from_before_bars_is_judged_by_its_tasks_bar_now():
    from posenc.lab.report import record_learned

    good, bad = _record("parity_check", "rope", 0, {4: 1.0}), _record("parity_check", "rope", 1, {4: 0.0})
    for r in (good, bad):
        del r["learned"]
    assert record_learned(good) is True and record_learned(bad) is False


def test_the_perplexity_ratio_reads_the_longest_length():
    records = [_record("lm", "rope", 0, {32: 10.0, 128: 20.0, 256: 40.0}, metric="perplexity", train=(32, 32))]
    (row,) = summary_rows(records)
    assert row["ratio"][0] == pytest.approx(4.0)  # 40 / 10: the longest over the training length, not 128's 2.0


def test_the_suite_progress_is_a_paragraph_of_its_own(tmp_path):
    from posenc.lab.config import SUITES, suite_encodings

    quick = SUITES["quick"]
    (t, e, s), = [(t, e, s) for t in quick.experiments for e in suite_encodings(quick, t)[0]
                  for s in quick.seeds_for(t)][:1]
    append_record(tmp_path / RESULTS, dict(_record(t, e, s, {4: 1.0}), suite="quick"))
    assert "\n\n**Partial: 1 of the" in write_report(tmp_path).read_text(encoding="utf-8")


def test_the_heatmaps_row_names_are_small():
    import matplotlib.pyplot as plt

    from posenc.lab.report import _heatmap_figure

    fig, _ = _heatmap_figure([_record("parity_check", enc, 0, {4: 0.9, 8: 0.4}) for enc in ("rope", "alibi")])
    try:
        inside = next(ax for ax in fig.axes if ax.get_images())
        assert {t.get_fontsize() for t in inside.get_yticklabels()} == {8}
    finally:
        plt.close(fig)


# -- surviving mutants of the seed-4 sample (report) ------------------------------------------------------------------


def test_summary_rows_hold_the_score_at_the_longest_length():
    records = [_record("parity_check", "rope", s, {4: 1.0, 8: 0.6, 16: v}) for s, v in enumerate((0.2, 0.4))]
    (row,) = summary_rows(records)
    assert row["longest"] == pytest.approx((0.3, 12.706 * statistics.stdev([0.2, 0.4]) / 2**0.5))


def test_heatmap_cells_are_centred_and_not_learned_ones_thinly_outlined():
    import matplotlib.pyplot as plt

    from posenc.lab.report import _heatmap_figure

    records = [_record("parity_check", "rope", 0, {4: 0.9, 8: 0.7}),
               _record("parity_check", "nope", 0, {4: 0.3, 8: 0.2}, learned=False)]
    fig, _ = _heatmap_figure(records)
    try:
        inside = next(ax for ax in fig.axes if ax.get_images())
        assert inside.texts and all(t.get_ha() == "center" and t.get_va() == "center" for t in inside.texts)
        (patch,) = inside.patches
        assert patch.get_linewidth() == 0.5
    finally:
        plt.close(fig)


# -- surviving mutants of the seed-5 sample (report) ------------------------------------------------------------------


def test_claims_not_comparable_say_why_and_carry_no_margin(tmp_path, monkeypatch):
    from posenc.lab.report import claim_checks

    records = _negation({"deberta": (0.9, None), "learned": (1.0, 1.0)})  # one deberta seed has no score
    (check,) = claim_checks(records, (_NEGATION_CLAIM,))
    assert check["verdict"] == "not comparable" and check["why"] == "deberta has no score in distribution"
    assert check["margin"] is None and check["spread"] is None
    for record in records:
        append_record(tmp_path / RESULTS, record)
    monkeypatch.setattr("posenc.lab.report.CLAIMS", (_NEGATION_CLAIM,))
    assert "deberta has no score in distribution." in write_report(tmp_path).read_text(encoding="utf-8")


def test_a_heatmap_cell_without_a_score_says_n_a_centred():
    import matplotlib.pyplot as plt

    from posenc.lab.report import _heatmap_figure

    fig, _ = _heatmap_figure([_record("parity_check", "learned", 0, {4: 0.9, 8: None})])
    try:
        texts = [t for ax in fig.axes for t in ax.texts if t.get_text() == "n/a"]
        assert texts and all(t.get_ha() == "center" and t.get_va() == "center" for t in texts)
    finally:
        plt.close(fig)
