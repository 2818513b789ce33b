"""RoPE benchmarks (arXiv 2104.09864): posenc against peers and the same run's copy bandwidth, in one process.

Every row rotates the same q ``(B, H, T, D)`` and k ``(B, Hkv, T, D)`` and is checked against posenc's reference
:func:`~posenc.encodings.rope.apply_rope` in the pair layout the peer uses (``max_abs_err``), so rows compute the same
thing. The ceiling is ``copy``: ``torch.empty_like(x).copy_(x)`` for q and k, the same bytes read and written, the
same allocations as an out-of-place rotation (forward+backward: that, plus a copy of the incoming gradients, the
bytes backward reads and writes). ``vs_copy`` is ``time / copy time``.

Method: warm-up calls first (they also trigger compilation), then ``repeats`` samples taken round-robin over all rows
(sample ``i`` of every row before sample ``i + 1`` of any, so load drift hits all rows alike); the median is the
figure, the minimum is kept too. On CUDA a sample is CUDA-event time over enough back-to-back calls to last about
a millisecond, divided by their count. On CPU each sample is one call; glibc is told to keep freed memory in the heap
(``mallopt``), so every row reuses memory instead of paying fresh page faults for each output ("allocator effect
controlled"); inputs and reference outputs are allocated once and reused.

The decode suite measures the positional encoding's share of one KV-cache decode step of :class:`posenc.Transformer`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from posenc.bench import PEERS  # peer libraries the RoPE suite knows (defined torch-free, for the CLI)
from posenc.encodings.rope import RoPE, apply_rope, rope_frequencies

__all__ = [
    "PEERS",
    "allocator_tamed",
    "default_rope_shapes",
    "format_table",
    "run_decode_bench",
    "run_numerics_bench",
    "run_rope_bench",
    "tame_cpu_allocator",
    "time_call",
]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_rope_shapes(device: str, *, quick: bool = False) -> tuple[tuple[int, ...], tuple[int, ...], torch.dtype]:
    """``(q_shape, k_shape, dtype)``: the issue's shapes (CPU fp32 ``[1,16,2048,64]``; GPU bf16 GQA ``[4,32,4096,128]``
    / ``[4,8,4096,128]``), or small ones for ``quick``."""
    if device == "cuda":
        if quick:
            return (2, 8, 512, 128), (2, 2, 512, 128), torch.bfloat16
        return (4, 32, 4096, 128), (4, 8, 4096, 128), torch.bfloat16
    if quick:
        return (1, 4, 128, 64), (1, 4, 128, 64), torch.float32
    return (1, 16, 2048, 64), (1, 16, 2048, 64), torch.float32


_allocator_tamed: bool | None = None


def allocator_tamed() -> bool | None:
    """Whether :func:`tame_cpu_allocator` applied in this process (``None``: it has not been called)."""
    return _allocator_tamed


def tame_cpu_allocator() -> bool:
    """Keep freed blocks in glibc's heap (no ``munmap``/page faults per allocation); ``True`` if it applied.

    Sets ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to 1 GiB for this process, so every benchmark row allocates
    from warm memory. Affects only allocations made afterwards; harmless elsewhere (memory is reused, not leaked).
    """
    global _allocator_tamed
    if _allocator_tamed is None:
        _allocator_tamed = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                m_trim_threshold, m_mmap_threshold = -1, -3
                ok = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30)
                _allocator_tamed = bool(ok)
    return _allocator_tamed


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _calibrate(fn: Callable[[], object], *, device: str, warmup: int) -> int:
    """Run the warm-up calls; return how many calls one sample takes (CUDA: enough for ~1 ms; CPU: 1)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device != "cuda":
        return 1
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    stop.record()
    torch.cuda.synchronize()
    return max(1, min(1000, int(1.0 / max(start.elapsed_time(stop), 1e-3))))


def _sample(fn: Callable[[], object], *, device: str, inner: int) -> float:
    """Milliseconds per call, from one sample of ``inner`` back-to-back calls."""
    if device == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) * 1e3 / inner


def _summary(samples: Sequence[float]) -> dict:
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "repeats": len(samples)}


