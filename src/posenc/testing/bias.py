"""``check_bias``: a candidate ALiBi bias or T5 bucket function against posenc's reference, with diagnoses.

- ALiBi (Press et al. 2022, arXiv 2108.12409): ``fn(q_pos, k_pos) -> (H, Tq, Tk)`` bias for int64 positions
  ``(Tq,)`` and ``(Tk,)``; config ``{"type": "alibi", "n_heads": 12, "causal": true}`` (``"symmetric"`` defaults to
  ``not causal``, as posenc's ``alibi``; explicit ``"slopes"`` optional). In a causal model only keys at or before
  the query count (the rest are masked).
- T5 (Raffel et al. 2020, arXiv 1910.10683): ``fn(relative_position) -> buckets`` with ``relative_position = key -
  query`` (int64, any shape); config ``{"type": "t5", "bidirectional": true, "num_buckets": 32, "max_distance": 128}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from posenc.encodings.alibi import alibi_bias, alibi_slopes
from posenc.encodings.t5 import t5_relative_position_bucket
from posenc.testing._args import require_bool, require_callable, require_int, require_number, require_target
from posenc.testing.diagnose import ConformanceResult, Finding, Hypothesis, Probe, diagnose, one_thread
from posenc.testing.estimate import explain_alibi, explain_t5

__all__ = ["check_bias"]


def _call_bias(fn: Callable, *args: Tensor, shape: tuple[int, ...],
               names: tuple[str, ...]) -> tuple[list[Tensor] | None, str | None, str | None]:
    """``(outputs, None, mutated)`` or ``(None, why it failed, mutated)``; ``mutated`` names the position tensors
    (``names``) the candidate wrote into: callers reuse them (a cache's positions), so a write is a bug."""
    given = tuple(a.clone() for a in args)
    try:
        with torch.no_grad():
            out = fn(*given)
    except Exception as exc:  # noqa: BLE001 - the candidate's failure is a result
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0], _written(args, given, names)
    mutated = _written(args, given, names)
    if not isinstance(out, Tensor):
        return None, f"expected a tensor back; got {type(out).__name__}", mutated
    if tuple(out.shape) != shape:
        return None, f"returned shape {tuple(out.shape)}; expected {shape}", mutated
    return [out.detach()], None, mutated


def _written(before: tuple[Tensor, ...], after: tuple[Tensor, ...], names: tuple[str, ...]) -> str | None:
    changed = [n for n, a, b in zip(names, before, after) if a.shape != b.shape or not torch.equal(a, b)]
    return " and ".join(changed) or None


# -- ALiBi -------------------------------------------------------------------------------------------------------------
def _alibi_reference(q_pos: Tensor, k_pos: Tensor, slopes: Tensor, *, symmetric: bool, sign: float = 1.0,
                     shift: int = 0) -> Tensor:
    return sign * alibi_bias(q_pos[:, None], k_pos[None, :] + shift, slopes, symmetric=symmetric)


def _naive_slopes(n: int) -> Tensor:
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / n) for h in range(n)], dtype=torch.float64)


ALIBI_KEYS = ("type", "n_heads", "causal", "symmetric", "slopes")
T5_KEYS = ("type", "bidirectional", "num_buckets", "max_distance")


def _known_keys(config: dict, keys: tuple[str, ...], who: str) -> None:
    unknown = sorted(set(config) - set(keys))
    if unknown:  # a typo ("casual") would otherwise fall back to a default silently
        raise ValueError(f"{who}: unknown key(s) {unknown} in the configuration; it accepts {list(keys)}.")


def _alibi_slopes(config: dict, n: int) -> Tensor:
    """The configuration's explicit ``slopes`` (one positive number per head) or the paper's for ``n`` heads."""
    given = config.get("slopes")
    if given is None:
        return alibi_slopes(n, dtype=torch.float64)
    if isinstance(given, (str, bytes)) or not isinstance(given, (list, tuple)):
        raise TypeError(f"conform alibi: slopes must be a list of {n} numbers (one per head); got "
                        f"{type(given).__name__} {given!r:.60}.")
    if len(given) != n:
        raise ValueError(f"conform alibi: slopes has {len(given)} values but n_heads is {n}; give one slope per head "
                         f"(or leave slopes out for the paper's).")
    for i, m in enumerate(given):
        require_number(m, f"slopes[{i}]", "conform alibi", above=0.0)
    return torch.tensor([float(m) for m in given], dtype=torch.float64)


