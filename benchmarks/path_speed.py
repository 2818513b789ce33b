"""CPU time of one causal self-attention call with PaTH against RoPE, forward and forward + backward.

Both run in this process, interleaved (RoPE, PaTH, RoPE, PaTH, ...) so a busy machine slows both alike: RoPE is
``pe.rotate`` + ``posenc.attention`` (SDPA's fused causal kernel); PaTH is ``pe.features`` (its projections of the
layer's input) + ``posenc.attention`` with its terms (``auto``: ``dense`` at these sizes). Forward runs under
``torch.no_grad``; forward + backward differentiates q, k, v, the layer input and the encoding's parameters. One
batch, ``--dim`` wide with ``--heads`` heads; min / median / max of ``--repeats`` timings.

Usage::

    PYTHONPATH=src python benchmarks/path_speed.py [--lengths 256 1024] [--dim 128] [--heads 4] [--repeats 3]
        [--threads 1] [--backend auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import posenc
from posenc import LayerView


def _call(name: str, length: int, dim: int, heads: int, backend: str):
    pe = posenc.get_encoding(name, dim=dim, n_heads=heads, causal=True, max_seq_len=max(2048, length))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, length, dim, generator=g, requires_grad=True)  # the layer's input
    q, k, v = (torch.randn(1, heads, length, dim // heads, generator=g, requires_grad=True) for _ in range(3))
    layer, pos = LayerView(0, heads, heads, dim // heads), torch.arange(length)

    def run() -> torch.Tensor:
        if pe.uses_features:
            features = pe.features(x, pos, layer=layer)
            return posenc.attention(q, k, v, pe, causal=True, features=features, layer=layer, backend=backend)
        q2, k2 = pe.rotate(q, k, pos, pos)
        return posenc.attention(q2, k2, v, pe, causal=True)

    return run


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    parser.add_argument("--backend", default="auto", help="PaTH's attention backend")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), dim {args.dim}, {args.heads} heads, batch 1")
    for length in args.lengths:
        runs = {name: _call(name, length, args.dim, args.heads, args.backend) for name in ("rope", "path")}
        times: dict[tuple[str, str], list[float]] = {(n, m): [] for n in runs for m in ("forward", "fwd+bwd")}
        for run in runs.values():  # warm-up
            with torch.no_grad():
                run()
            run().sum().backward()
        for _ in range(args.repeats):
            for name, run in runs.items():
                with torch.no_grad():
                    times[(name, "forward")].append(_seconds(run))
                times[(name, "fwd+bwd")].append(_seconds(lambda run=run: run().sum().backward()))
        for (name, what), ts in times.items():
            print(f"T={length:5d}  {name:4s}  {what:8s}  min {min(ts) * 1e3:8.1f} ms  median "
                  f"{statistics.median(ts) * 1e3:8.1f} ms  max {max(ts) * 1e3:8.1f} ms")
        for what in ("forward", "fwd+bwd"):
            ratio = statistics.median(times[("path", what)]) / statistics.median(times[("rope", what)])
            print(f"T={length:5d}  path / rope  {what}: {ratio:.1f}x (medians)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
