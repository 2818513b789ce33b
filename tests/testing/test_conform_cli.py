"""``posenc conform``: a callable, an HF config directory and exported tables, with the exit codes and --json.

Most calls pass ``--timeout 0`` (the check in this process): the default runs a module:function candidate in a child
process, which costs a Python start-up each; the tests of the timeout, the child's exit statuses and the import path
in the child run it that way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from posenc.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")

ROPE_PY = textwrap.dedent('''
    import torch

    def rope(q, k, positions, layout="half"):
        d = q.shape[-1]
        inv = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = positions.double()[..., None] * inv          # float64 angles
        cos, sin = ang.cos().float(), ang.sin().float()
        if cos.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]
        def rot(x):
            xf = x.float()
            if layout == "half":
                x1, x2 = xf.chunk(2, -1)
                return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1).to(x.dtype)
            x1, x2 = xf[..., 0::2], xf[..., 1::2]
            return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1).flatten(-2).to(x.dtype)
        return rot(q), rot(k)

    def interleaved(q, k, positions):
        return rope(q, k, positions, layout="interleaved")

    def mrope(q, k, coords):  # posenc's own M-RoPE with Qwen2-VL sections
        import posenc
        pe = posenc.get_encoding("mrope", dim=4 * 32, n_heads=4, base=1e6, mrope_section=[4, 6, 6])
        return pe.rotate(q, k, coords, coords)

    def alibi(q_pos, k_pos):  # 4 heads: slopes 1/4, 1/16, 1/64, 1/256
        m = torch.tensor([0.25, 0.0625, 0.015625, 0.00390625])
        return m[:, None, None] * (q_pos[:, None] - k_pos[None, :]).float()  # the sign is wrong
''')
CONFIG = '{"rope_type": "default", "rope_theta": 10000.0, "head_dim": 32}'
NOW = ["--timeout", "0"]  # in this process
SMALL = ["--max-position", "1024", "--no-gqa", "--no-batch-positions"]  # a short matrix, for the child processes


@pytest.fixture
def module(tmp_path, monkeypatch):
    (tmp_path / "user_rope.py").write_text(ROPE_PY)
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("user_rope", None)
    return tmp_path


def test_a_correct_callable_passes(module, capsys):
    assert main(["conform", "user_rope:rope", "--config", CONFIG, "--dtypes", "float32", *NOW]) == 0
    out = capsys.readouterr().out
    assert "prefill" in out and "long-999999" in out and "rope user_rope:rope: pass" in out


def test_the_default_runs_the_candidate_in_a_child_and_relays_its_verdict(module, capsys):
    # (a pass relayed from the child: test_the_current_directory_comes_after_the_installed_packages)
    assert main(["conform", "user_rope:interleaved", "--config", CONFIG, "--dtypes", "float32", "--json", *SMALL]) == 1
    assert json.loads(capsys.readouterr().out)["finding"]["hypothesis"] == "layout"
    assert main(["conform", "user_rope:missing", "--config", CONFIG]) == 2  # a usage error in the child: 2 as well
    assert capsys.readouterr().err.startswith("posenc conform: error: ")


def test_a_wrong_layout_fails_with_the_diagnosis_and_json(module, capsys):
    assert main(["conform", "user_rope:interleaved", "--config", CONFIG, "--dtypes", "float32", "--json",
                 *NOW]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "fail" and data["finding"]["hypothesis"] == "layout"
    assert "interleaved pairs" in data["diagnosis"]
    assert all(c["status"] == "fail" for c in data["cases"] if c["name"] != "empty")  # T = 0: no values to differ
    assert main(["conform", "user_rope:interleaved", "--config", CONFIG, "--layout", "interleaved",
                 "--dtypes", "float32", *NOW]) == 0


def test_usage_errors_exit_2_in_one_line(module, capsys):
    assert main(["conform", "user_rope:missing", "--config", CONFIG, *NOW]) == 2
    assert main(["conform", "user_rope:rope", *NOW]) == 2
    assert main(["conform", "not-a-target"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("posenc conform: error: ") for line in err)
    # an invalid configuration: the check cannot run, which is 2 (1 is kept for "it ran and a case failed")
    assert main(["conform", "user_rope:rope", "--config", '{"rope_type": "linear", "head_dim": 32}', *NOW]) == 2
    assert "missing required key(s) ['factor']" in capsys.readouterr().err


BROKEN_MODULES = {
    "import_fails.py": "raise RuntimeError('no GPU here')\n",
    "factory_fails.py": "def make(config):\n    raise ValueError('this peer has no yarn')\n",
}


@pytest.mark.parametrize(("setup", "argv", "words"), [
    ("empty_dir", ["{tmp}/empty"], ["must hold a Hugging Face config.json; there is none"]),  # was FileNotFoundError: 1
    ("broken_config", ["{tmp}/broken"], ["config.json is not valid JSON"]),  # was JSONDecodeError: 1
    ("broken_file", ["{tmp}/broken.json"], ["broken.json is not valid JSON"]),
    ("bert", ["{tmp}/bert"], ["defines no *RotaryEmbedding module"]),  # a model without rotary modules: was 1
    ("unknown_type", ["{tmp}/unknown"], ["cannot run the check"]),
    ("tables", ["{tmp}/fractional.json"], ["positions[3] = 2.5 is fractional"]),  # was silently truncated to 2
    ("module", ["import_fails:rope", "--config", CONFIG], ["importing 'import_fails' raised RuntimeError"]),
    ("module", ["factory_fails:make", "--factory", "--config", CONFIG], ["could not build a candidate",
                                                                         "this peer has no yarn"]),
], ids=["no-config-json", "broken-config-json", "broken-json-file", "model-without-rotary", "unknown-model-type",
        "fractional-table-positions", "import-raises", "factory-raises"])
def test_setup_errors_exit_2_in_one_line(tmp_path, monkeypatch, capsys, setup, argv, words):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "llama", ')
    (tmp_path / "broken.json").write_text("{not json")
    for name, config in (("bert", {"model_type": "bert", "hidden_size": 64, "num_attention_heads": 4}),
                         ("unknown", {"model_type": "no_such_model"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    positions = [0, 1, 2, 2.5]
    (tmp_path / "fractional.json").write_text(json.dumps({"config": {"head_dim": 4}, "positions": positions,
                                                          "cos": [[1.0, 1.0]] * 4, "sin": [[0.0, 0.0]] * 4}))
    for name, text in BROKEN_MODULES.items():
        (tmp_path / name).write_text(text)
        sys.modules.pop(name[:-3], None)
    monkeypatch.chdir(tmp_path)
    if setup in ("bert", "unknown_type"):
        pytest.importorskip("transformers")
    assert main(["conform", *[a.replace("{tmp}", str(tmp_path)) for a in argv], *NOW]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("posenc conform: error: "), err
    for word in words:
        assert word in err[0], err[0]


def test_a_hugging_face_config_directory(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    transformers.LlamaConfig(hidden_size=64, num_attention_heads=2, num_hidden_layers=1, intermediate_size=32,
                             vocab_size=50, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}
                             ).save_pretrained(tmp_path)
    assert main(["conform", str(tmp_path), "--dtypes", "float32"]) == 1  # strict: float32 angles at long positions
    out = capsys.readouterr().out
    assert "precision - angles formed in float32" in out
    assert main(["conform", str(tmp_path), "--dtypes", "float32", "--allow-precision"]) == 0


def test_exported_tables(tmp_path, capsys):
    positions = list(range(0, 64)) + list(range(100_000, 100_032))
    pos = torch.tensor(positions, dtype=torch.float64)
    inv = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    ang = pos[:, None] * inv
    emb = torch.cat((ang, ang), -1)  # HF's cat(f, f) rows
    table = {"config": {"head_dim": 16}, "layout": "half", "positions": positions, "cos": emb.cos().tolist(),
             "sin": emb.sin().tolist()}
    (tmp_path / "good.json").write_text(json.dumps(table))
    assert main(["conform", str(tmp_path / "good.json")]) == 0
    capsys.readouterr()
    f32 = (pos.float()[:, None] * inv.float()).double()  # angles formed in float32, one column per pair
    table.update(cos=f32.cos().tolist(), sin=f32.sin().tolist())
    (tmp_path / "f32.json").write_text(json.dumps(table))
    assert main(["conform", str(tmp_path / "f32.json"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "precision" and data["finding"]["hypothesis"] == "angles_float32"
    table["layout"] = "interleaved"  # HF-style rows read by an interleaved consumer
    table.update(cos=emb.cos().tolist(), sin=emb.sin().tolist())
    (tmp_path / "swapped.json").write_text(json.dumps(table))
    assert main(["conform", str(tmp_path / "swapped.json"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["verdict"] == "fail"


def test_an_mrope_callable(module, capsys):
    cfg = '{"head_dim": 32, "rope_theta": 1e6, "mrope_section": [4, 6, 6]}'
    assert main(["conform", "user_rope:mrope", "--config", cfg, *NOW]) == 0
    assert "mrope user_rope:mrope: pass" in capsys.readouterr().out
    interleaved = '{"head_dim": 32, "rope_theta": 1e6, "mrope_section": [4, 6, 6], "mrope_interleaved": true}'
    assert main(["conform", "user_rope:mrope", "--config", interleaved, "--json", *NOW]) == 1
    assert json.loads(capsys.readouterr().out)["finding"]["hypothesis"] == "sections_order"


def test_a_bias_callable(module, capsys):
    assert main(["conform", "user_rope:alibi", "--config", '{"type": "alibi", "n_heads": 4, "causal": true}',
                 *NOW]) == 1
    assert "wrong sign" in capsys.readouterr().out


def test_the_command_line_entry_point(module):
    env = {**os.environ, "PYTHONPATH": SRC}  # this checkout's posenc (a relative PYTHONPATH would not hold in cwd)
    result = subprocess.run([sys.executable, "-m", "posenc", "conform", "user_rope:interleaved", "--config", CONFIG,
                             "--dtypes", "float32", *SMALL], capture_output=True, text=True, cwd=module, env=env,
                            timeout=300)
    assert result.returncode == 1 and "interleaved pairs" in result.stdout and not result.stderr.strip()


HANGS = textwrap.dedent('''
    import time

    def rope(q, k, positions):
        while True:  # a candidate that never returns (a deadlock, a lost wait)
            time.sleep(0.05)
''')


def test_a_hanging_candidate_is_stopped_after_the_timeout(tmp_path, monkeypatch, capsys):
    (tmp_path / "hangs.py").write_text(HANGS)
    (tmp_path / "hangs_on_import.py").write_text("import time\ntime.sleep(3600)\n")
    monkeypatch.chdir(tmp_path)
    for target in ("hangs:rope", "hangs_on_import:rope"):
        start = time.monotonic()
        assert main(["conform", target, "--config", CONFIG, "--timeout", "3"]) == 2
        assert time.monotonic() - start < 60  # stopped, not waited for (start-up of the child included)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{target} did not finish within 3 s (--timeout)" in err[0], err


def test_a_candidate_that_kills_its_process_exits_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "crashes.py").write_text("import os, signal\n\ndef rope(q, k, p):\n"
                                         "    os.kill(os.getpid(), signal.SIGKILL)\n")
    monkeypatch.chdir(tmp_path)
    assert main(["conform", "crashes:rope", "--config", CONFIG]) == 2
    assert "killed by SIGKILL" in capsys.readouterr().err


SHADOW = {"site": "CORRECT = True\n", "cwd": "CORRECT = False\n"}
SHADOW_ROPE = ROPE_PY + textwrap.dedent('''
    def maybe(q, k, positions):  # right only in the copy on the "installed" path
        return rope(q, k, positions) if CORRECT else interleaved(q, k, positions)
''')


def test_the_current_directory_comes_after_the_installed_packages(tmp_path, monkeypatch, capsys):
    """A module in the current directory with the name of an installed one must not shadow it (it used to be put
    first on sys.path); --path DIR puts DIR first, and the child process imports the same way."""
    for where, flag in SHADOW.items():
        (tmp_path / where).mkdir()
        (tmp_path / where / "shadowed_rope.py").write_text(SHADOW_ROPE + flag)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))  # stands for site-packages
    monkeypatch.chdir(tmp_path / "cwd")
    argv = ["conform", "shadowed_rope:maybe", "--config", CONFIG, "--dtypes", "float32", *SMALL]
    before = list(sys.path)
    sys.modules.pop("shadowed_rope", None)
    assert main([*argv, *NOW]) == 0  # the installed one
    assert sys.path == before  # restored after the check
    sys.modules.pop("shadowed_rope", None)
    assert main([*argv, *NOW, "--path", "."]) == 1  # asked for: the current directory's
    sys.modules.pop("shadowed_rope", None)
    assert main(argv) == 0  # in the child too
    capsys.readouterr()
    assert main([*argv, "--path", str(tmp_path / "nowhere"), *NOW]) == 2
    assert "--path" in capsys.readouterr().err
    sys.modules.pop("shadowed_rope", None)


def test_a_module_only_in_the_current_directory_is_found(module, capsys):
    assert main(["conform", "user_rope:rope", "--config", CONFIG, "--dtypes", "float32", *NOW]) == 0


def test_help_documents_exit_codes_timeout_and_import_path(capsys):
    with pytest.raises(SystemExit):
        main(["conform", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for words in ("Exit status", "2 when the check could not run", "--timeout SECONDS", "--path DIR",
                  "appended last", "130 when interrupted"):
        assert words in out, words


EXITS = textwrap.dedent('''
    import os
    import sys

    def exits(q, k, positions):
        sys.exit(0)  # a candidate that ends the process with "success"

    def raises_system_exit(q, k, positions):
        raise SystemExit

    def os_exits(q, k, positions):
        os._exit(0)  # no exception, no cleanup: the process is simply gone

    def factory(config):
        sys.exit(0)
''')


def test_a_candidate_that_exits_is_not_a_pass(tmp_path, monkeypatch, capsys):
    """Red team round four: a candidate calling sys.exit(0) (or os._exit(0) in the child) made `posenc conform` exit 0,
    "every case passes", with nothing checked. Now exit 2, naming what happened."""
    (tmp_path / "exiting_rope.py").write_text(EXITS)
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.chdir(tmp_path)
    for target, extra in (("exiting_rope:exits", []), ("exiting_rope:raises_system_exit", []),
                          ("exits_on_import:rope", []), ("exiting_rope:factory", ["--factory"])):
        sys.modules.pop("exiting_rope", None)
        sys.modules.pop("exits_on_import", None)
        assert main(["conform", target, "--config", CONFIG, *extra, *NOW]) == 2, target
        err = capsys.readouterr().err
        assert "raised sys.exit(" in err and "nothing was concluded" in err, err
    assert main(["conform", "exiting_rope:exits", "--config", CONFIG, *SMALL]) == 2  # in the child: the same
    assert "raised sys.exit(0)" in capsys.readouterr().err
    assert main(["conform", "exiting_rope:os_exits", "--config", CONFIG, *SMALL]) == 2
    assert "ended with status 0 before the check finished" in capsys.readouterr().err
