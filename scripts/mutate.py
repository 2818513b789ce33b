"""Mutation testing of posenc (``make test-mutate``): do the tests notice when the code is changed?

mutmut (3.8) changes the code one small edit at a time (``a < b`` -> ``a <= b``, ``x + 1`` -> ``x - 1``, an argument
dropped or set to ``None``, a string literal altered, ...) and runs the tests that call the changed function. A
mutant is *killed* when one of them fails, *survives* when all pass. The score of a group of modules is

    killed / (killed + survived)

where **timeouts count as killed** (a test run that no longer finishes fails under pytest-timeout too; each one is
retried once alone, with both cores, before it is counted), **"no tests" counts as survived** (no selected test
calls the function, so nothing would notice the change) and segfaults count as killed. Each group has a floor
(``FLOOR``); the script exits with status 1 when a group is below it.

mutmut runs in a scratch copy per group (``--workdir``, default ``$POSENC_MUTATE_DIR`` or
``~/.cache/posenc-mutate``; never the worktree: mutmut writes a ``mutants/`` folder there), refreshed from this
checkout on every run. Its verdicts persist there, so a killed run resumes where it stopped, and a later run
re-tests only what changed: mutmut redoes the functions whose source changed, and when the selected test files
changed since the last complete run, the mutants that were not killed are tried again (a killed one stays killed:
``--fresh`` starts over). ``--group`` and ``--max-mutants`` (a seeded sample) make quick runs; ``docs/mutation.md``
(the table) is written by complete runs only.

Equivalent mutants (no observable difference: e.g. a cache-size hint, a message's default that no caller reaches)
are marked in the source with ``# pragma: no mutate`` and a reason on the same line; the table counts the marked
lines per group.

Usage:
    python scripts/mutate.py                          # every group, resume, write docs/mutation.md
    python scripts/mutate.py --group core --max-mutants 40   # a quick sampled look at one group
    python scripts/mutate.py --group hf --survivors   # the surviving mutants of hf, as diffs
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOOR = 0.90  # the least share of mutants killed, in every group (the floor)


@dataclasses.dataclass(frozen=True)
class Group:
    """Modules mutated together and the test files that exercise them.

    ``tests`` are pytest arguments (files, or node ids); ``deselect`` are ``-k`` expressions for tests of those files
    left out of mutation runs because one run of them takes seconds (they still run in ``make test``; each comment
    says what else covers that code).
    """

    sources: tuple[str, ...]
    tests: tuple[str, ...]
    deselect: tuple[str, ...] = ()
    floor: float = FLOOR


# One place for the mapping: which modules, which tests, which floor. Test files mirror the source tree; a group
# lists the few more that exercise its modules through their callers.
GROUPS: dict[str, Group] = {
    "core": Group(
        sources=tuple(f"src/posenc/{m}.py" for m in
                      ("base", "positions", "terms", "registry", "backends", "blocks", "chunked", "_checks")),
        tests=("tests/test_registry.py", "tests/test_positions.py", "tests/test_errors.py", "tests/test_attention.py",
               "tests/test_attention_terms.py", "tests/test_attention_backends.py",
               "tests/test_chunked_value_terms.py", "tests/test_contract.py", "tests/test_layer_aware.py",
               "tests/test_edge_inputs.py", "tests/test_core_edges.py"),
        # 2-15 s each: float64 gradcheck in one-row blocks, the compiled flex path, the chunked path's memory checks
        # (one block's worth of terms, gradients allocated once); the chunked and flex code they run is compared
        # with the dense reference, forward and backward, by the fast tests of the same files.
        deselect=("gradcheck", "compiled", "stay_within_one_block", "allocates_the_gradients_once"),
    ),
    "model": Group(
        sources=("src/posenc/model.py",),
        tests=("tests/test_model.py", "tests/test_kv_cache.py", "tests/test_model_files.py",
               "tests/test_model_golden.py", "tests/test_decode_overhead.py", "tests/test_edge_inputs.py",
               "tests/test_model_edges.py", "tests/encodings/test_absolute_rotary.py",
               "tests/encodings/test_path.py"),  # PaTH decodes through commit: the model's cache rewrite
    ),
    "hf": Group(
        sources=("src/posenc/hf.py",),
        tests=("tests/test_hf_interop.py", "tests/test_hf_families.py", "tests/test_hf_edges.py"),
    ),
    "testing": Group(
        sources=tuple(f"src/posenc/testing/{m}.py" for m in
                      ("__init__", "_args", "bias", "bias_peers", "diagnose", "estimate", "hf", "mrope", "peers",
                       "pytest_plugin", "rope")),
        tests=("tests/testing/test_rope.py", "tests/testing/test_mrope.py", "tests/testing/test_bias.py",
               "tests/testing/test_diagnose.py", "tests/testing/test_hf.py", "tests/testing/test_peers.py",
               "tests/testing/test_conform_cli.py", "tests/testing/test_conform_edges.py",
               "tests/testing/test_callers.py", "tests/testing/test_estimate.py", "tests/testing/test_estimate_bias.py",
               "tests/testing/test_bias_peers.py", "tests/testing/test_pytest_plugin.py"),
        # the conform CLI's tests of its child process (3-18 s each; a child started in another folder cannot find
        # mutmut's scratch copy either): the child runs the same checks in-process
        deselect=("in_a_child", "entry_point", "hanging", "kills_its_process", "current_directory",
                  "candidate_that_exits", "projects_own_suite"),
    ),
    "report": Group(
        sources=("src/posenc/lab/report.py", "src/posenc/lab/markdown.py"),
        tests=("tests/lab/test_lab_report.py", "tests/lab/test_lab_markdown.py"),
    ),
}

# mutmut's exit codes -> the four columns of the table (see the module docstring for why each goes where)
KILLED, TIMEOUT, SURVIVED, NO_TESTS, SKIPPED, UNCHECKED = "killed", "timeout", "survived", "no tests", "skipped", \
    "not checked"
_STATUS = {1: KILLED, 3: KILLED, -11: KILLED, -9: KILLED, 37: KILLED, 0: SURVIVED, 5: NO_TESTS, 33: NO_TESTS,
           34: SKIPPED, None: UNCHECKED, 36: TIMEOUT, -24: TIMEOUT, 24: TIMEOUT, 152: TIMEOUT, 255: TIMEOUT}
# 2 (interrupted), 35 (suspicious) and anything else: not a verdict; tried again on the next run


def status(exit_code: int | None) -> str:
    return _STATUS.get(exit_code, UNCHECKED)


# --- the scratch copy -------------------------------------------------------------------------------------------


def mutmut_config(group: Group, jobs: int) -> str:
    """The ``[tool.mutmut]`` section of the scratch copy's pyproject.toml."""
    selection = list(group.tests)
    if group.deselect:
        selection += ["-k", " and ".join(f"not {k}" for k in group.deselect)]
    return "\n".join([
        "", "[tool.mutmut]",
        'source_paths = ["src"]',
        'also_copy = ["README.md"]',  # tests that check the README against the code read it from the repo root
        f"only_mutate = {json.dumps(list(group.sources))}",
        f"pytest_add_cli_args_test_selection = {json.dumps(selection)}",
        # -p no:cacheprovider: no .pytest_cache in the copy; no:unraisableexception: its gc.collect() passes at the
        # end of every session take over half of a mutant's time once torch is loaded
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:unraisableexception", "-q"]',
        # generous: the two cores are shared, and a test's setup (not counted in its duration) can take seconds
        "timeout_multiplier = 10.0", "timeout_constant = 10.0",
        "use_git_change_detection = false",  # the copy is no git checkout
        'on_dependency_change = "ignore"',  # a test change is handled by this script (re-try the not killed)
        "",
    ])


