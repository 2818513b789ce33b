"""RoPE context extension: each method is a pure function of ``(rotary_dim, base, params)`` in one registry.

Every method changes only the rotary frequencies and one scale on cos/sin (the shape of Hugging Face's
``ROPE_INIT_FUNCTIONS``, with whose numbers these agree to float32 rounding where both implement a method)::

    inv_freq, attention_scale = scaled_inv_freq(rotary_dim, base, params, seq_len=None)

``inv_freq`` is float64 ``(rotary_dim // 2,)``; ``attention_scale`` multiplies both cos and sin, so the attention
logits ``q . k`` are multiplied by ``attention_scale ** 2`` (YaRN's ``sqrt(1/t)``, arXiv 2309.00071 eq. 22).

- ``default``: nothing (Su et al. 2021, arXiv 2104.09864);
- ``linear``: position interpolation, ``theta_i / s`` (Chen et al. 2023, arXiv 2306.15595);
- ``ntk``: NTK-aware base change, ``base -> base * s^(d / (d - 2))`` (bloc97 2023; arXiv 2309.00071 sec. 3.1);
- ``dynamic``: ``ntk`` with the stretch grown from the current length (:func:`dynamic_ntk_scaling`);
- ``yarn``: NTK-by-parts ramp from ``theta_i`` (fast pairs) to ``theta_i / s`` (slow ones) plus the attention scale
  ``0.1 ln s + 1`` (Peng et al. 2023, arXiv 2309.00071);
- ``longrope``: searched per-pair factors ``theta_i / lambda_i``, a short and a long set chosen by length
  (Ding et al. 2024, arXiv 2402.13753; Phi-3);
- ``llama3``: keep fast pairs, ``/ s`` slow ones, blend in between (Llama 3.1, arXiv 2407.21783);
- ``proportional``: p-RoPE, the slowest pairs of the whole head get frequency 0 (Barbero et al. 2024,
  arXiv 2410.06205; Gemma 4's global layers, Hugging Face's ``proportional``);
- ``yarn_log``: Grok's YaRN with a geometric blend, ``theta_i / s^(1 - m_i)`` (vLLM's ``Grok1ScalingRotaryEmbedding``);
- ``theta_scale``: Grok's base change that moves the slowest pair's wavelength from ``L0`` to ``s * L0`` (same);
- ``telechat3_yarn``: YaRN with TeleChat3's attention scale ``0.07 ln s + 1`` (vLLM's
  ``TeleChat3RoPEScaledRotaryEmbedding``).

``params`` is a plain dict with Hugging Face's key names (``factor``, ``original_max_position_embeddings``,
``beta_fast``, ...); :func:`resolve_scaling` validates a user's dict and fills the defaults. Any method can add
log-n attention scaling (``"logn": True``): queries at position ``p`` are multiplied by
``max(1, log(p + 1) / log(L_train))`` (:func:`logn_scale`; Chiang & Cholak 2022, arXiv 2202.12172, as in Qwen),
and ``"llama_4_scaling_beta": beta`` multiplies them by ``1 + beta * ln(1 + floor(p / L_train))``
(:func:`llama_4_query_scale`; Ministral 3, Mistral 4).

Length-dependent methods (``dynamic``, ``longrope``) take the current sequence length ``seq_len`` at run time: the
``rope`` encoding passes ``1 + the largest position`` of each call, like Hugging Face's ``dynamic_rope_update``.
Unlike Hugging Face, invalid parameters raise ``ValueError`` instead of logging a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads on first use, so that `posenc --help` builds this registry without it
    from torch import Tensor
from posenc._checks import check_int, check_number

__all__ = [
    "SCALING_METHODS",
    "ScalingMethod",
    "band_report",
    "dynamic_ntk_scaling",
    "linear_scaling",
    "llama3_scaling",
    "llama4_attn_temperature",
    "llama_4_query_scale",
    "logn_scale",
    "longrope_scaling",
    "ntk_scaling",
    "proportional_scaling",
    "telechat3_mscale",
    "telechat3_yarn_scaling",
    "theta_scale_base",
    "theta_scale_scaling",
    "yarn_log_scaling",
    "register_scaling",
    "resolve_scaling",
    "scaled_inv_freq",
    "yarn_scaling",
]

REQUIRED = object()  # marks a parameter without a default
# Keys every method accepts: posenc's log-n switch, and the training length it (and most methods) measure against.
# "llama_4_scaling_beta" (Ministral 3 / Mistral 4) multiplies queries by llama_4_query_scale, like logn.
COMMON_PARAMS: dict[str, Any] = {"logn": False, "original_max_position_embeddings": None,
                                 "llama_4_scaling_beta": None}

ScalingFn = Callable[..., "tuple[Tensor, float]"]


@dataclass(frozen=True)
class ScalingMethod:
    """One registered scaling: the function and the parameters it accepts (``REQUIRED`` or a default)."""

    name: str
    fn: ScalingFn  # (rotary_dim, base, params, *, seq_len=None) -> (inv_freq float64 (rotary_dim//2,), scale)
    params: dict[str, Any]  # accepted keys -> default value (REQUIRED if it has none)
    length_dependent: bool  # True when the frequencies depend on the current sequence length
    paper: str | None  # arXiv id
    summary: str  # first docstring line


SCALING_METHODS: dict[str, ScalingMethod] = {}


def register_scaling(name: str, *, params: Mapping[str, Any] | None = None, length_dependent: bool = False,
                     paper: str | None = None) -> Callable[[ScalingFn], ScalingFn]:
    """Decorator: register ``fn(rotary_dim, base, params, *, seq_len=None) -> (inv_freq, attention_scale)``."""
    def decorator(fn: ScalingFn) -> ScalingFn:
        if name in SCALING_METHODS:
            raise ValueError(f"register_scaling: {name!r} is already registered.")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        SCALING_METHODS[name] = ScalingMethod(name, fn, {**COMMON_PARAMS, **(params or {})}, length_dependent, paper,
                                              summary)
        return fn

    return decorator


# -- helpers -----------------------------------------------------------------------------------------------------------
def base_inv_freq(rotary_dim: int, base: float) -> Tensor:
    """``theta_i = base^(-2i / rotary_dim)``, float64 ``(rotary_dim // 2,)`` (as ``rope_frequencies``)."""
    import torch
    if check_int(rotary_dim, "rope scaling: rotary_dim", minimum=1) % 2:
        raise ValueError(f"rope scaling: rotary_dim must be a positive even int (channels rotate in pairs); "
                         f"got {rotary_dim!r}.")
    check_number(base, "rope scaling: base", above=1)
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
    return torch.pow(float(base), -exponent)


def _number(params: Mapping[str, Any], key: str, method: str, *, minimum: float | None = None,
            strict: bool = False, hint: str = "") -> float:
    value = params.get(key)
    if value is None:
        raise ValueError(f"rope scaling {method!r}: {key} must be a finite number; got None.{hint}")
    if strict:
        return check_number(value, f"rope scaling {method!r}: {key}", above=minimum, hint=hint)
    return check_number(value, f"rope scaling {method!r}: {key}", minimum=minimum, hint=hint)


def _factor(params: Mapping[str, Any], method: str) -> float:
    return _number(params, "factor", method, minimum=1.0,
                   hint=" Hint: factor = target length / training length, e.g. 4.0 to run 4x longer.")


def _original_length(params: Mapping[str, Any], method: str) -> int:
    value = params.get("original_max_position_embeddings")
    if value is None:
        raise ValueError(f"rope scaling {method!r}: original_max_position_embeddings (the training length) must be "
                         f"an int >= 2; got None.")
    return check_int(value, f"rope scaling {method!r}: original_max_position_embeddings (the training length)",
                     minimum=2)


def _band(params: Mapping[str, Any], method: str, upper: tuple[str, str], lower: tuple[str, str],
          usual: str) -> tuple[float, float]:
    """The edges ``(upper, lower)`` of a method's blend band: two positive numbers, ``upper > lower``.

    ``upper`` and ``lower`` are ``(key, what it means)``; ``usual`` says what the paper uses.
    """
    (hi_key, hi_means), (lo_key, lo_means) = upper, lower
    high = _number(params, hi_key, method, minimum=0.0, strict=True)
    low = _number(params, lo_key, method, minimum=0.0, strict=True)
    if high <= low:
        raise ValueError(f"rope scaling {method!r}: {hi_key} ({hi_means}) must exceed {lo_key} ({lo_means}); got "
                         f"{hi_key}={high:g}, {lo_key}={low:g}. {usual}")
    return high, low


def _ntk_exponent(rotary_dim: int, method: str) -> float:
    if rotary_dim <= 2:
        raise ValueError(f"rope scaling {method!r}: the NTK base change base * s^(d / (d - 2)) needs rotary_dim > 2; "
                         f"got {rotary_dim}.")
    return rotary_dim / (rotary_dim - 2)


# -- methods -----------------------------------------------------------------------------------------------------------
@register_scaling("default", paper="2104.09864")
def default_scaling(rotary_dim: int, base: float, params: Mapping[str, Any], *,
                    seq_len: int | None = None) -> tuple[Tensor, float]:
    """Plain RoPE (Su et al. 2021, arXiv 2104.09864): ``theta_i = base^(-2i/d)``, scale 1."""
    return base_inv_freq(rotary_dim, base), 1.0


@register_scaling("linear", params={"factor": REQUIRED}, paper="2306.15595")
def linear_scaling(rotary_dim: int, base: float, params: Mapping[str, Any], *,
                   seq_len: int | None = None) -> tuple[Tensor, float]:
    """Position interpolation (Chen et al. 2023, arXiv 2306.15595): ``theta_i / s``, i.e. position ``p -> p / s``."""
    return base_inv_freq(rotary_dim, base) / _factor(params, "linear"), 1.0


@register_scaling("ntk", params={"factor": REQUIRED})
def ntk_scaling(rotary_dim: int, base: float, params: Mapping[str, Any], *,
                seq_len: int | None = None) -> tuple[Tensor, float]:
    """Static NTK-aware scaling (bloc97, 2023; see arXiv 2309.00071 sec. 3.1): ``base -> base * s^(d / (d - 2))``.

    The slowest pair ``i = d/2 - 1`` is then interpolated by exactly ``s`` while the fastest is unchanged.
    """
    factor = _factor(params, "ntk")
    return base_inv_freq(rotary_dim, base * factor ** _ntk_exponent(rotary_dim, "ntk")), 1.0


@register_scaling("dynamic", params={"factor": REQUIRED}, length_dependent=True, paper="2309.00071")
def dynamic_ntk_scaling(rotary_dim: int, base: float, params: Mapping[str, Any], *,
                        seq_len: int | None = None) -> tuple[Tensor, float]:
    """Dynamic NTK (emozilla, 2023; arXiv 2309.00071 sec. 3.3): the NTK base change grown with the current length.

    With ``L0 = original_max_position_embeddings`` and ``L = max(seq_len, L0)`` (``seq_len=None`` means ``L0``)::

        base' = base * (s * L / L0 - (s - 1)) ^ (d / (d - 2))

    so lengths up to ``L0`` use plain RoPE and the stretch reaches ``s`` at ``L = s * L0`` and keeps growing (Hugging
    Face's formula). Which positions use which frequencies: the ``rope`` encoding sets ``seq_len = 1 + the largest
    position`` in each ``rotate`` call and rotates every query and key of that call with those frequencies; keys
    cached by earlier calls keep the frequencies of their call. Decoding one token at a time, the token at position
    ``t`` (query and key) uses ``seq_len = t + 1`` — exactly what Hugging Face's ``DynamicCache`` + ``dynamic`` rope
    does while a sequence grows. A full forward over the same tokens rotates every key with the final length
    instead, so the two differ once the length passes ``L0`` (and agree up to it).
    """
    factor = _factor(params, "dynamic")
    original = _original_length(params, "dynamic")
    if seq_len is not None:
        check_int(seq_len, "rope scaling 'dynamic': seq_len", minimum=1)
    length = original if seq_len is None else max(seq_len, original)
    grown = base * (factor * length / original - (factor - 1)) ** _ntk_exponent(rotary_dim, "dynamic")
    return base_inv_freq(rotary_dim, grown), 1.0


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's ``0.1 * mscale * ln(s) + 1`` for ``s > 1`` (arXiv 2309.00071 eq. 22: ``sqrt(1/t)``), else 1."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_correction_range(rotary_dim: int, base: float, original: int, beta_fast: float, beta_slow: float,
                          truncate: bool) -> tuple[float, float]:
    """Pair indices ``(low, high)`` where a pair makes ``beta_fast`` and ``beta_slow`` turns within ``original``.

    Pair ``i`` turns ``r_i = original * theta_i / (2 pi)`` times, so ``r_i = beta`` at
    ``i = d * ln(original / (2 pi beta)) / (2 ln base)``. Pairs ``i <= low`` turn at least ``beta_fast`` times and are
    kept (extrapolated); pairs ``i >= high`` turn at most ``beta_slow`` times and are interpolated by ``s``.
    """
    def index(turns: float) -> float:
        return rotary_dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = index(beta_fast), index(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, rotary_dim - 1)


