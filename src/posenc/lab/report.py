"""The lab report, built from the records of a sweep alone: ``report.md``, a self-contained ``report.html`` and PNGs.

- accuracy (or perplexity) vs evaluation length, one line per encoding, the training range shaded;
- a summary table: in distribution and beyond the training range, mean +- std over seeds;
- for tasks with a published counterpart, the paper's ranking beside ours (:mod:`posenc.lab.reference`).
"""

from __future__ import annotations

import base64
import html
import json
import os
import statistics
from pathlib import Path

from posenc.lab.reference import PUBLISHED
from posenc.lab.sweep import RESULTS, load_records

__all__ = ["aggregate", "summary_rows", "summary_table", "write_report"]


def _value(record: dict, length: str) -> float | None:
    m = record["metrics"].get(length, {})
    if "undefined" in m or not m:
        return None
    return m["perplexity"] if record["metric"] == "perplexity" else m["accuracy"]


def encoding_label(record: dict) -> str:
    """The encoding's name, with its options when the run had any (``mrope {"base": 10}``): variants stay apart."""
    options = record.get("encoding_options")
    return record["encoding"] if not options else f"{record['encoding']} {json.dumps(options, sort_keys=True)}"


def aggregate(records: list[dict]) -> dict[str, dict]:
    """Per task: its metric, training range, evaluation lengths, and per encoding the per-seed values per length."""
    tasks: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: (r["task"], encoding_label(r), r["seed"])):
        t = tasks.setdefault(r["task"], {"metric": r["metric"], "train_lengths": r["train_lengths"],
                                         "eval_lengths": r["eval_lengths"], "encodings": {}, "undefined": {},
                                         "paper": r.get("paper")})
        per_enc = t["encodings"].setdefault(encoding_label(r), {})
        for length in r["eval_lengths"]:
            per_enc.setdefault(length, []).append(_value(r, str(length)))
            m = r["metrics"].get(str(length), {})
            if "undefined" in m:
                t["undefined"].setdefault(encoding_label(r), m["undefined"])
    return tasks