def _sync_file(src: Path, dst: Path) -> bool:
    """Copy ``src`` to ``dst`` unless the contents already agree (mutmut reads mtimes: untouched = unchanged)."""
    data = src.read_bytes()
    if dst.is_file() and dst.read_bytes() == data:
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
    return True


def _sync_tree(src: Path, dst: Path) -> None:
    keep = set()
    for path in src.rglob("*"):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        rel = path.relative_to(src)
        keep.add(rel)
        _sync_file(path, dst / rel)
    for path in list(dst.rglob("*")) if dst.exists() else []:  # files deleted from the checkout
        if path.is_file() and "__pycache__" not in path.parts and path.relative_to(dst) not in keep:
            path.unlink()


def prepare(name: str, group: Group, workdir: Path, jobs: int) -> Path:
    """Refresh the group's scratch copy (``src/``, ``tests/``, pyproject.toml with the mutmut section)."""
    copy = workdir / name
    copy.mkdir(parents=True, exist_ok=True)
    _sync_tree(ROOT / "src", copy / "src")
    _sync_tree(ROOT / "tests", copy / "tests")
    _sync_file(ROOT / "README.md", copy / "README.md")
    text = (ROOT / "pyproject.toml").read_text() + mutmut_config(group, jobs)
    if not (copy / "pyproject.toml").is_file() or (copy / "pyproject.toml").read_text() != text:
        (copy / "pyproject.toml").write_text(text)
    return copy


