"""Fused CPU RoPE: one pass over q or k, reading each element once and writing it once (arXiv 2104.09864).

The plain PyTorch formula (:func:`posenc.kernels.reference.apply_rope`) makes about ten passes over memory (slices,
four products, two sums, a concatenation, dtype casts). This module compiles a ~100-line C kernel with the system C
compiler (under a second; cached by source, compiler, flags and CPU in ``$POSENC_CACHE_DIR`` or
``~/.cache/posenc``) and calls it through :mod:`ctypes`. It needs no torch headers, so there is no minutes-long C++
extension build. The build happens on first use unless :func:`build` was called first, and it is never silent: one
INFO line on the ``posenc.kernels.rope_cpu`` logger names the compiler and the library's path.

The kernel reads any ``(B, H, T, D)`` strides, writes into a given output (which may be the input: in place), takes
the float32 cos/sin tables ``(T, F)`` or ``(B, T, F)`` that :class:`~posenc.encodings.rope.RoPE` caches (float64
for float64 input; any strides with contiguous channels), rotates the first ``2F`` channels in the ``"half"`` or
``"interleaved"`` pair layout, copies the rest, and splits the work over ``torch.get_num_threads()`` OpenMP threads
(torch's own libgomp pool, so no extra threads compete with torch's). It walks positions in tiles and rotates every
head of a tile before moving on, so each cos/sin row is read from memory once, not once per head. Arithmetic is
float32 (float64 for float64), without fused multiply-adds, one rounding to the output dtype, exactly as the
reference does; bfloat16 rounds to nearest even. It is compiled for the CPU it runs on (``-march=native``) when the
compiler allows.

If no compiler is found or the build fails, :func:`load_library` logs the reason once at WARNING and returns
``None``; callers then use the plain PyTorch path. :mod:`posenc.kernels` registers the kernel as the
``torch.ops.posenc.rope`` operator, so ``torch.compile`` and ``torch.func`` see it as one op.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "SUPPORTED_DTYPES",
    "build",
    "cache_dir",
    "library_path",
    "load_library",
    "rotate_into",
    "rotate_qk_into",
    "unavailable_reason",
]

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef int64_t i64;

static inline float bf16_to_f32(uint16_t v) { uint32_t u = ((uint32_t)v) << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                               /* round to nearest even */
    return (uint16_t)(u >> 16);
}

typedef struct {
    const void *x; void *out; const void *cos; const void *sin;
    i64 B, H, T, D, F;
    i64 sxb, sxh, sxt, sxd, sob, soh, sot, sod, scb, sct;
    int interleaved, negate, copy_tail;
    i64 unit0, unit1;
} job_t;

#define ROPE_TILE 16
/* Work is split into units (b, tile of ROPE_TILE positions, h), h fastest: consecutive units rotate every head
   of the same positions, so the cos/sin rows of a tile are read from memory once and then stay in L1 for all
   heads (row by row, the tables were re-read once per head: as many bytes as x itself). */
static inline i64 n_units(const job_t *j) { return j->B * j->H * ((j->T + ROPE_TILE - 1) / ROPE_TILE); }

#define ROPE_KERNEL(NAME, T_IN, T_C, LOAD, STORE)                                                             \
static void NAME(const job_t *j) {                                                                            \
    const T_IN *x = (const T_IN *)j->x; T_IN *o = (T_IN *)j->out;                                             \
    const T_C *cs = (const T_C *)j->cos; const T_C *sn = (const T_C *)j->sin;                                 \
    const i64 F = j->F, H = j->H, NT = (j->T + ROPE_TILE - 1) / ROPE_TILE;                                    \
    const T_C sg = j->negate ? (T_C)-1 : (T_C)1;                                                              \
    for (i64 u = j->unit0; u < j->unit1; ++u) {                                                               \
        const i64 h = u % H, tile = (u / H) % NT, b = u / (H * NT);                                           \
        const i64 t0 = tile * ROPE_TILE, t1 = t0 + ROPE_TILE < j->T ? t0 + ROPE_TILE : j->T;                  \
        for (i64 t = t0; t < t1; ++t) {                                                                       \
            const T_IN *xr = x + b * j->sxb + h * j->sxh + t * j->sxt;                                        \
            T_IN *orow = o + b * j->sob + h * j->soh + t * j->sot;                                            \
            const T_C *c = cs + b * j->scb + t * j->sct, *s = sn + b * j->scb + t * j->sct;                   \
            if (j->sxd == 1 && j->sod == 1) {                                                                 \
                if (!j->interleaved) {                                                                        \
                    _Pragma("GCC ivdep")                                                                      \
                    for (i64 i = 0; i < F; ++i) {                                                             \
                        const T_C x1 = LOAD(xr[i]), x2 = LOAD(xr[i + F]), ci = c[i], si = sg * s[i];          \
                        orow[i] = STORE(x1 * ci - x2 * si); orow[i + F] = STORE(x2 * ci + x1 * si);           \
                    }                                                                                         \
                } else {                                                                                      \
                    _Pragma("GCC ivdep")                                                                      \
                    for (i64 i = 0; i < F; ++i) {                                                             \
                        const T_C x1 = LOAD(xr[2 * i]), x2 = LOAD(xr[2 * i + 1]), ci = c[i], si = sg * s[i];  \
                        orow[2 * i] = STORE(x1 * ci - x2 * si); orow[2 * i + 1] = STORE(x2 * ci + x1 * si);   \
                    }                                                                                         \
                }                                                                                             \
                if (j->copy_tail) for (i64 d = 2 * F; d < j->D; ++d) orow[d] = xr[d];                         \
            } else {                                                                                          \
                const i64 a = j->sxd, z = j->sod;                                                             \
                const i64 p1 = j->interleaved ? 2 : 1, p2 = j->interleaved ? 1 : F;                           \
                for (i64 i = 0; i < F; ++i) {                                                                 \
                    const i64 d1 = p1 * i, d2 = p1 * i + p2;                                                  \
                    const T_C x1 = LOAD(xr[d1 * a]), x2 = LOAD(xr[d2 * a]), ci = c[i], si = sg * s[i];        \
                    orow[d1 * z] = STORE(x1 * ci - x2 * si); orow[d2 * z] = STORE(x2 * ci + x1 * si);         \
                }                                                                                             \
                if (j->copy_tail) for (i64 d = 2 * F; d < j->D; ++d) orow[d * z] = xr[d * a];                 \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
}

#define ID(v) (v)
#define TO_F(v) ((float)(v))
#define TO_H(v) ((_Float16)(v))
ROPE_KERNEL(rope_f32, float, float, ID, ID)
ROPE_KERNEL(rope_f64, double, double, ID, ID)
ROPE_KERNEL(rope_bf16, uint16_t, float, bf16_to_f32, f32_to_bf16)
ROPE_KERNEL(rope_f16, _Float16, float, TO_F, TO_H)

typedef void (*kernel_t)(const job_t *);

static kernel_t kernel_for(i64 dtype) {
    return dtype == 0 ? rope_f32 : dtype == 1 ? rope_f64 : dtype == 2 ? rope_bf16 : dtype == 3 ? rope_f16 : 0;
}

static void run_units(kernel_t fn, job_t base, i64 n_threads) {
    const i64 units = n_units(&base);
#ifdef _OPENMP
    /* torch's own libgomp is already loaded (same soname), so this reuses torch's thread pool: no extra threads
       competing with torch's, no thread start-up per call. */
    if (n_threads > 1 && units > 1) {
#pragma omp parallel num_threads((int)n_threads)
        {
            const i64 nt = omp_get_num_threads(), id = omp_get_thread_num();
            job_t j = base;
            j.unit0 = units * id / nt;
            j.unit1 = units * (id + 1) / nt;
            fn(&j);
        }
        return;
    }
#endif
    base.unit0 = 0;
    base.unit1 = units;
    fn(&base);
}

/* One or more tensors (q and k) in one call. `args` is one packed int64 record, read with memcpy (the caller's
   buffer need not be 8-byte aligned):
     {interleaved, negate, count, then per tensor: dtype, x, out, cos, sin, B, H, T, D, F,
      sxb, sxh, sxt, sxd, sob, soh, sot, sod, scb, sct, copy_tail, n_threads}
   dtype: 0 float32, 1 float64, 2 bfloat16, 3 float16; pointers as integers; strides in elements.
   Returns 0 on success, -1 for an unknown dtype (nothing is written then). */
#define HEADER 3
#define PER_TENSOR 22
int posenc_rope_many(const void *args) {
    i64 head[HEADER];
    memcpy(head, args, sizeof head);
    const i64 count = head[2];
    for (i64 n = 0; n < count; ++n) {
        i64 a[PER_TENSOR];
        memcpy(a, (const char *)args + sizeof(i64) * (HEADER + n * PER_TENSOR), sizeof a);
        if (!kernel_for(a[0])) return -1;
    }
    for (i64 n = 0; n < count; ++n) {
        i64 a[PER_TENSOR];
        memcpy(a, (const char *)args + sizeof(i64) * (HEADER + n * PER_TENSOR), sizeof a);
        job_t base = {(const void *)(intptr_t)a[1], (void *)(intptr_t)a[2], (const void *)(intptr_t)a[3],
                      (const void *)(intptr_t)a[4], a[5], a[6], a[7], a[8], a[9],
                      a[10], a[11], a[12], a[13], a[14], a[15], a[16], a[17], a[18], a[19],
                      (int)head[0], (int)head[1], (int)a[20], 0, 0};
        run_units(kernel_for(a[0]), base, a[21]);
    }
    return 0;
}
"""

