"""What a preset suite costs on this machine, from a timing rerun: per task, measured and estimated core-minutes.

The wall times in a suite's committed records are those of the machine they ran on, loaded or not. To say what
the suite costs, rerun part of it on a quiet machine into a scratch folder (a run reproduces its record, so the
rerun measures the same work) and give that folder here::

    posenc lab run --suite standard --seeds 0 --workers 2 --no-progress --out /tmp/quiet   # then --seeds 1, ...
    PYTHONPATH=src python benchmarks/lab_cost.py /tmp/quiet --suite standard --wall-s 3700 [--records DIR]

Every run of the suite's plan that the timing folder holds counts with its measured time. A planned run it does
not hold is estimated from the same task and encoding measured on another seed (the seeds of a configuration train
the same shapes for the same steps); a configuration measured on no seed is estimated from the record in
``--records`` (the committed suite), scaled by the task's timed/recorded ratio (over every timed run if the task
has none), and is flagged. ``--wall-s``, the
timing sweep's own wall clock, gives the packing efficiency of ``--workers`` processes (measured core-seconds /
(workers x wall)); the suite's wall-clock estimate is total core-seconds / (workers x that efficiency).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from posenc.lab.config import SUITES, suite_encodings
from posenc.lab.sweep import RESULTS, load_records


def suite_cost(timing: list[dict], suite: str, recorded: list[dict] | None = None) -> list[dict]:
    """One row per task of ``suite``: planned runs, measured runs, measured and estimated core-seconds."""
    plan = SUITES[suite]
    measured = {(r["task"], r["encoding"], r["seed"]): float(r["wall_time_s"]) for r in timing}
    by_config: dict[tuple[str, str], list[float]] = {}
    for (task, enc, _), seconds in measured.items():
        by_config.setdefault((task, enc), []).append(seconds)
    old = {(r["task"], r["encoding"], r["seed"]): float(r["wall_time_s"]) for r in recorded or []}
    common = [run for run in measured if run in old]
    overall = sum(measured[r] for r in common) / sum(old[r] for r in common) if common else None
    rows = []
    for task in plan.experiments:
        runs = [(task, enc, seed) for enc in suite_encodings(plan, task)[0] for seed in plan.seeds_for(task)]
        have = [run for run in runs if run in measured]
        both = [run for run in have if run in old]
        ratio = sum(measured[r] for r in both) / sum(old[r] for r in both) if both else None
        scale = overall if ratio is None else ratio  # a task timed on no run: the ratio over every timed run
        estimated, unsupported = 0.0, []
        for run in runs:
            if run in measured:
                continue
            if by_config.get(run[:2]):
                estimated += statistics.fmean(by_config[run[:2]])
            elif run in old and scale is not None:
                estimated += old[run] * scale
                unsupported.append(run)
            else:
                raise ValueError(f"lab_cost: {'/'.join(map(str, run))} is measured on no seed and has no record to "
                                 f"scale; time at least one seed of it (posenc lab run --tasks {task} ...).")
        rows.append({"task": task, "planned": len(runs), "measured": len(have),
                     "measured_s": sum(measured[r] for r in have), "estimated_s": estimated,
                     "from_records": len(unsupported), "quiet_over_recorded": ratio})
    return rows


def format_cost(rows: list[dict], *, workers: int, efficiency: float) -> str:
    total = sum(r["measured_s"] + r["estimated_s"] for r in rows)
    lines = ["| task | runs | timed | core minutes (timed + estimated) | seconds per run | share | timed / recorded |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -(r["measured_s"] + r["estimated_s"])):
        seconds = r["measured_s"] + r["estimated_s"]
        ratio = "-" if r["quiet_over_recorded"] is None else f"{r['quiet_over_recorded']:.2f}"
        flag = f" ({r['from_records']} from records)" if r["from_records"] else ""
        lines.append(f"| {r['task']} | {r['planned']} | {r['measured']}{flag} | {seconds / 60:.1f} | "
                     f"{seconds / r['planned']:.0f} | {seconds / total:.0%} | {ratio} |")
    planned, timed = sum(r["planned"] for r in rows), sum(r["measured"] for r in rows)
    timed_s = sum(r["measured_s"] for r in rows)
    lines.append(f"| all | {planned} | {timed} | {total / 60:.1f} | - | 100% | - |")
    wall = total / (workers * efficiency)
    lines += ["", f"Timed: {timed} of {planned} runs, {timed_s / 60:.1f} core-minutes. Whole suite: "
              f"{total / 60:.1f} core-minutes; with --workers {workers} at the timing sweep's packing efficiency "
              f"({efficiency:.0%}), about {wall / 60:.0f} minutes ({wall / 3600:.2f} h) of wall clock."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("timing", nargs="+", help="folders of timing reruns (their results.jsonl)")
    parser.add_argument("--suite", default="standard", choices=sorted(SUITES))
    parser.add_argument("--records", help="the suite's own folder, to scale configurations timed on no seed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--wall-s", type=float, nargs="+", required=True,
                        help="each timing sweep's wall clock in seconds, in the order of the folders")
    args = parser.parse_args(argv)
    if len(args.wall_s) != len(args.timing):
        parser.error(f"--wall-s needs one value per timing folder ({len(args.timing)}); got {len(args.wall_s)}.")
    timing = [r for folder in args.timing for r in load_records(Path(folder) / RESULTS)]
    recorded = load_records(Path(args.records) / RESULTS) if args.records else None
    efficiency = sum(float(r["wall_time_s"]) for r in timing) / (args.workers * sum(args.wall_s))
    print(format_cost(suite_cost(timing, args.suite, recorded), workers=args.workers, efficiency=efficiency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