def tests_digest(group: Group) -> str:
    """A hash of the group's test files and of what they all import (conftest, helpers, data)."""
    h = hashlib.sha256()
    files = sorted({ROOT / t.split("::")[0] for t in group.tests} |
                   {p for p in (ROOT / "tests").rglob("*") if p.is_file() and "__pycache__" not in p.parts
                    and not p.name.startswith("test_")})
    for path in files:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


# --- mutmut -----------------------------------------------------------------------------------------------------


def mutant_names(group: Group) -> list[str]:
    """Every mutant mutmut makes of the group's sources (generated here, without running anything)."""
    from mutmut.mutation.file_mutation import mutate_file_contents
    from mutmut.utils.format_utils import get_mutant_name

    names = []
    for source in group.sources:
        mutated = mutate_file_contents(source, (ROOT / source).read_text())
        names += [get_mutant_name(Path(source), n) for n in mutated.mutant_names]
    return names


def verdicts(copy: Path, group: Group) -> dict[str, int | None]:
    """mutant name -> mutmut's exit code, from the scratch copy's ``mutants/*.meta`` files."""
    out: dict[str, int | None] = {}
    for source in group.sources:
        meta = copy / "mutants" / (source + ".meta")
        if meta.is_file():
            out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


def run_mutmut(copy: Path, jobs: int, names: list[str], log) -> int:
    """``mutmut run`` in the scratch copy (output appended to ``log``); names, when given, are re-run."""
    exe = Path(sys.executable).with_name("mutmut")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-c", "from mutmut.__main__ import cli; cli()"]
    # one BLAS/OpenMP thread per worker: `jobs` workers share the cores, and OpenMP's pool does not survive a fork
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
           "PYTHONPATH": "", "POSENC_TEST_THREADS": "1"}
    # mutmut re-runs only the named mutants it is given; a long list goes in chunks (the command line has a limit)
    chunks = [names[i:i + 400] for i in range(0, len(names), 400)] or [[]]
    rc = 0
    for chunk in chunks:
        rc = subprocess.run(cmd + ["run", "--max-children", str(jobs), *chunk], cwd=copy, env=env,
                            stdout=log, stderr=subprocess.STDOUT).returncode or rc
    return rc


# --- the table --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Score:
    mutants: int
    counts: dict[str, int]
    equivalent_lines: int
    seconds: float | None
    population: int | None = None  # a sampled run: how many mutants the group has in all (``mutants`` is the sample)

    @property
    def killed(self) -> int:
        return self.counts.get(KILLED, 0) + self.counts.get(TIMEOUT, 0)

    @property
    def not_killed(self) -> int:
        return self.counts.get(SURVIVED, 0) + self.counts.get(NO_TESTS, 0)

    @property
    def score(self) -> float | None:
        total = self.killed + self.not_killed
        return self.killed / total if total else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95% Wilson score interval of a sampled run's score (``None`` for a complete run: no sampling error).

        Wilson's interval, not the normal one: near a 90% floor with tens of mutants the normal interval runs past
        100% and is too narrow on the side that matters."""
        total = self.killed + self.not_killed
        if self.population is None or not total:
            return None
        z, p = 1.959964, self.killed / total
        centre = (p + z * z / (2 * total)) / (1 + z * z / total)
        half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
        return max(0.0, centre - half), min(1.0, centre + half)

    def score_text(self) -> str:
        if self.score is None:
            return "n/a"
        ci = self.interval
        return f"{self.score:.1%}" + ("" if ci is None else f" (95% CI {ci[0]:.1%}-{ci[1]:.1%})")


def pragma_lines(group: Group) -> int:
    # a "start ... end" pair marks one stretch: count its start only
    return sum(len(re.findall(r"#\s*pragma:\s*no mutate(?!\s*end)", (ROOT / s).read_text())) for s in group.sources)


def score_of(found: dict[str, int | None], group: Group, seconds: float | None,
             population: int | None = None) -> Score:
    counts: dict[str, int] = {}
    for code in found.values():
        counts[status(code)] = counts.get(status(code), 0) + 1
    return Score(len(found), counts, pragma_lines(group), seconds, population)


def table(scores: dict[str, Score | None]) -> str:
    rows = ["| group | modules | mutants | killed | of which timeouts | survived | no tests | not checked | "
            "equivalent (pragma lines) | score | floor | wall time |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in scores.items():
        g = GROUPS[name]
        modules = ", ".join(Path(p).relative_to("src/posenc").as_posix() for p in g.sources)
        if s is None:
            rows.append(f"| {name} | {modules} | | | | | | | | not run | {g.floor:.0%} | |")
            continue
        sc = s.score_text()
        wall = "" if s.seconds is None else f"{s.seconds / 60:.0f} min"
        mutants = s.mutants if s.population is None else f"{s.mutants} sampled of {s.population}"
        rows.append(f"| {name} | {modules} | {mutants} | {s.killed} | {s.counts.get(TIMEOUT, 0)} | "
                    f"{s.counts.get(SURVIVED, 0)} | {s.counts.get(NO_TESTS, 0)} | {s.counts.get(UNCHECKED, 0)} | "
                    f"{s.equivalent_lines} | {sc} | {g.floor:.0%} | {wall} |")
    return "\n".join(rows)


def machine() -> str:
    import mutmut
    import torch

    return (f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs (shared), "
            f"Python {platform.python_version()}, torch {torch.__version__}, mutmut {mutmut.__version__}").strip()


def write_doc(scores: dict[str, Score | None], command: str) -> Path:
    doc = ROOT / "docs" / "mutation.md"
    sampled = any(s is not None and s.population is not None for s in scores.values())
    sample_note = ("""
