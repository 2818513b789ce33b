"""``posenc lab run | report | export | extend | list``: sweeps, reports and what the lab holds.

Flags for the model, run and task lengths are generated from the dataclasses in :mod:`posenc.lab.config` (by
:mod:`posenc.lab.flags`; each field's ``metadata["help"]`` becomes its help), so a new field is a new flag with no
second list to keep in sync. A flag left out keeps the suite's preset.
"""

from __future__ import annotations

import argparse
import copy

from posenc.cli.types import UsageError, int_in, ranged
from posenc.lab.config import EXECUTORS, SUITES, Experiment, ModelConfig, TaskConfig, suite_encodings
from posenc.lab.flags import FLAG_RANGES, add_dataclass_flags, experiment_from_args

__all__ = ["add_commands"]


def _experiment_for(task: str, suite: str) -> Experiment:
    for name in (suite, "standard", "full"):
        if task in SUITES[name].experiments:
            return SUITES[name].experiments[task]
    return Experiment(TaskConfig(task))


def _run(args: argparse.Namespace) -> int:
    from posenc.lab.report import summary_table, write_report
    from posenc.lab.sweep import plan_sweep, run_sweep

    if args.address is not None and args.executor != "ray":
        raise UsageError(f"--address {args.address} names a Ray cluster, which only --executor ray uses; add "
                         f"--executor ray, or leave --address out.")
    if args.executor == "ray" and args.workers != 1:
        raise UsageError(f"--workers {args.workers} sets local processes; with --executor ray the cluster's free "
                         f"CPUs and GPUs decide how many runs train at once. Leave --workers out.")
    suite = SUITES[args.suite]
    tasks = args.tasks or list(suite.experiments)
    if args.text is not None and "lm" not in tasks:
        raise ValueError("--text sets the corpus of the 'lm' task, which this sweep does not run; add --tasks lm.")
    experiments = {}
    for name in tasks:
        experiment = copy.deepcopy(_experiment_for(name, args.suite))
        experiment.task.name = name
        if name == "lm" and args.text is not None:
            experiment.task.options["text"] = args.text
        experiments[name] = experiment_from_args(experiment, args)
    if args.encodings:
        encodings = args.encodings
    else:
        encodings, missing = {}, set()
        for name in tasks:
            encodings[name], absent = suite_encodings(suite, name)
            missing.update(absent)
        note = f" (in the suite but not registered yet, skipped: {', '.join(sorted(missing))})" if missing else ""
        listed = dict.fromkeys(e for names in encodings.values() for e in names)  # in order of first use
        print(f"encodings: {', '.join(listed)}{note}")
        for name in tasks:
            if name in suite.task_encodings:
                print(f"  {name}: {', '.join(encodings[name])}")
    seeds = args.seeds if args.seeds is not None else {name: list(suite.seeds_for(name)) for name in tasks}
    runs = plan_sweep(experiments, encodings, seeds)
    records = run_sweep(runs, args.out, workers=args.workers, progress=not args.no_progress,
                        extra={"suite": args.suite}, executor=args.executor, address=args.address)
    wanted = {r.run_id for r in runs}
    print()
    print(summary_table([r for r in records if r["run_id"] in wanted]))
    path = write_report(args.out)
    print(f"\nreport: {path} and {path.with_suffix('.html')}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from posenc.lab.report import summary_table, write_report
    from posenc.lab.sweep import RESULTS, load_records

    path = write_report(args.out)
    print(summary_table(load_records(path.parent / RESULTS)))
    print(f"\nreport: {path} and {path.with_suffix('.html')}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from posenc.lab.export import EXTENSIONS, export_results

    # an --out of the sweep's own, or named for another format: UsageError, exit 2, nothing written
    path = export_results(args.folder, args.format, args.out)
    fmt = EXTENSIONS[path.suffix.lower()]
    how = "" if args.format is not None else ", from the file's extension" if args.out is not None else \
        ", the default"
    print(f"wrote {path} ({fmt}{how})")
    return 0


def _list(args: argparse.Namespace) -> int:
    from posenc.lab.catalog import task_infos  # torch-free: listing must not wait seconds for torch

    print("tasks:")
    for info in task_infos():
        lo, hi = info.train_lengths
        print(f"  {info.name:<19} {info.kind:<8} train {lo}..{hi}, eval {', '.join(map(str, info.eval_lengths))}: "
              f"{info.summary}")
        print(f"  {'':<19} learned when: {info.bar_text}")
    print("\nsuites:")
    for name, suite in SUITES.items():
        available, missing = suite_encodings(suite)
        print(f"  {name:<9} {suite.description}")
        print(f"            tasks: {', '.join(suite.experiments)}")
        for task, why in suite.left_out.items():
            print(f"            left out: {task} ({why})")
        print(f"            encodings: {', '.join(available)}" + (f" (not registered yet: {', '.join(missing)})"
                                                                   if missing else ""))
        for task, names in suite.task_encodings.items():
            print(f"            {task}: {', '.join(names)}")
        print(f"            seeds: {', '.join(map(str, suite.seeds))}")
        if suite.task_seeds:
            three = sorted(suite.task_seeds)
            print(f"            seeds {', '.join(map(str, suite.task_seeds[three[0]]))} on: {', '.join(three)}")
    return 0


def _extend(args: argparse.Namespace) -> int:
    from posenc.lab.extension import context_extension, extension_table, write_extension
    from posenc.lab.sweep import check_out_dir

    check_out_dir(args.out)
    model = ModelConfig(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads)
    rows = context_extension(train_length=args.train_length, factor=args.factor, steps=args.steps,
                             finetune_steps=args.finetune_steps, model=model, text=args.text, seed=args.seed)
    path = write_extension(rows, args.out)
    print(extension_table(rows))
    print(f"\nrows: {path} (posenc lab report {args.out} adds them to the report)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="train and compare encodings on tasks that isolate what positions do")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)

    p = lab_sub.add_parser("run", help="run a sweep (tasks x encodings x seeds); resumes where a killed one stopped")
    p.add_argument("--suite", choices=sorted(SUITES), default="quick", help="preset sweep (default: quick)")
    p.add_argument("--tasks", nargs="+", default=None, help="tasks to run (default: the suite's)")
    p.add_argument("--encodings", nargs="+", default=None, help="encodings (default: the suite's, if registered)")
    seed, workers = int_in(0, 2**63 - 1), int_in(1, 1024)
    p.add_argument("--seeds", nargs="+", type=seed, default=None, help=ranged("seeds (default: the suite's)", seed))
    p.add_argument("--workers", type=workers, default=1,
                   help=ranged("runs trained in parallel processes (default: 1)", workers))
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this machine (--workers processes); ray: every run a Ray task on a cluster, records "
                        "written here as local runs write them (needs posenc[ray]; default: local)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="the Ray cluster to run on ('auto': the one this node joined with `ray start`; default: "
                        "start a local one)")
    p.add_argument("--text", default=None, help="file or folder of text for the lm task (default: built-in corpus)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per run only)")
    p.add_argument("--out", required=True, help="output folder: results.jsonl, checkpoints/, report")
    add_dataclass_flags(p)
    p.set_defaults(func=_run)

    p = lab_sub.add_parser("report", help="write report.md, report.html and plots from a sweep's records")
    p.add_argument("out", help="the sweep's output folder")
    p.set_defaults(func=_report)

    p = lab_sub.add_parser("export", help="a sweep's records as a table (one row per run and evaluation length): "
                           "results.csv or results.parquet")
    p.add_argument("folder", metavar="DIR", help="the sweep's output folder (holds results.jsonl)")
    p.add_argument("--format", choices=("csv", "parquet"), default=None,
                   help="csv (standard library) or parquet (needs posenc[export]: pandas, pyarrow); default: the one "
                        "--out's extension names (.csv, .parquet), else csv")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="file to write, named for its format (default: DIR/results.csv or DIR/results.parquet); "
                        "never one of the sweep's own files (records, report, lock, checkpoints)")
    p.set_defaults(func=_export)

    p = lab_sub.add_parser("extend", help="context extension: rope trained at L, evaluated at factor*L with each "
                           "RoPE scaling, zero-shot and after a short fine-tune")
    length, factor, steps, finetune = int_in(2, 1 << 16), int_in(2, 1024), int_in(1, 1 << 30), int_in(0, 1 << 30)
    p.add_argument("--train-length", type=length, default=32,
                   help=ranged("L, the training window in bytes (default: 32)", length))
    p.add_argument("--factor", type=factor, default=4,
                   help=ranged("evaluate and fine-tune at factor * L (default: 4)", factor))
    p.add_argument("--steps", type=steps, default=400, help=ranged("training steps at L (default: 400)", steps))
    p.add_argument("--finetune-steps", type=finetune, default=50,
                   help=ranged("fine-tune steps at factor * L (default: 50)", finetune))
    dim, layers, heads = FLAG_RANGES["dim"], FLAG_RANGES["n_layers"], FLAG_RANGES["n_heads"]  # as lab run's
    p.add_argument("--dim", type=dim, default=64, help=ranged("model width (default: 64)", dim))
    p.add_argument("--n-layers", type=layers, default=2, help=ranged("blocks (default: 2)", layers))
    p.add_argument("--n-heads", type=heads, default=4, help=ranged("attention heads (default: 4)", heads))
    p.add_argument("--text", default=None, help="file or folder of text (default: built-in corpus)")
    p.add_argument("--seed", type=seed, default=0, help=ranged("random seed (default: 0)", seed))
    p.add_argument("--out", required=True, help="output folder (extension.json)")
    p.set_defaults(func=_extend)

    p = lab_sub.add_parser("list", help="tasks, suites and what each measures")
    p.set_defaults(func=_list)