@register_scaling("yarn", params={"factor": REQUIRED, "beta_fast": 32.0, "beta_slow": 1.0, "mscale": None,
                                  "mscale_all_dim": None, "attention_factor": None, "truncate": True},
                  paper="2309.00071")
def yarn_scaling(rotary_dim: int, base: float, params: Mapping[str, Any], *,
                 seq_len: int | None = None) -> tuple[Tensor, float]:
    """YaRN (Peng et al. 2023, arXiv 2309.00071): NTK-by-parts frequencies and the attention scale ``0.1 ln s + 1``.

    ``theta'_i = (1 - gamma_i) * theta_i / s + gamma_i * theta_i`` with ``gamma_i`` a linear ramp over pair index from
    1 (``i <= low``, fast pairs, kept) to 0 (``i >= high``, slow pairs, interpolated); see
    :func:`yarn_correction_range`. The ramp is linear in the pair index as in the reference code and Hugging Face.

    Attention scale (multiplies cos and sin): ``attention_factor`` if given; else DeepSeek's
    ``mscale(s, mscale) / mscale(s, mscale_all_dim)`` with ``mscale(s, m) = 0.1 m ln s + 1`` (defaults ``mscale=1``,
    ``mscale_all_dim=0``, which gives the paper's ``0.1 ln s + 1``). Hugging Face silently drops ``mscale`` unless
    both are non-zero; the cases where that changes the number raise here instead, asking for ``attention_factor``.
    """
    import torch
    factor = _factor(params, "yarn")
    original = _original_length(params, "yarn")
    beta_fast, beta_slow = _band(params, "yarn", ("beta_fast", "turns above which pairs are kept"),
                                 ("beta_slow", "turns below which they are interpolated"), "The paper uses 32 and 1.")
    truncate = params.get("truncate", True)
    if not isinstance(truncate, bool):
        raise ValueError(f"rope scaling 'yarn': truncate must be a bool; got {truncate!r}.")
    attention = _yarn_attention_factor(params, factor)

    theta = base_inv_freq(rotary_dim, base)
    low, high = yarn_correction_range(rotary_dim, base, original, beta_fast, beta_slow, truncate)
    if low == high:
        high += 0.001  # the reference code's guard against a zero-width ramp
    pair = torch.arange(rotary_dim // 2, dtype=torch.float64)
    interpolate = ((pair - low) / (high - low)).clamp(0, 1)  # 0 for fast pairs (kept), 1 for slow ones (/ s)
    return theta / factor * interpolate + theta * (1 - interpolate), attention


def _yarn_attention_factor(params: Mapping[str, Any], factor: float) -> float:
    if params.get("attention_factor") is not None:
        return _number(params, "attention_factor", "yarn", minimum=0.0, strict=True)
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    for key, value in (("mscale", mscale), ("mscale_all_dim", mscale_all_dim)):
        if value is not None:
            _number(params, key, "yarn", minimum=0.0)
    if mscale and mscale_all_dim:
        return yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    if mscale in (None, 1) and not mscale_all_dim:
        return yarn_mscale(factor)
    raise ValueError(f"rope scaling 'yarn': mscale={mscale!r} with mscale_all_dim={mscale_all_dim!r} is ambiguous: "
                     f"DeepSeek's code gives mscale(s, mscale) / mscale(s, mscale_all_dim) = "
                     f"{yarn_mscale(factor, mscale or 0.0) / yarn_mscale(factor, mscale_all_dim or 0.0):.6g} but "
                     f"Hugging Face ignores mscale unless both are non-zero and uses {yarn_mscale(factor):.6g}. Pass "
                     f"attention_factor=<the value you want> (or both mscale and mscale_all_dim).")


def _factor_list(params: Mapping[str, Any], key: str, n: int) -> Tensor:
    import torch
    value = params.get(key)
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value):
        shown = f"a list of length {len(value)}" if isinstance(value, (list, tuple)) else repr(value)
        raise ValueError(f"rope scaling 'longrope': {key} must be a list of rotary_dim // 2 = {n} positive numbers "
                         f"(one per rotary pair); got {shown}.")
    return torch.tensor([float(v) for v in value], dtype=torch.float64)


