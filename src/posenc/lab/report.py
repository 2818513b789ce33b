"""The lab report, built from the records of a sweep alone: ``report.md``, a self-contained ``report.html`` and PNGs.

- accuracy (or perplexity) vs evaluation length, one line per encoding, the training range shaded;
- a summary table: in distribution and beyond the training range, mean and 95% interval over seeds (Student's t;
  a single seed shows its value alone);
- a run *learned* when its in-distribution score meets its task's bar (``Task.learned_bar``, stored in the record);
  runs that did not learn are shown, marked ``†``, but left out of every ranking beyond the training length;
- for tasks with a published counterpart, the paper's ranking beside ours (:mod:`posenc.lab.reference`) on the
  encodings that learned, Kendall's tau between the two, and a verdict: agrees / partly / disagrees / not comparable;
- for a paper's claim in words (``reference.CLAIMS``: one encoding ahead of, or not behind, another), the margin
  between the two on the seeds that learned, its 95% interval, and a verdict on the direction: agrees / disagrees /
  not settled (the margin is within the seed spread) / not comparable.
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
from collections import Counter
from pathlib import Path

from posenc._io import atomic_write_bytes
from posenc.lab import markdown as md
from posenc.lab.reference import CLAIMS, PUBLISHED
from posenc.lab.sweep import RESULTS, load_records

__all__ = ["aggregate", "claim_checks", "claim_verdict", "cost_table", "difference_interval", "kendall_tau",
           "mean_interval", "paper_comparison", "record_learned", "suite_progress", "summary_rows", "summary_table",
           "verdict", "write_report"]

NOT_LEARNED = "†"  # marks scores of runs below their task's in-distribution bar

# Student's t quantile t_{0.975, df} for df = 1..30 (a 95% two-sided interval of the mean); 1.96 beyond
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@functools.cache
def _task_bar(task: str, options: str) -> tuple[str, float] | None:
    """``(metric, bar)`` of a registered task built with ``options`` (JSON), or ``None`` if it is not registered."""
    from posenc.lab.tasks import get_task, registered_tasks

    if task not in registered_tasks():
        return None
    built = get_task(task, **json.loads(options))
    return built.metric, built.bar()


def record_learned(record: dict) -> bool:
    """Whether a run learned: the record's own verdict, or (records from before bars) its task's bar now."""
    if "learned" in record:
        return bool(record["learned"])
    from posenc.lab.tasks.base import learned
    from posenc.lab.train import in_distribution

    options = record.get("config", {}).get("task", {}).get("options", {})
    found = _task_bar(record["task"], json.dumps(options, sort_keys=True))
    if found is None:
        return True  # a task this installation does not know: nothing to judge it by
    metric, bar = found
    return learned(metric, bar, in_distribution(record["metrics"], record["metric"], record["train_lengths"][1]))


def mean_interval(values: list[float | None]) -> tuple[float, float | None] | None:
    """``(mean, half-width of the 95% interval)`` over seeds; half-width ``None`` for one seed; ``None`` if any
    value is undefined or there are none."""
    if not values or any(v is None for v in values):
        return None
    if len(values) == 1:
        return values[0], None
    df = len(values) - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96
    return statistics.fmean(values), t * statistics.stdev(values) / math.sqrt(len(values))


def kendall_tau(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Kendall's tau-b between two scorings of the same keys (ties handled); ``None`` when either is all ties."""
    keys = sorted(a)
    concordant = discordant = ties_a = ties_b = 0
    for i, x in enumerate(keys):
        for y in keys[i + 1:]:
            da, db = a[x] - a[y], b[x] - b[y]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):  # pragma: no mutate - da, db != 0 here: ">=" is ">"
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return None if denom == 0 else (concordant - discordant) / denom


def verdict(tau: float | None, n_common: int) -> str:
    """One word for a rank agreement: ``agrees`` (tau >= 0.6), ``partly`` (0 < tau < 0.6), ``disagrees``
    (tau <= 0), or ``not comparable`` (fewer than 3 encodings both rank, or our scores all tie)."""
    if n_common < 3 or tau is None:
        return "not comparable"
    if tau >= 0.6:
        return "agrees"
    return "partly" if tau > 0 else "disagrees"


def _value(record: dict, length: str) -> float | None:
    m = record["metrics"].get(length, {})
    if "undefined" in m or not m:
        return None
    return m.get(record["metric"], m.get("accuracy"))  # the task's headline: accuracy, token_accuracy, perplexity


def encoding_label(record: dict) -> str:
    """The encoding's name, with its options when the run had any (``mrope {"base": 10}``): variants stay apart."""
    options = record.get("encoding_options")
    return record["encoding"] if not options else f"{record['encoding']} {json.dumps(options, sort_keys=True)}"