def check_alibi(candidate: Callable, config: dict, *, max_position: int = 1_000_000,
                target: str | None = None) -> ConformanceResult:
    _known_keys(config, ALIBI_KEYS, "conform alibi")
    n = config.get("n_heads")
    if n is None:
        raise ValueError("conform alibi: the configuration needs a positive int 'n_heads'; got none. Example: "
                         "{'type': 'alibi', 'n_heads': 12, 'causal': True}.")
    n = require_int(n, "n_heads", "conform alibi", minimum=1)
    causal = require_bool(config.get("causal", True), "causal", "conform alibi")
    symmetric = config.get("symmetric")
    symmetric = (not causal) if symmetric is None else require_bool(symmetric, "symmetric", "conform alibi")
    slopes = _alibi_slopes(config, n)
    ar = torch.arange(16)
    cases = [("prefill", ar, ar), ("offset", ar + 37, torch.arange(53)), ("decode", torch.tensor([1000]),
             torch.arange(1001)), ("cross", ar, torch.arange(24))]
    cases += [(f"long-{top}", torch.arange(top - 15, top + 1), torch.arange(top - 31, top + 1))
              for top in (100_007, 999_999) if top <= max_position]
    probes = []
    for name, q_pos, k_pos in cases:
        want = [_alibi_reference(q_pos, k_pos, slopes, symmetric=symmetric)]
        got, message, mutated = _call_bias(candidate, q_pos, k_pos, shape=(n, q_pos.numel(), k_pos.numel()),
                                           names=("q_pos", "k_pos"))
        mask = [(k_pos[None, None, :] <= q_pos[None, :, None]).to(torch.float64).expand(n, -1, -1)] if causal \
            else None
        probes.append(Probe(name, torch.float32, (n, q_pos.numel(), k_pos.numel()),
                            f"q {q_pos[0].item()}..{q_pos[-1].item()}, k {k_pos[0].item()}..{k_pos[-1].item()}",
                            int(max(q_pos.max(), k_pos.max())), want, got, {"q_pos": q_pos, "k_pos": k_pos},
                            message=message, names=("bias",), mask=mask, mutated=mutated,
                            position_of=lambda _n, idx, q=q_pos: int(q[idx[1]])))
        # slack for float32 formation: ANGLE_ULPS * eps32 * (largest |m * position|), as Probe.slack computes it
        probes[-1].angle = float(max(q_pos.max(), k_pos.max())) * float(slopes.max()) / max(probes[-1].magnitude,
                                                                                               1e-30)

    def hyp(name: str, sentence: str, **kw: Any) -> Hypothesis:
        s = kw.pop("slopes", slopes)
        sym = kw.pop("symmetric", symmetric)
        return Hypothesis(name, sentence, lambda p: [_alibi_reference(p.inputs["q_pos"], p.inputs["k_pos"], s,
                                                                      symmetric=sym, **kw)])

    hyps = [hyp("sign_flipped", "your bias has the wrong sign (+m * (i - j)): distant keys are favoured, not "
                "penalised", sign=-1.0),
            hyp("slopes_reversed", "your slopes run in reverse head order (head 0 gets the smallest slope, "
                f"{float(slopes.min()):.6g}, instead of {float(slopes.max()):.6g})", slopes=slopes.flip(0)),
            hyp("offset_plus_one", "your distances are off by one (-m * (i - j - 1))", shift=1),
            hyp("offset_minus_one", "your distances are off by one (-m * (i - j + 1))", shift=-1)]
    if not causal:
        hyps.append(hyp("symmetry", f"your bias is {'-m * (i - j)' if symmetric else '-m * |i - j|'}; the "
                        f"configuration (bidirectional, symmetric={symmetric}) expects "
                        f"{'-m * |i - j|' if symmetric else '-m * (i - j)'}", symmetric=not symmetric))
    if n & (n - 1) and config.get("slopes") is None:
        p2 = 2 ** math.ceil(math.log2(n))
        hyps.append(hyp("slopes_naive", f"your slopes are 2^(-8 (h + 1) / {n}) for all {n} heads; for a head count "
                        f"that is not a power of two the paper takes {2 ** math.floor(math.log2(n))} of those slopes "
                        f"and every other one of the next power of two", slopes=_naive_slopes(n)))
        hyps.append(hyp("slopes_truncated", f"your slopes are the first {n} of the {p2}-head sequence; the paper "
                        f"fills up with every other slope of the next power of two",
                        slopes=alibi_slopes(p2, dtype=torch.float64)[:n]))
    result = diagnose("bias", target or getattr(candidate, "__qualname__", "alibi"),
                      {"type": "alibi", "n_heads": n, "causal": causal, "symmetric": symmetric}, probes, hyps,
                      precision_text="bias formed from absolute positions in float32 (m * i - m * j rounded)")
    return _blind(result, lambda: explain_alibi(candidate, slopes, causal=causal, symmetric=symmetric))


def _blind(result: ConformanceResult, explain: Callable[[], list[str]]) -> ConformanceResult:
    """No listed bug explains the numbers: put what the blind estimate measures (:mod:`posenc.testing.estimate`)
    in the finding (``"estimate"``; still ``"unexplained"`` when the estimate cannot describe the candidate)."""
    old = result.finding
    if old is None or old.hypothesis != "unexplained":
        return result
    words = explain()
    where = old.sentence.split("; ", 1)[1] if "; " in old.sentence else old.sentence
    if not words:
        return result
    if words[0].startswith("the estimate cannot describe"):
        result.finding = Finding("unexplained", "bug", f"no known bug explains the numbers; {'; '.join(words)}; "
                                 f"{where}", old.worst)
    else:
        result.finding = Finding("estimate", "bug", f"no listed bug, but the estimate from your outputs says: "
                                 f"{'; '.join(words)}; {where}", old.worst)
    return result