_FLAGS = ("-O3", "-shared", "-fPIC", "-fno-strict-aliasing", "-std=gnu11",
          "-ffp-contract=off")  # no fused multiply-add: the same roundings as the reference formula
# Optional flags, in the order they are given up when the compiler refuses them: this CPU's vector units (AVX2,
# AVX-512: ~15% less time at the benchmark shape), and OpenMP threads.
_NATIVE_FLAGS = ("-march=native",)
_OPENMP_FLAGS = ("-fopenmp",)
_VARIANTS = ((*_NATIVE_FLAGS, *_OPENMP_FLAGS), _OPENMP_FLAGS, _NATIVE_FLAGS, ())
_DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
# Below this many elements a single thread is faster than starting threads (~20 us each).
_PARALLEL_MIN_ELEMENTS = 1 << 17
# The argument record of posenc_rope_many (see _SOURCE): 3 header fields, then 22 per tensor. Packing a few dozen
# ints with struct takes ~0.5 us; building a ctypes array of them took ~7 us, more than the decode-step kernel.
_RECORDS = {1: struct.Struct("=25q"), 2: struct.Struct("=47q")}

_lock = threading.Lock()
# What loading the library found, once per process: "lib" (or None), "kernel" (its entry point: posenc.kernels'
# hot path tests for this key), "path", "reason" (why it is unavailable), "flags", "openmp".
build_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Where the compiled library is kept: ``$POSENC_CACHE_DIR``, else ``$XDG_CACHE_HOME/posenc``, else ``~/.cache``."""
    if os.environ.get("POSENC_CACHE_DIR"):
        return Path(os.environ["POSENC_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "posenc"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_identity() -> str:
    """What ``-march=native`` compiles for: a library built on one CPU must not be loaded on another (SIGILL).

    The cache folder may be shared (an NFS home seen by several machines), so the CPU's model and feature flags are
    part of the file name's hash.
    """
    ident = [platform.machine(), platform.processor()]
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part", "CPU implementer"):
                    ident.append(line.strip())
                elif not line.strip() and len(ident) > 2:
                    break  # the first processor's block is enough
    return "\n".join(ident)


def _target(cc: str, version: str, flags: tuple[str, ...]) -> Path:
    parts = (_SOURCE, cc, version, *flags, _cpu_identity() if _NATIVE_FLAGS[0] in flags else "")
    return cache_dir() / f"rope_cpu_{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:16]}.so"


def _build() -> tuple[ctypes.CDLL, Path]:
    if sys.platform == "win32":
        raise OSError("the fused CPU kernel is built with a POSIX C compiler; Windows is not supported")
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler found (tried $CC, cc, gcc, clang); install one or set CC")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    errors = []
    for extra in _VARIANTS:
        flags = (*_FLAGS, *extra)
        target = _target(cc, version, flags)
        if target.exists():
            break
        if not errors:  # one line per build, not per flag variant tried
            log.info("compiling the fused CPU RoPE kernel with %s into %s (once: later runs load it from there; "
                     "posenc.kernels.build() does this ahead of time)", cc, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src, lib = Path(tmp) / "rope_cpu.c", Path(tmp) / "rope_cpu.so"
            src.write_text(_SOURCE)
            proc = subprocess.run([cc, *flags, str(src), "-o", str(lib)], capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode == 0:
                os.replace(lib, target)  # atomic: concurrent processes never load a half-written file
                break
            errors.append(f"{cc} {' '.join(flags)} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    else:
        raise OSError("; ".join(errors))
    if _OPENMP_FLAGS[0] not in flags:  # built, but single-threaded: say so once, the kernel is still correct
        log.info("fused CPU RoPE kernel built without OpenMP (single-threaded): %s", errors[-1] if errors else "")
    build_state["openmp"] = _OPENMP_FLAGS[0] in flags
    build_state["flags"] = flags
    lib = ctypes.CDLL(str(target))
    lib.posenc_rope_many.restype = ctypes.c_int
    lib.posenc_rope_many.argtypes = [ctypes.c_char_p]  # the packed record (bytes: passed without a copy)
    return lib, target


def load_library() -> ctypes.CDLL | None:
    """The compiled kernel (built on first call, then cached on disk), or ``None`` with a logged reason.

    Building logs one INFO line with the library's path; a failure logs one WARNING with the reason, and then
    every caller uses the plain PyTorch path. :func:`build` does the same but raises instead.
    """
    if "lib" in build_state:
        return build_state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" not in build_state:
            try:
                lib, path = _build()
            except (OSError, subprocess.SubprocessError) as exc:
                build_state["reason"] = f"fused CPU RoPE kernel unavailable, using the plain PyTorch path: {exc}"
                log.warning("%s", build_state["reason"])
                build_state["lib"] = None
            else:
                build_state["path"] = path
                build_state["kernel"] = lib.posenc_rope_many  # the hot path's one lookup
                build_state["lib"] = lib
    return build_state["lib"]  # type: ignore[return-value]


def build() -> Path:
    """Compile (or find in the cache) the fused CPU kernel now and load it; returns the library's path.

    Call it at start-up, in a Docker build step or before timing anything, so that the first :meth:`RoPE.rotate`
    does not pay the compilation (under a second, once per machine and compiler)::

        python -c "import posenc.kernels; print(posenc.kernels.build())"

    Raises:
        RuntimeError: the kernel cannot be built here (no C compiler, Windows, a compiler error); the message
            gives the reason. RoPE still works then, on the plain PyTorch path.
    """
    if load_library() is None:
        raise RuntimeError(unavailable_reason() or "fused CPU RoPE kernel unavailable")
    return build_state["path"]  # type: ignore[return-value]


def library_path() -> Path | None:
    """The loaded library's path, or ``None`` if it is not loaded (not yet built, or unavailable)."""
    return build_state.get("path")  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    """Why :func:`load_library` returned ``None`` (``None`` if it has not failed)."""
    return build_state.get("reason")  # type: ignore[return-value]


