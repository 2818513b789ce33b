"""The `posenc` command: --help everywhere, exit 2 with usage on bad arguments, 1 with one line on failures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from posenc.cli import build_parser, main


def _subcommands(parser=None, prefix=()):
    parser = parser or build_parser()
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _subcommands(sub, prefix + (name,))


COMMANDS = sorted(set(_subcommands()))


def test_there_are_subcommands():
    assert ("list",) in COMMANDS and ("demo",) in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_works_everywhere(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: posenc" in capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_bad_arguments_exit_2_with_usage(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--no-such-flag"])
    assert info.value.code == 2
    assert "usage: posenc" in capsys.readouterr().err


def test_failure_exits_1_with_one_line_and_no_traceback():
    result = subprocess.run([sys.executable, "-m", "posenc", "numerics", "--encodings", "ropee"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "Did you mean 'rope'" in result.stderr
    debug = subprocess.run([sys.executable, "-m", "posenc", "--debug", "numerics", "--encodings", "ropee"],
                           capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_list_prints_every_encoding(capsys):
    import posenc

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in posenc.registered_names())