def time_call(fn: Callable[[], object], *, device: str, repeats: int, warmup: int) -> dict:
    """Median and minimum milliseconds per call of ``fn`` over ``repeats`` samples after ``warmup`` calls."""
    inner = _calibrate(fn, device=device, warmup=warmup)
    return _summary([_sample(fn, device=device, inner=inner) for _ in range(repeats)])


def _err(out: Sequence[Tensor], ref: Sequence[Tensor]) -> float:
    return max(float((o.float() - r.float()).abs().max()) for o, r in zip(out, ref))


def _peer_fns(names: Sequence[str], q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, device: str,
              compile_peers: bool) -> Iterator[tuple[str, str, Callable | None, str]]:
    """``(row name, layout, fn(q, k) -> (q', k') or None, note)``; ``fn`` is ``None`` when the peer is missing."""
    half_cos = torch.cat((cos, cos), -1).to(q.dtype)  # (T, D): HF passes cos/sin in the input dtype
    half_sin = torch.cat((sin, sin), -1).to(q.dtype)
    b = q.shape[0]
    hf_cos, hf_sin = half_cos.expand(b, -1, -1).contiguous(), half_sin.expand(b, -1, -1).contiguous()  # (B, T, D)
    angles = torch.atan2(sin, cos).repeat_interleave(2, -1)  # (T, D) interleaved angles, as these peers take them
    freqs = angles[None]  # (1, T, D), as x-transformers takes them

    def peer(row: str, layout: str, module: str, attr: str, make: Callable[[Callable], Callable], note: str):
        """The row for ``module.attr`` wrapped by ``make``, or a row with ``fn=None`` saying why it is missing."""
        try:
            fn = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            return row, layout, None, f"{module.partition('.')[0]} not importable: {exc}"
        return row, layout, make(fn), note

    if "hf" in names:
        hf_module = "transformers.models.llama.modeling_llama"
        hf_row = peer("hf apply_rotary_pos_emb eager", "half", hf_module, "apply_rotary_pos_emb",
                      lambda f: lambda a, c: f(a, c, hf_cos, hf_sin),
                      "cos/sin (B, T, D) precomputed in the input dtype")
        yield hf_row
        if compile_peers and hf_row[2] is not None:
            compiled = torch.compile(importlib.import_module(hf_module).apply_rotary_pos_emb, dynamic=False)
            yield ("hf apply_rotary_pos_emb torch.compile", "half", lambda a, c: compiled(a, c, hf_cos, hf_sin),
                   "compile time excluded (warm-up)")
    if "x-transformers" in names:
        yield peer("x-transformers apply_rotary_pos_emb", "interleaved", "x_transformers.x_transformers",
                   "apply_rotary_pos_emb", lambda f: lambda a, c: (f(a, freqs), f(c, freqs)),
                   "takes angles; computes cos/sin per call (its API)")
    if "rotary-embedding-torch" in names:
        yield peer("rotary-embedding-torch apply_rotary_emb", "interleaved", "rotary_embedding_torch",
                   "apply_rotary_emb", lambda f: lambda a, c: (f(angles, a), f(angles, c)),
                   "takes angles; computes cos/sin per call (its API)")
    if "liger" in names and device == "cuda":
        yield peer("liger rotary_pos_emb (triton)", "half", "liger_kernel.transformers.rope", "liger_rotary_pos_emb",
                   lambda f: lambda a, c: f(a, c, hf_cos, hf_sin), "cos/sin (B, T, D) in the input dtype")


