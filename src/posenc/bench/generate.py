"""Generation and decode steps: posenc against HF Llama, x-transformers and the bare-PyTorch ceiling.

``posenc bench --suite generate`` gives two kinds of row, every contender timed round-robin in one process (sample
``i`` of every contender before sample ``i + 1`` of any), so load drift on a shared machine hits all alike:

- ``generate, <encoding>``: greedy generation of ``new`` tokens after a ``prompt``-token prompt (256 + 256 at dim 256,
  4 layers, 8 heads; quick: 16 + 16 at dim 64, 2 layers, 4 heads), batch 1, tokens/s of the whole call (prefill
  included). Contenders: :meth:`posenc.Transformer.generate`; :class:`posenc.bench.bare.BareDecoder` with posenc's
  weights (``vs_bare``: posenc's tokens/s over the ceiling's); x-transformers' ``AutoregressiveWrapper.generate``
  with ``cache_kv=True`` and ``temperature=0`` (greedy), rotating the full head; for ``rope``, Hugging Face's
  ``LlamaForCausalLM.generate`` (SDPA attention, greedy) at the same width, depth, heads and RoPE base, with a SwiGLU
  of ``8/3 * dim`` hidden units so its parameter count matches (each row gives every contender's count).
- ``decode step by removal, <encoding>``: one KV-cache decode step of posenc's model with the encoding, and of the
  very same weights with ``nope``; ``removed_share`` = (with - without) / with is what the encoding costs a step, all
  included (its own calls, the bias and mask work it causes, the Python around it). ``bare_step_ms``: the ceiling's
  step with the same encoding.

Greedy tokens are compared between posenc and the bare ceiling (same weights, same arithmetic up to rounding): a
row reports ``same_tokens``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

__all__ = ["GENERATE_ENCODINGS", "format_rows", "run_generate_bench"]

GENERATE_ENCODINGS = ("rope", "alibi")


def _sizes(quick: bool) -> dict:
    if quick:
        return {"dim": 64, "n_layers": 2, "n_heads": 4, "prompt": 16, "new": 16, "vocab": 256}
    return {"dim": 256, "n_layers": 4, "n_heads": 8, "prompt": 256, "new": 256, "vocab": 256}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _hf_llama(s: dict) -> torch.nn.Module | str:
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as exc:
        return f"transformers not importable ({exc}); pip install 'posenc[peers]'"
    cfg = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["dim"], intermediate_size=round(8 * s["dim"] / 3),
                      num_hidden_layers=s["n_layers"], num_attention_heads=s["n_heads"],
                      num_key_value_heads=s["n_heads"], max_position_embeddings=s["prompt"] + s["new"],
                      rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = "sdpa"  # a documented config attribute: the fastest attention HF has on CPU
    return LlamaForCausalLM(cfg).eval()


def _x_transformers(encoding: str, s: dict) -> torch.nn.Module | str:
    try:
        from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper
    except ImportError as exc:
        return f"x-transformers not importable ({exc}); pip install 'posenc[peers]'"
    head = s["dim"] // s["n_heads"]
    flags = {"rotary_pos_emb": True, "rotary_emb_dim": head} if encoding == "rope" else {"alibi_pos_bias": True}
    layers = Decoder(dim=s["dim"], depth=s["n_layers"], heads=s["n_heads"], attn_dim_head=head, ff_mult=4,
                     ff_no_bias=True, **flags)
    net = TransformerWrapper(num_tokens=s["vocab"], max_seq_len=s["prompt"] + s["new"], attn_layers=layers,
                             use_abs_pos_emb=False)
    return AutoregressiveWrapper(net).eval()


def run_generate_bench(*, encodings: Sequence[str] = GENERATE_ENCODINGS, quick: bool = False,
                       repeats: int | None = None, seed: int = 0, device: str = "cpu") -> list[dict]:
    """Rows ``generate, <encoding>`` and ``decode step by removal, <encoding>`` (see the module docstring).

    ``device``: where every model and the prompt live; on CUDA each timed call ends with a synchronisation.
    """
    from posenc.bench.bare import BareDecoder
    from posenc.model import KVCache, Transformer, TransformerConfig

    unknown = [e for e in encodings if e not in GENERATE_ENCODINGS]
    if unknown:
        raise ValueError(f"generate bench: encodings must be among {list(GENERATE_ENCODINGS)} (what the peers and "
                         f"the bare ceiling share); got {unknown}.")
    s = _sizes(quick)
    repeats = repeats or 3
    total = s["prompt"] + s["new"]
    config = f"d{s['dim']} L{s['n_layers']} H{s['n_heads']}, prompt {s['prompt']} + {s['new']} new, batch 1, greedy"
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, s["vocab"], (1, s["prompt"]), generator=gen).to(device)

    def sync() -> None:
        if device != "cpu":
            torch.cuda.synchronize()

    def posenc_model(encoding: str) -> Transformer:
        torch.manual_seed(seed)
        return Transformer(TransformerConfig(kind="decoder", vocab_size=s["vocab"], dim=s["dim"],
                                             n_layers=s["n_layers"], n_heads=s["n_heads"], max_seq_len=total,
                                             encoding=encoding)).to(device).eval()

    calls: dict[tuple[str, str], Callable[[], object]] = {}
    params: dict[tuple[str, str], int] = {}
    skipped: dict[tuple[str, str], str] = {}
    outputs: dict[tuple[str, str], torch.Tensor] = {}
    step_calls: dict[tuple[str, str], Callable[[], float]] = {}
    for e in encodings:
        ours = posenc_model(e)
        bare = BareDecoder(e, vocab=s["vocab"], dim=s["dim"], n_layers=s["n_layers"], n_heads=s["n_heads"],
                           max_len=total).to(device).load_posenc(ours).eval()
        nope = posenc_model("nope")
        nope.load_state_dict(ours.state_dict(), strict=False)  # rope/alibi have no parameters: the same weights
        calls[(e, "posenc")] = lambda m=ours: m.generate(prompt, s["new"])
        calls[(e, "bare")] = lambda m=bare: m.generate(prompt, s["new"])
        params[(e, "posenc")], params[(e, "bare")] = _params(ours), _params(bare)
        peer = _x_transformers(e, s)
        if not isinstance(peer, str):
            peer = peer.to(device)
        if isinstance(peer, str):
            skipped[(e, "x-transformers")] = peer
        else:
            calls[(e, "x-transformers")] = lambda m=peer: m.generate(prompt, s["new"], cache_kv=True, temperature=0.0)
            params[(e, "x-transformers")] = _params(peer)
        if e == "rope":
            hf = _hf_llama(s)
            if not isinstance(hf, str):
                hf = hf.to(device)
            if isinstance(hf, str):
                skipped[(e, "hf-llama")] = hf
            else:
                calls[(e, "hf-llama")] = lambda m=hf: m.generate(prompt, max_new_tokens=s["new"],
                                                                 min_new_tokens=s["new"], do_sample=False,
                                                                 pad_token_id=0, eos_token_id=None)
                params[(e, "hf-llama")] = _params(hf)
        for side, model in (("posenc", ours), ("nope", nope)):
            step_calls[(e, side)] = _decode_step_fn(model, prompt, KVCache, sync)
        step_calls[(e, "bare")] = _bare_step_fn(bare, prompt, sync)

    samples: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    step_samples: dict[tuple[str, str], list[float]] = {key: [] for key in step_calls}
    with torch.no_grad():
        for key, call in calls.items():  # warm-up: first-call allocations, kernel builds
            outputs[key] = call()
        for fn in step_calls.values():
            fn()
        for _ in range(repeats):
            for key, call in calls.items():
                sync()
                start = time.perf_counter()
                call()
                sync()
                samples[key].append(time.perf_counter() - start)
            for key, fn in step_calls.items():
                step_samples[key].append(fn())

    rows = []
    for e in encodings:
        row: dict = {"suite": "generate", "name": f"generate, {e}", "device": device, "config": config,
                     "repeats": repeats}
        for side in ("posenc", "bare", "x-transformers", "hf-llama"):
            if (e, side) in samples:
                t = samples[(e, side)]
                row[f"{side}_tok_s"] = s["new"] / statistics.median(t)
                row[f"{side}_s"] = {"min": min(t), "median": statistics.median(t), "max": max(t)}
                row[f"{side}_params"] = params[(e, side)]
            elif (e, side) in skipped:
                row[f"{side}_skipped"] = skipped[(e, side)]
        for side in ("bare", "x-transformers", "hf-llama"):
            if f"{side}_tok_s" in row:
                row[f"vs_{side.replace('-', '_')}"] = row["posenc_tok_s"] / row[f"{side}_tok_s"]
        row["same_tokens"] = bool(torch.equal(outputs[(e, "posenc")], outputs[(e, "bare")]))
        rows.append(row)
        with_pe, without = statistics.median(step_samples[(e, "posenc")]), statistics.median(step_samples[(e, "nope")])
        bare_step = statistics.median(step_samples[(e, "bare")])
        rows.append({"suite": "generate", "name": f"decode step by removal, {e}", "device": device, "config": config,
                     "repeats": repeats, "step_ms": 1e3 * with_pe, "step_ms_nope": 1e3 * without,
                     "removed_share": (with_pe - without) / with_pe, "bare_step_ms": 1e3 * bare_step,
                     "vs_bare": bare_step / with_pe,
                     "step_ms_samples": [1e3 * x for x in step_samples[(e, "posenc")]],
                     "step_ms_nope_samples": [1e3 * x for x in step_samples[(e, "nope")]]})
    return rows


def _decode_step_fn(model: torch.nn.Module, prompt: torch.Tensor, kv_cache: type,
                    sync: Callable[[], None]) -> Callable[[], float]:
    """A function timing posenc's mean decode step (seconds) over ``prompt``'s length of steps after a prefill."""
    steps = prompt.shape[1]

    def run() -> float:
        cache = kv_cache()
        model(prompt, cache=cache)
        tok = prompt[:, -1:]
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            tok = model(tok, cache=cache)[:, -1:].argmax(-1)
        sync()
        return (time.perf_counter() - start) / steps

    return run


def _bare_step_fn(model: torch.nn.Module, prompt: torch.Tensor, sync: Callable[[], None]) -> Callable[[], float]:
    """The same for :class:`posenc.bench.bare.BareDecoder` with its preallocated cache."""
    steps = prompt.shape[1]

    def run() -> float:
        caches = model.new_caches(prompt.shape[0])
        model(prompt, caches=caches)
        tok = prompt[:, -1:]
        sync()
        start = time.perf_counter()
        for n in range(prompt.shape[1], prompt.shape[1] + steps):
            tok = model(tok, start=n, caches=caches)[:, -1:].argmax(-1)
        sync()
        return (time.perf_counter() - start) / steps

    return run


def format_rows(rows: Sequence[dict]) -> list[str]:
    """Table lines for :func:`run_generate_bench` rows."""
    lines = []
    for r in rows:
        if r["name"].startswith("generate"):
            parts = [f"{side} {r[f'{side}_tok_s']:.0f} tok/s" if f"{side}_tok_s" in r else
                     f"{side} skipped ({r[f'{side}_skipped']})" for side in ("posenc", "bare", "x-transformers",
                                                                            "hf-llama")
                     if f"{side}_tok_s" in r or f"{side}_skipped" in r]
            ratios = [f"x {k[3:]} {v:.2f}" for k, v in r.items() if k.startswith("vs_")]
            lines.append(f"{r['name']:26s} " + ", ".join(parts) + "  " + "  ".join(ratios)
                         + f"  same tokens as bare: {r['same_tokens']}  [{r['config']}]")
        else:
            lines.append(f"{r['name']:26s} step {r['step_ms']:.3f} ms, with nope {r['step_ms_nope']:.3f} ms: the "
                         f"encoding costs {100 * r['removed_share']:.1f}% of a step; bare ceiling "
                         f"{r['bare_step_ms']:.3f} ms (x bare {r['vs_bare']:.2f})")
    return lines
