"""The README's Speed figures: ``posenc bench`` train and generate suites run N times, summarised min/median/max.

Usage (from the repository root; about 2 minutes per repeat on 2 cores)::

    python benchmarks/readme_speed.py --repeats 3 --out docs/results/speed

Each repeat is a separate process running ``posenc bench --suite train --threads 1`` and ``posenc bench --suite
generate --threads 1`` (every contender interleaved within the run); the load average is recorded before each. The
summary (``speed.md``, and ``speed.json`` with every run's rows) gives, per encoding, the min / median / max over the
repeats of each ratio: posenc against x-transformers, against the bare-PyTorch ceiling, and against HF Llama.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _run(suite: str, threads: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        env = {**os.environ, "PYTHONPATH": "src" + os.pathsep + os.environ.get("PYTHONPATH", "")}
        subprocess.run([sys.executable, "-m", "posenc", "bench", "--suite", suite, "--threads", str(threads),
                        "--json", str(out)], check=True, env=env, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())["results"]


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/results/speed")
    args = p.parse_args(argv)
    runs = []
    for i in range(args.repeats):
        load = os.getloadavg()
        rows = _run("train", args.threads) + _run("generate", args.threads)
        runs.append({"load_before": load, "rows": rows})
        print(f"repeat {i + 1}/{args.repeats} done (load before {load[0]:.2f})", flush=True)
    loads = ", ".join(f"{r['load_before'][0]:.2f}" for r in runs)
    lines = [f"# Speed: `python benchmarks/readme_speed.py --repeats {args.repeats} --threads {args.threads}`", "",
             f"{platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}; load "
             f"average (1 min) before each repeat: {loads}. "
             f"Ratios above 1 mean posenc is faster; min / median / max over the {args.repeats} repeats, each the "
             f"ratio of medians of interleaved samples within one run.", "",
             "## Training tokens/s (`posenc bench --suite train`: d128, 3 layers, 4 heads, batch 32 x 64, AdamW)", "",
             "| encoding | x x-transformers | x bare PyTorch (same weights) |", "|---|---|---|"]
    names = [r["name"] for r in runs[0]["rows"] if r["suite"] == "train" and "skipped" not in r]
    for name in names:
        rows = [next(r for r in run["rows"] if r["suite"] == "train" and r["name"] == name) for run in runs]
        bare = [r["vs_bare"] for r in rows if r.get("vs_bare") is not None]
        lines.append(f"| {name} | {_spread([r['vs_peer'] for r in rows])} | {_spread(bare) if bare else '-'} |")
    lines += ["", "## Generation (`posenc bench --suite generate`: d256, 4 layers, 8 heads, 256 + 256 tokens, greedy)",
              "", "| encoding | x HF Llama | x x-transformers | x bare PyTorch | decode step: the encoding's share "
              "by removal |", "|---|---|---|---|---|"]
    for enc in ("rope", "alibi"):
        gen = [next(r for r in run["rows"] if r["name"] == f"generate, {enc}") for run in runs]
        step = [next(r for r in run["rows"] if r["name"] == f"decode step by removal, {enc}") for run in runs]
        hf = [r["vs_hf_llama"] for r in gen if "vs_hf_llama" in r]
        lines.append(f"| {enc} | {_spread(hf) if hf else '-'} | {_spread([r['vs_x_transformers'] for r in gen])} | "
                     f"{_spread([r['vs_bare'] for r in gen])} | "
                     f"{_spread([100 * r['removed_share'] for r in step])} % |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(runs, indent=1))
    (out / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