def run_rope_bench(*, device: str = "cpu", quick: bool = False, q_shape: Sequence[int] | None = None,
                   k_shape: Sequence[int] | None = None, dtype: torch.dtype | str | None = None,
                   repeats: int | None = None, warmup: int | None = None, backward: bool | None = None,
                   compile_peers: bool | None = None, peers: Sequence[str] = PEERS,
                   tune: bool | None = None) -> list[dict]:
    """RoPE rows: forward (and forward+backward), posenc vs peers vs copy. Returns one dict per row.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        quick: small shapes, few repeats, no ``torch.compile`` (seconds).
        q_shape, k_shape, dtype: override :func:`default_rope_shapes`.
        repeats, warmup: samples and warm-up calls (default 20 and 3; quick 5 and 1).
        backward: also time forward+backward (default: on unless quick on CPU).
        compile_peers: include ``torch.compile`` rows (default: not in quick mode).
        peers: which of :data:`PEERS` to include (missing packages give a row with ``skipped``).
        tune: on CUDA, also time the Triton kernel at other tile sizes (default: on CUDA unless quick).
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"bench: device must be 'cpu' or 'cuda'; got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bench: --device cuda but torch.cuda.is_available() is False on this machine.")
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise ValueError(f"bench: unknown peers {sorted(unknown)}; choose from {PEERS}.")
    dq, dk, ddtype = default_rope_shapes(device, quick=quick)
    q_shape, k_shape = tuple(q_shape or dq), tuple(k_shape or dk)
    dtype = _DTYPES[dtype] if isinstance(dtype, str) else (dtype or ddtype)
    repeats = repeats or (5 if quick else 20)
    warmup = warmup if warmup is not None else (1 if quick else 3)
    backward = (device == "cuda" or not quick) if backward is None else backward
    compile_peers = (not quick) if compile_peers is None else compile_peers
    tune = (device == "cuda" and not quick) if tune is None else tune
    if len(q_shape) != 4 or len(k_shape) != 4 or q_shape[0] != k_shape[0] or q_shape[2:] != k_shape[2:]:
        raise ValueError(f"bench: q {q_shape} and k {k_shape} must be (B, H, T, D) with equal B, T and D.")
    if device == "cpu":
        tame_cpu_allocator()

    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(q_shape, generator=gen).to(device=device, dtype=dtype)  # (B, H, T, D)
    k = torch.randn(k_shape, generator=gen).to(device=device, dtype=dtype)  # (B, Hkv, T, D)
    b, h, t, d = q_shape
    pe = RoPE(dim=h * d, n_heads=h, max_seq_len=t).to(device)
    pos = torch.arange(t, device=device)
    cos, sin = pe.cos_sin(pos)  # (T, D/2) float32, from float64 angles
    refs = {layout: (apply_rope(q, cos, sin, layout=layout), apply_rope(k, cos, sin, layout=layout))
            for layout in ("half", "interleaved")}
    common = {"suite": "rope", "device": device, "dtype": str(dtype).removeprefix("torch."),
              "q_shape": list(q_shape), "k_shape": list(k_shape)}
    rows: list[dict] = []

    timed: list[tuple[dict, Callable, int]] = []  # rows sampled round-robin at the end

    def measure(name: str, fn: Callable, *, direction: str, layout: str = "half", note: str = "",
                check: bool = True) -> None:
        row = {**common, "name": name, "direction": direction, "layout": layout, "note": note}
        try:
            if check:
                out = fn()
                row["max_abs_err"] = _err(out, refs[layout]) if direction == "forward" else None
            timed.append((row, fn, _calibrate(fn, device=device, warmup=warmup)))
        except Exception as exc:  # a peer that breaks on this setup is reported, not fatal
            row["skipped"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        rows.append(row)

    def copy_fn() -> tuple[Tensor, Tensor]:
        return torch.empty_like(q).copy_(q), torch.empty_like(k).copy_(k)

    from posenc.kernels import fast_path_name, rope_rotate_qk

    fused = fast_path_name(q)
    measure("copy (empty_like + copy_)", copy_fn, direction="forward", note="the memory ceiling", check=False)
    measure("posenc RoPE.rotate", lambda: pe.rotate(q, k, *(pos.clone(),) * 2), direction="forward",
            note=f"module call incl. cos/sin lookup (fresh positions each call: RoPE's per-forward memo "
                 f"never hits); fused path: {fused or 'none'}")
    if fused:
        measure("posenc fused kernel", lambda: rope_rotate_qk(q, k, cos, sin, cos, sin), direction="forward",
                note=f"{fused}; cos/sin tables given")
        for layout in ("interleaved",):
            measure(f"posenc fused kernel ({layout})",
                    lambda layout=layout: rope_rotate_qk(q, k, cos, sin, cos, sin, layout=layout),
                    direction="forward", layout=layout, note=fused)
        qi, ki = q.clone(), k.clone()
        measure("posenc fused kernel in-place", lambda: rope_rotate_qk(qi, ki, cos, sin, cos, sin, inplace=True),
                direction="forward", note="writes into q and k (values rotate further each call)", check=False)
    measure("posenc apply_rope (reference, eager)", lambda: (apply_rope(q, cos, sin), apply_rope(k, cos, sin)),
            direction="forward")
    if compile_peers:
        compiled_ref = torch.compile(apply_rope, dynamic=False)
        measure("posenc apply_rope torch.compile", lambda: (compiled_ref(q, cos, sin), compiled_ref(k, cos, sin)),
                direction="forward", note="Inductor's code for the reference formula")
        compiled_rotate = torch.compile(lambda a, c, p: pe.rotate(a, c, p, p), fullgraph=True, dynamic=False)
        measure("posenc RoPE.rotate torch.compile", lambda: compiled_rotate(q, k, pos.clone()), direction="forward",
                note="what runs inside a compiled model" + (" (torch.ops.posenc.rope)" if fused == "cpu" else ""))
    peer_rows = list(_peer_fns(peers, q, k, cos, sin, device, compile_peers))
    for name, layout, fn, note in peer_rows:
        if fn is None:
            rows.append({**common, "name": name, "direction": "forward", "layout": layout, "skipped": note})
        else:
            measure(name, lambda fn=fn: fn(q, k), direction="forward", layout=layout, note=note)
    if tune and fused == "triton":
        from posenc.kernels import rope_triton

        for block_t in (4, 8, 16, 32, 64):
            for warps in (2, 4, 8):
                measure(f"posenc triton BLOCK_T={block_t} warps={warps}",
                        lambda bt=block_t, w=warps: rope_triton.rope_qk(q, k, cos, sin, block_t=bt, num_warps=w),
                        direction="forward", note="tile sweep")

    if backward:
        qg, kg = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
        gq, gk = torch.randn_like(q), torch.randn_like(k)

        def fwd_bwd(f: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> Callable[[], tuple]:
            def run() -> tuple:
                out_q, out_k = f(qg, kg)
                return torch.autograd.grad((out_q, out_k), (qg, kg), (gq, gk))
            return run

        def copy2() -> tuple:  # forward reads q, k; backward reads the incoming gradients: copy exactly those
            return copy_fn(), (torch.empty_like(gq).copy_(gq), torch.empty_like(gk).copy_(gk))

        grad_ref = fwd_bwd(lambda a, c: (apply_rope(a, cos, sin), apply_rope(c, cos, sin)))()
        measure("copy x2 (forward+backward bytes)", copy2, direction="forward+backward", check=False)
        bwd_rows: list[tuple[str, Callable, str]] = [
            ("posenc RoPE.rotate", lambda a, c: pe.rotate(a, c, *(pos.clone(),) * 2), "half"),
            ("posenc apply_rope (reference, eager)", lambda a, c: (apply_rope(a, cos, sin), apply_rope(c, cos, sin)),
             "half")]
        if fused:
            bwd_rows.insert(1, ("posenc fused kernel", lambda a, c: rope_rotate_qk(a, c, cos, sin, cos, sin), "half"))
        if compile_peers:
            bwd_rows.append(("posenc apply_rope torch.compile",
                             lambda a, c: (compiled_ref(a, cos, sin), compiled_ref(c, cos, sin)), "half"))
            bwd_rows.append(("posenc RoPE.rotate torch.compile",
                             lambda a, c: compiled_rotate(a, c, pos.clone()), "half"))
        bwd_rows += [(name, fn, layout) for name, layout, fn, _ in peer_rows if fn is not None]
        for name, f, layout in bwd_rows:
            run = fwd_bwd(f)
            row_note = ""
            try:
                if layout == "half":
                    row_note = f"grad max_abs_err vs reference {_err(run(), grad_ref):.3g}"
            except Exception as exc:  # reported below by measure() as skipped
                row_note = f"{type(exc).__name__}"
            measure(name, run, direction="forward+backward", layout=layout, note=row_note, check=False)

    # Round-robin: sample i of every row is taken before sample i + 1 of any, so a machine whose load drifts
    # (shared CI runners, other jobs) shifts all rows alike instead of penalizing whichever ran during a spike.
    samples: dict[int, list[float]] = {id(row): [] for row, _, _ in timed}
    for _ in range(repeats):
        for row, fn, inner in timed:
            if "skipped" in row:
                continue
            try:
                samples[id(row)].append(_sample(fn, device=device, inner=inner))
            except Exception as exc:
                row["skipped"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    for row, _, _ in timed:
        if "skipped" not in row:
            row.update(_summary(samples[id(row)]))
    copy_ms = {r["direction"]: r["median_ms"] for r in rows if r["name"].startswith("copy") and "median_ms" in r}
    posenc_ms = {r["direction"]: r["median_ms"] for r in rows if r["name"] == "posenc RoPE.rotate"
                 and "median_ms" in r}
    for r in rows:
        if "median_ms" in r:
            r["vs_copy"] = r["median_ms"] / copy_ms[r["direction"]] if r["direction"] in copy_ms else None
            r["vs_posenc"] = r["median_ms"] / posenc_ms[r["direction"]] if r["direction"] in posenc_ms else None
    return rows


def run_numerics_bench(*, device: str = "cpu", length: int = 2048, top: int = 1_000_000) -> list[dict]:
    """Accuracy at large positions: fp32 rotation at positions ``[top - length, top)`` against a float64 truth.

    posenc forms angles in float64 and rounds only cos/sin; the peers' usual recipe (HF, x-transformers,
    rotary-embedding-torch) forms ``pos * inv_freq`` in float32, which loses ~0.06 rad at position 10**6.
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(1, 4, length, 64, generator=gen).to(device)  # (B, H, T, D)
    pos = torch.arange(top - length, top, device=device)
    inv64 = rope_frequencies(64, device=device)
    ang64 = pos.double()[:, None] * inv64
    truth = apply_rope(q.double(), ang64.cos(), ang64.sin())
    pe = RoPE(dim=256, n_heads=4, max_seq_len=top).to(device)
    rows = []
    posenc_out = pe.rotate_one(q, pos, "q")
    ang32 = pos.float()[:, None] * inv64.float()  # the float32-angle recipe
    fp32_out = apply_rope(q, ang32.cos(), ang32.sin())
    for name, out in (("posenc (float64 angles)", posenc_out), ("float32 angles (HF/x-transformers recipe)", fp32_out)):
        rows.append({"suite": "numerics", "device": device, "name": name, "positions": [top - length, top],
                     "max_abs_err": float((out.double() - truth).abs().max()),
                     "rel_err": float((out.double() - truth).norm() / truth.norm())})
    return rows


