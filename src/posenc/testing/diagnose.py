"""The conformance kit's engine: compare a candidate with posenc's reference, then name the bug that explains it.

Every check (:func:`~posenc.testing.check_rope`, :func:`~posenc.testing.check_mrope`,
:func:`~posenc.testing.check_bias`) builds a list of :class:`Probe` — one input of the matrix, the candidate's output
on it and the exact (float64) reference output — plus a list of :class:`Hypothesis`, each a *buggy reference*: the
reference with one known mistake (the other pair layout, the attention factor missing, positions off by one, ...).
:func:`diagnose` then decides, in this order:

1. every probe within its tolerance (a few units in the last place of the output dtype, times the output's size):
   **passed**;
2. every probe within tolerance plus the error that forming the angles ``pos * theta`` in float32 brings
   (``ANGLE_ULPS * eps32 * angle * |x|``): a **precision** finding ("angles formed in float32"), not a bug;
3. every probe whose q/k are contiguous conforms (as in 2) but some with another memory layout (a transposed view of
   ``(B, T, H, D)`` storage, a slice of a fused qkv projection: what Hugging Face's attention passes) fails or raises:
   a **memory layout** bug naming the layouts that fail;
4. some buggy reference matches every probe (to the same slack: a port often has a bug *and* float32 angles): a
   **bug** finding naming that hypothesis, with the worst input; when several match, the closest one (the smallest
   sum of error / allowed over the probes);
5. otherwise "no known bug explains the numbers", with the worst input.

Tolerances come from the dtype alone, never from the candidate, so a correct implementation is never flagged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["ANGLE_ULPS", "OUTPUT_ULPS", "Case", "ConformanceResult", "Finding", "Hypothesis", "Probe", "diagnose",
           "eps", "max_error"]

# A rotation rounds cos/sin, two products and a sum, each to half an ulp of the output dtype; 4 ulps of the largest
# output leaves margin (bfloat16 implementations that rotate in bfloat16, as Hugging Face does, stay within it).
OUTPUT_ULPS = 4.0
# pos * theta formed in float32: the product rounds to half an ulp of the angle and theta itself carries a few ulps
# when it is computed in float32 (base ** (2i/d) in float32); 3 ulps of the largest angle bounds every peer we know.
ANGLE_ULPS = 3.0
SHORT_POSITION = 4096  # positions below this are "short": a failure there is a bug, not a long-position limit
# How q/k sit in memory when a candidate gets them (posenc.testing.rope.arrange builds each): what a probe's
# ``memory`` names, and how a report says it.
MEMORY_LAYOUTS = {
    "contiguous": "contiguous (B, H, T, D) tensors",
    "transposed": "(B, H, T, D) views of (B, T, H, D) storage (x.transpose(1, 2), as Hugging Face's attention passes "
                  "them)",
    "fused": "(B, H, T, D) views of one fused qkv projection output (B, T, (H + 2 Hkv) * D) (Phi-3's qkv_proj: only "
             "the last dimension is contiguous)",
    "fused_heads": "(B, H, T, D) views of a per-head fused qkv output (B, T, H, 3 * D) (GPT-NeoX, Bloom: q, k and v "
                   "side by side in each head)",
    "aliased": "one tensor passed as both q and k (k is q: shared-QK attention such as Reformer's)",
}

_EPS = {torch.float64: 2.0 ** -52, torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}
_DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32", torch.bfloat16: "bfloat16",
                torch.float16: "float16"}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run a check on one intra-op thread: its tensors are tiny, and on a busy machine thread hand-offs cost more
    than the arithmetic (20x on two shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon (one ulp at 1.0) of a floating dtype."""
    return _EPS[dtype] if dtype in _EPS else float(torch.finfo(dtype).eps)


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


@dataclass
class Probe:
    """One input of the matrix: the candidate's outputs and the reference's (float64), with the tolerances.

    ``got`` is ``None`` when the candidate raised (``message`` says what); ``angle`` is the largest ``|pos * theta|``
    of the input (0 for encodings without angles); ``where(index) -> dict`` describes an element of the outputs
    (which tensor, batch, head, position, channel) for the report.
    """

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    positions: str
    max_position: int
    want: list[Tensor]
    got: list[Tensor] | None
    inputs: dict[str, Any] = field(default_factory=dict)
    angle: float = 0.0
    message: str | None = None
    tolerance: float = 0.0
    names: Sequence[str] = ("q", "k")
    position_of: Callable[[str, tuple[int, ...]], int] | None = None
    mask: list[Tensor] | None = None  # elements that count (e.g. causal bias: keys at or before the query)
    memory: str = "contiguous"  # how the candidate's q/k sat in memory: a key of MEMORY_LAYOUTS
    mutated: str | None = None  # which input the candidate wrote into ("q", "k and positions", ...), None if none

    def __post_init__(self) -> None:
        if not self.tolerance:
            magnitude = max((float(w.abs().max()) for w in self.want if w.numel()), default=1.0)
            self.tolerance = OUTPUT_ULPS * eps(self.dtype) * max(magnitude, 1e-30) + 1e-30
        self.magnitude = max((float(w.abs().max()) for w in self.want if w.numel()), default=0.0)

    def slack(self, angle_dtype: torch.dtype = torch.float32) -> float:
        """Extra error allowed when angles are formed in ``angle_dtype`` (0 for probes without angles)."""
        return ANGLE_ULPS * eps(angle_dtype) * self.angle * self.magnitude


