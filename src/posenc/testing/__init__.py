"""The conformance kit (``posenc conform``): check anyone's positional-encoding implementation against posenc's exact
references over a matrix of inputs, and when it fails, name the known bug that explains the numbers.

- :func:`check_rope` — a RoPE ``fn(q, k, positions) -> (q, k)`` against an HF-style config (every scaling, both
  layouts, partial rotary, offsets, ``(B, T)`` positions, GQA, positions up to 10**6, float32/bfloat16/float16, q/k
  contiguous and as the strided views Hugging Face's attention passes: transposed ``(B, T, H, D)``, fused qkv);
- :func:`check_mrope` — M-RoPE ``fn(q, k, coords) -> (q, k)`` with ``(B, T, 3)`` coordinates, blocked or interleaved
  sections;
- :func:`check_bias` — ALiBi ``fn(q_pos, k_pos) -> (H, Tq, Tk)`` and T5 bucket functions;
- :func:`check_hf_model` — a Hugging Face model's (or config's) own rotary code.

Each returns a :class:`ConformanceResult` with ``passed``, ``conforms`` (no bug; at most the long-position precision
limit of float32 angles), ``diagnosis`` (one sentence or ``None``) and ``cases`` (one row per input).
Shapes: q ``(B, H, T, D)``, k ``(B, Hkv, T, D)``, positions int64 ``(T,)`` or ``(B, T)``.
"""

# Loaded on first use (PEP 562), so that importing ``posenc.cli.conform`` for ``posenc --help`` needs no torch.
_EXPORTS = {
    "check_bias": "bias", "Case": "diagnose", "ConformanceResult": "diagnose", "Finding": "diagnose",
    "check_hf_model": "hf", "check_mrope": "mrope", "reference_mrope": "mrope", "check_rope": "rope",
    "reference_rope": "rope", "rope_spec": "rope",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = ["Case", "ConformanceResult", "Finding", "check_bias", "check_hf_model", "check_mrope", "check_rope",
           "reference_mrope", "reference_rope", "rope_spec"]