**These scores come from a seeded random sample of each group's mutants**, not from all of them (a complete run
takes many hours on 2 shared cores): the interval is the 95% Wilson interval of the sampled share, so a group is
shown to meet its floor only when the interval's lower end is above it. `python scripts/mutate.py` without
`--max-mutants` checks every mutant and rewrites this page with exact counts.
""" if sampled else "")
    groups = "\n".join(f"- **{n}**: tests {', '.join(f'`{t}`' for t in g.tests)}"
                       + (f" (less `-k` {', '.join(g.deselect)}: slow, see `scripts/mutate.py`)" if g.deselect else "")
                       for n, g in GROUPS.items())
    doc.write_text(f"""# Mutation testing

Do the tests notice when the code changes? [mutmut](https://github.com/boxed/mutmut) changes posenc one small edit
at a time (a comparison flipped, a number off by one, an argument dropped or set to `None`, a string altered, ...)
and runs the tests that call the changed function: a *killed* mutant made one fail, a *surviving* one did not.

{table(scores)}
{sample_note}
- **score** = killed / (killed + survived + no tests); **floor**: the least score a group keeps (`make test-mutate`
  fails below it).
- **timeouts count as killed** (a test run that no longer finishes fails under pytest-timeout too); each one is
  retried once alone before it is counted. **"no tests"** (no selected test calls the function) **counts as
  survived**. "not checked": left over by an interrupted run (the next run resumes).
- **equivalent**: lines marked `# pragma: no mutate` (each with its reason) in the group's modules: mutants that
  cannot be observed, so no test could kill them.
- wall time: of the last run that checked the group's mutants from scratch (a sampled run: of that run), on the
  machine below.

Which tests run for which modules (`GROUPS` in `scripts/mutate.py`):

{groups}

Generated by `{command}` on {dt.date.today().isoformat()}, {machine()}.
Rerun: `make test-mutate` (resumes; `python scripts/mutate.py --fresh` starts over, `--group NAME` /
`--max-mutants N` for a quick look, `--survivors` lists what survived as diffs).
""")
    return doc


# --- main -------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", action="append", choices=sorted(GROUPS), help="only this group (repeatable)")
    ap.add_argument("--max-mutants", type=int, metavar="N", help="a seeded sample of N mutants per group")
    ap.add_argument("--seed", type=int, default=0, help="of the sample (default 0)")
    ap.add_argument("--jobs", "-j", type=int, default=2, help="mutmut workers (default 2: the CPUs are shared)")
    ap.add_argument("--workdir", type=Path,
                    default=Path(os.environ.get("POSENC_MUTATE_DIR", Path.home() / ".cache" / "posenc-mutate")))
    ap.add_argument("--fresh", action="store_true", help="forget the stored verdicts of the groups run")
    ap.add_argument("--report", action="store_true", help="run nothing: print the table of the stored verdicts")
    ap.add_argument("--survivors", action="store_true", help="run nothing: print the surviving mutants as diffs")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1; got {args.jobs}")
    if args.max_mutants is not None and args.max_mutants < 1:
        ap.error(f"--max-mutants must be >= 1; got {args.max_mutants}")
    if args.workdir.resolve().is_relative_to(ROOT):
        ap.error(f"--workdir {args.workdir} is inside the checkout; mutmut's mutants/ folder belongs elsewhere")
    names = args.group or list(GROUPS)
    workdir = args.workdir.resolve()

    scores: dict[str, Score | None] = {}
    for name in names:
        group = GROUPS[name]
        copy = workdir / name
        state_file = copy / "posenc-mutate.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        if args.survivors:
            found = verdicts(copy, group)
            for mutant, code in sorted(found.items()):
                if status(code) in (SURVIVED, NO_TESTS):
                    out = subprocess.run([str(Path(sys.executable).with_name("mutmut")), "show", mutant], cwd=copy,
                                         capture_output=True, text=True)
                    print(f"# {status(code)}\n{out.stdout}")
            continue
        if args.report:
            found = verdicts(copy, group)
            scores[name] = score_of(found, group, state.get("seconds")) if found else None
            continue

        if args.fresh and copy.exists():
            shutil.rmtree(copy)
            state = {}
        copy = prepare(name, group, workdir, args.jobs)
        digest = tests_digest(group)
        log_path = copy / "mutmut.log"
        print(f"[{name}] mutmut in {copy} (log: {log_path})", flush=True)
        start = time.monotonic()
        with open(log_path, "a") as log:
            log.write(f"\n===== {dt.datetime.now().isoformat(timespec='seconds')} {' '.join(sys.argv)}\n")
            log.flush()
            if args.max_mutants:
                everything = mutant_names(group)
                sample = sorted(random.Random(args.seed).sample(everything, min(args.max_mutants, len(everything))))
                run_mutmut(copy, args.jobs, sample, log)
                found = {k: v for k, v in verdicts(copy, group).items() if k in set(sample)}
            else:
                before = verdicts(copy, group)
                if not any(v is not None for v in before.values()):
                    state = {}  # nothing decided yet: the wall time starts from here
                try:
                    # the tests changed since these verdicts were made (or it is not known with which tests they
                    # were): first try again what they did not kill; the digest is stored once that is done, so a
                    # run stopped before then re-tries them again
                    if state.get("tests") != digest:
                        again = [k for k, v in before.items() if status(v) in (SURVIVED, NO_TESTS)]
                        if again:
                            print(f"[{name}] the tests changed: re-trying {len(again)} mutants not killed",
                                  flush=True)
                            run_mutmut(copy, args.jobs, again, log)
                        state["tests"] = digest
                    run_mutmut(copy, args.jobs, [], log)  # the mutants not checked yet (new, or of changed code)
                    # a timeout may be the shared CPUs: one more try, alone
                    timeouts = [k for k, v in verdicts(copy, group).items() if status(v) == TIMEOUT]
                    if timeouts and sorted(timeouts) != state.get("timeouts_retried"):
                        print(f"[{name}] re-trying {len(timeouts)} timeouts alone", flush=True)
                        run_mutmut(copy, 1, timeouts, log)
                        state["timeouts_retried"] = sorted(k for k, v in verdicts(copy, group).items()
                                                           if status(v) == TIMEOUT)
                finally:  # stopped or not: the time spent counts, and what was settled stays settled
                    state["seconds"] = state.get("seconds", 0.0) + time.monotonic() - start
                    state_file.write_text(json.dumps(state, indent=1))
                found = verdicts(copy, group)
        scores[name] = score_of(found, group, time.monotonic() - start if args.max_mutants else state.get("seconds"),
                                population=len(everything) if args.max_mutants else None)
        s = scores[name]
        print(f"[{name}] {s.mutants} mutants: {s.killed} killed ({s.counts.get(TIMEOUT, 0)} timeouts), "
              f"{s.counts.get(SURVIVED, 0)} survived, {s.counts.get(NO_TESTS, 0)} no tests, "
              f"{s.counts.get(UNCHECKED, 0)} not checked"
              + ("" if s.score is None else f": score {s.score_text()} (floor {group.floor:.0%})")
              + f" in {(time.monotonic() - start) / 60:.1f} min", flush=True)

    if args.survivors:
        return 0
    print(table(scores))
    if not args.report and args.group is None:  # every group: the page (a sampled run says so on it)
        command = "python scripts/mutate.py" + (f" --max-mutants {args.max_mutants} --seed {args.seed}"
                                                if args.max_mutants else "")
        print(f"wrote {write_doc(scores, command)}")
    below = [n for n, s in scores.items() if s is not None and s.score is not None and s.score < GROUPS[n].floor]
    incomplete = [n for n, s in scores.items() if s is not None and s.counts.get(UNCHECKED, 0)]
    if incomplete and not args.max_mutants:
        print(f"not every mutant was checked in: {', '.join(incomplete)} (run again to resume)")
    if below:
        print(f"below the floor: {', '.join(f'{n} {scores[n].score:.1%} < {GROUPS[n].floor:.0%}' for n in below)}")
        return 1
    return 1 if incomplete and not args.max_mutants else 0


if __name__ == "__main__":
    sys.exit(main())
