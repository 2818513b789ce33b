"""scripts/mutate.py (``make test-mutate``): its table of module groups stays true to the tree, and its score counts
what the docs say it counts. (Running mutmut itself takes hours: that is ``make test-mutate``, not this.)"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mutate():
    spec = importlib.util.spec_from_file_location("mutate_script", ROOT / "scripts" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_every_group_names_files_that_exist_and_the_issue_s_modules_are_all_mutated(mutate):
    mutated = set()
    for name, group in mutate.GROUPS.items():
        assert group.floor >= 0.9, name
        for path in group.sources + tuple(t.split("::")[0] for t in group.tests):
            assert (ROOT / path).is_file(), f"{name}: {path} does not exist"
        mutated |= set(group.sources)
        for keyword in group.deselect:  # a -k that no longer matches a test is a stale entry
            names = {n for t in group.tests for n in re.findall(r"^def (test_\w+)", (ROOT / t).read_text(), re.M)}
            assert any(keyword in n for n in names), f"{name}: -k {keyword!r} deselects nothing"
    core = {f"src/posenc/{m}.py" for m in ("base", "positions", "terms", "registry", "backends", "blocks", "chunked",
                                           "_checks", "model", "hf")}
    testing = {str(p.relative_to(ROOT)) for p in (ROOT / "src/posenc/testing").glob("*.py")}
    assert core | testing | {"src/posenc/lab/report.py", "src/posenc/lab/markdown.py"} <= mutated
    assert len(mutated) == sum(len(g.sources) for g in mutate.GROUPS.values())  # each module in one group


def test_timeouts_count_as_killed_and_untested_mutants_as_survivors(mutate):
    codes = {"a": 1, "b": 36, "c": 0, "d": 33, "e": None, "f": -24, "g": 5}  # killed, timeout x2, survived, no tests x2
    score = mutate.score_of(codes, mutate.GROUPS["report"], seconds=None)
    assert (score.killed, score.not_killed) == (3, 3) and score.counts[mutate.UNCHECKED] == 1
    assert score.score == pytest.approx(0.5)
    assert mutate.score_of({"e": None}, mutate.GROUPS["report"], None).score is None  # nothing decided yet


def test_the_scratch_copy_is_configured_for_the_group(mutate):
    group = mutate.GROUPS["core"]
    text = mutate.mutmut_config(group, jobs=2)
    assert "[tool.mutmut]" in text and 'source_paths = ["src"]' in text
    only = re.search(r"only_mutate = (.*)", text).group(1)
    assert all(f'"{s}"' in only for s in group.sources)
    selection = re.search(r"pytest_add_cli_args_test_selection = (.*)", text).group(1)
    assert all(f'"{t}"' in selection for t in group.tests)
    assert " and ".join(f"not {k}" for k in group.deselect) in selection


def test_a_sampled_score_carries_its_wilson_interval(mutate):
    # 18 of 20 sampled mutants killed: Wilson's 95% interval (textbook values, z = 1.96) is 69.9% to 97.2%
    codes = {f"m{i}": 1 if i < 18 else 0 for i in range(20)}
    sampled = mutate.score_of(codes, mutate.GROUPS["report"], seconds=None, population=400)
    low, high = sampled.interval
    assert (low, high) == pytest.approx((0.6990, 0.9721), abs=5e-4)
    assert sampled.score_text() == "90.0% (95% CI 69.9%-97.2%)"
    assert "20 sampled of 400" in mutate.table({"report": sampled})
    whole = mutate.score_of(codes, mutate.GROUPS["report"], seconds=None)  # every mutant: no sampling error
    assert whole.interval is None and whole.score_text() == "90.0%"
    everything = mutate.score_of({f"m{i}": 1 for i in range(20)}, mutate.GROUPS["report"], None, population=20)
    assert everything.interval[1] == 1.0 and everything.interval[0] == pytest.approx(0.8389, abs=5e-4)