def rotate_into(x: Tensor, out: Tensor, cos: Tensor, sin: Tensor, *, layout: str, negate: bool = False) -> Tensor:
    """Write RoPE of ``x`` into ``out`` (may be ``x`` itself) with the fused kernel; returns ``out``.

    Args:
        x: ``(B, H, T, D)`` CPU tensor, any strides, dtype in :data:`SUPPORTED_DTYPES`.
        out: ``(B, H, T, D)`` like ``x``, any non-overlapping strides; may alias ``x`` exactly (in-place).
        cos, sin: ``(T, F)`` or ``(B, T, F)`` (``B`` may be 1), float32 (float64 for float64 ``x``), ``2F <= D``.
        layout: ``"half"`` or ``"interleaved"``.
        negate: rotate by minus the angle (the transpose of the rotation: what backward needs).
    """
    return rotate_qk_into(x, out, cos, sin, layout=layout, negate=negate)[0]


def rotate_qk_into(q: Tensor, out_q: Tensor, cos_q: Tensor, sin_q: Tensor, k: Tensor | None = None,
                   out_k: Tensor | None = None, cos_k: Tensor | None = None, sin_k: Tensor | None = None, *,
                   layout: str, negate: bool = False) -> tuple[Tensor, Tensor | None]:
    """:func:`rotate_into` for q ``(B, H, Tq, D)`` and k ``(B, Hkv, Tk, D)`` together, in one C call.

    Each tensor takes its own output and cos/sin (shapes as in :func:`rotate_into`; q and k may differ in dtype,
    shape and strides). ``k=None`` rotates q alone. Returns ``(out_q, out_k)`` (``out_k`` is ``None`` without k).

    A KV-cache decode step rotates a few hundred numbers, so what costs here is Python, not arithmetic: one
    ``struct`` pack and one :mod:`ctypes` call for both tensors (~1 us) instead of two calls with ctypes arrays.
    """
    kernel = build_state.get("kernel")
    if kernel is None:
        if load_library() is None:
            raise RuntimeError(unavailable_reason() or "fused CPU RoPE kernel unavailable")
        kernel = build_state["kernel"]
    # The tables _table made contiguous (if it had to) must stay alive until the call returns.
    tab_q = _table(cos_q, sin_q)
    rec_q = _record(q, out_q, tab_q, "q")
    if k is None:
        args = _RECORDS[1].pack(layout == "interleaved", negate, 1, *rec_q)
    else:
        if out_k is None or cos_k is None or sin_k is None:
            raise TypeError("rope_cpu: with k, pass out_k, cos_k and sin_k too.")
        tab_k = tab_q if cos_k is cos_q and sin_k is sin_q else _table(cos_k, sin_k)  # self-attention: one table
        args = _RECORDS[2].pack(layout == "interleaved", negate, 2, *rec_q, *_record(k, out_k, tab_k, "k"))
    rc = kernel(args)
    if rc != 0:
        raise RuntimeError(f"rope_cpu: kernel returned {rc} for dtypes {q.dtype}"
                           f"{'' if k is None else f' / {k.dtype}'}")
    return out_q, out_k