@register_scaling("longrope", params={"short_factor": REQUIRED, "long_factor": REQUIRED, "factor": None,
                                      "attention_factor": None}, length_dependent=True, paper="2402.13753")
def longrope_scaling(rotary_dim: int, base: float, params: Mapping[str, Any], *,
                     seq_len: int | None = None) -> tuple[Tensor, float]:
    """LongRoPE (Ding et al. 2024, arXiv 2402.13753; Phi-3): ``theta_i / lambda_i`` with searched per-pair factors.

    ``lambda = long_factor`` when ``seq_len > original_max_position_embeddings``, else ``short_factor``
    (``seq_len=None`` means short). The ``rope`` encoding passes ``seq_len = 1 + the largest position`` of each call,
    as Hugging Face does; cached keys keep the set of their call. Attention scale: ``attention_factor`` if given,
    else ``sqrt(1 + ln s / ln L0)`` for ``s = factor > 1`` (1 otherwise).
    """
    original = _original_length(params, "longrope")
    n = rotary_dim // 2
    short, long = _factor_list(params, "short_factor", n), _factor_list(params, "long_factor", n)
    factor = _factor(params, "longrope") if params.get("factor") is not None else 1.0
    if params.get("attention_factor") is not None:
        attention = _number(params, "attention_factor", "longrope", minimum=0.0, strict=True)
    else:
        attention = math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1 else 1.0
    ext = long if seq_len is not None and seq_len > original else short
    return base_inv_freq(rotary_dim, base) / ext, attention