def aggregate(records: list[dict]) -> dict[str, dict]:
    """Per task: its metric, training range, evaluation lengths, per encoding the per-seed values per length, and
    per encoding whether each seed learned (``t["learned"][encoding]``, in the same seed order)."""
    tasks: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: (r["task"], encoding_label(r), r["seed"])):
        t = tasks.setdefault(r["task"], {"metric": r["metric"], "train_lengths": r["train_lengths"],
                                         "eval_lengths": r["eval_lengths"], "encodings": {}, "undefined": {},
                                         "paper": r.get("paper")})
        per_enc = t["encodings"].setdefault(encoding_label(r), {})
        t.setdefault("learned", {}).setdefault(encoding_label(r), []).append(record_learned(r))
        for length in r["eval_lengths"]:
            per_enc.setdefault(length, []).append(_value(r, str(length)))
            m = r["metrics"].get(str(length), {})
            if "undefined" in m:
                t["undefined"].setdefault(encoding_label(r), m["undefined"])
    return tasks


def _fmt(stat: tuple[float, float | None] | None, metric: str, *, learned: bool = True) -> str:
    if stat is None:
        return "n/a"
    mean, half = stat
    mark = "" if learned else f" {NOT_LEARNED}"
    if metric == "perplexity":
        return (f"{mean:.2f}" if half is None else f"{mean:.2f} ± {half:.2f}") + mark
    return (f"{mean:.1%}" if half is None else f"{mean:.1%} ± {half:.1%}") + mark


def _per_seed(values_by_length: dict[int, list], lengths: list[int]) -> list[float | None]:
    """For each seed, the mean over ``lengths`` (None if any of them is undefined)."""
    if not lengths:
        return []
    n_seeds = len(next(iter(values_by_length.values())))
    out = []
    for s in range(n_seeds):
        vals = [values_by_length[length][s] for length in lengths]
        out.append(None if any(v is None for v in vals) else statistics.fmean(vals))
    return out