def _mean_std(values: list[float | None]) -> tuple[float, float] | None:
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(stat: tuple[float, float] | None, metric: str) -> str:
    if stat is None:
        return "n/a"
    mean, std = stat
    if metric == "perplexity":
        return f"{mean:.2f} ± {std:.2f}"
    return f"{mean:.1%} ± {std:.1%}"


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


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per (task, encoding): seeds, in-distribution and beyond (mean, std over seeds), and for perplexity
    tasks the ratio of the perplexity at the longest length to that at the training length."""
    rows = []
    for task, t in aggregate(records).items():
        hi = t["train_lengths"][1]
        inside = [length for length in t["eval_lengths"] if length <= hi]
        beyond = [length for length in t["eval_lengths"] if length > hi]
        for enc, by_len in t["encodings"].items():
            row = {"task": task, "encoding": enc, "metric": t["metric"], "seeds": len(next(iter(by_len.values()))),
                   "in_distribution": _mean_std(_per_seed(by_len, inside)),
                   "beyond": _mean_std(_per_seed(by_len, beyond)) if beyond else None, "ratio": None,
                   "longest": _mean_std(by_len[t["eval_lengths"][-1]])}
            if t["metric"] == "perplexity" and inside and beyond:
                first, last = by_len[inside[-1]], by_len[t["eval_lengths"][-1]]
                if all(v is not None for v in first + last):
                    row["ratio"] = _mean_std([b / a for a, b in zip(first, last)])
            rows.append(row)
    return rows


def summary_table(records: list[dict], *, markdown: bool = False) -> str:
    """The summary table as text (for the terminal) or Markdown."""
    header = ["task", "encoding", "seeds", "in distribution", "beyond", "longest / train (ppl)"]
    body = []
    for r in summary_rows(records):
        ratio = "" if r["ratio"] is None else f"{r['ratio'][0]:.2f}x"
        body.append([r["task"], r["encoding"], str(r["seeds"]), _fmt(r["in_distribution"], r["metric"]),
                     _fmt(r["beyond"], r["metric"]) if _has_beyond(records, r["task"]) else "-", ratio])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), "-" * (sum(widths) + 2 * len(widths))]
    return "\n".join(lines + ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body])


def _has_beyond(records: list[dict], task: str) -> bool:
    return any(r["task"] == task and max(r["eval_lengths"]) > r["train_lengths"][1] for r in records)


def _plot(task: str, t: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    lo, hi = t["train_lengths"]
    ax.axvspan(lo - 0.5, hi + 0.5, color="0.85", label="training lengths")
    for enc, by_len in t["encodings"].items():
        xs, ys, es = [], [], []
        for length in t["eval_lengths"]:
            stat = _mean_std(by_len[length])
            if stat is not None:
                xs.append(length)
                ys.append(stat[0])
                es.append(stat[1])
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=enc)
    ax.set_xlabel("evaluation length")
    if t["metric"] == "perplexity":
        ax.set_ylabel("perplexity (log scale)")
        ax.set_yscale("log")
        ax.set_xscale("log", base=2)
    else:
        ax.set_ylabel("accuracy (exact match)")
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{task}: {'perplexity' if t['metric'] == 'perplexity' else 'accuracy'} vs evaluation length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _rank(scores: dict[str, float], higher_is_better: bool) -> dict[str, int]:
    """Competition ranking (1 = best); ties share a rank."""
    sign = -1 if higher_is_better else 1
    return {e: 1 + sum(sign * scores[o] < sign * scores[e] for o in scores) for e in scores}


def paper_comparison(records: list[dict]) -> dict[str, dict]:
    """Per task with a published counterpart: rows (encoding, paper score, paper rank, ours, our rank), agreement."""
    out = {}
    by_task = {r["task"]: r for r in summary_rows(records)}
    for task, ref in PUBLISHED.items():
        if task not in by_task:
            continue
        ours = {}
        for row in summary_rows(records):
            if row["task"] != task or row["encoding"] not in ref["scores"]:
                continue
            stat = row["longest"] if ref["ours_at"] == "longest" else row["beyond"]
            if stat is not None:
                ours[row["encoding"]] = stat[0]
        common = [e for e in ref["scores"] if e in ours]
        if len(common) < 2:
            continue
        paper_rank = _rank({e: ref["scores"][e] for e in common}, ref["higher_is_better"])
        our_rank = _rank({e: ours[e] for e in common}, ref["higher_is_better"])
        # only pairs that both rankings order count: a tie (e.g. every encoding at 0%) agrees with nothing
        pairs = [(a, b) for i, a in enumerate(common) for b in common[i + 1:]
                 if paper_rank[a] != paper_rank[b] and our_rank[a] != our_rank[b]]
        agree = sum((paper_rank[a] < paper_rank[b]) == (our_rank[a] < our_rank[b]) for a, b in pairs)
        out[task] = {"ref": ref, "rows": [(e, ref["scores"][e], paper_rank[e], ours[e], our_rank[e])
                                          for e in sorted(common, key=paper_rank.get)],
                     "agree": agree, "pairs": len(pairs)}
    return out


def _length_table(t: dict) -> tuple[list[str], list[list[str]]]:
    header = ["encoding"] + [str(x) + (" (train)" if x <= t["train_lengths"][1] else "") for x in t["eval_lengths"]]
    rows = [[enc] + [_fmt(_mean_std(by_len[x]), t["metric"]) for x in t["eval_lengths"]]
            for enc, by_len in t["encodings"].items()]
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(out: str | os.PathLike) -> Path:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``out`` from ``out/results.jsonl``."""
    out = Path(out)
    records = load_records(out / RESULTS)
    if not records and not (out / "extension.json").exists():  # an extension-only report is fine
        raise ValueError(f"{out / RESULTS} holds no records; run a sweep first: posenc lab run --suite quick "
                         f"--out {out}")
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    tasks = aggregate(records)
    comparison = paper_comparison(records)
    versions = sorted({" ".join(f"{k} {v}" for k, v in r.get("versions", {}).items()) for r in records})
    hashes = sorted({r["content_hash"] for r in records if "content_hash" in r})
    md = ["# posenc lab report", "",
          f"{len(records)} runs, {len(tasks)} tasks, "
          f"{len({r['encoding'] for r in records})} encodings; built from `{RESULTS}` alone. "
          f"Versions: {'; '.join(versions)}." + (f" LM corpus sha256: {', '.join(h[:16] for h in hashes)}."
                                                  if hashes else ""),
          "", "## Summary (mean ± std over seeds)", "",
          "Accuracy is exact match per example; `in distribution` averages the evaluation lengths inside the "
          "training range, `beyond` those past it; `n/a`: the encoding is not defined there (see notes).", "",
          summary_table(records, markdown=True), ""]
    htm = ["<h1>posenc lab report</h1>", f"<p>{html.escape(md[2])}</p>", "<h2>Summary (mean ± std over seeds)</h2>",
           f"<p>{html.escape(md[6])}</p>"]
    header = ["task", "encoding", "seeds", "in distribution", "beyond", "longest / train (ppl)"]
    htm.append(_html_table(header, [[c.strip() for c in line.strip("|").split("|")]
                                    for line in summary_table(records, markdown=True).splitlines()[2:]]))
    for task, t in tasks.items():
        png = plots / f"{task}.png"
        _plot(task, t, png)
        lo, hi = t["train_lengths"]
        md += [f"## {task}", "", f"Trained on lengths {lo}..{hi}; metric: {t['metric']}.", "",
               f"![{task}](plots/{png.name})", ""]
        header, rows = _length_table(t)
        md += [_md_table(header, rows), ""]
        data = base64.b64encode(png.read_bytes()).decode()
        htm += [f"<h2>{html.escape(task)}</h2>", f"<p>Trained on lengths {lo}..{hi}; metric: {t['metric']}.</p>",
                f'<img alt="{html.escape(task)}" src="data:image/png;base64,{data}">', _html_table(header, rows)]
        for enc, reason in t["undefined"].items():
            md += [f"- `{enc}`: {reason}"]
            htm.append(f"<p><code>{html.escape(enc)}</code>: {html.escape(reason)}</p>")
        if t["undefined"]:
            md.append("")
        if task in comparison:
            c = comparison[task]
            ref = c["ref"]
            rows = [[e, f"{p:g}", str(pr), f"{o:.3g}", str(orank)] for e, p, pr, o, orank in c["rows"]]
            head = ["encoding", "paper", "paper rank", "ours", "our rank"]
            agreement = (f"Rankings agree on {c['agree']} of the {c['pairs']} pairs of encodings that both order"
                         if c["pairs"] else "Our scores tie, so there is no ranking to compare")
            text = f"Paper: {ref['paper']} ({ref['measure']}). {agreement}. Scale: {ref['scale']}"
            md += [f"### {task}: the paper's ranking beside ours", "", text, "", _md_table(head, rows), ""]
            htm += [f"<h3>{html.escape(task)}: the paper's ranking beside ours</h3>", f"<p>{html.escape(text)}</p>",
                    _html_table(head, rows)]
    extension = out / "extension.json"
    if extension.exists():
        import json

        from posenc.lab.extension import extension_table

        table = extension_table(json.loads(extension.read_text(encoding="utf-8")))
        text = ("A rope LM trained at the first length, evaluated at the second with each RoPE scaling, zero-shot "
                "and after a short fine-tune at the longer length (posenc lab extend). Published: position "
                "interpolation recovers after ~200 fine-tune steps (arXiv 2306.15595); YaRN is best zero-shot "
                "(arXiv 2309.00071).")
        md += ["## Context extension (perplexity)", "", text, "", table, ""]
        lines = table.splitlines()
        htm += ["<h2>Context extension (perplexity)</h2>", f"<p>{html.escape(text)}</p>",
                _html_table([c.strip() for c in lines[0].strip("|").split("|")],
                            [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]])]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.2em .6em}"
             "img{max-width:100%}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>posenc lab report</title>"
            f"<style>{style}</style></head><body>{''.join(htm)}</body></html>\n")
    (out / "report.html").write_text(page, encoding="utf-8")
    return out / "report.md"
