"""Peak extra memory and time of one bias-attention forward + backward, per backend (issue 3's benchmark).

Each measurement (one backend at one length) runs in a fresh Python subprocess on CPU, so one backend's leftovers
(freed-but-kept heap, lazily loaded kernels) cannot leak into another's figure.

How memory is measured on CPU: torch has no CPU allocator statistics and ``tracemalloc`` does not see its
allocations, so we measure what the operating system sees. The worker sets ``MALLOC_MMAP_THRESHOLD_=65536``
(glibc then serves every block of 64 KiB or more with its own ``mmap`` and returns it to the OS on free, so the
resident set follows live tensor memory instead of a high-water heap), warms the backend up on a short sequence,
builds the inputs, then resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``) and runs one
forward + backward. *Peak extra memory* = peak RSS (``VmHWM``) during that step minus RSS just before it: every
byte the step allocates, including the output and the gradients of q, k and v, which are the same for every
backend (:func:`floor_bytes` gives that common part). On CUDA the same step is measured in-process with
``torch.cuda.max_memory_allocated`` minus the allocation before the step.

Time: the median over ``repeats`` runs of the same step after a warm-up step at the same length, in a second fresh
process with glibc's default ``malloc`` settings (the memory run's setting turns every large allocation into fresh,
page-faulting ``mmap`` memory, which would penalize the backends that allocate many blocks), as wall-clock time and
as this process's CPU time (user + system). The CPU figures are
single-threaded (``torch.set_num_threads(1)``), so on a quiet machine the two agree; on a shared, oversubscribed
machine wall time mostly measures the neighbours, and CPU time is the fairer comparison.

Usage::

    from posenc.bench.attention import run_attention_bench, format_table
    rows = run_attention_bench(quick=True)
    print(format_table(rows))

or ``python -m posenc.bench.attention [--quick] [--device cpu] [--lengths 1024 4096 8192] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["floor_bytes", "format_table", "measure_one", "run_attention_bench"]

DEFAULT_BACKENDS = ("dense", "chunked", "auto", "reference")


def floor_bytes(*, batch: int, heads: int, length: int, head_dim: int, itemsize: int = 4) -> int:
    """Bytes every backend must allocate in a forward + backward: the output and the gradients of q, k and v."""
    return 4 * batch * heads * length * head_dim * itemsize


def _estimate_bytes(backend: str, *, batch: int, heads: int, length: int, head_dim: int) -> int:
    """A generous guess of the peak, to refuse runs the machine cannot hold (never used as a result)."""
    square = batch * heads * length * length * 4
    floor = floor_bytes(batch=batch, heads=heads, length=length, head_dim=head_dim)
    if backend == "reference":
        return 6 * square + floor
    if backend in ("dense", "sdpa"):
        return 3 * square + floor
    return floor + 64 * 2**20 * 4


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line; CPU memory is measured on Linux only.")


def _make_encoding(name: str, heads: int, head_dim: int, causal: bool, max_len: int, options: dict | None = None):
    import posenc

    if name in posenc.registered_names():
        return posenc.get_encoding(name, dim=heads * head_dim, n_heads=heads, max_seq_len=max_len, causal=causal,
                                   **(options or {}))
    raise ValueError(f"bench: unknown encoding {name!r}; choose one of {posenc.registered_names()}.")


def _layer_view(pe, heads: int, head_dim: int, device):
    """A :class:`posenc.LayerView` with seeded projections, for encodings that read the layer (FoX, DeBERTa, ...)."""
    import torch

    import posenc

    g = torch.Generator(device=device).manual_seed(2)
    w_q, w_k = (torch.randn(heads * head_dim, pe.dim, generator=g, device=device) * pe.dim**-0.5 for _ in range(2))
    return posenc.LayerView(0, heads, heads, head_dim,
                            project_q=lambda x: (x @ w_q.T.to(x.dtype)).unflatten(-1, (heads, head_dim)),
                            project_k=lambda x: (x @ w_k.T.to(x.dtype)).unflatten(-1, (heads, head_dim)))


def measure_one(*, backend: str, length: int, device: str = "cpu", batch: int = 1, heads: int = 8,
                head_dim: int = 64, causal: bool = True, encoding: str = "alibi", repeats: int = 3,
                measure: str = "both", encoding_options: dict | None = None) -> dict:
    """One forward + backward of ``posenc.attention`` in *this* process: peak extra memory and median time.

    On CPU call it in a fresh process (``run_attention_bench`` does) so that the RSS figures mean something.
    ``measure="memory"`` times only the measured step itself; ``"time"`` skips the memory step and times
    ``repeats`` warm steps; ``"both"`` does both in one process (used on CUDA). ``encoding_options`` are passed to
    ``posenc.get_encoding`` (JSON-serializable, as the subprocess gets them on its command line).
    """
    if measure not in ("both", "memory", "time"):
        raise ValueError(f"measure_one: measure must be 'both', 'memory' or 'time'; got {measure!r}.")
    import torch

    import posenc

    torch.set_num_threads(1)
    dev = torch.device(device)
    pe = _make_encoding(encoding, heads, head_dim, causal, max(length, 2048), encoding_options).to(dev)

    layer = _layer_view(pe, heads, head_dim, dev) if (pe.uses_features or pe.reads_layer) else None

    def layer_inputs(t: int) -> dict:
        """``layer=`` and ``features=`` for an encoding that reads the layer (its features are part of the cost)."""
        extra = {} if layer is None else {"layer": layer}
        if pe.uses_features:
            x = torch.randn(batch, t, heads * head_dim, generator=torch.Generator(device=dev).manual_seed(1),
                            device=dev)
            extra["features"] = pe.features(x, torch.arange(t, device=dev), layer=layer)
        return extra

    def step(t: int, q, k, v, grad_out) -> None:
        out = posenc.attention(q, k, v, pe, causal=causal, backend=backend, **layer_inputs(t))  # (B, H, T, D)
        out.backward(grad_out)

    def inputs(t: int):
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(batch, heads, t, head_dim, generator=g, device=dev).requires_grad_()
                   for _ in range(3))  # (B, H, T, D)
        return q, k, v, torch.randn(batch, heads, t, head_dim, generator=g, device=dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step(256, *inputs(256))  # load kernels and libraries before anything is measured
    q, k, v, grad_out = inputs(length)
    sync()
    before = 0
    if measure == "time":
        step(length, q, k, v, grad_out)  # warm up at this length; the timed runs follow
        for t in (q, k, v):
            t.grad = None
    elif dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    else:
        before = _rss_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM (the peak RSS) to the current RSS
            f.write("5")
    start, start_cpu = time.perf_counter(), time.process_time()
    step(length, q, k, v, grad_out)
    sync()
    first = (time.perf_counter() - start, time.process_time() - start_cpu)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _rss_bytes("VmHWM")
    timed = 0 if measure == "memory" else max(repeats, 1) if measure == "time" else repeats if repeats > 1 else 0
    times = [first] if timed == 0 else []
    for _ in range(timed):
        for t in (q, k, v):
            t.grad = None
        start, start_cpu = time.perf_counter(), time.process_time()
        step(length, q, k, v, grad_out)
        sync()
        times.append((time.perf_counter() - start, time.process_time() - start_cpu))
    return {
        "backend": backend, "length": length, "device": dev.type, "batch": batch, "heads": heads,
        "head_dim": head_dim, "causal": causal, "encoding": encoding, "dtype": "float32",
        "time_ms": 1000 * statistics.median(t for t, _ in times),
        "cpu_ms": 1000 * statistics.median(c for _, c in times), "repeats": len(times),
        "peak_extra_mib": None if measure == "time" else (peak - before) / 2**20,
        "floor_mib": floor_bytes(batch=batch, heads=heads, length=length, head_dim=head_dim) / 2**20,
        "explain": posenc.explain(q, k, v, pe, causal=causal, backend=backend,
                                  **layer_inputs(length)).split(":")[0],
        "status": "ok",
    }


def _run_isolated(config: dict, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if config.get("measure") == "memory":  # see the module docstring; not for timing, where it adds page faults
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    proc = subprocess.run([sys.executable, "-m", "posenc.bench.attention", "--worker", json.dumps(config)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {**config, "status": f"failed (exit {proc.returncode}): {' | '.join(tail)}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_attention_bench(*, device: str = "cpu", quick: bool = False, lengths: Sequence[int] = (1024, 4096, 8192),
                        backends: Sequence[str] = DEFAULT_BACKENDS, batch: int = 1, heads: int = 8,
                        head_dim: int = 64, causal: bool = True, encoding: str = "alibi",
                        repeats: int | None = None, reference_max_len: int = 4096,
                        timeout: float = 1800.0, encoding_options: dict | None = None) -> list[dict]:
    """Peak extra memory and time of one attention forward + backward per backend and length.

    Args:
        device: ``"cpu"`` (each measurement in a fresh subprocess, memory from peak RSS) or ``"cuda"`` (in-process,
            ``torch.cuda.max_memory_allocated``; ``flex`` is added to the backends there).
        quick: lengths ``(1024, 2048)`` and one timed run each (a smoke test of the harness, not a result).
        lengths: sequence lengths ``T`` (queries = keys = ``T``).
        backends: ``posenc.attention`` backends to compare; ratios are taken against ``dense``.
        batch, heads, head_dim: q, k, v are ``(batch, heads, T, head_dim)`` float32.
        causal: causal attention (the ALiBi decoder setting).
        encoding: a registered bias encoding (``"alibi"`` by default).
        repeats: timed runs per measurement (median reported); default 3, or 1 when ``quick``.
        reference_max_len: ``reference`` materializes several ``(B, H, T, T)`` tensors (about 10 GiB at T=8192 with
            8 heads), so longer lengths are reported as skipped for it.
        timeout: seconds per measurement subprocess.
        encoding_options: options of the encoding (``posenc.get_encoding(encoding, ..., **encoding_options)``),
            JSON-serializable, e.g. ``{"content": True}`` for the content-conditioned ``adaptive``.

    Returns:
        One dict per (length, backend): ``backend, length, time_ms, peak_extra_mib, floor_mib`` (output + q/k/v
        gradients, common to all backends), ``mem_vs_dense``, ``time_vs_dense``, ``status`` and the shape.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"run_attention_bench: device must be 'cpu' or 'cuda'; got {device!r}.")
    if quick:
        lengths = tuple(t for t in lengths if t <= 2048) or (1024, 2048)
    repeats = (1 if quick else 3) if repeats is None else repeats
    backends = tuple(backends) + (("flex",) if device == "cuda" and "flex" not in backends else ())
    rows = []
    for length in lengths:
        for backend in backends:
            config = dict(backend=backend, length=length, device=device, batch=batch, heads=heads,
                          head_dim=head_dim, causal=causal, encoding=encoding, repeats=repeats,
                          encoding_options=encoding_options)
            need = _estimate_bytes(backend, batch=batch, heads=heads, length=length, head_dim=head_dim)
            available = _available_bytes() if device == "cpu" else None
            if backend == "reference" and length > reference_max_len:
                rows.append({**config, "status": f"skipped: T > reference_max_len={reference_max_len} "
                                                 f"(needs ~{need / 2**30:.0f} GiB)"})
            elif available is not None and need > 0.8 * available:
                rows.append({**config, "status": f"skipped: needs ~{need / 2**30:.1f} GiB, "
                                                 f"{available / 2**30:.1f} GiB available"})
            elif device == "cpu":  # memory and time in two fresh processes (different malloc settings)
                row = _run_isolated({**config, "measure": "memory"}, timeout)
                if row["status"] == "ok":
                    timing = _run_isolated({**config, "measure": "time"}, timeout)
                    keys = ("time_ms", "cpu_ms", "repeats") if timing["status"] == "ok" else ("status",)
                    row.update({key: timing[key] for key in keys})
                rows.append(row)
            else:
                rows.append(measure_one(**config))
    for row in rows:
        if row["backend"] == "auto":
            row["auto_picks"] = auto_choice(length=row["length"], device=device, batch=batch, heads=heads,
                                            head_dim=head_dim, causal=causal, encoding=encoding,
                                            encoding_options=encoding_options)
        dense = next((r for r in rows if r["backend"] == "dense" and r["length"] == row["length"]
                      and r["status"] == "ok"), None)
        ok = row["status"] == "ok" and dense is not None
        row["mem_vs_dense"] = row["peak_extra_mib"] / dense["peak_extra_mib"] if ok else None
        row["time_vs_dense"] = row["time_ms"] / dense["time_ms"] if ok else None
        row["cpu_vs_dense"] = row["cpu_ms"] / dense["cpu_ms"] if ok and dense["cpu_ms"] > 0 else None
    return rows


