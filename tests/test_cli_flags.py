"""Every numeric flag of every subcommand has a stated range: out of range is exit 2, nothing prints a traceback.

The walk is over the parser itself, so a new flag is covered the day it is added: it must use a ranged type from
:mod:`posenc.cli.types` (a plain ``type=int`` fails :func:`test_every_numeric_flag_states_its_range`).
"""

from __future__ import annotations

import argparse

import pytest

from posenc.cli import build_parser, main

# the smallest argv that reaches each subcommand's flags (required arguments filled in)
BASE = {
    ("list",): [], ("demo",): [], ("numerics",): [], ("bench",): [], ("rope-scaling",): ["--type", "yarn"],
    ("plot",): ["waves", "rope", "--out", "x.png"], ("gallery",): ["--out", "g"],
    ("lab", "run"): ["--out", "o"], ("lab", "report"): ["o"], ("lab", "extend"): ["--out", "o"], ("lab", "list"): [],
    ("lab", "export"): ["o"],
    ("conform",): ["posenc.testing.peers:x_transformers"],
}


def _subparsers(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                has_sub = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                if has_sub:
                    yield from _subparsers(sub, (*prefix, name))
                else:
                    yield (*prefix, name), sub


COMMANDS = dict(_subparsers(build_parser()))
NUMERIC = [(cmd, a) for cmd, p in COMMANDS.items() for a in p._actions
           if a.option_strings and a.type is not None and (a.type in (int, float) or hasattr(a.type, "range"))]


def test_the_walk_knows_every_subcommand():
    assert set(COMMANDS) == set(BASE)


@pytest.mark.parametrize("cmd, action", NUMERIC, ids=[f"{' '.join(c)} {a.option_strings[-1]}" for c, a in NUMERIC])
def test_every_numeric_flag_states_its_range(cmd, action):
    assert hasattr(action.type, "range"), f"{' '.join(cmd)} {action.option_strings[-1]} has no range"
    assert action.type.range in (action.help or "").replace("%%", "%")  # shown in --help


def _bad_values(kind) -> list[str]:
    """Values just outside the flag's range, and things that are not numbers at all."""
    lo, hi, lo_open, hi_open = kind.bounds
    bad = ["abc", "", "nan", "inf", "-inf", "1e308", "1" + "0" * 30]
    if kind.__name__ == "int":
        return [*bad, "1.5", str(lo - 1), str(hi + 1)]
    return [*bad, repr(lo) if lo_open else repr(lo - abs(lo) * 0.01 - 1e-3),
            repr(hi) if hi_open else repr(hi + abs(hi) * 0.01 + 1e-3)]


@pytest.mark.parametrize("cmd, action", NUMERIC, ids=[f"{' '.join(c)} {a.option_strings[-1]}" for c, a in NUMERIC])
def test_out_of_range_values_are_usage_errors(cmd, action, capsys):
    flag = action.option_strings[-1]
    for value in _bad_values(action.type):
        with pytest.raises(SystemExit) as exc:  # parse only: a value wrongly accepted must not start real work
            build_parser().parse_args([*cmd, *BASE[cmd], flag, value])
        err = capsys.readouterr().err
        assert exc.value.code == 2, (flag, value)
        assert flag in err and "expected" in err and "Traceback" not in err, (flag, value, err)


@pytest.mark.parametrize("argv", [
    ["rope-scaling", "--type", "yarn", "--factor", "1e308"], ["rope-scaling", "--type", "yarn", "--base", "inf"],
    ["rope-scaling", "--type", "yarn", "--rotary-dim", "1000"], ["bench", "--repeats", "0"],
    ["bench", "--lengths", "-8"], ["plot", "grid", "axial_rope", "--height", "-1", "--out", "x.png"],
    ["plot", "waves", "rope", "--length", "10000000", "--out", "x.png"],
    ["lab", "run", "--batch-size", "0", "--out", "o"], ["lab", "run", "--warmup", "2", "--out", "o"],
    ["lab", "extend", "--steps", "-1", "--out", "o"],
], ids=lambda a: " ".join(a[:3]))
def test_the_issue_s_commands_are_usage_errors_without_a_traceback(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "error:" in err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "o").exists()  # refused before any work


def test_an_unexpected_exception_is_one_line_and_exit_1(capsys, monkeypatch):
    import posenc.cli.listing

    def boom(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(posenc.cli.listing, "encodings_table", boom)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ZeroDivisionError" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "list"])
