"""``posenc lab run | report | list``: sweeps, reports and what the lab holds.

Flags for the model, run and task lengths are generated from the dataclasses in :mod:`posenc.lab.config` (their
comments become the help), so a new field is a new flag with no second list to keep in sync. A flag left out keeps
the suite's preset.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import re
import sys
import types
import typing

from posenc._cli_types import UsageError, float_in, int_in, ranged
from posenc.lab.config import (
    EXECUTORS,
    LOGGERS,
    SUITES,
    Experiment,
    ModelConfig,
    RunConfig,
    TaskConfig,
    suite_encodings,
)

__all__ = ["add_commands", "add_dataclass_flags", "experiment_from_args"]

# TaskConfig fields that are not flags: the task comes from --tasks, its options from task-specific flags (--text)
_TASK_FLAGS = ("train_min_length", "train_max_length", "eval_lengths")
_SECTIONS = (("model", ModelConfig, None), ("run", RunConfig, None), ("task", TaskConfig, _TASK_FLAGS))
# The range of every numeric flag generated from those dataclasses (a test checks that none is missing).
_COUNT, _SIZE, _LENGTH = int_in(1, 1 << 20), int_in(1, 1 << 16), int_in(1, 1 << 24)
FLAG_RANGES = {
    "dim": _SIZE, "n_layers": int_in(1, 1024), "n_heads": int_in(1, 1024), "ffn_mult": float_in(0, 1024, lo_open=True),
    "dropout": float_in(0, 1, hi_open=True), "steps": int_in(1, 1 << 30), "batch_size": _COUNT,
    "lr": float_in(0, 10, lo_open=True), "weight_decay": float_in(0, 10), "warmup": float_in(0, 1, hi_open=True),
    "grad_clip": float_in(0, 1e6), "eval_batches": _COUNT, "eval_batch_size": _COUNT,
    "checkpoint_every": int_in(0, 1 << 30), "log_every": int_in(1, 1 << 30), "threads": int_in(1, 4096),
    "train_min_length": _LENGTH, "train_max_length": _LENGTH, "eval_lengths": _LENGTH,
}
FLAG_CHOICES = {"log": LOGGERS}  # string flags generated from those dataclasses that take one of a few values


def _field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` read from the ``name: type = default  # comment`` lines of a dataclass's source."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if m:
            comments[m.group(1)] = m.group(2)
    return comments


def _flag_type(annotation) -> tuple[type, bool]:
    """``(element type, is_sequence)`` of an annotation: ``int | None`` -> int; ``tuple[int, ...]`` -> (int, True)."""
    hints = annotation
    if isinstance(hints, str):
        hints = eval(hints, {"tuple": tuple, "int": int, "float": float, "str": str, "dict": dict, "None": None})  # noqa: S307
    args = typing.get_args(hints)
    if isinstance(hints, types.UnionType) or typing.get_origin(hints) is typing.Union:
        hints = next(a for a in args if a is not type(None))
        args = typing.get_args(hints)
    if typing.get_origin(hints) is tuple:
        return args[0], True
    return hints, False


def add_dataclass_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per field of ModelConfig, RunConfig and the length fields of TaskConfig (default: the preset)."""
    for section, cls, only in _SECTIONS:
        group = parser.add_argument_group(f"{section} settings (default: the suite's preset)")
        comments = _field_comments(cls)
        for f in dataclasses.fields(cls):
            if only is not None and f.name not in only:
                continue
            kind, many = _flag_type(f.type)
            parse = FLAG_RANGES.get(f.name) if kind in (int, float) else None
            text = comments.get(f.name, "")
            choices = FLAG_CHOICES.get(f.name)
            metavar = "JSON" if kind is dict else None if choices else kind.__name__.upper()
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"{section}__{f.name}",
                               type=_json_options if kind is dict else parse or kind, nargs="+" if many else None,
                               default=None, metavar=metavar, choices=choices,
                               help=ranged(text, parse) if parse else text.replace("%", "%%"))


def experiment_from_args(experiment: Experiment, args: argparse.Namespace) -> Experiment:
    """A copy of ``experiment`` with every flag that was given applied."""
    experiment = copy.deepcopy(experiment)
    for section, cls, _ in _SECTIONS:
        target = getattr(experiment, section)
        changes = {}
        for f in dataclasses.fields(cls):
            value = getattr(args, f"{section}__{f.name}", None)
            if value is not None:
                changes[f.name] = tuple(value) if isinstance(value, list) else value
        setattr(experiment, section, dataclasses.replace(target, **changes))
    return experiment


def _json_options(text: str) -> dict:
    """A dict-valued flag (``--encoding-options``): a JSON object mapping names to objects of options."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}); expected e.g. "
                                         f"'{{\"mrope\": {{\"base\": 10}}}}'") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError(f"expected a JSON object of objects such as '{{\"mrope\": {{\"base\": "
                                         f"10}}}}'; got {text!r}")
    return value


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
    from posenc.lab.export import export_results

    path = export_results(args.folder, args.format, args.out)
    print(f"wrote {path}")
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
    p.add_argument("--format", choices=("csv", "parquet"), default="csv",
                   help="csv (standard library) or parquet (needs posenc[export]: pandas, pyarrow); default: csv")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="file to write (default: DIR/results.csv or DIR/results.parquet)")
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
    p.add_argument("--dim", type=_SIZE, default=64, help=ranged("model width (default: 64)", _SIZE))
    p.add_argument("--n-layers", type=int_in(1, 1024), default=2, help=ranged("blocks (default: 2)", int_in(1, 1024)))
    p.add_argument("--n-heads", type=int_in(1, 1024), default=4,
                   help=ranged("attention heads (default: 4)", int_in(1, 1024)))
    p.add_argument("--text", default=None, help="file or folder of text (default: built-in corpus)")
    p.add_argument("--seed", type=seed, default=0, help=ranged("random seed (default: 0)", seed))
    p.add_argument("--out", required=True, help="output folder (extension.json)")
    p.set_defaults(func=_extend)

    p = lab_sub.add_parser("list", help="tasks, suites and what each measures")
    p.set_defaults(func=_list)


if __name__ == "__main__":
    from posenc.cli import main

    sys.exit(main(["lab", *sys.argv[1:]]))
