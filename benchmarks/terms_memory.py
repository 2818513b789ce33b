"""Peak extra memory of attention with terms (Shaw, CoPE, Transformer-XL, ...): chunked vs dense, forward + backward.

Each measurement runs in a fresh subprocess through :func:`posenc.bench.attention.run_attention_bench`, which measures
CPU memory as the operating system sees it (torch's CPU allocations are invisible to ``tracemalloc``): with
``MALLOC_MMAP_THRESHOLD_=65536`` every block of 64 KiB or more is its own ``mmap``, returned to the OS when freed, so
the resident set follows live tensor memory; the figure is peak RSS (``VmHWM``, reset just before the step) minus
RSS before one forward + backward of ``posenc.attention``. It includes the output and the gradients of q, k and v
(``floor`` below, the same for every backend). The reference size is the dense ``(B, H, T, T)`` float32 scores.

Usage::

    PYTHONPATH=src python benchmarks/terms_memory.py [--length 4096] [--heads 4] [--head-dim 64] [--encodings tupe]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import sys

from posenc.bench.attention import run_attention_bench

# The encodings with attention terms and the options they are measured with (each is built with max_seq_len = T).
# adaptive is a plain bias unless content-conditioned; dual_chunk's default chunk_size (3/4 of max_seq_len) would
# give T=4096 only intra- and successive-chunk pairs, so it runs as a model trained at ~1.4k tokens would.
ENCODINGS: dict[str, dict] = {
    "shaw": {}, "cope": {}, "transformer_xl": {}, "tupe": {}, "adaptive": {"content": True}, "dape": {},
    "self_extend": {}, "dual_chunk": {"chunk_size": 1024, "local_window": 64},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--encodings", nargs="+", default=list(ENCODINGS))
    parser.add_argument("--backends", nargs="+", default=["chunked", "dense"])
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    t, h = args.length, args.heads
    scores_mib = h * t * t * 4 / 2**20  # (B=1, H, T, T) float32
    print(f"T={t}, B=1, H={h}, D={args.head_dim}, causal, float32, CPU; dense (B, H, T, T) scores = "
          f"{scores_mib:.0f} MiB\n")
    print("| encoding | backend | peak extra (MiB) | of which out + grads | extra - floor (MiB) | peak / dense scores "
          "| (peak - floor) / dense scores | wall (s) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.encodings:
        for row in run_attention_bench(lengths=(t,), backends=args.backends, heads=h, head_dim=args.head_dim,
                                       encoding=name, repeats=1, encoding_options=ENCODINGS.get(name)):
            rows.append(row)
            if row["status"] != "ok":
                print(f"| {name} | {row['backend']} | {row['status']} | | | | | |")
                continue
            peak, floor = row["peak_extra_mib"], row["floor_mib"]
            print(f"| {name} | {row['backend']} | {peak:.1f} | {floor:.1f} | {peak - floor:.1f} | "
                  f"{peak / scores_mib:.1%} | {(peak - floor) / scores_mib:.1%} | {row['time_ms'] / 1000:.1f} |")
            sys.stdout.flush()
    if args.json:
        from posenc.cli.bench import write_json  # atomic, like posenc bench --json

        write_json(args.json, {"results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