@dataclass(frozen=True)
class Hypothesis:
    """A known bug: ``reference(probe)`` is posenc's reference output with that mistake (or raises ``ValueError``
    when the bug does not apply to that input); ``sentence`` says it to the user."""

    name: str
    sentence: str
    reference: Callable[[Probe], list[Tensor]]
    severity: str = "bug"


@dataclass
class Case:
    """One row of the result: an input of the matrix and how the candidate did on it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    positions: str
    max_position: int
    error: float | None  # max |candidate - reference| (None when the candidate raised)
    tolerance: float
    status: str  # "pass", "fail", "precision" (fails only by the error of float32 angles) or "error" (raised)
    worst: dict | None = None  # the element with the largest error: tensor, index, position, got, want
    message: str | None = None
    memory: str = "contiguous"  # how the candidate's q/k sat in memory (a key of diagnose.MEMORY_LAYOUTS)


@dataclass
class Finding:
    """What explains a failure: the hypothesis, ``"bug"`` or ``"precision"``, the sentence and the worst input."""

    hypothesis: str
    severity: str
    sentence: str
    worst: dict | None = None


@dataclass
class ConformanceResult:
    """A check's verdict: ``passed`` (every case within tolerance), ``conforms`` (no bug: at most the precision limit
    of float32 angles), ``diagnosis`` (one sentence, ``None`` when it passed) and ``cases`` (one row per input)."""

    kind: str
    target: str
    config: dict
    cases: list[Case]
    finding: Finding | None = None
    estimate: dict | None = None  # on a failure: what the blind estimate measured (posenc.testing.estimate)

    @property
    def passed(self) -> bool:
        return all(c.status == "pass" for c in self.cases)

    @property
    def conforms(self) -> bool:
        return all(c.status in ("pass", "precision") for c in self.cases)

    @property
    def diagnosis(self) -> str | None:
        if self.passed:
            return None
        return self.finding.sentence if self.finding is not None else "the candidate fails; no diagnosis ran"

    @property
    def verdict(self) -> str:
        """``"pass"``, ``"precision"`` (conforms except long-position precision) or ``"fail"``."""
        return "pass" if self.passed else "precision" if self.conforms else "fail"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "target": self.target, "config": _jsonable(self.config), "verdict": self.verdict,
                "passed": self.passed, "conforms": self.conforms, "diagnosis": self.diagnosis,
                "finding": None if self.finding is None else _jsonable(asdict(self.finding)),
                "cases": [_jsonable(asdict(c)) for c in self.cases], "estimate": _jsonable(self.estimate)}

    def table(self) -> str:
        """A plain-text table: one row per case, then the verdict and the diagnosis."""
        head = ("case", "dtype", "q shape", "memory", "positions", "max error", "tolerance", "status")
        rows = [(c.name, c.dtype, "x".join(map(str, c.shape)), c.memory, c.positions,
                 "-" if c.error is None else f"{c.error:.3g}", f"{c.tolerance:.3g}", c.status) for c in self.cases]
        if all(c.memory == "contiguous" for c in self.cases):  # a matrix without memory layouts (bias): no column
            head, rows = head[:3] + head[4:], [r[:3] + r[4:] for r in rows]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
        lines.append(f"{self.kind} {self.target}: {self.verdict}"
                     + ("" if self.diagnosis is None else f" - {self.diagnosis}"))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def max_error(got: Sequence[Tensor], want: Sequence[Tensor],
              mask: Sequence[Tensor] | None = None) -> tuple[float, int, tuple[int, ...]]:
    """Largest ``|got - want|`` over the tensors (NaN counts as infinite): ``(error, tensor index, element index)``."""
    best, where = -1.0, (0, ())
    for i, (g, w) in enumerate(zip(got, want)):
        if w.numel() == 0:
            continue
        diff = (g.to(torch.float64) - w).abs()
        diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
        if mask is not None:
            diff = torch.where(mask[i] > 0, diff, torch.zeros_like(diff))
        flat = int(diff.argmax())
        err = float(diff.reshape(-1)[flat])
        if err > best:
            best, where = err, (i, tuple(int(j) for j in torch.unravel_index(torch.tensor(flat), diff.shape)))
    return max(best, 0.0), where[0], where[1]


def _worst(probe: Probe, tensor: int, index: tuple[int, ...], err: float) -> dict:
    name = probe.names[tensor] if tensor < len(probe.names) else f"out{tensor}"
    out = {"case": probe.name, "tensor": name, "index": list(index), "error": err}
    if probe.position_of is not None and index:
        out["position"] = probe.position_of(name, index)
    if probe.got is not None and index:
        out["got"] = float(probe.got[tensor][index].float())
        out["want"] = float(probe.want[tensor][index])
    return out


def _where(worst: dict) -> str:
    at = f" at position {worst['position']}" if "position" in worst else ""
    return (f"worst input: case {worst['case']!r}, {worst['tensor']}{worst['index']}{at}: error "
            f"{worst['error']:.3g}")


ANGLES_FLOAT32 = "angles formed in float32 (pos * inv_freq rounded before cos/sin)"


def diagnose(kind: str, target: str, config: dict, probes: list[Probe], hypotheses: Sequence[Hypothesis], *,
             angles: bool = True, precision_text: str = ANGLES_FLOAT32) -> ConformanceResult:
    """Turn probes into a :class:`ConformanceResult`: per-case rows and, on failure, the finding that explains it.

    ``angles=False`` (exact integer outputs such as T5 buckets) skips the float32 precision finding and slack;
    ``precision_text`` names what a float32 precision finding means for this encoding.
    """
    measured = []  # (probe, error, worst dict)
    for p in probes:
        if p.got is None:
            measured.append((p, None, None))
            continue
        err, t, idx = max_error(p.got, p.want, p.mask)
        measured.append((p, err, _worst(p, t, idx, err)))
    ran = [(p, e, w) for p, e, w in measured if e is not None]
    raised = [p for p, e, _ in measured if e is None]
    failed = [(p, e, w) for p, e, w in ran if e > p.tolerance]
    mutated = [p for p, _, _ in measured if p.mutated]

    finding = None
    if mutated:  # right numbers or not, a write into the caller's tensors is a bug of its own
        finding = _mutation_finding(mutated)
    elif failed or raised:
        finding = _explain(ran, failed, raised, hypotheses, angles, precision_text)
    cases = []
    for p, err, worst in measured:
        if err is None:
            status = "error"
        elif p.mutated:
            status = "fail"
        elif err <= p.tolerance:
            status = "pass"
        elif finding is not None and finding.severity == "precision":
            status = "precision"
        else:
            status = "fail"
        cases.append(Case(p.name, dtype_name(p.dtype), tuple(p.shape), p.positions, p.max_position, err, p.tolerance,
                          status, worst if status != "pass" else None, p.message, p.memory))
    return ConformanceResult(kind, target, config, cases, finding)


def _explain(ran, failed, raised, hypotheses: Sequence[Hypothesis], angles: bool, precision_text: str) -> Finding:
    worst_fail = max(failed, key=lambda r: r[1] / r[0].tolerance) if failed else None
    memory = _memory_finding(ran, failed, raised, angles)
    if memory is not None:
        return memory
    if not failed:  # only exceptions
        p = raised[0]
        return Finding("raised", "bug", f"your implementation raised on case {p.name!r} ({p.positions}, q "
                       f"{'x'.join(map(str, p.shape))}, {dtype_name(p.dtype)}): {p.message}", None)
    suffix = ""
    if raised:
        suffix = f" It also raised on {len(raised)} case(s), e.g. {raised[0].name!r}: {raised[0].message}"

    # 2. only the error of float32 angles: a precision limit
    if angles and all(e <= p.tolerance + p.slack(torch.float32) for p, e, _ in ran):
        finest = min((p.dtype for p, _, _ in failed), key=eps)  # report the dtype where the limit shows most
        same = [r for r in ran if r[0].dtype == finest]
        worst = max(same, key=lambda r: r[1])
        short = [e for p, e, _ in same if p.max_position < SHORT_POSITION]
        short_text = f"; below position {SHORT_POSITION} at most {max(short):.3g}" if short else ""
        sentence = (f"{precision_text}: {dtype_name(finest)} error "
                    f"{worst[1]:.3g} at position {worst[2].get('position', worst[0].max_position)} (case "
                    f"{worst[0].name!r}){short_text} - a long-position precision limit many implementations share, "
                    f"not a bug in the formula; forming it in float64 removes it.")
        return Finding("angles_float32", "precision", sentence + suffix, worst[2])

    # 3. a buggy reference that matches every probe
    best = None
    for h in hypotheses:
        score, exact, ok = 0.0, True, True
        for p, _, _ in ran:
            try:
                want = h.reference(p)
            except ValueError:  # the hypothesis does not apply to this configuration (e.g. no partial rotary)
                ok = False
                break
            err_h, _, _ = max_error(p.got, want, p.mask)
            allowed = p.tolerance + (p.slack(torch.float32) if angles else 0.0)
            if not err_h <= allowed:
                ok = False
                break
            exact = exact and err_h <= p.tolerance
            score += err_h / allowed
        if ok and (best is None or score < best[0]):
            best = (score, h, exact)
    if best is not None:
        _, h, exact = best
        p, e, w = worst_fail
        extra = "" if exact or not angles else f" (and {precision_text.split(' (')[0]}, which adds a small error " \
                                                "at long positions)"
        sentence = f"{h.sentence}{extra}; {_where(w)} (tolerance {p.tolerance:.3g})."
        return Finding(h.name, h.severity, sentence + suffix, w)

    p, e, w = worst_fail
    return Finding("unexplained", "bug", f"no known bug explains the numbers; {_where(w)} (tolerance "
                   f"{p.tolerance:.3g}), q {'x'.join(map(str, p.shape))} {dtype_name(p.dtype)}, positions "
                   f"{p.positions}.{suffix}", w)


def _mutation_finding(mutated: list[Probe]) -> Finding:
    p = mutated[0]
    cases = ", ".join(repr(m.name) for m in mutated[:4]) + (" ..." if len(mutated) > 4 else "")
    qk = any(name in ("q", "k") for m in mutated for name in m.mutated.split(" and "))
    advice = ("Callers keep using q and k (the KV cache) and the positions after the call; return new tensors, or "
              "declare the candidate in-place (check_rope(..., inplace=True), posenc conform --inplace) if that is "
              "its contract." if qk else "Callers keep using the positions they pass (a cache's, a packed "
                                         "batch's); compute on a copy.")
    return Finding("mutates_input", "bug", f"your implementation writes into its inputs: {p.mutated} changed in case "
                   f"{p.name!r} ({p.positions}, shape {'x'.join(map(str, p.shape))}, {dtype_name(p.dtype)}, memory "
                   f"{p.memory}; also in {len(mutated) - 1} other case(s): {cases}). {advice}", None)


def _memory_finding(ran, failed, raised, angles: bool) -> Finding | None:
    """A bug of memory layout: every probe with contiguous q/k conforms (within tolerance, plus the float32-angle
    slack), and only probes with other layouts fail or raise. ``None`` when that is not the pattern."""
    def conforms(p: Probe, e: float) -> bool:
        return e <= p.tolerance + (p.slack(torch.float32) if angles else 0.0)

    contiguous = [(p, e) for p, e, _ in ran if p.memory == "contiguous"]
    if not contiguous or any(p.memory == "contiguous" for p in raised):
        return None
    if not all(conforms(p, e) for p, e in contiguous):
        return None
    wrong = [(p, e, w) for p, e, w in failed if p.memory != "contiguous" and not conforms(p, e)]
    broken = [p for p in raised if p.memory != "contiguous"]
    if not wrong and not broken:
        return None
    layouts = sorted({p.memory for p, _, _ in wrong} | {p.memory for p in broken})
    what = "; ".join(f"{m}: {MEMORY_LAYOUTS.get(m, m)}" for m in layouts)
    if layouts == ["aliased"]:
        p, e, w = max(wrong, key=lambda r: r[1] / r[0].tolerance) if wrong else (broken[0], None, None)
        how = (f"{_where(w)} (tolerance {p.tolerance:.3g})" if w is not None else f"it raised: {p.message}")
        return Finding("aliasing", "bug", f"your output is right when q and k are separate tensors but wrong when one "
                       f"tensor is passed as both (k is q, shared-QK attention): rotating q in place rotates k too, "
                       f"so k is rotated twice (or q is read after k was written); rotate into new tensors, or "
                       f"handle k is q once; case {p.name!r}: {how}.", w)
    if wrong:
        p, e, w = max(wrong, key=lambda r: r[1] / r[0].tolerance)
        sentence = (f"your output is right for contiguous q/k but wrong for q/k in another memory layout ({what}): "
                    f"the implementation assumes contiguous memory (it indexes the raw storage or a flattened view "
                    f"with contiguous strides); call .contiguous() on q and k first, or index with their strides; "
                    f"{_where(w)} (tolerance {p.tolerance:.3g}, memory {p.memory}).")
        if broken:
            sentence += f" It also raised on case {broken[0].name!r}: {broken[0].message}"
        return Finding("memory_layout", "bug", sentence, w)
    p = broken[0]
    return Finding("memory_layout", "bug", f"your implementation works on contiguous q/k but raises on q/k in another "
                   f"memory layout ({what}): case {p.name!r} ({p.positions}, q {'x'.join(map(str, p.shape))}, "
                   f"{dtype_name(p.dtype)}): {p.message}. It must accept non-contiguous q/k (use .reshape instead "
                   f"of .view, or call .contiguous() first).", None)