@register_scaling("llama3", params={"factor": REQUIRED, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
                  paper="2407.21783")
def llama3_scaling(rotary_dim: int, base: float, params: Mapping[str, Any], *,
                   seq_len: int | None = None) -> tuple[Tensor, float]:
    """Llama 3.1 frequency bands (Meta 2024, arXiv 2407.21783): keep fast pairs, interpolate slow ones, blend between.

    With wavelength ``w_i = 2 pi / theta_i`` and ``L0 = original_max_position_embeddings``: ``w_i < L0 /
    high_freq_factor`` keeps ``theta_i``; ``w_i > L0 / low_freq_factor`` uses ``theta_i / s``; in between
    ``(1 - a) theta_i / s + a theta_i`` with ``a = (L0 / w_i - low_freq_factor) / (high_freq_factor -
    low_freq_factor)``. Scale 1.
    """
    import torch
    factor = _factor(params, "llama3")
    original = _original_length(params, "llama3")
    high, low = _band(params, "llama3", ("high_freq_factor", "wavelengths under L0 / it are kept"),
                      ("low_freq_factor", "wavelengths over L0 / it are interpolated"), "Meta uses 4 and 1.")
    theta = base_inv_freq(rotary_dim, base)
    wavelength = 2 * math.pi / theta
    blend = ((original / wavelength - low) / (high - low)).clamp(0, 1)  # 1 = keep, 0 = interpolate
    out = (1 - blend) * theta / factor + blend * theta
    out = torch.where(wavelength < original / high, theta, out)  # the band edges exactly as Meta writes them
    return torch.where(wavelength > original / low, theta / factor, out), 1.0


@register_scaling("proportional", params={"factor": 1.0, "partial_rotary_factor": 1.0}, paper="2410.06205")
def proportional_scaling(rotary_dim: int, base: float, params: Mapping[str, Any], *,
                         seq_len: int | None = None) -> tuple[Tensor, float]:
    """p-RoPE (Barbero et al. 2024, arXiv 2410.06205): keep the fastest pairs, zero the slowest (no rotation).

    With ``d = rotary_dim`` (the whole head), ``p = partial_rotary_factor`` and ``n = int(p * d // 2)``:
    ``theta_i = base^(-2i / d) / factor`` for ``i < n`` and ``theta_i = 0`` for ``n <= i < d/2``. This is *not*
    partial RoPE (``rotary_dim = p * d``, which recomputes the exponents over ``p * d`` channels and leaves the last
    channels of the head alone): the exponents stay those of the full head, and the unrotated channels are the
    pairs ``(i, i + d/2)`` of the slow half (in the half layout) — Hugging Face's ``proportional`` (Gemma 4). Scale 1.
    """
    factor = _factor(params, "proportional")
    fraction = _number(params, "partial_rotary_factor", "proportional", minimum=0.0,
                       hint=" Hint: the fraction of the head's rotary pairs that keep their frequency, in [0, 1].")
    if fraction > 1:
        raise ValueError(f"rope scaling 'proportional': partial_rotary_factor must be in [0, 1]; got {fraction!r}.")
    theta = base_inv_freq(rotary_dim, base)
    kept = int(fraction * rotary_dim // 2)
    theta[kept:] = 0.0
    return theta / factor, 1.0


def _ramp(rotary_dim: int, base: float, original: int, beta_fast: float, beta_slow: float, truncate: bool) -> Tensor:
    """YaRN's ramp over pair index: 0 for fast pairs (``i <= low``, kept), 1 for slow ones (``i >= high``)."""
    import torch
    low, high = yarn_correction_range(rotary_dim, base, original, beta_fast, beta_slow, truncate)
    if low == high:
        high += 0.001  # the reference code's guard against a zero-width ramp
    return ((torch.arange(rotary_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)


@register_scaling("yarn_log", params={"factor": REQUIRED, "beta_fast": 32.0, "beta_slow": 1.0,
                                      "extrapolation_factor": 1.0}, paper="2309.00071")
def yarn_log_scaling(rotary_dim: int, base: float, params: Mapping[str, Any], *,
                     seq_len: int | None = None) -> tuple[Tensor, float]:
    """Grok's ``yarn_log`` (vLLM ``Grok1ScalingRotaryEmbedding``): YaRN's ramp, blended in log space, scale 1.

    ``theta'_i = exp(m_i ln theta_i + (1 - m_i) ln(theta_i / s)) = theta_i / s^(1 - m_i)`` with ``m_i = (1 - r_i) *
    extrapolation_factor`` and ``r_i`` YaRN's ramp (0 fast, 1 slow; truncated band edges, as vLLM). YaRN's linear
    blend ``m theta + (1 - m) theta / s`` is an arithmetic mean of the two frequencies, this one the geometric mean,
    so pairs inside the band are stretched less. vLLM computes YaRN's magnitude scale for Grok but does not apply it
    (the line is commented out), so the attention scale is 1.
    """
    factor = _factor(params, "yarn_log")
    original = _original_length(params, "yarn_log")
    beta_fast, beta_slow = _band(params, "yarn_log", ("beta_fast", "turns above which pairs are kept"),
                                 ("beta_slow", "turns below which they are interpolated"), "Grok uses 32 and 1.")
    keep = _number(params, "extrapolation_factor", "yarn_log", minimum=0.0)
    if keep > 1:
        raise ValueError(f"rope scaling 'yarn_log': extrapolation_factor must be in [0, 1] (the weight of the kept "
                         f"frequency); got {keep!r}.")
    kept = (1 - _ramp(rotary_dim, base, original, beta_fast, beta_slow, True)) * keep
    return base_inv_freq(rotary_dim, base) / factor ** (1 - kept), 1.0


@register_scaling("theta_scale", params={"factor": REQUIRED})
def theta_scale_scaling(rotary_dim: int, base: float, params: Mapping[str, Any], *,
                        seq_len: int | None = None) -> tuple[Tensor, float]:
    """Grok's ``theta_scale`` (vLLM ``Grok1ScalingRotaryEmbedding``): a new base, ``base^(ln(s L0 / 2 pi) /
    ln(L0 / 2 pi))``, scale 1.

    The exponent is chosen so that a pair turning once over ``L0`` tokens at the old base turns once over ``s * L0``
    at the new one. Like ``ntk`` a pure base change; to_hf_config writes it as ``default`` with that base.
    """
    factor = _factor(params, "theta_scale")
    original = _original_length(params, "theta_scale")
    if original <= 2 * math.pi:
        raise ValueError(f"rope scaling 'theta_scale': the exponent ln(s L0 / 2 pi) / ln(L0 / 2 pi) needs a training "
                         f"length L0 > 2 pi; got original_max_position_embeddings={original}.")
    return base_inv_freq(rotary_dim, theta_scale_base(base, factor, original)), 1.0


def theta_scale_base(base: float, factor: float, original: int) -> float:
    """The base of Grok's ``theta_scale``: ``base ** (ln(factor * original / 2 pi) / ln(original / 2 pi))``."""
    return float(base) ** (math.log(original * factor / (2 * math.pi)) / math.log(original / (2 * math.pi)))


def telechat3_mscale(factor: float, attn_factor: float = 1.0) -> float:
    """TeleChat3's cos/sin scale: ``(0.07 ln s + 1) * attn_factor`` for ``s > 1``, else ``attn_factor``."""
    return (1.0 if factor <= 1 else 0.07 * math.log(factor) + 1.0) * attn_factor


@register_scaling("telechat3_yarn", params={"factor": REQUIRED, "beta_fast": 32.0, "beta_slow": 1.0,
                                            "truncate": True, "attn_factor": 1.0}, paper="2309.00071")
def telechat3_yarn_scaling(rotary_dim: int, base: float, params: Mapping[str, Any], *,
                           seq_len: int | None = None) -> tuple[Tensor, float]:
    """TeleChat3's YaRN (vLLM ``TeleChat3RoPEScaledRotaryEmbedding``): YaRN's frequencies, scale ``0.07 ln s + 1``.

    The frequencies are ``yarn``'s with the same ``beta_fast``, ``beta_slow`` and ``truncate``; only the magnitude
    scale differs from the paper's ``0.1 ln s + 1`` (:func:`telechat3_mscale`, times ``attn_factor``). to_hf_config
    writes it as Hugging Face's ``yarn`` with that ``attention_factor``.
    """
    factor = _factor(params, "telechat3_yarn")
    attn = _number(params, "attn_factor", "telechat3_yarn", minimum=0.0, strict=True)
    yarn = {k: params.get(k) for k in ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
                                       "truncate")}
    inv_freq, _ = yarn_scaling(rotary_dim, base, {**yarn, "attention_factor": 1.0}, seq_len=seq_len)
    return inv_freq, telechat3_mscale(factor, attn)


# -- parameters --------------------------------------------------------------------------------------------------------
def resolve_scaling(scaling: Mapping[str, Any], *, max_seq_len: int) -> dict[str, Any]:
    """Validate an HF-style scaling dict and fill defaults: ``{"rope_type": name, <every accepted key>: value}``.

    Accepts ``rope_type`` or the legacy ``type``; ``original_max_position_embeddings`` defaults to ``max_seq_len``
    (the length the encoding is built for, as Hugging Face defaults it to ``max_position_embeddings``); ``yarn`` and
    ``longrope`` take a missing ``factor`` as ``max_seq_len / original_max_position_embeddings`` as Hugging Face does.
    ``rope_theta`` and ``partial_rotary_factor`` are not scaling parameters: the caller checks and removes them.

    Raises:
        ValueError: unknown method or keys, missing required keys, or invalid values (checked by computing once).
    """
    if not isinstance(scaling, Mapping):
        raise TypeError(f"rope scaling must be a dict such as {{'rope_type': 'yarn', 'factor': 4.0}}; got "
                        f"{type(scaling).__name__}.")
    params = dict(scaling)
    name, legacy = params.pop("rope_type", None), params.pop("type", None)
    if name is not None and legacy is not None and name != legacy:
        raise ValueError(f"rope scaling: 'rope_type'={name!r} and the legacy 'type'={legacy!r} disagree; pass one.")
    name = name if name is not None else legacy
    if name is None:
        raise ValueError(f"rope scaling: the dict needs 'rope_type' (or legacy 'type'), one of "
                         f"{sorted(SCALING_METHODS)}; got keys {sorted(scaling)}.")
    if name not in SCALING_METHODS:
        raise ValueError(f"rope scaling: unknown rope_type {name!r}; posenc implements {sorted(SCALING_METHODS)}.")
    method = SCALING_METHODS[name]
    unknown = sorted(set(params) - set(method.params))
    if unknown:
        raise ValueError(f"rope scaling {name!r}: unknown key(s) {unknown}; it accepts {sorted(method.params)}.")
    missing = sorted(k for k, v in method.params.items() if v is REQUIRED and params.get(k) is None)
    if missing:
        raise ValueError(f"rope scaling {name!r}: missing required key(s) {missing}.")
    out = {"rope_type": name, **{k: v for k, v in method.params.items() if v is not REQUIRED}, **params}
    if out["original_max_position_embeddings"] is None:
        out["original_max_position_embeddings"] = max_seq_len
    if name in ("yarn", "longrope") and out.get("factor") is None:
        out["factor"] = max_seq_len / _original_length(out, name)
    if not isinstance(out["logn"], bool):
        raise ValueError(f"rope scaling {name!r}: logn must be a bool; got {out['logn']!r}.")
    if out["logn"]:
        _original_length(out, name)
    if out["llama_4_scaling_beta"] is not None:
        _number(out, "llama_4_scaling_beta", name, minimum=0.0)
        _original_length(out, name)
    return out


def scaled_inv_freq(rotary_dim: int, base: float, params: Mapping[str, Any], *,
                    seq_len: int | None = None) -> tuple[Tensor, float]:
    """Frequencies (float64 ``(rotary_dim // 2,)``) and cos/sin scale of the method named by ``params["rope_type"]``."""
    name = params.get("rope_type")
    if name not in SCALING_METHODS:
        raise ValueError(f"rope scaling: unknown rope_type {name!r}; posenc implements {sorted(SCALING_METHODS)}. "
                         f"Hint: resolve_scaling(...) validates a user's dict.")
    return SCALING_METHODS[name].fn(rotary_dim, base, params, seq_len=seq_len)


def logn_scale(pos: Tensor, train_len: int) -> Tensor:
    """Log-n query scale ``max(1, ln(pos + 1) / ln(train_len))`` (arXiv 2202.12172; Qwen's ``use_logn_attn``).

    A query at position ``p`` attends over ``p + 1`` tokens in a causal model; multiplying it by ``log_{L}(p + 1)``
    keeps the attention entropy of long contexts near that seen in training (length ``L``). Positions ``p < L`` are
    unchanged. ``pos``: int ``(...)`` -> float32 ``(...)``.
    """
    import torch
    check_int(train_len, "logn_scale: train_len", minimum=2)
    n = pos.to(torch.float64) + 1
    return (torch.log(n) / math.log(train_len)).clamp(min=1.0).to(torch.float32)


def llama_4_query_scale(pos: Tensor, beta: float, train_len: int) -> Tensor:
    """Ministral 3's / Mistral 4's query scale ``1 + beta * ln(1 + floor(pos / train_len))`` (transformers'
    ``get_llama_4_attn_scale``): 1 within the training length, then growing by steps of ``train_len``.

    ``pos``: int ``(...)`` -> float32 ``(...)``.
    """
    import torch
    check_int(train_len, "llama_4_query_scale: train_len", minimum=1)
    steps = torch.floor(pos.to(torch.float64) / train_len)
    return (1 + float(beta) * torch.log1p(steps)).to(torch.float32)


def llama4_attn_temperature(pos: Tensor, *, attn_scale: float = 0.1, floor_scale: int = 8192) -> Tensor:
    """Llama 4's query temperature on its NoPE layers, ``1 + attn_scale * ln(1 + floor((pos + 1) / floor_scale))``
    (transformers' ``Llama4TextAttention``; temperature tuning of arXiv 2501.19399). ``pos``: int ``(...)`` -> float32.
    """
    import torch
    check_number(floor_scale, "llama4_attn_temperature: floor_scale", above=0)
    steps = torch.floor((pos.to(torch.float64) + 1.0) / floor_scale)
    return (1 + float(attn_scale) * torch.log1p(steps)).to(torch.float32)


# -- inspection --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Band:
    """One rotary pair before and after scaling (a row of :func:`band_report`)."""

    pair: int  # pair index i
    wavelength: float  # 2 pi / theta_i, in tokens
    scaled_wavelength: float  # 2 pi / theta'_i
    stretch: float  # theta_i / theta'_i (1 = extrapolated, s = interpolated by the full factor)
    turns: float  # full turns within the training length: original / wavelength
    regime: str  # "extrapolate" (kept), "interpolate" (stretched by ~factor), "blend" (in between), "stretch"


def band_report(rotary_dim: int, base: float, params: Mapping[str, Any], *,
                seq_len: int | None = None) -> tuple[list[Band], float]:
    """Per-pair wavelengths before/after a scaling and the regime of each pair; also returns the attention scale."""
    before = base_inv_freq(rotary_dim, base)
    after, scale = scaled_inv_freq(rotary_dim, base, params, seq_len=seq_len)
    factor = params.get("factor") or 1.0
    original = params.get("original_max_position_embeddings") or 1
    rows = []
    for i, (b, a) in enumerate(zip(before.tolist(), after.tolist())):
        stretch = b / a
        if math.isclose(stretch, 1.0, rel_tol=1e-9):
            regime = "extrapolate"
        elif math.isclose(stretch, factor, rel_tol=1e-6):
            regime = "interpolate"
        elif 1.0 < stretch < factor:
            regime = "blend"
        else:
            regime = "stretch"  # e.g. NTK beyond s, or a LongRoPE factor outside [1, s]
        rows.append(Band(i, 2 * math.pi / b, 2 * math.pi / a, stretch, original * b / (2 * math.pi), regime))
    return rows, scale