def _learned_only(values: list, flags: list[bool]) -> list:
    return [v for v, ok in zip(values, flags) if ok]


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per (task, encoding): seeds, how many learned, in-distribution and beyond (mean and 95% half-width
    over seeds; ``*_learned``: over the seeds that learned only, what rankings use), and for perplexity tasks the
    ratio of the perplexity at the longest length to that at the training length."""
    rows = []
    for task, t in aggregate(records).items():
        hi = t["train_lengths"][1]
        inside = [length for length in t["eval_lengths"] if length <= hi]
        beyond = [length for length in t["eval_lengths"] if length > hi]
        for enc, by_len in t["encodings"].items():
            flags = t["learned"][enc]
            beyond_seeds = _per_seed(by_len, beyond)
            row = {"task": task, "encoding": enc, "metric": t["metric"], "seeds": len(next(iter(by_len.values()))),
                   "learned": sum(flags), "in_distribution": mean_interval(_per_seed(by_len, inside)),
                   "beyond": mean_interval(beyond_seeds) if beyond else None,
                   "beyond_learned": mean_interval(_learned_only(beyond_seeds, flags)) if beyond else None,
                   "ratio": None,
                   "longest": mean_interval(by_len[t["eval_lengths"][-1]]),
                   "longest_learned": mean_interval(_learned_only(by_len[t["eval_lengths"][-1]], flags))}
            if t["metric"] == "perplexity" and inside and beyond:
                first, last = by_len[inside[-1]], by_len[t["eval_lengths"][-1]]
                if all(v is not None for v in first + last):
                    row["ratio"] = mean_interval([b / a for a, b in zip(first, last)])
            row["learned_all"] = row["learned"] == row["seeds"]
            rows.append(row)
    return rows


def summary_table(records: list[dict], *, markdown: bool = False) -> str:
    """The summary table as text (for the terminal) or Markdown: ``learned`` counts the seeds that met the task's
    bar; scores of encodings with no such seed carry ``†``."""
    header = ["task", "encoding", "learned", "in distribution", "beyond", "longest / train (ppl)"]
    body = []
    for r in summary_rows(records):
        ratio = "" if r["ratio"] is None else f"{r['ratio'][0]:.2f}x"
        ok = r["learned"] > 0
        body.append([r["task"], r["encoding"], f"{r['learned']}/{r['seeds']}",
                     _fmt(r["in_distribution"], r["metric"], learned=ok),
                     _fmt(r["beyond"], r["metric"], learned=ok) if _has_beyond(records, r["task"]) else "-", ratio])
    if markdown:
        return md.table(header, body)  # cells escaped: a `|` in an encoding's options stays in its cell
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), "-" * (sum(widths) + 2 * len(widths))]
    return "\n".join(lines + ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body])


def _has_beyond(records: list[dict], task: str) -> bool:
    return any(r["task"] == task and max(r["eval_lengths"]) > r["train_lengths"][1] for r in records)


def _plot_figure(task: str, t: dict):
    """One task's metric vs evaluation length (``t``: the task's entry of :func:`aggregate`): a line per encoding,
    the mean over seeds with its 95% interval as error bars, the training lengths shaded; an encoding none of whose
    seeds learned is drawn grey and dashed. The caller saves and closes the figure."""
    import matplotlib

    matplotlib.use("Agg")  # pragma: no mutate - backend names are case-insensitive ("agg", "AGG": the same one)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    lo, hi = t["train_lengths"]
    ax.axvspan(lo - 0.5, hi + 0.5, color="0.85", label="training lengths")
    for enc, by_len in t["encodings"].items():
        xs, ys, es = [], [], []
        for length in t["eval_lengths"]:
            stat = mean_interval(by_len[length])
            if stat is not None:
                xs.append(length)
                ys.append(stat[0])
                es.append(stat[1] or 0.0)
        if xs and any(t["learned"][enc]):
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=enc)
        elif xs:  # did not learn: drawn grey and dashed, beside the others
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color="0.6", linestyle="--", alpha=0.7,
                        label=f"{enc} (not learned)")
    ax.set_xlabel("evaluation length")
    if t["metric"] == "perplexity":
        ax.set_ylabel("perplexity (log scale)")
        ax.set_yscale("log")
        ax.set_xscale("log", base=2)
    else:
        ax.set_ylabel("token accuracy" if t["metric"] == "token_accuracy" else "accuracy (exact match)")
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{task}: {t['metric'].replace('_', ' ')} vs evaluation length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _plot(task: str, t: dict, path: Path) -> None:
    """Write ``path``, the PNG of :func:`_plot_figure`."""
    import matplotlib.pyplot as plt

    fig = _plot_figure(task, t)
    fig.savefig(path)
    plt.close(fig)  # pragma: no mutate - close(None) closes the current figure: this one


HEATMAP_NOTE = ("Encoding x task, the headline metric of each task (exact match or token accuracy, 0 to 1) averaged "
                "over seeds: left in distribution, right beyond the training lengths. Hatched grey cells did not learn "
                "(no seed met the task's bar; the number is still shown, with {mark}); n/a: not defined there or no "
                "length beyond training; blank: not run. Perplexity tasks have no common scale with accuracies and "
                "are left out")


def _heatmap_figure(records: list[dict]):
    """``(figure, perplexity tasks left out)``: encoding x task for the accuracy tasks, in distribution and beyond;
    ``None`` when no task is scored by accuracy. The caller saves and closes the figure."""
    rows = summary_rows(records)
    scored = [r for r in rows if r["metric"] != "perplexity"]
    left_out = sorted({r["task"] for r in rows if r["metric"] == "perplexity"})
    if not scored:
        return None
    import textwrap

    import matplotlib

    matplotlib.use("Agg")  # pragma: no mutate - backend names are case-insensitive ("agg", "AGG": the same one)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    tasks = sorted({r["task"] for r in scored})
    encodings = list(dict.fromkeys(r["encoding"] for r in sorted(scored, key=lambda r: r["encoding"])))
    cell = {(r["encoding"], r["task"]): r for r in scored}
    # long labels (an encoding with its JSON options) wrap rather than run into the cells or squeeze them away
    # pragma: no mutate start - None is as false as False
    labels = [textwrap.fill(enc, 28, break_long_words=False, break_on_hyphens=False) for enc in encodings]
    # pragma: no mutate end
    lines = sum(label.count("\n") + 1 for label in labels)
    width = max(6.4, 2.0 + 1.3 * len(tasks) * 2)
    # the panels share their rows, so only the left one names them, and the constrained layout makes room for the
    # names, the rotated task labels and the colour bar instead of drawing them over the cells
    fig, axes = plt.subplots(1, 2, figsize=(width, 1.6 + 0.3 * max(lines, 1.5 * len(encodings))), dpi=100,
                             squeeze=False, sharey=True, layout="constrained")
    image = None
    titles = ("headline metric, in distribution", "beyond training")
    for ax, key, title in zip(axes[0], ("in_distribution", "beyond"), titles):
        values = [[float("nan")] * len(tasks) for _ in encodings]
        for i, enc in enumerate(encodings):
            for j, task in enumerate(tasks):
                row = cell.get((enc, task))
                stat = row[key] if row is not None else None
                if stat is not None:
                    values[i][j] = stat[0]
        image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        for i, enc in enumerate(encodings):
            for j, task in enumerate(tasks):
                row, v = cell.get((enc, task)), values[i][j]
                if row is None:
                    continue
                if v != v:  # NaN: undefined here, or the task has no length beyond training
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="0.4")
                    continue
                if row["learned"] == 0:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.85", edgecolor="0.5",
                                           hatch="///", linewidth=0.5))
                    ax.text(j, i, f"{v:.0%} {NOT_LEARNED}", ha="center", va="center", fontsize=8, color="0.2")
                else:
                    ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=8,
                            color="black" if v > 0.6 else "white")
        ax.set_xticks(range(len(tasks)), tasks, rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[0][0].set_yticks(range(len(encodings)), labels, fontsize=8)
    axes[0][1].tick_params(labelleft=False)  # the same rows: named once, on the left
    fig.colorbar(image, ax=list(axes[0]), pad=0.02, label="accuracy (mean over seeds)")
    return fig, left_out


def _heatmap(records: list[dict], path: Path) -> list[str] | None:
    """Write ``path``, encoding x task for the accuracy tasks, and return the perplexity tasks it leaves out; ``None``
    (and no file) when no task is scored by accuracy."""
    made = _heatmap_figure(records)
    if made is None:
        return None
    import matplotlib.pyplot as plt

    fig, left_out = made
    # "tight" trims the margins only: the constrained layout already keeps every label inside the figure
    fig.savefig(path, bbox_inches="tight")  # pragma: no mutate - the margins' width is not checked
    plt.close(fig)  # pragma: no mutate - close(None) closes the current figure: this one
    return left_out


def _rank(scores: dict[str, float], higher_is_better: bool) -> dict[str, int]:
    """Competition ranking (1 = best); ties share a rank."""
    sign = -1 if higher_is_better else 1  # pragma: no mutate - only its sign matters (-2 or 2 rank alike)
    return {e: 1 + sum(sign * scores[o] < sign * scores[e] for o in scores) for e in scores}


def paper_comparison(records: list[dict]) -> dict[str, dict]:
    """Per published table (keyed as :data:`~posenc.lab.reference.PUBLISHED` is: by task, or by a name of its own
    with the task in ``"task"``): the paper's ranking beside ours on the encodings that learned.

    Each entry: ``task``, ``rows`` (encoding, paper score, paper rank, ours, our rank) best first by the paper,
    ``agree`` and ``pairs`` (pairs of encodings both rankings order, and how many of them they order alike),
    ``tau`` (Kendall's tau-b, ``None`` when our scores all tie), ``verdict`` and ``why`` (one line), and
    ``not_learned`` (encodings the paper ranks that did not learn here, so are left out).
    """
    out = {}
    rows_by_task: dict[str, list[dict]] = {}
    for row in summary_rows(records):
        rows_by_task.setdefault(row["task"], []).append(row)
    for key, ref in PUBLISHED.items():
        task = ref.get("task", key)
        if task not in rows_by_task:
            continue
        ours, not_learned = {}, []
        for row in rows_by_task[task]:
            if row["encoding"] not in ref["scores"]:
                continue
            stat = row["longest_learned"] if ref["ours_at"] == "longest" else row["beyond_learned"]
            if row["learned"] == 0:
                not_learned.append(row["encoding"])
            elif stat is not None:
                ours[row["encoding"]] = stat[0]
        common = [e for e in ref["scores"] if e in ours]
        if len(common) + len(not_learned) < 2:
            continue
        higher = ref["higher_is_better"]
        paper_rank = _rank({e: ref["scores"][e] for e in common}, higher)
        our_rank = _rank({e: ours[e] for e in common}, higher)
        # only pairs that both rankings order count: a tie (e.g. every encoding at 0%) agrees with nothing
        pairs = [(a, b) for i, a in enumerate(common) for b in common[i + 1:]
                 if paper_rank[a] != paper_rank[b] and our_rank[a] != our_rank[b]]
        # pragma: no mutate start - the pairs' ranks differ ("<=" reads as "<"); kendall_tau of none is None too
        agree = sum((paper_rank[a] < paper_rank[b]) == (our_rank[a] < our_rank[b]) for a, b in pairs)
        tau = kendall_tau({e: ref["scores"][e] for e in common}, {e: ours[e] for e in common}) if common else None
        # pragma: no mutate end
        word = verdict(tau, len(common))
        if word != "not comparable":
            why = f"Kendall's tau = {tau:+.2f} over {len(common)} encodings that learned"
        elif len(common) < 3:
            why = (f"only {len(common)} of the paper's encodings were run here and learned"
                   + (f" ({', '.join(not_learned)} did not)" if not_learned else "") + "; a ranking needs 3")
        else:
            why = "our scores tie on every encoding, so there is no ranking to compare"
        out[key] = {"task": task, "ref": ref,
                    "rows": [(e, ref["scores"][e], paper_rank[e], ours[e], our_rank[e])
                             for e in sorted(common, key=paper_rank.get)],
                    "agree": agree, "pairs": len(pairs), "tau": tau, "verdict": word, "why": why,
                    "not_learned": not_learned}
    return out


def randomized_comparison(records: list[dict]) -> dict | None:
    """Ruoss et al. (arXiv 2305.16843): randomized positions beside the encoding they wrap, beyond the training
    length, on every task where both learned. ``None`` when no task has both.

    Returns ``rows`` (task, base, base score, randomized score, difference), the mean difference, the number of
    tasks where randomized is ahead, a verdict (``agrees`` when randomized is ahead on average and on most tasks,
    ``partly`` when ahead on average or on most tasks but not both, ``disagrees`` otherwise; ``not comparable`` with
    fewer than 3 such tasks) and a one-line why.
    """
    rows_by_task: dict[str, dict[str, dict]] = {}
    bases: dict[str, str] = {}
    labels: dict[str, str] = {}  # task -> the randomized runs' row label (with their options, as the summary has it)
    for r in records:
        if r["encoding"] == "randomized":
            bases[r["task"]] = r.get("config", {}).get("model", {}).get("encoding_options", {}).get(
                "randomized", {}).get("base", "sinusoidal")
            labels[r["task"]] = encoding_label(r)
    for row in summary_rows(records):
        rows_by_task.setdefault(row["task"], {})[row["encoding"]] = row
    rows, skipped = [], []
    for task, base in sorted(bases.items()):
        by_enc = rows_by_task.get(task, {})  # pragma: no mutate - every task of the records has summary rows
        ours, theirs = by_enc.get(labels[task]), by_enc.get(base)
        if ours is None or theirs is None or ours["beyond_learned"] is None or theirs["beyond_learned"] is None:
            skipped.append(task)
            continue
        a, b = theirs["beyond_learned"][0], ours["beyond_learned"][0]
        rows.append((task, base, a, b, b - a))
    if not rows:
        return None
    mean_gain = statistics.fmean(r[4] for r in rows)
    ahead = sum(r[4] > 0 for r in rows)
    if len(rows) < 3:  # one or two tasks (all of them at chance, say) make no verdict on the paper's claim
        word = "not comparable"
    elif mean_gain > 0 and ahead * 2 > len(rows):
        word = "agrees"
    elif mean_gain > 0 or ahead * 2 > len(rows):
        word = "partly"
    else:
        word = "disagrees"
    why = (f"randomized is {mean_gain:+.1%} on average beyond the training length, ahead on {ahead} of {len(rows)} "
           f"tasks where both learned (paper: +12.0% mean over 15 tasks)")
    if len(rows) < 3:
        why += "; a verdict needs at least 3 such tasks"
    if skipped:
        why += f"; left out (one of the two did not learn or was not run): {', '.join(skipped)}"
    return {"rows": rows, "mean_gain": mean_gain, "ahead": ahead, "verdict": word, "why": why}


def _length_table(t: dict) -> tuple[list[str], list[list[str]]]:
    header = ["encoding"] + [str(x) + (" (train)" if x <= t["train_lengths"][1] else "") for x in t["eval_lengths"]]
    rows = [[enc] + [_fmt(mean_interval(by_len[x]), t["metric"]) for x in t["eval_lengths"]]
            for enc, by_len in t["encodings"].items()]
    return header, rows


_PAPERS = (("ALiBi (Press et al., arXiv 2108.12409)", ("lm",)),
           ("Kazemnejad et al. (arXiv 2305.19466)", ("decoder_copy", "decoder_reverse")),
           ("CoPE (Golovneva et al., arXiv 2405.18719)", ("flip_flop", "selective_copy")),
           ("PaTH (Yang et al., arXiv 2505.16381)", ("flip_flop (PaTH)",)))


def _claim_line(c: dict) -> str:
    """One Markdown bullet: a claim in words, its verdict and why."""
    return (f"- **{md.escape(c['paper'])}**, {md.code(c['task'])}: {md.escape(c['claim'])}: **{c['verdict']}** — "
            f"{md.escape(c['why'])}.")


def _papers_section(comparison: dict, randomized: dict | None, claims: list[dict] | None = None) -> list[str]:
    """Markdown lines: one verdict per paper and task (ALiBi, Kazemnejad, Ruoss, CoPE, PaTH) and per claim in
    words, from learned runs only."""
    lines = []
    for paper, keys in _PAPERS:
        for key in keys:
            if key in comparison:
                c = comparison[key]
                lines.append(f"- **{md.escape(paper)}**, {md.code(c['task'])}: **{c['verdict']}** — "
                             f"{md.escape(c['why'])}.")
    if randomized is not None:
        lines.append(f"- **Ruoss et al. (arXiv 2305.16843)**, randomized positions vs the encoding they wrap: "
                     f"**{randomized['verdict']}** — {md.escape(randomized['why'])}.")
    lines += [_claim_line(c) for c in claims or ()]
    return ["## The papers beside ours", "", *lines, ""] if lines else []


def difference_interval(a: list[float], b: list[float]) -> tuple[float, float | None]:
    """``mean(a) - mean(b)`` and the half-width of its 95% interval (Welch's t, its degrees of freedom rounded down);
    half-width ``None`` when either side has a single value."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return diff, 0.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = _T975[max(1, math.floor(df)) - 1] if df < len(_T975) + 1 else 1.96
    return diff, t * math.sqrt(va + vb)


def claim_verdict(margin: float, spread: float | None, kind: str) -> str:
    """The direction of a claim read from ``margin`` (the encoding's advantage over the baseline, positive: ahead)
    and ``spread`` (the half-width of its 95% interval; ``None``, one seed: read as 0).

    ``kind="better"``: ``agrees`` when ahead by more than the spread, ``disagrees`` when behind by more than it, else
    ``not settled``. ``kind="not_worse"`` (the paper says competitive): ``disagrees`` only when behind by more than the
    spread, else ``agrees``.
    """
    s = 0.0 if spread is None else spread
    if kind == "better":
        return "agrees" if margin > s else "disagrees" if margin < -s else "not settled"
    if kind == "not_worse":
        return "disagrees" if margin < -s else "agrees"
    raise ValueError(f"a claim's kind must be 'better' or 'not_worse'; got {kind!r}.")


def _claim_values(t: dict, encoding: str, at: str) -> tuple[list[float | None], list[bool]]:
    """Per seed, ``encoding``'s headline score ``at`` the longest length, beyond training or in distribution."""
    by_len = t["encodings"][encoding]
    hi = t["train_lengths"][1]
    if at == "longest":
        values = by_len[t["eval_lengths"][-1]]
    elif at in ("beyond", "in_distribution"):
        values = _per_seed(by_len, [x for x in t["eval_lengths"] if (x > hi) == (at == "beyond")])
    else:
        raise ValueError(f"a claim is read at 'longest', 'beyond' or 'in_distribution'; got {at!r}.")
    return values, t["learned"][encoding]


def _bar_margins(records: list[dict], task: str, encoding: str) -> list[float]:
    """Per learned seed of ``encoding`` on ``task``: how far its in-distribution score clears the task's bar."""
    from posenc.lab.train import in_distribution

    margins = []
    for r in records:
        if r["task"] != task or encoding_label(r) != encoding or "learned_bar" not in r or not record_learned(r):
            continue
        value = in_distribution(r["metrics"], r["metric"], r["train_lengths"][1])
        if value is not None:
            margins.append(r["learned_bar"] - value if r["metric"] == "perplexity" else value - r["learned_bar"])
    return margins


def _claim_fmt(x: float, metric: str, *, signed: bool = False, difference: bool = False) -> str:
    """A score (``91.2%``, perplexity ``3.85``) or a difference of scores (``+8.2 points``, ``+1.20``)."""
    if metric == "perplexity":
        return f"{x:+.2f}" if signed else f"{x:.2f}"
    if signed or difference:
        return f"{x * 100:{'+' if signed else ''}.1f} points"
    return f"{x:.1%}"


def claim_checks(records: list[dict], claims: tuple[dict, ...] | None = None) -> list[dict]:
    """Each claim in words (``claims``, by default :data:`~posenc.lab.reference.CLAIMS`) whose task and both
    encodings the records hold, read on the seeds that learned: the claim with ``margin`` (the encoding's advantage
    over the baseline: accuracy points, or perplexity for perplexity tasks, positive = ahead), ``spread`` (the 95%
    half-width of the difference; ``None`` with one seed), ``verdict`` (:func:`claim_verdict`, or ``not comparable``
    when either side has no seed that learned or no score there) and ``why`` (one line: both scores, the margin, the
    seed counts, each side's smallest margin to the in-distribution bar, and a warning when the call is narrow)."""
    tasks = aggregate(records)
    out = []
    for claim in CLAIMS if claims is None else claims:
        t = tasks.get(claim["task"])
        if t is None or claim["encoding"] not in t["encodings"] or claim["baseline"] not in t["encodings"]:
            continue
        enc, base, metric = claim["encoding"], claim["baseline"], t["metric"]
        where = {"longest": f"at length {t['eval_lengths'][-1]}", "beyond": "beyond the training lengths",
                 "in_distribution": "in distribution"}[claim["at"]]
        sides = {}
        for name in (enc, base):
            values, flags = _claim_values(t, name, claim["at"])
            sides[name] = ([v for v, ok in zip(values, flags) if ok], len(flags))
        check = {**claim, "margin": None, "spread": None}
        missing = [name for name, (vals, _) in sides.items() if not vals]
        undefined = [name for name, (vals, _) in sides.items() if any(v is None for v in vals)]
        if missing or undefined or (claim["at"] != "in_distribution" and not _has_beyond(records, claim["task"])):
            why = (f"{' and '.join(missing)} learned on no seed" if missing else
                   f"{' and '.join(undefined)} has no score {where}" if undefined else
                   f"the task has no length beyond training to read {where}")
            out.append({**check, "verdict": "not comparable", "why": why})
            continue
        (a, n_a), (b, n_b) = sides[enc], sides[base]
        diff, spread = difference_interval(a, b)
        margin = -diff if metric == "perplexity" else diff  # lower perplexity is ahead
        word = claim_verdict(margin, spread, claim["kind"])

        bars = {name: _bar_margins(records, claim["task"], name) for name in (enc, base)}
        bar_text = ", ".join(f"{name} {_claim_fmt(min(m), metric, signed=True)}" for name, m in bars.items() if m)
        why = (f"{enc} {_claim_fmt(statistics.fmean(a), metric)} vs {base} {_claim_fmt(statistics.fmean(b), metric)} "
               f"{metric.replace('_', ' ')} {where}: margin {_claim_fmt(margin, metric, signed=True)}"
               + (" (one seed each: the direction only)" if spread is None else
                  f" ± {_claim_fmt(spread, metric, difference=True)} (95% interval of the difference)")
               + f"; seeds that learned: {enc} {len(a)}/{n_a}, {base} {len(b)}/{n_b}"
               + (f"; smallest margin to the in-distribution bar: {bar_text}" if bar_text else ""))
        if spread is not None and word != "not settled" and abs(margin) < 1.5 * spread:
            why += "; a narrow call: the margin is under 1.5x its interval"
        if word == "not settled":
            why += "; the margin is within the seed spread" if margin != 0 else "; the two tie"
        out.append({**check, "margin": margin, "spread": spread, "verdict": word, "why": why})
    return out


def suite_progress(records: list[dict]) -> str | None:
    """How much of a preset suite the records hold (Markdown), when every record names the same suite; else ``None``.

    The plan is the suite's tasks x the encodings registered now x the suite's seeds, as ``posenc lab run --suite``
    builds it; a sweep run with ``--tasks``/``--encodings`` subsets holds fewer by choice.
    """
    from posenc.lab.config import SUITES, suite_encodings

    names = {r.get("suite") for r in records}
    if len(names) != 1 or (name := names.pop()) not in SUITES:
        return None
    suite = SUITES[name]
    planned = {(task, enc, seed) for task in suite.experiments for enc in suite_encodings(suite, task)[0]
               for seed in suite.seeds_for(task)}
    have = {(r["task"], r["encoding"], r["seed"]) for r in records} & planned
    if len(have) == len(planned):
        return f"All {len(planned)} runs of the {md.code(name)} suite are recorded."
    missing = sorted({task for task, _, _ in planned - have}, key=list(suite.experiments).index)
    return (f"**Partial: {len(have)} of the {len(planned)} runs of the {md.code(name)} suite are recorded**; tasks "
            f"with runs still to come: {md.escape(', '.join(missing))}. The same "
            f"{md.code(f'posenc lab run --suite {name} --out DIR')} resumes it; rankings below use what is recorded "
            "so far.")


def cost_table(records: list[dict]) -> str:
    """Markdown table of where the training time went: per task, runs, total and mean wall time per run.

    Each lab run trains on one thread (``--threads``, default 1), so the total is core-seconds: a sweep with
    ``--workers N`` on N idle cores takes about total / N.
    """
    by_task: dict[str, list[float]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(float(r.get("wall_time_s", 0.0)))
    total = sum(sum(v) for v in by_task.values())
    rows = [[task, str(len(v)), f"{sum(v) / 60:.1f}", f"{statistics.fmean(v):.0f}",
             f"{sum(v) / total:.0%}" if total else "-"]
            for task, v in sorted(by_task.items(), key=lambda kv: -sum(kv[1]))]
    rows.append(["all", str(sum(len(v) for v in by_task.values())), f"{total / 60:.1f}", "-", "100%"])
    return md.table(["task", "runs", "core minutes", "seconds per run", "share"], rows)


def _versions_line(records: list[dict]) -> str:
    """What made the records: package versions, posenc's code fingerprints with their run counts, LM corpus hashes."""
    # a record made before versions were recorded has none: it adds no (empty) entry
    versions = sorted({" ".join(f"{k} {v}" for k, v in r.get("versions", {}).items() if k != "source")
                       for r in records} - {""})
    sources = Counter(r.get("versions", {}).get("source", "not recorded") for r in records)
    if set(sources) != {"not recorded"}:  # posenc's code fingerprint (train.source_fingerprint), with run counts
        versions.append("posenc source " + ", ".join(f"{s} ({n} run{'' if n == 1 else 's'})"
                                                     for s, n in sorted(sources.items())))
    hashes = sorted({r["content_hash"] for r in records if "content_hash" in r})
    return (f"Versions: {md.escape('; '.join(versions)) or 'not recorded'}."
            + (f" LM corpus sha256: {', '.join(h[:16] for h in hashes)}." if hashes else ""))


def write_report(out: str | os.PathLike) -> Path:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``out`` from ``out/results.jsonl``.

    The report is written once, as Markdown; ``report.html`` is that Markdown rendered by markdown-it-py with every
    plot embedded (:func:`posenc.lab.markdown.render_html`), so the page is self-contained and shows no Markdown.
    Text from the records (encoding labels, task names, reasons) is escaped where it joins the Markdown.
    """
    out = Path(out)
    records = load_records(out / RESULTS)
    if not records and not (out / "extension.json").exists():  # an extension-only report is fine
        raise ValueError(f"{out / RESULTS} holds no records; run a sweep first: posenc lab run --suite quick "
                         f"--out {out}")
    md.renderer()  # markdown-it-py missing: say so before any file is written
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    tasks = aggregate(records)
    comparison = paper_comparison(records)
    claims = claim_checks(records)
    lines = ["# posenc lab report", "",
             f"{len(records)} runs, {len(tasks)} tasks, {len({r['encoding'] for r in records})} encodings; built "
             f"from {md.code(RESULTS)} alone. " + _versions_line(records),
             *(["", progress] if (progress := suite_progress(records)) else []),
             "", "## Summary (mean ± 95% interval over seeds)", "",
             "Each task reports its own headline metric (its section says which): exact match per example, or, for "
             "the Delétang/Ruoss algorithmic tasks as those papers score them, the share of output tokens right; "
             "`in distribution` averages the evaluation lengths inside the training range, `beyond` those past it; "
             "`n/a`: the encoding is not defined there (see notes). The interval is Student's t over seeds; a single "
             "seed shows its value alone. `learned` counts the seeds that met the task's in-distribution bar; "
             f"{NOT_LEARNED} marks encodings with none, which no ranking below uses.", ""]
    lines += [summary_table(records, markdown=True), ""]
    lines += _papers_section(comparison, randomized_comparison(records), claims)
    images: dict[str, bytes] = {}  # Markdown path -> PNG, embedded in the HTML

    def show(name: str, path: Path) -> str:
        images[f"plots/{path.name}"] = path.read_bytes()
        return f"![{md.escape(name)}](plots/{path.name})"

    left_out = _heatmap(records, plots / "heatmap.png")
    if left_out is None:
        (plots / "heatmap.png").unlink(missing_ok=True)  # no accuracy task: no heatmap (and none left from before)
    else:
        note = HEATMAP_NOTE.format(mark=NOT_LEARNED) + (f": {', '.join(left_out)} (see their sections)." if left_out
                                                        else ".")
        lines += ["## Heatmap: encoding x task", "", md.escape(note, starts_line=True), "",
                  show("heatmap", plots / "heatmap.png"), ""]
    for task, t in tasks.items():
        png = plots / f"{task}.png"
        _plot(task, t, png)
        lo, hi = t["train_lengths"]
        lines += [f"## {md.escape(task)}", "", f"Trained on lengths {lo}..{hi}; metric: {md.escape(t['metric'])}.", "",
                  show(task, png), "", md.table(*_length_table(t)), ""]
        lines += [f"- {md.code(enc)}: {md.escape(reason)}" for enc, reason in t["undefined"].items()]
        if t["undefined"]:
            lines.append("")
        for c in (c for c in comparison.values() if c["task"] == task):
            ref = c["ref"]
            rows = [[e, f"{p:g}", str(pr), f"{o:.3g}", str(orank)] for e, p, pr, o, orank in c["rows"]]
            rows += [[e, f"{ref['scores'][e]:g}", "-", f"not learned {NOT_LEARNED}", "-"] for e in c["not_learned"]]
            text = (f"**Verdict: {c['verdict']}** ({md.escape(c['why'])}). Paper: {md.escape(ref['paper'])} "
                    f"({md.escape(ref['measure'])}). Only runs that learned are ranked. Scale: "
                    f"{md.escape(ref['scale'])}")
            lines += [f"### {md.escape(task)}: the paper's ranking beside ours", "", text, "",
                      md.table(["encoding", "paper", "paper rank", "ours", "our rank"], rows), ""]
        task_claims = [c for c in claims if c["task"] == task]
        if task_claims:
            lines += [f"### {md.escape(task)}: the papers' claims in words", "",
                      "Verdicts on the direction only, from the seeds that learned; how each claim was read: "
                      + "; ".join(f"{md.escape(c['paper'])}: {md.escape(c['verified'])}" for c in task_claims)
                      + ".", "", *(_claim_line(c) for c in task_claims), ""]
    if records:
        text = ("Training time per task, from the records' wall times. Each run trains on one thread, so these are "
                "core-minutes: a sweep with `--workers N` on N idle cores takes about the total / N. Runs that "
                "shared a loaded machine took longer than on an idle one.")
        lines += ["## Where the time goes", "", text, "", cost_table(records), ""]
    extension = out / "extension.json"
    if extension.exists():
        from posenc.lab.extension import extension_table

        text = ("A rope LM trained at the first length, evaluated at the second with each RoPE scaling, zero-shot "
                "and after a short fine-tune at the longer length (`posenc lab extend`). Published: position "
                "interpolation recovers after ~200 fine-tune steps (arXiv 2306.15595); YaRN is best zero-shot "
                "(arXiv 2309.00071).")
        lines += ["## Context extension (perplexity)", "", text, "",
                  extension_table(json.loads(extension.read_text(encoding="utf-8"))), ""]
    text = "\n".join(lines) + "\n"
    page = md.render_html(text, title="posenc lab report", images=images)  # before either file is replaced
    atomic_write_bytes(out / "report.md", text.encode("utf-8"))
    atomic_write_bytes(out / "report.html", page.encode("utf-8"))
    return out / "report.md"