def run_decode_bench(*, device: str = "cpu", quick: bool = False, steps: int | None = None,
                     repeats: int | None = None) -> list[dict]:
    """The positional encoding's share of one KV-cache decode step of a small :class:`posenc.Transformer`.

    Decoder (dim 256, 4 layers, 8 heads; quick: dim 64, 2 layers), a prompt of 256 tokens (quick: 16) in the
    cache, then ``steps`` single-token steps. Rows: RoPE on the fused path, RoPE on the reference path
    (``POSENC_FAST_ROPE=0``), and ALiBi (a bias: attention adds it to the scores).

    On CPU the share is measured directly: the encoding's methods ``bind`` and its hook (``rotate``; ``bias`` for
    ALiBi) wrapped in a timer, on the encoding's class so that the views ``bind`` returns are timed too. Each step's
    cos/sin lookup (RoPE), or its bias (ALiBi), is built once by the bound view, at the first layer's call, and reused
    by the later layers, so the timer counts it; the positions' one value check (``Positions.validate`` in the model's
    forward) is outside it. ALiBi also costs attention something
    outside ``bias`` (merging the bias with the causal mask, a float mask instead of a bool one), so its row also
    gives ``removed_ms``: the step time minus that of the same weights with no encoding (``nope``), both timed
    round-robin. On CUDA the share is that difference for every row (for RoPE: ``rotate`` made the identity).
    """
    from posenc.model import KVCache, Transformer, TransformerConfig

    dim, layers, heads, prompt_len = (64, 2, 4, 16) if quick else (256, 4, 8, 256)
    steps = steps or (8 if quick else 64)
    repeats = repeats or (3 if quick else 5)
    config = {"dim": dim, "n_layers": layers, "n_heads": heads, "prompt": prompt_len, "steps": steps}

    def build(encoding: str) -> Transformer:
        cfg = TransformerConfig(kind="decoder", dim=dim, n_layers=layers, n_heads=heads,
                                max_seq_len=prompt_len + steps + 8, encoding=encoding)
        torch.manual_seed(0)
        return Transformer(cfg).to(device).eval()

    model = build("rope")
    prompt = torch.randint(0, model.cfg.vocab_size, (1, prompt_len), device=device)
    spent = [0.0]

    @contextlib.contextmanager
    def timed(cls: type, *names: str) -> Iterator[None]:
        """Time every call of ``cls.<name>`` (on the encoding and on the views ``bind`` returns) into ``spent``."""
        originals = {name: cls.__dict__.get(name) for name in names}

        def wrap(hook: Callable) -> Callable:
            def call(*args: object) -> object:
                t0 = time.perf_counter()
                out = hook(*args)
                spent[0] += time.perf_counter() - t0
                return out
            return call

        for name in names:
            setattr(cls, name, wrap(getattr(cls, name)))
        try:
            yield
        finally:
            for name, original in originals.items():
                if original is None:
                    delattr(cls, name)
                else:
                    setattr(cls, name, original)

    def one_run(net: Transformer) -> tuple[float, float]:
        """(mean step ms, mean ms inside the timed hook per step) over ``steps`` decode steps after the prompt."""
        cache = KVCache()
        with torch.no_grad():
            net(prompt, cache=cache)
            tok = prompt[:, -1:]
            _sync(device)
            spent[0] = 0.0
            t0 = time.perf_counter()
            for _ in range(steps):
                tok = net(tok, cache=cache)[:, -1:].argmax(-1)
            _sync(device)
            return (time.perf_counter() - t0) / steps * 1e3, spent[0] / steps * 1e3

    def decode_ms(net: Transformer) -> tuple[float, float]:
        """Median over ``repeats`` runs (by step time) of :func:`one_run`."""
        runs = sorted(one_run(net) for _ in range(repeats))
        return runs[len(runs) // 2]

    rows = []
    pe = model.pe
    previous = os.environ.get("POSENC_FAST_ROPE")
    try:
        for label, flag in (("fused", "1"), ("reference", "0")):
            os.environ["POSENC_FAST_ROPE"] = flag
            decode_ms(model)  # warm-up (and kernel build)
            row = {"suite": "decode", "device": device, "name": f"decode step, rope ({label} path)", "config": config}
            if device == "cpu":
                with timed(type(pe), "bind", "rotate"):
                    step, pe_ms = decode_ms(model)
                row.update(step_ms=step, pe_ms=pe_ms, pe_share=pe_ms / step, method="timed pe.bind + pe.rotate calls")
            else:
                step, _ = decode_ms(model)
                with _identity_rotate(type(pe)):
                    base, _ = decode_ms(model)
                row.update(step_ms=step, pe_ms=step - base, pe_share=(step - base) / step,
                           method="step time minus step time with rotate = identity")
            rows.append(row)
    finally:
        if previous is None:
            os.environ.pop("POSENC_FAST_ROPE", None)
        else:
            os.environ["POSENC_FAST_ROPE"] = previous
    rows.append(_decode_bias_row(build("alibi"), build("nope"), one_run, timed, repeats=repeats, device=device,
                                 config=config))
    return rows


@contextlib.contextmanager
def _identity_rotate(cls: type) -> Iterator[None]:
    """``cls.rotate`` returns q and k unchanged inside the block (the encoding's views included)."""
    original = cls.__dict__.get("rotate")
    cls.rotate = lambda self, q, k, q_pos, k_pos: (q, k)
    try:
        yield
    finally:
        if original is None:
            del cls.rotate
        else:
            cls.rotate = original


def _decode_bias_row(model: torch.nn.Module, bare: torch.nn.Module, one_run: Callable, timed: Callable, *,
                     repeats: int, device: str, config: dict) -> dict:
    """ALiBi's row of :func:`run_decode_bench`: timed ``pe.bias`` (CPU) and the step time against ``bare``.

    ``bare`` has ``model``'s weights and no encoding; runs of the two alternate, so load drift hits both alike.
    ``timed(cls, *names)`` times those methods of the encoding's class (``bind`` and ``bias``) on CPU.
    """
    bare.load_state_dict(model.state_dict())  # ALiBi has no parameters: the very same network, minus the bias
    pe = model.pe
    with timed(type(pe), "bind", "bias") if device == "cpu" else contextlib.nullcontext():
        one_run(model), one_run(bare)  # warm-up
        with_pe, without = [], []
        for _ in range(repeats):
            with_pe.append(one_run(model))
            without.append(one_run(bare)[0])
    with_pe.sort()
    step, bias_ms = with_pe[len(with_pe) // 2]
    removed = step - statistics.median(without)
    row = {"suite": "decode", "device": device, "name": "decode step, alibi (bias)", "config": config,
           "step_ms": step, "step_ms_without_pe": statistics.median(without), "removed_ms": removed,
           "removed_share": removed / step}
    if device == "cpu":
        row.update(pe_ms=bias_ms, pe_share=bias_ms / step,
                   method="timed pe.bias calls; removed_ms: step time minus that of the same weights without PE")
    else:
        row.update(pe_ms=removed, pe_share=removed / step,
                   method="step time minus that of the same weights without PE")
    return row


def format_table(rows: Sequence[dict]) -> str:
    """A plain-text table of benchmark rows (any suite)."""
    lines = []
    for suite in dict.fromkeys(r.get("suite", "?") for r in rows):
        group = [r for r in rows if r.get("suite") == suite]
        lines.append(f"== {suite} ==")
        if suite == "rope":
            head = group[0]
            lines.append(f"device={head['device']} dtype={head['dtype']} q={head['q_shape']} k={head['k_shape']}")
            for direction in dict.fromkeys(r["direction"] for r in group):
                lines.append(f"-- {direction} --")
                lines.append(f"{'':46s} {'median ms':>10s} {'min ms':>9s} {'x copy':>7s} {'x posenc':>9s} "
                             f"{'max err':>9s}  note")
                for r in (r for r in group if r["direction"] == direction):
                    if "skipped" in r:
                        lines.append(f"{r['name']:46s} {'skipped: ' + r['skipped']}")
                        continue
                    err = r.get("max_abs_err")
                    lines.append(f"{r['name']:46s} {r['median_ms']:10.4f} {r['min_ms']:9.4f} "
                                 f"{_fmt(r.get('vs_copy')):>7s} {_fmt(r.get('vs_posenc')):>9s} "
                                 f"{'-' if err is None else f'{err:.2g}':>9s}  {r.get('note', '')}")
        elif suite == "decode":
            for r in group:
                removed = "" if "removed_ms" not in r or r["method"].startswith("step time") else \
                    f"; without PE {r['removed_ms']:.4f} ms = {100 * r['removed_share']:.1f}% less"
                lines.append(f"{r['name']:40s} step {r['step_ms']:.3f} ms, PE {r['pe_ms']:.4f} ms = "
                             f"{100 * r['pe_share']:.1f}%{removed} ({r['method']}; {r['config']})")
        elif suite == "numerics":
            for r in group:
                lines.append(f"{r['name']:44s} max abs err {r['max_abs_err']:.3g}, rel err {r['rel_err']:.3g} "
                             f"(positions {r['positions']})")
        else:
            for r in group:
                lines.append("  ".join(f"{key}={value}" for key, value in r.items() if key != "suite"))
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