def _table(cos: Tensor, sin: Tensor) -> tuple:
    """``(TB, T, F, batch stride, position stride, cos ptr, sin ptr, dtype, cos, sin)`` of a cos/sin pair.

    ``TB`` is 1 for ``(T, F)`` tables. Tables are read in place when their channels are contiguous and both share
    strides (a slice or view of a cached table does), else copied; the returned tensors keep them alive.
    """
    shape = cos.shape
    if sin.shape != shape or len(shape) not in (2, 3):
        raise ValueError(f"rope_cpu: cos/sin of shape {tuple(shape)} / {tuple(sin.shape)}; expected (T, F) or "
                         f"(B, T, F) with 2F <= D.")
    strides = cos.stride()
    if strides[-1] != 1 or sin.stride() != strides:  # the kernel reads both tables with one pair of strides
        cos, sin = cos.contiguous(), sin.contiguous()
        strides = cos.stride()
    if len(shape) == 2:
        return (1, shape[0], shape[1], 0, strides[0], cos.data_ptr(), sin.data_ptr(), cos.dtype, cos, sin)
    return (shape[0], shape[1], shape[2], strides[0], strides[1], cos.data_ptr(), sin.data_ptr(), cos.dtype, cos,
            sin)


def _record(x: Tensor, out: Tensor, table: tuple, name: str) -> tuple:
    """The 22 fields of one tensor in posenc_rope_many's record, for ``table`` from :func:`_table`.

    Validates everything the kernel relies on to stay inside memory: shapes, dtypes, ``2F <= D``. (Written for a
    decode step, where these few microseconds are most of the cost: every ``.shape`` builds a new object, so each
    is read once.)
    """
    code = _DTYPE_CODE.get(x.dtype)
    if code is None:
        raise TypeError(f"rope_cpu: {name} has dtype {x.dtype}; the kernel takes {list(_DTYPE_CODE)}.")
    tb, t, f, scb, sct, cos_ptr, sin_ptr, table_dtype = table[:8]
    compute = torch.float64 if code == 1 else torch.float32
    if table_dtype is not compute or table[9].dtype is not compute:
        raise TypeError(f"rope_cpu: cos/sin must be {compute} for {x.dtype} input; got {table_dtype}/"
                        f"{table[9].dtype}.")
    shape = x.shape
    if len(shape) != 4 or out.shape != shape or out.dtype is not x.dtype:
        raise ValueError(f"rope_cpu: {name} must be (B, H, T, D) and its output alike; got {tuple(shape)} "
                         f"{x.dtype} and output {tuple(out.shape)} {out.dtype}.")
    b, h, _, d = shape
    if shape[2] != t or (tb != 1 and tb != b) or 2 * f > d:
        raise ValueError(f"rope_cpu: cos/sin of shape {(tb, t, f)} do not match {name} of shape {tuple(shape)}; "
                         f"expected (T, F) or (B, T, F) with 2F <= D.")
    x_ptr, out_ptr = x.data_ptr(), out.data_ptr()
    threads = torch.get_num_threads() if b * h * t * d >= _PARALLEL_MIN_ELEMENTS else 1
    return (code, x_ptr, out_ptr, cos_ptr, sin_ptr, b, h, t, d, f, *x.stride(), *out.stride(), scb if tb > 1 else 0,
            sct, 2 * f < d and out_ptr != x_ptr, threads)
