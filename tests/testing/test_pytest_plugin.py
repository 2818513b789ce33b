"""The kit as a pytest fixture (``posenc_conform``): a conforming implementation passes inside a project's own test,
a wrong one fails that test with the diagnosis; the plugin is registered through the ``pytest11`` entry point."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from posenc.testing.pytest_plugin import Conform

ROOT = Path(__file__).resolve().parents[2]
USER_TESTS = textwrap.dedent('''
    import torch

    def rope(q, k, positions, pairs="half"):
        d = q.shape[-1]
        inv = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = positions.double()[..., None] * inv
        cos, sin = ang.cos().float(), ang.sin().float()
        if cos.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]
        def rot(x):
            xf = x.float()
            x1, x2 = (xf.chunk(2, -1) if pairs == "half" else (xf[..., 0::2], xf[..., 1::2]))
            out = (x1 * cos - x2 * sin, x2 * cos + x1 * sin)
            out = torch.cat(out, -1) if pairs == "half" else torch.stack(out, -1).flatten(-2)
            return out.to(x.dtype)
        return rot(q), rot(k)

    CONFIG = {"rope_type": "default", "rope_theta": 10000.0, "head_dim": 16}

    def test_my_rope(posenc_conform):
        posenc_conform.rope(rope, CONFIG, dtypes=("float32",), max_position=4096)

    def test_my_wrong_rope(posenc_conform):
        posenc_conform.rope(lambda q, k, p: rope(q, k, p, "interleaved"), CONFIG, dtypes=("float32",),
                            max_position=4096)
''')


def test_the_fixture_runs_in_a_projects_own_suite(tmp_path):
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    env_path = f"{ROOT / 'src'}"
    from importlib.metadata import entry_points

    # installed (make test), pytest loads the plugin through its pytest11 entry point; a source checkout on
    # PYTHONPATH without the install names it with -p (naming it as well would register it twice)
    installed = any(ep.name == "posenc_conform" for ep in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "posenc.testing.pytest_plugin"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin,
                           str(tmp_path / "test_user.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 failed, 1 passed" in out, out
    assert "does not conform (fail): your output equals the reference with interleaved pairs" in out, out


def test_the_fixture_fails_with_the_diagnosis_and_returns_the_result():
    conform = Conform()
    result = conform.bias(lambda q, k: -(q[:, None] - k[None, :]).abs().float()[None] * 2.0 ** -8,
                          {"type": "alibi", "n_heads": 1, "causal": False})  # the paper's slope for one head: 2^-8
    assert result.passed and result.kind == "bias"
    with pytest.raises(pytest.fail.Exception, match="does not conform"):
        conform.rope(lambda q, k, p: (q, k), {"head_dim": 8}, dtypes=("float32",), max_position=1024)
    with pytest.raises(TypeError, match="allow_precision must be true or false"):
        conform.rope(lambda q, k, p: (q, k), {"head_dim": 8}, allow_precision="yes", dtypes=("float32",),
                     max_position=1024)


def test_the_entry_point_registers_the_plugin():
    text = (ROOT / "pyproject.toml").read_text()
    section = text[text.index("[project.entry-points.pytest11]"):].split("\n[", 1)[0]
    assert 'posenc_conform = "posenc.testing.pytest_plugin"' in section
