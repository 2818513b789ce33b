"""``posenc conform``: a callable, an HF config directory and exported tables, with the exit codes and --json."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from posenc.cli import main

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


@pytest.fixture
def module(tmp_path, monkeypatch):
    (tmp_path / "user_rope.py").write_text(ROPE_PY)
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("user_rope", None)
    return tmp_path


def test_a_correct_callable_passes(module, capsys):
    assert main(["conform", "user_rope:rope", "--config", CONFIG, "--dtypes", "float32"]) == 0
    out = capsys.readouterr().out
    assert "prefill" in out and "long-999999" in out and "rope user_rope:rope: pass" in out


def test_a_wrong_layout_fails_with_the_diagnosis_and_json(module, capsys):
    assert main(["conform", "user_rope:interleaved", "--config", CONFIG, "--dtypes", "float32", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "fail" and data["finding"]["hypothesis"] == "layout"
    assert "interleaved pairs" in data["diagnosis"] and all(c["status"] == "fail" for c in data["cases"])
    assert main(["conform", "user_rope:interleaved", "--config", CONFIG, "--layout", "interleaved",
                 "--dtypes", "float32"]) == 0


def test_usage_errors_exit_2_in_one_line(module, capsys):
    assert main(["conform", "user_rope:missing", "--config", CONFIG]) == 2
    assert main(["conform", "user_rope:rope"]) == 2
    assert main(["conform", "not-a-target"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("posenc conform: error: ") for line in err)
    assert main(["conform", "user_rope:rope", "--config", '{"rope_type": "linear", "head_dim": 32}']) == 1
    assert "missing required key(s) ['factor']" in capsys.readouterr().err  # invalid config: cli.py's one line


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
    assert main(["conform", "user_rope:mrope", "--config", cfg]) == 0
    assert "mrope user_rope:mrope: pass" in capsys.readouterr().out
    interleaved = '{"head_dim": 32, "rope_theta": 1e6, "mrope_section": [4, 6, 6], "mrope_interleaved": true}'
    assert main(["conform", "user_rope:mrope", "--config", interleaved, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["finding"]["hypothesis"] == "sections_order"


def test_a_bias_callable(module, capsys):
    assert main(["conform", "user_rope:alibi", "--config", '{"type": "alibi", "n_heads": 4, "causal": true}']) == 1
    assert "wrong sign" in capsys.readouterr().out


def test_the_command_line_entry_point(module):
    result = subprocess.run([sys.executable, "-m", "posenc", "conform", "user_rope:interleaved", "--config", CONFIG,
                             "--dtypes", "float32"], capture_output=True, text=True, cwd=module)
    assert result.returncode == 1 and "interleaved pairs" in result.stdout and not result.stderr.strip()