def auto_choice(*, length: int, device: str = "cpu", batch: int = 1, heads: int = 8, head_dim: int = 64,
                causal: bool = True, encoding: str = "alibi", encoding_options: dict | None = None) -> str:
    """The backend ``auto`` picks for this benchmark's call (a training call: gradients on), by name.

    The encoding is built as :func:`measure_one` builds it (its ``max_seq_len`` and ``causal``), so that encodings
    with a length limit, such as TUPE's absolute table, are asked about the call that was measured.
    """
    import torch

    from posenc.backends import explain

    pe = _make_encoding(encoding, heads, head_dim, causal, max(length, 2048), encoding_options)
    q = torch.empty(batch, heads, length, head_dim, device=device, requires_grad=True)
    return explain(q, q, q, pe.to(device), causal=causal).split(":", 1)[0]


def _ratio(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.3f}"


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| T | backend | wall (ms) | CPU (ms) | peak extra (MiB) | of which out + grads | memory vs dense "
             "| wall vs dense | CPU vs dense |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            name = f"auto ({r['auto_picks']})" if "auto_picks" in r else r["backend"]
            lines.append(f"| {r['length']} | {name} | {r['status']} | | | | | | |")
            continue
        name = f"auto ({r['auto_picks']})" if "auto_picks" in r else r["backend"]
        lines.append(f"| {r['length']} | {name} | {r['time_ms']:.0f} | {r['cpu_ms']:.0f} | "
                     f"{r['peak_extra_mib']:.1f} | {r['floor_mib']:.1f} | {_ratio(r['mem_vs_dense'])} | "
                     f"{_ratio(r['time_vs_dense'])} | {_ratio(r['cpu_vs_dense'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m posenc.bench.attention", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="short lengths, one timed run (harness smoke test)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--backends", nargs="+", default=list(DEFAULT_BACKENDS))
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one measurement, JSON config
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure_one(**json.loads(args.worker))))
        return 0
    rows = run_attention_bench(device=args.device, quick=args.quick, lengths=args.lengths, backends=args.backends,
                               heads=args.heads, head_dim=args.head_dim, repeats=args.repeats)
    print(format_table(rows))
    if args.json:
        from posenc._io import atomic_write_json  # atomic, like posenc bench --json

        atomic_write_json(args.json, {"results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
