#!/usr/bin/env bash
# GPU correctness tests and `posenc bench --device cuda`, in one time-boxed run; JSON and logs go to OUT_DIR.
#
# Usage (from the repository root, on a machine with an NVIDIA GPU, CUDA torch and triton):
#     bash benchmarks/gpu.sh OUT_DIR
# Every step has its own time limit and a failing step does not stop the others; every limit hit at once would be
# about 20 minutes; a typical run should take 4-6 (an estimate: the train and generate steps have not run on a GPU
# yet), so one 10-minute device command fits it; each step writes its own JSON,
# so a run cut short keeps what it measured. The summary at the end is also written to OUT_DIR/summary.txt.
#   PYTHON=...            interpreter with CUDA torch (default: python3)
#   SKIP_ATTENTION=1      skip the attention suite (owned by the bias-attention backends work)
#   SKIP_COMPILE=1        skip torch.compile rows (saves ~1-2 minutes of compilation)
# posenc need not be installed: src/ is put on PYTHONPATH. Missing peers (x-transformers, Liger, ...) are reported
# as skipped rows, not errors.
set -u
OUT=${1:?usage: bash benchmarks/gpu.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export POSENC_CACHE_DIR="${POSENC_CACHE_DIR:-${TMPDIR:-/tmp}/posenc-cache}"
unset TRITON_INTERPRET
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
START=$(date +%s)

step() {  # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2 rc t0
    shift 2
    t0=$(date +%s)
    echo "== $name (limit ${limit}s): $*"
    timeout -k 15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    tail -n 40 "$OUT/$name.log"
    local verdict=ok
    [ "$rc" -eq 0 ] || verdict="FAILED rc=$rc"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && verdict="TIMED OUT after ${limit}s"
    echo "$name: $verdict ($(( $(date +%s) - t0 )) s, log $OUT/$name.log)" | tee -a "$SUMMARY"
}

step env 60 bash -c "nvidia-smi; $PY -c 'import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \
\"cuda\", torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() \
else \"\")'; $PY -c 'import triton; print(\"triton\", triton.__version__)'; $PY -m pip list 2>/dev/null | grep -i -E \
'^(torch|triton|transformers|x-transformers|rotary-embedding-torch|liger-kernel|pytest) '"

# Correctness first: the Triton kernel on the GPU (values, gradients, both layouts, partial, strides, the issue's
# shape), the CPU kernel, and the bench's own tests.
step tests 240 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_kernels.py tests/test_bench.py -rs

COMPILE_FLAG=()
[ "${SKIP_COMPILE:-0}" = "1" ] && COMPILE_FLAG=(--no-compile)
step bench_rope 300 "$PY" -m posenc bench --device cuda --suite rope --numerics ${COMPILE_FLAG[@]+"${COMPILE_FLAG[@]}"} \
    --json "$OUT/bench_rope_cuda.json"
step bench_decode 120 "$PY" -m posenc bench --device cuda --suite decode --json "$OUT/bench_decode_cuda.json"
step bench_train 60 "$PY" -m posenc bench --device cuda --suite train --json "$OUT/bench_train_cuda.json"
step bench_generate 90 "$PY" -m posenc bench --device cuda --suite generate --json "$OUT/bench_generate_cuda.json"
if [ "${SKIP_ATTENTION:-0}" != "1" ]; then
    step bench_attention 240 "$PY" -m posenc bench --device cuda --suite attention \
        --json "$OUT/bench_attention_cuda.json"
fi

echo "== summary (total $(( $(date +%s) - START )) s)"
"$PY" - "$OUT" >> "$SUMMARY" 2>&1 <<'EOF'
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])
for path in sorted(out.glob("bench_*_cuda.json")):
    rows = json.loads(path.read_text())["results"]
    print(f"-- {path.name}")
    rope = [r for r in rows if r.get("suite") == "rope" and "median_ms" in r]
    for direction in ("forward", "forward+backward"):
        group = {r["name"]: r for r in rope if r["direction"] == direction}
        if not group:
            continue
        copy = next((r for n, r in group.items() if n.startswith("copy")), None)
        for label in ("posenc RoPE.rotate", "posenc fused kernel"):
            ours = group.get(label)
            if copy and ours:
                frac = copy["median_ms"] / ours["median_ms"]
                print(f"{direction}: {label} {ours['median_ms']:.4f} ms, copy {copy['median_ms']:.4f} ms -> "
                      f"{frac:.2f} of copy bandwidth (target >= 0.93: {'met' if frac >= 0.93 else 'NOT met'})")
        if copy:
            for name, r in group.items():
                if not name.startswith(("copy", "posenc RoPE.rotate")) and "triton BLOCK_T" not in name:
                    print(f"    {name}: {r['median_ms']:.4f} ms = {r['vs_posenc']:.2f}x posenc")
        tiles = sorted((r["median_ms"], n) for n, r in group.items() if "triton BLOCK_T" in n)
        if tiles:
            print(f"    fastest tile: {tiles[0][1]} {tiles[0][0]:.4f} ms (default tile: posenc fused kernel "
                  f"{group.get('posenc fused kernel', {}).get('median_ms', float('nan')):.4f} ms)")
    for r in rows:
        if r.get("suite") == "decode":
            print(f"decode: {r['name']}: step {r['step_ms']:.3f} ms, PE share {100 * r['pe_share']:.1f}%")
        if r.get("suite") == "numerics":
            print(f"numerics: {r['name']}: max abs err {r['max_abs_err']:.3g}")
    for r in rows:
        if "skipped" in r:
            print(f"skipped: {r.get('name', r.get('suite'))}: {r['skipped']}")
EOF
cat "$SUMMARY"
echo "outputs in $OUT"