# -- T5 ----------------------------------------------------------------------------------------------------------------
def check_t5(candidate: Callable, config: dict, *, max_position: int = 1_000_000,
             target: str | None = None) -> ConformanceResult:
    _known_keys(config, T5_KEYS, "conform t5")
    bidirectional = require_bool(config.get("bidirectional", True), "bidirectional", "conform t5")
    num_buckets = require_int(config.get("num_buckets", 32), "num_buckets", "conform t5", minimum=2)
    max_distance = require_int(config.get("max_distance", 128), "max_distance", "conform t5", minimum=1)
    ref = {"bidirectional": bidirectional, "num_buckets": num_buckets, "max_distance": max_distance}
    t5_relative_position_bucket(torch.zeros(1, dtype=torch.long), **ref)  # validates the settings
    ar = torch.arange(64)
    cases = [("range", torch.arange(-300, 301)), ("matrix", ar[None, :] - ar[:, None]),
             ("decode", torch.arange(1001) - 1000)]
    cases += [("long", torch.tensor([-max_position, -max_position // 2, max_position // 2, max_position]))]

    def bucket(rel: Tensor, **kw: Any) -> list[Tensor]:
        sign = kw.pop("sign", 1)
        return [t5_relative_position_bucket(sign * rel, **{**ref, **kw}).to(torch.float64)]

    probes = []
    for name, rel in cases:
        got, message, mutated = _call_bias(candidate, rel, shape=tuple(rel.shape), names=("relative_position",))
        probes.append(Probe(name, torch.float32, tuple(rel.shape), f"rel {int(rel.min())}..{int(rel.max())}",
                            int(rel.abs().max()), bucket(rel), got, {"rel": rel}, tolerance=0.5, message=message,
                            names=("bucket",), position_of=lambda _n, idx, r=rel: int(r[idx]), mutated=mutated))

    def hyp(name: str, sentence: str, **kw: Any) -> Hypothesis:
        return Hypothesis(name, sentence, lambda p: bucket(p.inputs["rel"], **kw))

    hyps = [hyp("bidirectional", f"your buckets are the {'causal' if bidirectional else 'bidirectional'} ones; the "
                f"configuration has bidirectional={bidirectional}", bidirectional=not bidirectional),
            hyp("sign_flipped", "your relative position is query - key; T5's is key - query (memory - context)",
                sign=-1)]
    for alt in (128, 256, 64):
        if alt != max_distance:
            hyps.append(hyp(f"max_distance_{alt}", f"your buckets saturate at max_distance={alt}; the configuration "
                            f"has {max_distance}", max_distance=alt))
    for alt in (32, num_buckets * 2, num_buckets // 2):
        if alt != num_buckets and alt >= 4:
            hyps.append(hyp(f"num_buckets_{alt}", f"your buckets are those of num_buckets={alt}; the configuration "
                            f"has {num_buckets}", num_buckets=alt))
    result = diagnose("bias", target or getattr(candidate, "__qualname__", "t5"), {"type": "t5", **ref}, probes,
                      hyps, angles=False)
    return _blind(result, lambda: explain_t5(candidate, lambda rel: bucket(rel)[0], max_distance=max_distance))


def check_bias(candidate: Callable, config: dict, *, max_position: int = 1_000_000,
               target: str | None = None) -> ConformanceResult:
    """Check an ALiBi bias ``fn(q_pos, k_pos) -> (H, Tq, Tk)`` or a T5 bucket ``fn(rel) -> buckets`` (the config's
    ``"type"``: ``"alibi"`` or ``"t5"``); see the module docstring.

    Raises:
        TypeError: a candidate that is not callable, a configuration that is not a dict, or a value of the wrong type
            (``"causal": "false"``, ``"num_buckets": "32"``, ``max_position="big"``).
        ValueError: an unknown ``type`` or key, ``slopes`` of another length than ``n_heads``, values out of range.
    """
    if not isinstance(config, dict):
        raise TypeError(f"conform bias: the configuration must be a dict such as {{'type': 'alibi', 'n_heads': 12, "
                        f"'causal': True}}; got {type(config).__name__}.")
    if config.get("type") not in ("alibi", "t5"):
        raise ValueError(f"conform bias: the configuration needs 'type': 'alibi' or 't5'; got "
                         f"{config.get('type')!r}.")
    require_callable(candidate, f"conform {config['type']}",
                     "fn(q_pos, k_pos) -> (H, Tq, Tk)" if config["type"] == "alibi" else "fn(relative_position) -> "
                     "buckets")
    require_int(max_position, "max_position", "conform bias", minimum=1)
    require_target(target, "conform bias")
    with one_thread():
        check = check_alibi if config["type"] == "alibi" else check_t5
        return check(candidate, config, max_position=max_position, target=target)
