"""Hugging Face interop for rotary encodings: read HF configs, swap posenc's RoPE into HF models, scale a trained rope.

- :func:`from_hf_config` builds the ``rope`` encoding a Hugging Face config describes (``rope_theta``, ``head_dim``,
  ``partial_rotary_factor``, and ``rope_parameters`` / legacy ``rope_scaling``), raising on invalid parameters where
  transformers only logs a warning.
- :func:`patch_rotary` finds the rotary modules of a Hugging Face causal LM (Llama-like, GPT-NeoX, GPT-J, Gemma 3's
  per-layer-type one, Phi-3, Qwen2-VL / Qwen3-VL, GraniteSWA's per-layer theta, Gemma 4, DeepSeek-V4's per-pair
  ones) and replaces each with a module that returns posenc's cos/sin in
  that model's layout, so the model runs on posenc's frequencies — checked against the model's own, or refused.
- :func:`to_hf_config` is the way back: the config fields (``rope_parameters``, ``rope_theta``, ...) of an encoding.
- :func:`to_scaled` converts a posenc model's (or encoding's) ``rope`` into a context-extended one, for the
  "zero-shot extension fails, a short fine-tune with interpolation recovers" experiments of PI and YaRN.

transformers is only needed for the models themselves; configs can be plain dicts (the contents of config.json).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from posenc._checks import check_int, check_number
from posenc.encodings.mla import MLARoPE
from posenc.encodings.mrope import MRoPE, bailing_axes, openpangu_axes
from posenc.encodings.rope import RoPE
from posenc.model import Transformer
from posenc.rope_scaling import telechat3_mscale, theta_scale_base

__all__ = [
    "PosencComplexRotaryEmbedding",
    "PosencGPTJRotaryEmbedding",
    "PosencLayerTypeRotaryEmbedding",
    "PosencMultimodalRotaryEmbedding",
    "PosencRotaryEmbedding",
    "find_rotary_modules",
    "from_hf_config",
    "hf_layer_config",
    "hf_layer_types",
    "mla_from_hf_config",
    "patch_rotary",
    "to_hf_config",
    "to_scaled",
]

HF_DEFAULT_THETA = 10_000.0  # transformers' RotaryEmbeddingConfigMixin.default_theta
# legacy rope_type names transformers still reads: Phi-3's "su" (and its "yarn", see _PHI3_TYPES) is LongRoPE,
# Qwen2-VL's "mrope" is plain frequencies with mrope_section
RoPE_TYPE_ALIASES = {"su": "longrope", "mrope": "default"}
_PHI3_TYPES = ("phi3", "phi4_multimodal")  # their configs map "yarn" to "longrope" too (configuration_phi3.py)
_COMPLEX_ROPE_TYPES = ("llama4", "llama4_text")  # model types whose rotary returns complex freqs_cis (interleaved)
_INTERLEAVED_TYPES = ("deepseek_v4",)  # model_type prefixes rotating pairs (2i, 2i + 1) on real cos/sin
_NTK_ALPHA_TYPES = ("hunyuan_v1",)  # model_type prefixes (dense, moe) whose 'dynamic' + alpha is static NTK-alpha
_INTERLEAVED_MROPE = ("qwen3_vl", "qwen3_omni", "qwen3_5")  # model_type prefixes whose M-RoPE interleaves axes
# Ernie-4.5-VL's M-RoPE (modeling_ernie4_5_vl_moe.py): mrope_section = (height, width, time) pair counts; the first
# height + width pairs alternate height, width (its "pre-rotated" inv_freq), time takes the last ones, and channels
# pair as (2i, 2i + 1) (rotate_half_text, repeat_interleave): VideoRoPE's table with the interleaved layout.
_ERNIE_VL_MROPE = ("ernie4_5_vl",)
# Hunyuan-VL's XD-RoPE (modeling_hunyuan_vl.py): four axes whose sections split the cat(f, f) channels, so the two
# channels of a pair can read different axes -- not a rotation of pairs, which no posenc encoding computes.
_XD_ROPE = ("hunyuan_vl",)
# openPangu (vLLM's MRotaryEmbeddingInterleaved, chosen when mrope_interleaved is set on these model types; not in
# transformers): its own greedy interleaving (openpangu_axes), not Qwen3-VL's round robin, on rotate_half pairs.
_OPENPANGU = ("openpangu", "pangu")
# Bailing / Ling / Ming VL (vLLM's BailingMRotaryEmbedding; not in transformers): h/w alternating, time last
# (bailing_axes); the pair layout (is_neox_style) is set by the model code, not the config, so it is not guessed here.
_BAILING = ("bailing",)


def _mrope_family(model_type: Any) -> str:
    """``"ernie"``, ``"hunyuan"``, ``"qwen3"``, ``"openpangu"``, ``"bailing"`` or ``"qwen2"`` (the default) for an
    M-RoPE model type; keyed on the
    family prefix (``ernie4_5_vl_moe_text`` is Ernie) so new sizes and text sub-configs are found."""
    model_type = str(model_type).lower()
    for family, prefixes in (("ernie", _ERNIE_VL_MROPE), ("hunyuan", _XD_ROPE), ("qwen3", _INTERLEAVED_MROPE),
                             ("openpangu", _OPENPANGU), ("bailing", _BAILING)):
        if model_type.startswith(prefixes):
            return family
    return "qwen2"
# config.json names of the same fields in older architectures (GPT-J: n_head, n_embd, n_positions)
_ALIASES = {"num_attention_heads": ("n_head",), "hidden_size": ("n_embd",), "max_position_embeddings": ("n_positions",)}


def _get(config: Any, key: str, default: Any = None) -> Any:
    for name in (key, *_ALIASES.get(key, ())):
        value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        if value is not None:
            return value
    return default


def _positive_int(config: Any, key: str) -> int:
    value = _get(config, key)
    if value is None:
        raise ValueError(f"from_hf_config: the config needs a positive int {key!r}; it has none.")
    return _check_int(value, key)


def _check_int(value: Any, key: str) -> int:
    return check_int(value, f"from_hf_config: {key}", minimum=1, type_hint="In config.json write it without quotes.")


def _check_number(value: Any, key: str) -> float:
    """A real number: a string such as ``"1e6"`` (a quoting slip in config.json) or a bool is refused, not parsed."""
    return check_number(value, f"from_hf_config: {key}", type_hint="In config.json write it without quotes.")


def _check_bool(value: Any, key: str) -> bool:
    """A real bool: ``"false"`` is a non-empty string, so ``bool("false")`` would be True."""
    if not isinstance(value, bool):
        raise TypeError(f"from_hf_config: {key} must be true or false (a bool); got {type(value).__name__} "
                        f"{value!r}. In config.json write false, not \"false\".")
    return value


# Types of the RoPE dict's values that rope_scaling checks only for range: refused here with the key's name.
_NUMBER_KEYS = ("factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "low_freq_factor",
                "high_freq_factor", "llama_4_scaling_beta", "partial_rotary_factor", "rope_theta")
_LIST_KEYS = ("short_factor", "long_factor")
_BOOL_KEYS = ("truncate", "mrope_interleaved")


def _check_rope_types(params: Mapping[str, Any], where: str) -> None:
    for key, value in params.items():
        if value is None:
            continue
        name = f"{where}[{key!r}]"
        if key in _NUMBER_KEYS:
            _check_number(value, name)
        elif key in _BOOL_KEYS:
            _check_bool(value, name)
        elif key == "original_max_position_embeddings":
            _check_int(value, name)
        elif key in _LIST_KEYS or key == "mrope_section":
            kind = int if key == "mrope_section" else (int, float)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, kind) and not isinstance(v, bool) for v in value):
                what = "ints" if key == "mrope_section" else "numbers"
                raise TypeError(f"from_hf_config: {name} must be a list of {what}; got {value!r:.80}.")


def _rope_dict(config: Any) -> dict:
    params = _get(config, "rope_parameters") or _get(config, "rope_scaling") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"from_hf_config: rope_parameters/rope_scaling must be a dict; got {type(params).__name__}.")
    return dict(params)


def hf_layer_types(config: Any) -> list[str]:
    """The layer types of a config with one RoPE dict per layer type (Gemma 3: ``sliding_attention``,
    ``full_attention``), sorted; ``[]`` for a single RoPE dict."""
    return sorted(k for k, v in _rope_dict(config).items() if isinstance(v, Mapping))


def from_hf_config(config: Any, *, layer_type: str | None = None,
                   rotary_dim: int | None = None) -> RoPE | MRoPE:
    """The ``rope`` (or ``mrope``) encoding described by a Hugging Face config (``PretrainedConfig`` or config.json).

    Reads ``num_attention_heads``, ``head_dim`` (default ``hidden_size // num_attention_heads``),
    ``max_position_embeddings``, ``rope_theta`` and ``partial_rotary_factor`` (top level or inside the RoPE dict), and
    ``rope_parameters`` (transformers >= 5) or the legacy ``rope_scaling`` with ``rope_type`` or ``type``. The
    encoding has ``dim = num_attention_heads * head_dim`` (what posenc sees of q is ``(B, H, T, head_dim)``), the
    half layout (``rotate_half``) and ``max_seq_len = max_position_embeddings``. As in transformers, a missing
    ``original_max_position_embeddings`` is ``max_position_embeddings`` (Phi-3's top-level field wins), a missing
    ``factor`` of ``yarn``/``longrope`` is their ratio, ``dynamic`` stretches past ``max_position_embeddings``, and the
    legacy ``"su"`` (and Phi-3's ``"yarn"``) is ``longrope``.

    Per family: GPT-J (``model_type="gptj"``) gives the interleaved layout on its first ``rotary_dim`` channels, and
    so does Llama 4 (``llama4_text``: complex ``freqs_cis`` over pairs ``(2i, 2i + 1)``) on the whole head;
    ``proportional`` (p-RoPE, Gemma 4) rotates the whole head with its slow pairs at frequency 0; a dict with
    ``mrope_section`` (Qwen2-VL, Qwen2.5-VL; Qwen3-VL with ``mrope_interleaved``) gives :class:`~posenc.MRoPE`;
    Hunyuan (``hunyuan_v1_dense``, ``hunyuan_v1_moe``) ``"dynamic"`` with ``alpha`` is NTK-alpha, static:
    posenc's ``ntk`` with ``factor = alpha`` (``base * alpha^(d / (d - 2))``; its ``factor`` is ignored, as in
    transformers). Per-layer-type sizes (Gemma 4's ``global_head_dim``) come from ``config.per_layer_config``
    when :func:`patch_rotary` builds the encodings.

    Args:
        config: the model config.
        layer_type: for configs with one RoPE dict per layer type (Gemma 3's ``"sliding_attention"`` and
            ``"full_attention"``; :func:`hf_layer_types` lists them), which one to read.
        rotary_dim: the number of channels the model really rotates, when that is not ``head_dim *
            partial_rotary_factor``: the default init of Llama-like models (``LlamaRotaryEmbedding`` and ~140 other
            classes) ignores ``partial_rotary_factor`` and rotates the whole head. :func:`patch_rotary` without an
            encoding reads it from the model's rotary module.

    Raises:
        TypeError: a value of the wrong type, named with its key: a string where a number belongs (``"rope_theta":
            "1e6"``), a string where a bool belongs (``"mrope_interleaved": "false"`` would be truthy), a float size.
        ValueError: missing sizes, ``hidden_size`` not divisible by ``num_attention_heads`` (without ``head_dim``),
            an unknown or unsupported ``rope_type`` (``axial``), or invalid scaling parameters (e.g. ``factor < 1``,
            wrong ``long_factor`` length) that transformers only warns about.
    """
    n_heads = _positive_int(config, "num_attention_heads")
    head_dim = _get(config, "head_dim")
    if head_dim is None:
        hidden = _positive_int(config, "hidden_size")
        if hidden % n_heads:
            raise ValueError(f"from_hf_config: hidden_size {hidden} is not divisible by num_attention_heads "
                             f"{n_heads}: head_dim = hidden_size // num_attention_heads = {hidden // n_heads} "
                             f"would leave {hidden % n_heads} channel(s) out; set head_dim in the config explicitly.")
        head_dim = hidden // n_heads
    head_dim = _check_int(head_dim, "head_dim")
    max_len = _positive_int(config, "max_position_embeddings")
    model_type = _get(config, "model_type")
    if layer_type is not None and not isinstance(layer_type, str):
        raise TypeError(f"from_hf_config: layer_type must be a str such as 'full_attention'; got "
                        f"{type(layer_type).__name__}.")
    if rotary_dim is not None:
        _check_int(rotary_dim, "rotary_dim")

    params = _rope_dict(config)
    nested = [k for k, v in params.items() if isinstance(v, Mapping)]
    if nested:
        if layer_type not in nested:
            raise ValueError(f"from_hf_config: this config has one RoPE dict per layer type {sorted(nested)}; pass "
                             f"layer_type= one of them (got {layer_type!r}), or use patch_rotary(model), which "
                             f"patches every layer type.")
        params = dict(params[layer_type])
    elif layer_type is not None:
        raise ValueError(f"from_hf_config: layer_type={layer_type!r} given but the config has a single RoPE dict.")
    _check_rope_types(params, "rope_parameters" if layer_type is None else f"rope_parameters[{layer_type!r}]")
    for key in ("rope_theta", "partial_rotary_factor"):  # the top-level fields of older configs
        if params.get(key) is None and _get(config, key) is not None:
            _check_number(_get(config, key), key)
    if _get(config, "original_max_position_embeddings") is not None:
        _check_int(_get(config, "original_max_position_embeddings"), "original_max_position_embeddings")
    params.pop("max_position_embeddings", None)  # Ministral 3 repeats it here; transformers ignores it
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    rope_type = RoPE_TYPE_ALIASES.get(rope_type, rope_type)
    if rope_type == "yarn" and model_type in _PHI3_TYPES:
        rope_type = "longrope"  # what Phi3Config does with it
    if rope_type == "axial":
        raise ValueError("from_hf_config: rope_type 'axial' (2-D vision RoPE) is not the 1-D `rope` encoding; use "
                         "posenc's `axial_rope`.")
    section = params.get("mrope_section")
    if section is not None and _mrope_family(model_type) == "hunyuan":  # before 'alpha': XD-RoPE is the reason
        raise ValueError(f"from_hf_config: {model_type!r} has {len(section)}-axis M-RoPE (Hunyuan-VL's XD-RoPE, "
                         f"mrope_section={list(section)}) whose sections split the cat(f, f) channels, so the two "
                         f"channels of a rotary pair read different axes (position, width, height, image index): not "
                         f"a rotation of pairs, which posenc's `mrope` tables compute. Unsupported; on text alone it "
                         f"is plain RoPE with base rope_theta * alpha^(head_dim / (head_dim - 2)).")
    alpha = params.pop("alpha", None)
    if alpha is not None:
        if rope_type != "dynamic" or not str(model_type).startswith(_NTK_ALPHA_TYPES):
            raise ValueError(f"from_hf_config: 'alpha' is Hunyuan's NTK-alpha (rope_type 'dynamic' in "
                             f"model_type {list(_NTK_ALPHA_TYPES)}); transformers ignores it for rope_type "
                             f"{rope_type!r} in model_type {model_type!r}. Remove it, or set model_type.")
        # HunYuanDenseV1RotaryEmbedding: a fixed alpha makes 'dynamic' the static NTK base change
        # base * alpha^(d / (d - 2)), whatever 'factor' says: posenc's `ntk` with factor = alpha
        alpha = _check_number(alpha, "rope_parameters['alpha']")
        if alpha < 1:
            raise ValueError(f"from_hf_config: Hunyuan's NTK-alpha stretches the base by alpha^(d/(d-2)); alpha must "
                             f"be >= 1, got {alpha!r}.")
        rope_type = "ntk"
        params = {"factor": float(alpha), **{k: params[k] for k in ("rope_theta", "partial_rotary_factor")
                                              if k in params}}

    base = params.pop("rope_theta", None)
    base = _get(config, "rope_theta", HF_DEFAULT_THETA) if base is None else base
    fraction = params.pop("partial_rotary_factor", None)
    fraction = _get(config, "partial_rotary_factor", 1.0) if fraction is None else fraction
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"from_hf_config: partial_rotary_factor must be in (0, 1]; got {fraction!r}.")

    section = params.pop("mrope_section", None)
    family = _mrope_family(model_type)
    # Qwen3-VL's text rotary interleaves whatever mrope_interleaved says (modeling_qwen3_vl.py)
    interleaved = params.pop("mrope_interleaved", None) is True or family == "qwen3"
    if section is not None and family == "bailing":
        raise ValueError(f"from_hf_config: {model_type!r} uses Bailing's M-RoPE (height/width alternating, time last), "
                         f"whose channel pairing (vLLM's is_neox_style) is set in the model code, not the config; "
                         f"build it yourself: MRoPE(..., pair_axes=posenc.encodings.mrope.bailing_axes("
                         f"{list(section)}), layout='half' or 'interleaved').")
    if section is not None and family == "openpangu" and rope_type == "openpangu":
        rope_type = "default"  # vLLM's name for this layout; the frequencies are plain
    if section is not None and family != "hunyuan" and len(section) != 3:
        raise ValueError(f"from_hf_config: {model_type!r} has {len(section)}-axis M-RoPE (mrope_section="
                         f"{list(section)}); posenc's mrope has three axes (time, height, width). Unsupported.")
    if section is not None:
        if rope_type != "default" or fraction != 1 or rotary_dim not in (None, head_dim):
            raise ValueError(f"from_hf_config: posenc's `mrope` (Qwen2-VL / Qwen3-VL) has plain frequencies over the "
                             f"whole head; this config combines mrope_section={list(section)} with "
                             f"rope_type={rope_type!r}, partial_rotary_factor={fraction}.")
        if family == "openpangu" and interleaved:
            return MRoPE(dim=n_heads * head_dim, n_heads=n_heads, max_seq_len=max_len, base=float(base),
                         layout="half", pair_axes=openpangu_axes([int(v) for v in section]))
        if family == "ernie":
            h, w, t = (int(v) for v in section)
            if h != w or h + w + t != head_dim // 2:
                raise ValueError(f"from_hf_config: Ernie-4.5-VL alternates height and width pairs, so its "
                                 f"mrope_section (height, width, time) needs height == width and a sum of head_dim / "
                                 f"2 = {head_dim // 2}; got {list(section)}.")
            return MRoPE(dim=n_heads * head_dim, n_heads=n_heads, max_seq_len=max_len, base=float(base),
                         layout="interleaved", pair_axes=bailing_axes((t, h, w)))
        return MRoPE(dim=n_heads * head_dim, n_heads=n_heads, max_seq_len=max_len, base=float(base), layout="half",
                     mrope_section=[int(s) for s in section], mrope_interleaved=interleaved)
    params["rope_type"] = rope_type

    layout = "half"
    if model_type == "gptj":  # GPT-J: rotate_every_two on the first rotary_dim channels, base 10000
        layout = "interleaved"
        width = _check_int(_get(config, "rotary_dim") or head_dim, "rotary_dim")
        fraction = width / head_dim
        rotary_dim = width if rotary_dim is None else rotary_dim
    elif model_type in _COMPLEX_ROPE_TYPES:  # Llama 4: view_as_complex over pairs (2i, 2i + 1)
        layout = "interleaved"
    elif str(model_type).startswith(_INTERLEAVED_TYPES):  # DeepSeek-V4: repeat_interleave + GPT-J's rotate_half
        layout = "interleaved"

    if rope_type in ("yarn", "longrope", "llama3"):
        top_level = _get(config, "original_max_position_embeddings")  # Phi-3 keeps it outside rope_scaling
        if top_level is not None:
            params["original_max_position_embeddings"] = top_level
        params.setdefault("original_max_position_embeddings", max_len)
        if rope_type in ("yarn", "longrope") and params.get("factor") is None:
            params["factor"] = max_len / params["original_max_position_embeddings"]
    elif rope_type == "dynamic":
        given = params.get("original_max_position_embeddings")
        if given is not None and given != max_len:
            raise ValueError(f"from_hf_config: 'dynamic' stretches past max_position_embeddings={max_len} in "
                             f"transformers, but the dict also sets original_max_position_embeddings={given}; remove "
                             f"it or make them equal.")
        params["original_max_position_embeddings"] = max_len
    elif rope_type == "proportional":  # p-RoPE: the fraction shapes the frequencies; the whole head is rotated
        params["partial_rotary_factor"] = fraction
        fraction = 1.0
    if rotary_dim is None:
        rotary_dim = int(head_dim * fraction)
    return RoPE(dim=n_heads * head_dim, n_heads=n_heads, max_seq_len=max_len, base=float(base), layout=layout,
                rotary_dim=rotary_dim, scaling=None if rope_type == "default" and len(params) == 1 else params)


_MUSE_TYPES = ("muse_spark", "muse_glimmer")  # model_type prefixes whose non-zero layer thetas all use the global one


def _rope_options(pe: RoPE) -> dict[str, Any]:
    """The ``rope`` options (``encoding_options`` of a TransformerConfig) that rebuild ``pe`` at a model's sizes."""
    return {"base": pe.base, "layout": pe.layout, "rotary_dim": pe.rotary_dim,
            "scaling": None if pe.scaling is None else dict(pe.scaling)}


def _per_layer_list(config: Any, key: str, n_layers: int) -> list | None:
    value = _get(config, key)
    if value is None or not isinstance(value, (list, tuple)):
        return None
    if len(value) != n_layers:
        raise ValueError(f"hf_layer_config: {key} has {len(value)} entries but the model has num_hidden_layers="
                         f"{n_layers}; give one per layer.")
    return list(value)


def hf_layer_config(config: Any) -> dict[str, Any]:
    """The :class:`~posenc.TransformerConfig` fields that give each layer the RoPE (or NoPE) of a Hugging Face config.

    Returns ``{"encoding", "encoding_options", "layer_encodings"}``: the first RoPE layer's ``rope`` options, and
    ``{layer: {"encoding": "nope"}}`` or ``{layer: {"encoding": "rope", ...}}`` for the layers that differ. Reads:

    - ``layer_rope_theta`` (GraniteSWA, Muse Spark): one base per layer, ``0`` = NoPE. Muse Spark's model applies
      the *global* theta to every non-zero entry, so a non-zero entry that differs from it is refused (the config
      and the model disagree); GraniteSWA honours each entry.
    - per-layer ``rope_theta`` / ``partial_rotary_factors`` lists (Step 3.7's config.json): transformers folds them
      into one RoPE dict per layer type, taking each type's values from its *first* layer, so lists that disagree
      within a layer type are refused (the model would silently use the first layer's).
    - one RoPE dict per layer type (Gemma 3, Gemma 4, Step 3.7 once loaded) with ``layer_types``.
    - otherwise one RoPE for every layer.

    Args:
        config: the model config (``PretrainedConfig`` or config.json as a dict), with ``num_hidden_layers``.

    Raises:
        ValueError: lists of the wrong length or disagreeing within a layer type, a Muse Spark theta its model
            ignores, or layer types of different head sizes (Gemma 4's ``global_head_dim``: one posenc model has one
            head size).
        TypeError: a theta that is not a number.
    """
    n_layers = _positive_int(config, "num_hidden_layers")
    model_type = str(_get(config, "model_type"))
    layer_types = _per_layer_list(config, "layer_types", n_layers)
    thetas = _per_layer_list(config, "layer_rope_theta", n_layers)
    layers: list[RoPE | None]
    if thetas is not None:
        rope = from_hf_config(config)
        for i, theta in enumerate(thetas):
            _check_number(theta, f"layer_rope_theta[{i}]")
        if model_type.startswith(_MUSE_TYPES):
            odd = {i: t for i, t in enumerate(thetas) if t and t != rope.base}
            if odd:
                raise ValueError(f"hf_layer_config: layer_rope_theta gives layers {sorted(odd)} the base(s) "
                                 f"{sorted(set(odd.values()))}, but {model_type}'s model applies the global "
                                 f"rope_theta={rope.base:g} to every non-NoPE layer; set those entries to "
                                 f"{rope.base:g} (or 0 for NoPE) so the config says what the model does.")
        layers = [None if not t else rope if t == rope.base else _with_base(rope, t) for t in thetas]
    elif isinstance(_get(config, "rope_theta"), (list, tuple)) or isinstance(
            _get(config, "partial_rotary_factors"), (list, tuple)):
        layers = _step_layers(config, n_layers, layer_types)
    elif hf_layer_types(config):
        if layer_types is None:
            raise ValueError("hf_layer_config: the config has one RoPE dict per layer type but no layer_types list "
                             "saying which layer has which.")
        unknown = sorted(set(layer_types) - set(hf_layer_types(config)))
        if unknown:
            raise ValueError(f"hf_layer_config: layer_types {unknown} have no RoPE dict (the config has "
                             f"{hf_layer_types(config)}); DeepSeek-V4 keys its RoPE by kind ('main', 'compress') and "
                             f"rotates values too, which posenc's Transformer does not express: patch the HF model "
                             f"with patch_rotary instead.")
        built = {t: from_hf_config(_layer_type_config(config, t), layer_type=t) for t in sorted(set(layer_types))}
        sizes = {t: pe.head_dim for t, pe in built.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"hf_layer_config: the layer types have different head sizes {sizes} (Gemma 4's "
                             f"global_head_dim); a posenc Transformer has one head size. Patch the HF model with "
                             f"patch_rotary instead.")
        layers = [built[t] for t in layer_types]
    else:
        layers = [from_hf_config(config)] * n_layers
    ropes = [pe for pe in layers if pe is not None]
    if not ropes:
        return {"encoding": "nope", "encoding_options": {}, "layer_encodings": {}}
    first = _rope_options(ropes[0])
    special = {}
    for i, pe in enumerate(layers):
        if pe is None:
            special[i] = {"encoding": "nope"}
        elif _rope_options(pe) != first:
            special[i] = {"encoding": "rope", **_rope_options(pe)}
    return {"encoding": "rope", "encoding_options": first, "layer_encodings": special}


def _with_base(pe: RoPE, base: float) -> RoPE:
    return RoPE(dim=pe.dim, n_heads=pe.n_heads, max_seq_len=pe.max_seq_len, base=float(base), layout=pe.layout,
                rotary_dim=pe.rotary_dim, scaling=None if pe.scaling is None else dict(pe.scaling))


def _step_layers(config: Any, n_layers: int, layer_types: list | None) -> list[RoPE]:
    """Step 3.7's per-layer ``rope_theta`` / ``partial_rotary_factors`` lists, checked per layer type."""
    thetas = _get(config, "rope_theta")
    thetas = list(thetas) if isinstance(thetas, (list, tuple)) else [thetas if thetas is not None else
                                                                     HF_DEFAULT_THETA] * n_layers
    fractions = _get(config, "partial_rotary_factors")
    fractions = list(fractions) if isinstance(fractions, (list, tuple)) else [1.0] * n_layers
    extra = _get(config, "num_nextn_predict_layers", 0)  # config.json pads the lists with the MTP layers' entries
    thetas, fractions = [v[:n_layers] if extra and len(v) == n_layers + extra else v for v in (thetas, fractions)]
    for key, values in (("rope_theta", thetas), ("partial_rotary_factors", fractions)):
        if len(values) != n_layers:
            raise ValueError(f"hf_layer_config: {key} has {len(values)} entries but the model has "
                             f"num_hidden_layers={n_layers}; give one per layer.")
        for i, v in enumerate(values):
            _check_number(v, f"{key}[{i}]")
    types = layer_types or ["full_attention"] * n_layers
    for t in sorted(set(types)):
        mine = [i for i, lt in enumerate(types) if lt == t]
        seen = {(thetas[i], fractions[i]) for i in mine}
        if len(seen) > 1:
            raise ValueError(f"hf_layer_config: the {t!r} layers {mine} have different (rope_theta, "
                             f"partial_rotary_factor) {sorted(seen)}, but transformers builds one RoPE per layer "
                             f"type from its first layer ({mine[0]}), so the model would not do what the lists say. "
                             f"Make them agree within each layer type.")
    base = dict(config) if isinstance(config, Mapping) else config.to_dict()
    base = {k: v for k, v in base.items() if k not in ("rope_theta", "partial_rotary_factors", "rope_parameters",
                                                       "rope_scaling")}
    scaling = _get(config, "rope_scaling")  # Step3p7TextConfig adds it to the full-attention layers only
    cache: dict[tuple, RoPE] = {}
    layers = []
    for theta, fraction, t in zip(thetas, fractions, types):
        key = (theta, fraction, t == "full_attention")
        if key not in cache:
            params = {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": fraction}
            if scaling and t == "full_attention":
                params.update(scaling)
            cache[key] = from_hf_config({**base, "rope_parameters": params})
        layers.append(cache[key])
    return layers


def mla_from_hf_config(config: Any) -> MLARoPE:
    """The ``mla`` encoding (decoupled RoPE of DeepSeek-V2/V3's Multi-head Latent Attention) of a HF config.

    Heads of ``qk_nope_head_dim + qk_rope_head_dim`` channels, RoPE on the last ``qk_rope_head_dim`` with the config's
    base and scaling, the interleaved pairing when ``rope_interleave`` (Hugging Face's default for DeepSeek-V3), and
    DeepSeek's softmax factor ``mscale(s, mscale_all_dim) ** 2`` on the queries. (To patch a Hugging Face DeepSeek
    model, use :func:`patch_rotary`: its rotary module is Llama-like with ``head_dim = qk_rope_head_dim``.)
    """
    for key in ("qk_rope_head_dim", "qk_nope_head_dim"):
        _positive_int(config, key)
    rope = from_hf_config(config)  # HF's DeepSeek configs set head_dim = qk_rope_head_dim
    rope_dim = _get(config, "qk_rope_head_dim")
    if not isinstance(rope, RoPE) or rope.head_dim != rope_dim:
        raise ValueError(f"mla_from_hf_config: expected head_dim = qk_rope_head_dim = {rope_dim} in the config (as "
                         f"DeepseekV3Config sets it); got an encoding of head_dim {rope.head_dim}.")
    n_heads = rope.n_heads
    head_dim = _get(config, "qk_nope_head_dim") + _get(config, "qk_rope_head_dim")
    interleave = _check_bool(_get(config, "rope_interleave", True), "rope_interleave")
    return MLARoPE(dim=n_heads * head_dim, n_heads=n_heads, max_seq_len=rope.max_seq_len,
                   qk_rope_head_dim=rope.head_dim, base=rope.base, layout="interleaved" if interleave else "half",
                   scaling=None if rope.scaling is None else dict(rope.scaling))


class PosencRotaryEmbedding(nn.Module):
    """Drop-in for a Hugging Face ``*RotaryEmbedding``: ``forward(x, position_ids) -> (cos, sin)`` from posenc.

    Returns ``(B, T, rotary_dim)`` tensors in HF's half layout (``cat(f, f)``, for ``rotate_half``), already
    multiplied by the encoding's attention scale, in ``x.dtype`` — what ``apply_rotary_pos_emb`` expects. Length-
    dependent scalings use ``seq_len = 1 + position_ids.max()`` per call, as transformers' ``dynamic_rope_update``.

    One difference for ``dynamic``: transformers keeps the frequencies of the longest call seen (until a call shorter
    than the training length resets them), posenc uses each call's own length. The two agree while a sequence grows
    (prefill, then decoding with a cache); they differ when a long call follows a longer one on the same module.
    ``longrope`` is stateless in both.
    """

    def __init__(self, encoding: RoPE, *, per_pair: bool = False) -> None:
        super().__init__()
        self.encoding = encoding
        self.per_pair = per_pair  # (B, T, rotary_dim / 2): one value per pair, the attention expands it (DeepSeek-V4)
        self.attention_scaling = encoding.attention_scale  # the attribute name transformers' rotary modules use

    @torch.no_grad()
    def forward(self, x: Tensor, position_ids: Tensor, layer_type: str | None = None) -> tuple[Tensor, Tensor]:
        cos, sin = self.encoding.cos_sin(position_ids.long(), dtype=torch.float32)  # (B, T, F)
        if self.per_pair:
            return cos.to(x.dtype), sin.to(x.dtype)
        return torch.cat((cos, cos), dim=-1).to(x.dtype), torch.cat((sin, sin), dim=-1).to(x.dtype)


class PosencLayerTypeRotaryEmbedding(nn.Module):
    """Drop-in for a per-layer-type rotary module (Gemma 3): ``forward(x, position_ids, layer_type) -> (cos, sin)``.

    One posenc ``rope`` per layer type (``encodings["sliding_attention"]``, ...), each returning what
    :class:`PosencRotaryEmbedding` does; with ``per_pair`` (DeepSeek-V4's ``main`` / ``compress``), one value per
    pair ``(B, T, rotary_dim / 2)``, which its attention expands to interleaved pairs itself.
    """

    def __init__(self, encodings: Mapping[str, RoPE], *, per_pair: bool = False) -> None:
        super().__init__()
        self.encodings = nn.ModuleDict({k: PosencRotaryEmbedding(v, per_pair=per_pair) for k, v in encodings.items()})
        self.layer_types = sorted(encodings)

    @torch.no_grad()
    def forward(self, x: Tensor, position_ids: Tensor, layer_type: str | None = None) -> tuple[Tensor, Tensor]:
        if layer_type not in self.encodings:
            raise ValueError(f"PosencLayerTypeRotaryEmbedding: layer_type must be one of {self.layer_types}; got "
                             f"{layer_type!r}.")
        return self.encodings[layer_type](x, position_ids)


class PosencGPTJRotaryEmbedding(nn.Module):
    """Drop-in for ``GPTJRotaryEmbedding``: ``forward(x, position_ids) -> (sin, cos)``, each ``(B, T, rotary_dim/2)``.

    GPT-J's ``apply_rotary_pos_emb`` repeats each value for a pair ``(2i, 2i + 1)`` (``rotate_every_two``): posenc's
    interleaved layout. Unlike GPT-J's table of ``max_position_embeddings`` rows, any position works.
    """

    def __init__(self, encoding: RoPE) -> None:
        super().__init__()
        self.encoding = encoding

    @torch.no_grad()
    def forward(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        cos, sin = self.encoding.cos_sin(position_ids.long(), dtype=torch.float32)  # (B, T, F)
        return sin.to(x.dtype), cos.to(x.dtype)


class PosencComplexRotaryEmbedding(nn.Module):
    """Drop-in for Llama 4's rotary: ``forward(x, position_ids) -> freqs_cis``, complex ``(B, T, rotary_dim / 2)``.

    Llama 4's ``apply_rotary_emb`` multiplies the complex numbers ``x[2i] + i x[2i + 1]`` by ``freqs_cis``: posenc's
    interleaved layout, ``freqs_cis = cos + i sin`` (already times the attention scale).
    """

    def __init__(self, encoding: RoPE) -> None:
        super().__init__()
        self.encoding = encoding
        self.attention_scaling = encoding.attention_scale

    @torch.no_grad()
    def forward(self, x: Tensor, position_ids: Tensor) -> Tensor:
        cos, sin = self.encoding.cos_sin(position_ids.long(), dtype=torch.float32)  # (B, T, F)
        return torch.complex(cos, sin)


class PosencMultimodalRotaryEmbedding(nn.Module):
    """Drop-in for Qwen2-VL's / Qwen3-VL's text rotary: ``forward(x, position_ids) -> (cos, sin)`` ``(B, T, D)``.

    ``position_ids`` is ``(3, B, T)`` (time, height, width; what ``get_rope_index`` builds) or ``(B, T)`` for text;
    the pairs read their axis as :class:`~posenc.MRoPE` assigns them (sections, or Qwen3-VL's interleaving).
    """

    def __init__(self, encoding: MRoPE, *, float32_output: bool = False) -> None:
        super().__init__()
        self.encoding = encoding
        self.attention_scaling = 1.0
        self.float32_output = float32_output  # Ernie-4.5-VL hands out float32 cos/sin whatever x's dtype

    @torch.no_grad()
    def forward(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        if position_ids.dim() == 2:
            position_ids = position_ids.unsqueeze(0)
        coords = position_ids.long().expand(3, -1, -1).permute(1, 2, 0)  # (3, B, T) -> (B, T, 3)
        cos, sin = self.encoding.cos_sin(coords)  # (B, T, F)
        if self.encoding.layout == "interleaved":  # Ernie-4.5-VL: pairs (2i, 2i + 1), repeat_interleave
            cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
        else:  # rotate_half: pairs (i, i + F)
            cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        dtype = torch.float32 if self.float32_output else x.dtype
        return cos.to(dtype), sin.to(dtype)


_LAYER_TYPE_STYLES = ("layer_types", "layer_pairs")  # forward(x, position_ids, layer_type): Gemma 3 / DeepSeek-V4
_REPLACEMENTS = (PosencRotaryEmbedding, PosencLayerTypeRotaryEmbedding, PosencGPTJRotaryEmbedding,
                 PosencComplexRotaryEmbedding, PosencMultimodalRotaryEmbedding)


def _rotary_style(module: nn.Module) -> str | None:
    """How a Hugging Face rotary module hands out cos/sin, or ``None`` if it is not a text rotary module we know."""
    name = type(module).__name__
    if not name.endswith("RotaryEmbedding") or "Vision" in name or isinstance(module, _REPLACEMENTS):
        return None
    if isinstance(getattr(module, "embed_positions", None), Tensor):
        return "gptj"  # a (sin | cos) table, interleaved pairs
    if getattr(module, "mrope_section", None) is not None:
        return "mrope"
    if getattr(module, "layer_types", None) and all(
            isinstance(getattr(module, f"{t}_inv_freq", None), Tensor) for t in module.layer_types):
        first = module.layer_types[0]
        freq = getattr(module, f"{first}_inv_freq")
        try:  # DeepSeek-V4 returns one cos/sin per pair (its attention expands them), Gemma 3 cat(f, f): ask
            with torch.no_grad():
                out = module(torch.zeros(1, device=freq.device), torch.arange(2, device=freq.device)[None], first)
        except Exception:  # noqa: BLE001 - a module we cannot call is one we do not know
            return "unknown"
        if not (isinstance(out, tuple) and len(out) == 2):
            return "unknown"
        return "layer_pairs" if out[0].shape[-1] == freq.numel() else "layer_types"
    if isinstance(getattr(module, "inv_freq", None), Tensor):
        device = module.inv_freq.device
        try:  # Llama 4 returns complex freqs_cis instead of (cos, sin): ask the module
            with torch.no_grad():
                out = module(torch.zeros(1, device=device), torch.arange(2, device=device)[None])
        except Exception:  # noqa: BLE001 - a module we cannot call is one we do not know
            return "unknown"
        if isinstance(out, Tensor) and out.is_complex():
            return "complex"
        return "llama" if isinstance(out, tuple) and len(out) == 2 else "unknown"
    return "unknown"


def find_rotary_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """The text rotary modules of a Hugging Face model: ``(qualified name, module, style)`` for each.

    Style is ``"llama"`` (``forward(x, position_ids) -> (cos, sin)`` with ``inv_freq``: Llama, Mistral, Qwen2,
    GPT-NeoX, Phi, Phi-3, DeepSeek-V3, ...), ``"complex"`` (Llama 4's ``freqs_cis``), ``"layer_types"`` (Gemma 3:
    ``forward(x, position_ids, layer_type)``), ``"gptj"`` (a sin/cos table), ``"mrope"`` (Qwen2-VL, Qwen3-VL) or
    ``"unknown"`` (a ``*RotaryEmbedding`` posenc cannot replace).
    Vision-tower rotary modules are not listed.
    """
    found = []
    for name, module in model.named_modules():
        style = _rotary_style(module)
        if style is not None:
            found.append((name, module, style))
    return found


def _module_config(model: nn.Module, name: str, module: nn.Module) -> Any:
    config = getattr(module, "config", None)
    if config is not None:
        return config
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):  # the nearest enclosing module with a config
        owner = model.get_submodule(".".join(parts[:i])) if i else model
        if getattr(owner, "config", None) is not None:
            return owner.config
    raise TypeError(f"patch_rotary: found no config for the rotary module {name!r}; pass encoding= explicitly.")


def _hf_width(module: nn.Module, style: str, layer_type: str | None = None) -> int:
    """Channels the HF module rotates (2 x its number of frequencies)."""
    if style == "gptj":
        return module.embed_positions.shape[-1]
    freq = getattr(module, f"{layer_type}_inv_freq") if layer_type is not None else module.inv_freq
    return 2 * freq.numel()


def _layer_type_config(config: Any, layer_type: str) -> Any:
    """The config of one layer type where sizes differ per layer (Gemma 4: its full-attention layers have
    ``global_head_dim``, and the global ``head_dim`` is then refused as ambiguous): transformers' per-layer view
    ``config.per_layer_config[layer_type]``, else ``config`` itself."""
    try:
        view = getattr(config, "per_layer_config", None)
        return config if view is None or isinstance(view, Mapping) and layer_type not in view else view[layer_type]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):  # no view for it (DeepSeek-V4's 'main')
        return config


def _build(model: nn.Module, name: str, module: nn.Module, style: str) -> Any:
    """posenc's encoding(s) equal to what the HF module computes."""
    config = _module_config(model, name, module)
    if style in _LAYER_TYPE_STYLES:
        return {t: from_hf_config(_layer_type_config(config, t), layer_type=t,
                                  rotary_dim=_hf_width(module, style, t))
                for t in module.layer_types}
    if style == "mrope":
        pe = from_hf_config(config)
        if not isinstance(pe, MRoPE):
            raise ValueError(f"patch_rotary: {name!r} ({type(module).__name__}) applies multimodal RoPE but its config "
                             f"has no mrope_section.")
        return pe
    pe = from_hf_config(config, rotary_dim=_hf_width(module, style))
    if isinstance(pe, MRoPE):
        raise ValueError(f"patch_rotary: the config of {name!r} has mrope_section but {type(module).__name__} is a "
                         f"1-D rotary module.")
    return pe


def _probe_positions(module: nn.Module, style: str, device: torch.device) -> Tensor:
    length = 64
    limit = getattr(module, "original_max_seq_len", None) or getattr(module, "max_positions", None)
    if limit:
        length = min(length, int(limit) - 1)  # below the training length: dynamic and longrope are at rest
    pos = torch.arange(length, device=device)[None]  # (1, T)
    if style == "mrope":  # three different axes: (time, height, width) = (p, p // 2, 3p mod T)
        pos = torch.stack((pos, pos // 2, (3 * pos) % length))  # (3, 1, T)
    return pos


def _outputs(module: nn.Module, style: str, x: Tensor, pos: Tensor, layer_type: str | None) -> tuple[Tensor, ...]:
    with torch.no_grad():
        out = module(x, pos, layer_type) if style in _LAYER_TYPE_STYLES else module(x, pos)
    if isinstance(out, Tensor):  # complex freqs_cis
        return torch.view_as_real(out).float(),
    return tuple(t.float() for t in out)


# Largest |cos/sin difference| at the probe positions for patch_rotary to call posenc's numbers the model's: both
# sides form cos/sin in float32 from float32 frequencies, so they agree to a few float32 ulps times the angle (~1e-6
# at positions < 64); a real difference (another base, scale or frequency by 1e-3) is far above it.
EXACT_COS_SIN = 1e-4


def _float32_reference(module: nn.Module, config: Any) -> tuple[nn.Module, str | None]:
    """The HF module to compare posenc with, and a note on its buffers for the messages.

    ``model.to(torch.bfloat16)`` (or float16) casts every floating buffer, so a rotary module's ``inv_freq`` (and
    ``original_inv_freq``, Gemma 3's per-layer-type ones, GPT-J's sin/cos table) are rounded to 8 bits of mantissa:
    its cos/sin then differ from the config's by up to ``position * theta * 2^-9`` (0.03 at position 64), which no
    exact comparison survives. ``from_pretrained(..., dtype=torch.bfloat16)`` keeps them in float32. When every such
    buffer is exactly the rounding of what the module's own ``__init__`` computes from ``config`` (in float32), the
    reference is a copy of the module with those float32 buffers: the frequencies the config defines and the model
    was trained with, which posenc's replacement uses. Otherwise the module itself, with a note that says why.
    """
    low = {n: b for n, b in module.named_buffers(recurse=False) if b.dtype in (torch.bfloat16, torch.float16)}
    if not low:
        return module, None
    dtype = str(next(iter(low.values())).dtype).replace("torch.", "")
    note = (f"its buffers {sorted(low)} are {dtype} (model.to(torch.{dtype}) rounds them; from_pretrained(..., "
            f"dtype=torch.{dtype}) keeps them float32)")
    try:
        fresh = type(module)(config)  # what the model's __init__ built, in float32 on the CPU
    except Exception as exc:  # noqa: BLE001 - a module we cannot rebuild is compared as it is
        return module, f"{note}, and posenc could not rebuild {type(module).__name__} in float32 ({exc})"
    for n, b in low.items():
        exact = getattr(fresh, n, None)
        if not isinstance(exact, Tensor) or exact.shape != b.shape or not torch.equal(exact.to(b), b):
            return module, (f"{note}, but {n} is not the {dtype} rounding of what the config gives, so the "
                            f"frequencies were changed after loading")
    twin = copy.deepcopy(module)  # every other attribute (attention_scaling, ...) stays the model's own
    for n, b in low.items():
        setattr(twin, n, getattr(fresh, n).to(b.device))
    return twin, None


def _check_same(name: str, old: nn.Module, new: nn.Module, style: str, layer_type: str | None,
                exact: bool, reference: nn.Module | None = None, note: str | None = None) -> None:
    """Run the HF module (or ``reference``, its float32 twin: :func:`_float32_reference`) and its replacement on
    probe positions: same shapes always, same numbers (to :data:`EXACT_COS_SIN`) if ``exact``."""
    device = next((b.device for b in old.buffers()), torch.device("cpu"))
    x = torch.zeros(1, device=device, dtype=torch.float32)
    pos = _probe_positions(old, style, device)
    hf, ours = _outputs(reference or old, style, x, pos, layer_type), _outputs(new, style, x, pos, layer_type)
    where = f"{name!r} ({type(old).__name__}{'' if layer_type is None else f', layer_type={layer_type!r}'})"
    shapes = [tuple(t.shape) for t in hf], [tuple(t.shape) for t in ours]
    if shapes[0] != shapes[1]:
        raise ValueError(f"patch_rotary: {where} returns cos/sin of shapes {shapes[0]}, the encoding would return "
                         f"{shapes[1]}: a different rotary width. Hint: patch_rotary(model) without an encoding "
                         f"builds matching ones (or from_hf_config(config, rotary_dim=...)).")
    if exact:
        diff = max(float((a - b).abs().max()) for a, b in zip(hf, ours))
        if diff > EXACT_COS_SIN:
            why = "" if note is None else f" ({note})"
            raise ValueError(f"patch_rotary: posenc's cos/sin differ from {where} by {diff:.3g} at positions < "
                             f"{pos.shape[-1]}{why}: the model computes RoPE in a way posenc does not reproduce; not "
                             f"patched.")


def patch_rotary(model: nn.Module, encoding: RoPE | Mapping[str, RoPE] | None = None) -> nn.Module:
    """Replace the rotary embedding of a Hugging Face model with posenc's; in place, returns ``model``.

    Finds the text rotary modules by walking the model (:func:`find_rotary_modules`): Llama-like ones (Llama,
    Mistral, Qwen2, GPT-NeoX, Phi, Phi-3, DeepSeek-V3, Ministral 3, ...), Gemma 3's per-layer-type module, GPT-J's
    sin/cos table, Llama 4's complex ``freqs_cis`` and the multimodal ones of Qwen2-VL / Qwen3-VL and Ernie-4.5-VL
    (an ``mrope`` whose table alternates height and width, time last, on interleaved pairs; Hunyuan-VL's 4-axis XD-RoPE
    is refused: its pairs' two channels read different axes, see :func:`from_hf_config`). Each is replaced by a
    module returning the same tensors from posenc (:class:`PosencRotaryEmbedding`,
    :class:`PosencLayerTypeRotaryEmbedding`, :class:`PosencGPTJRotaryEmbedding`, :class:`PosencComplexRotaryEmbedding`,
    :class:`PosencMultimodalRotaryEmbedding`). What the attention layers do besides (Llama 4's NoPE layers, chunked
    masks and query temperature, DeepSeek's softmax mscale, Ministral 3's query scale) stays the model's own.

    Released 2026 families this covers: GraniteSWA (one rotary module per distinct non-zero ``layer_rope_theta``,
    which the model finds through the module's ``config``: the replacement keeps it; theta 0 = a NoPE layer, given no
    cos/sin by the model), Muse Spark (one rotary; its NoPE layers are the model's), Step 3.7 (its per-layer
    ``rope_theta`` / ``partial_rotary_factors`` lists folded per layer type by the config: one width per layer type),
    Gemma 4 (``proportional`` on the full-attention layers' ``global_head_dim``), Hunyuan (NTK-alpha) and
    DeepSeek-V4. DeepSeek-V4's rotaries (the model's, and one in each compressor and indexer) return one cos/sin per
    pair for its two RoPE kinds ``main`` and ``compress``; its attention rotates q and the shared K = V entry with
    them (interleaved pairs on the *last* ``qk_rope_head_dim`` channels) and de-rotates the attention output with
    ``(cos, -sin)``. Patching swaps the table all three read, so the model stays exact. In posenc's own attention
    this has no ``rotate`` equivalent: with K = V, ``R(-t) sum_s a_ts R(s) v_s = sum_s a_ts R(s - t) v_s`` is a
    *value* rotation by the relative offset, a ``terms`` value term rather than a q/k rotation; posenc does not
    implement it, and :func:`from_hf_config` gives the q/k part only (an interleaved ``rope`` of the rotary width,
    on the first channels where V4 rotates the last: permute the projections to use it in posenc's layout).

    With ``encoding=None`` posenc builds the equivalent encodings from the model's config and rotary modules (one per
    layer type for Gemma 3), and checks on probe positions that they reproduce the model's cos/sin (to
    :data:`EXACT_COS_SIN`); so the logits are unchanged or the call raises. One exception, by design: after
    ``model.to(torch.bfloat16)`` (or float16) the rotary's ``inv_freq`` buffers (GPT-J: its sin/cos table) are
    rounded to that dtype, which ``from_pretrained(..., dtype=...)`` does not do. When they are exactly the rounding
    of the float32 values the config gives, posenc checks against those and patches: the patched model runs on the
    config's frequencies, as the model loaded with ``from_pretrained(..., dtype=torch.bfloat16)`` does, and its
    logits differ from the cast model's by what the rounding did (about 2 bfloat16 ulps on a tiny Llama).
    With an ``encoding`` (a ``rope``, or a dict ``{layer_type: rope}`` for Gemma 3),
    that one is used — e.g. another scaling — after checking that it has the model's rotary width.

    Raises:
        TypeError: ``encoding`` is not a plain ``rope`` (xPos scales q and k differently), or the model has no text
            rotary module posenc knows (the message names what was found).
        ValueError: wrong layout (HF's ``rotate_half`` needs ``layout='half'``; GPT-J needs ``'interleaved'``), a
            rotary width different from the model's, log-n scaling (it scales queries only, which a shared
            ``(cos, sin)`` cannot express), a single encoding for a per-layer-type model, or posenc's numbers
            differing from the model's.
    """
    found = find_rotary_modules(model)
    usable = [(n, m, s) for n, m, s in found if s != "unknown"]
    if not usable and any(isinstance(m, _REPLACEMENTS) for m in model.modules()):
        raise TypeError(f"patch_rotary: {type(model).__name__} is already patched (its rotary modules are posenc's); "
                        f"to swap in another encoding, patch a fresh model.")
    if not usable:
        seen = ", ".join(f"{n or '<root>'}: {type(m).__name__}" for n, m, _ in found) or "no *RotaryEmbedding module"
        raise TypeError(f"patch_rotary: found no text rotary module posenc can replace in {type(model).__name__} "
                        f"({seen}); it supports Llama-like models (a `rotary_emb` with `inv_freq` whose forward(x, "
                        f"position_ids) returns (cos, sin)), Gemma 3, GPT-J, GPT-NeoX, Phi-3, Qwen2-VL, Qwen3-VL and "
                        f"Ernie-4.5-VL.")
    unknown = [(n, type(m).__name__) for n, m, s in found if s == "unknown"]
    if unknown:
        raise TypeError(f"patch_rotary: {type(model).__name__} also has rotary modules posenc does not know how to "
                        f"replace: {unknown}; patching only some of them would mix two RoPEs. Not patched.")
    plans = []
    for name, module, style in usable:
        device = next((b.device for b in module.buffers()), None)
        exact = encoding is None
        chosen = _build(model, name, module, style) if exact else encoding
        reference, note = _float32_reference(module, _module_config(model, name, module)) if exact else (None, None)
        if style in _LAYER_TYPE_STYLES:
            if not isinstance(chosen, Mapping) or sorted(chosen) != sorted(module.layer_types):
                raise ValueError(f"patch_rotary: {name!r} ({type(module).__name__}) computes one RoPE per layer type "
                                 f"{sorted(module.layer_types)}; pass encoding=None (built from the config) or a dict "
                                 f"with one `rope` per layer type, got {type(chosen).__name__}.")
            per_pair = style == "layer_pairs"  # DeepSeek-V4: interleaved pairs (its own rotate_half is GPT-J's)
            encodings = {t: _check_encoding(pe, "interleaved" if per_pair else "half") for t, pe in chosen.items()}
            if device is not None:
                encodings = {t: pe.to(device) for t, pe in encodings.items()}
            new = PosencLayerTypeRotaryEmbedding(encodings, per_pair=per_pair)
            for t in module.layer_types:
                _check_same(name, module, new, style, t, exact, reference, note)
        else:
            if isinstance(chosen, Mapping):
                raise ValueError(f"patch_rotary: {name!r} ({type(module).__name__}) has a single RoPE; got a dict of "
                                 f"encodings per layer type {sorted(chosen)}.")
            if style == "mrope":
                if not isinstance(chosen, MRoPE):
                    raise TypeError(f"patch_rotary: {name!r} ({type(module).__name__}) is multimodal RoPE; pass an "
                                    f"`mrope` encoding (or None), got {type(chosen).__name__}.")
                family = _mrope_family(_get(_module_config(model, name, module), "model_type"))
                if family == "hunyuan":  # an encoding given by hand cannot make XD-RoPE's pairs rotations either
                    from_hf_config(_module_config(model, name, module))  # raises, saying why
                ernie = family == "ernie"
                want = "interleaved" if ernie else "half"
                if chosen.layout != want:
                    pairing = "(2i, 2i + 1) (rotate_half_text)" if ernie else "with rotate_half"
                    raise ValueError(f"patch_rotary: {type(module).__name__} pairs channels {pairing}; the mrope "
                                     f"encoding uses layout={chosen.layout!r}. Build it with layout={want!r}.")
                pe = chosen
            else:
                pe = _check_encoding(chosen, "interleaved" if style in ("gptj", "complex") else "half")
            if style != "mrope":
                _check_query_scale(pe, _module_config(model, name, module), name)
            pe = pe if device is None else pe.to(device)
            if style == "mrope":
                new = PosencMultimodalRotaryEmbedding(pe, float32_output=ernie)
            else:
                new = {"gptj": PosencGPTJRotaryEmbedding,
                       "complex": PosencComplexRotaryEmbedding}.get(style, PosencRotaryEmbedding)(pe)
            _check_same(name, module, new, style, None, exact, reference, note)
        if getattr(module, "config", None) is not None:
            # the model may read the rotary's config: GraniteSWA keys its per-layer cos/sin on
            # rotary_embs[i].config.rope_parameters["rope_theta"] (one module per layer theta)
            new.config = module.config
        plans.append((name, new))
    for name, new in plans:  # replace only once every module has passed its checks
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


def _check_query_scale(pe: RoPE, config: Any, name: str) -> None:
    """``llama_4_scaling_beta`` scales queries in the HF attention itself: the encoding's must be the model's."""
    ours = None if pe.scaling is None else pe.scaling["llama_4_scaling_beta"]
    params = _rope_dict(config)
    theirs = params.get("llama_4_scaling_beta")
    if ours != theirs:
        raise ValueError(f"patch_rotary: the encoding has llama_4_scaling_beta={ours!r} but the model's attention "
                         f"(around {name!r}) applies {theirs!r}; the rotary module cannot change that query scale. "
                         f"Use the model's value (from_hf_config(config) reads it).")


def _check_encoding(encoding: Any, layout: str) -> RoPE:
    if type(encoding) is not RoPE:
        raise TypeError(f"patch_rotary: expected a posenc `rope` encoding (RoPE); got {type(encoding).__name__}.")
    if encoding.layout != layout:
        how = "rotate_half (layout='half')" if layout == "half" else "pairs (2i, 2i + 1) (layout='interleaved')"
        raise ValueError(f"patch_rotary: this Hugging Face model pairs channels with {how}; the encoding uses "
                         f"layout={encoding.layout!r}. Build it with layout={layout!r} or permute the q/k projections "
                         f"with posenc.permute_projection.")
    if encoding.scaling is not None and encoding.scaling["logn"]:
        raise ValueError("patch_rotary: log-n scaling multiplies queries only, but HF applies one (cos, sin) to both "
                         "q and k; remove 'logn' from the scaling.")
    return encoding


# posenc scaling methods that transformers has too (posenc's "ntk" is static NTK, which transformers lacks)
HF_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional")


def _rope_parameters(pe: RoPE | MRoPE, model_type: str | None = None) -> tuple[dict, int]:
    """One HF RoPE dict for ``pe`` and the max_position_embeddings it implies."""
    if type(pe) not in (RoPE, MRoPE):
        raise TypeError(f"to_hf_config: expected a posenc `rope` or `mrope` encoding; got {type(pe).__name__}.")
    max_len = pe.max_seq_len
    out: dict[str, Any] = {"rope_type": "default", "rope_theta": pe.base}
    if isinstance(pe, MRoPE):
        if pe.layout != "half":
            raise ValueError(f"to_hf_config: Qwen2-VL / Qwen3-VL pair channels with rotate_half; the mrope encoding "
                             f"uses layout={pe.layout!r}. Hint: build it with layout='half'.")
        if not pe.qwen_layout:
            raise ValueError(f"to_hf_config: this mrope encoding has its own pair -> axis table {list(pe.pair_axes)} "
                             f"(axis_scale {list(pe.axis_scale)}), which Qwen2-VL's mrope_section / Qwen3-VL's "
                             f"mrope_interleaved cannot describe; only those two layouts (with unit scales) export.")
        out.update(mrope_section=list(pe.mrope_section))
        if pe.mrope_interleaved:
            out["mrope_interleaved"] = True
        return out, max_len
    out["partial_rotary_factor"] = pe.rotary_dim / pe.head_dim
    if pe.scaling is None:
        return out, max_len
    scaling = dict(pe.scaling)
    name = scaling.pop("rope_type")
    if scaling.pop("logn"):
        raise ValueError("to_hf_config: transformers has no log-n query scaling; remove 'logn' from the scaling "
                         "(Qwen-1's use_logn_attn lives in its own modeling code).")
    if name == "ntk" and str(model_type).startswith(_NTK_ALPHA_TYPES):  # Hunyuan's NTK-alpha (see from_hf_config)
        out.update(rope_type="dynamic", alpha=scaling["factor"])
        return out, max_len
    if name == "theta_scale":  # Grok's base change: plain RoPE at the new base
        if scaling["llama_4_scaling_beta"] is not None:
            raise ValueError("to_hf_config: 'theta_scale' exports as rope_type 'default', which has no "
                             "llama_4_scaling_beta; remove it.")
        out["rope_theta"] = theta_scale_base(pe.base, scaling["factor"], scaling["original_max_position_embeddings"])
        return out, max_len
    if name == "telechat3_yarn":  # YaRN's frequencies with TeleChat3's scale: HF's yarn + attention_factor
        name = "yarn"
        scaling["attention_factor"] = telechat3_mscale(scaling["factor"], scaling.pop("attn_factor"))
    if name == "yarn_log":
        raise ValueError("to_hf_config: Grok's 'yarn_log' blends kept and interpolated frequencies geometrically; "
                         "transformers' 'yarn' blends them linearly, so no HF rope_type gives these frequencies. "
                         "Hint: 'yarn' with attention_factor=1.0 is Grok's 'yarn' variant, which HF can express.")
    if name not in HF_ROPE_TYPES:
        raise ValueError(f"to_hf_config: rope_type {name!r} has no Hugging Face equivalent; transformers implements "
                         f"{list(HF_ROPE_TYPES)}. Hint: static NTK is posenc's own; 'dynamic' is transformers' "
                         f"length-dependent form.")
    original = scaling.pop("original_max_position_embeddings")
    if name == "dynamic":  # transformers stretches past max_position_embeddings itself
        max_len = original
    elif name in ("yarn", "longrope", "llama3"):
        out["original_max_position_embeddings"] = original
    if name == "proportional":
        out["partial_rotary_factor"] = scaling.pop("partial_rotary_factor")
    if name == "yarn" and scaling.get("truncate") is True:
        scaling.pop("truncate")  # transformers' default
    out["rope_type"] = name
    out.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in scaling.items() if v is not None})
    return out, max_len


def to_hf_config(encoding: RoPE | MRoPE | Mapping[str, RoPE], *, model_type: str | None = None) -> dict:
    """The Hugging Face config fields that describe ``encoding``: the inverse of :func:`from_hf_config`.

    Returns a plain dict (update a config.json with it, or pass it to a config class:
    ``LlamaConfig(**to_hf_config(pe), vocab_size=...)``) with ``num_attention_heads``, ``head_dim``, ``hidden_size``
    (``= num_attention_heads * head_dim``; set your own if the model's differs), ``max_position_embeddings``,
    ``rope_theta``, ``partial_rotary_factor`` and ``rope_parameters`` (transformers >= 5), holding ``rope_type``, the
    scaling's parameters under transformers' names and ``rope_theta``. ``from_hf_config(to_hf_config(pe))`` has the
    same frequencies, attention scale, rotary width and layout as ``pe``.

    Per case: ``dynamic`` sets ``max_position_embeddings`` to its training length (transformers stretches past
    that); an ``mrope`` encoding writes ``mrope_section`` (and ``mrope_interleaved``); a dict ``{layer_type: rope}``
    gives Gemma 3's nested ``rope_parameters``; ``model_type="gptj"`` gives GPT-J's fields (``n_head``, ``n_embd``,
    ``n_positions``, ``rotary_dim``) for an interleaved, unscaled ``rope`` at base 10000; ``model_type=
    "hunyuan_v1_dense"`` (or ``"hunyuan_v1_moe"``) writes posenc's static ``ntk`` as Hunyuan's NTK-alpha,
    ``{"rope_type": "dynamic", "alpha": factor}``.

    Raises:
        ValueError: what transformers cannot express: the interleaved layout (except GPT-J), log-n scaling, posenc's
            static ``ntk`` (except for Hunyuan), GPT-J with a base or scaling it hard-codes otherwise, or layer types
            of different sizes.
        TypeError: not a ``rope`` / ``mrope`` encoding.
    """
    if isinstance(encoding, Mapping):
        if not encoding:
            raise ValueError("to_hf_config: got an empty dict; pass {layer_type: rope, ...}.")
        sizes = {(pe.n_heads, pe.head_dim) for pe in encoding.values()}
        if len(sizes) != 1:
            raise ValueError(f"to_hf_config: the layer types have different (n_heads, head_dim) {sorted(sizes)}; one "
                             f"config has one size.")
        nested, lengths = {}, set()
        for layer_type, pe in encoding.items():
            nested[layer_type], length = _rope_parameters(_check_exportable(pe))
            lengths.add(length)
        if len(lengths) != 1:
            raise ValueError(f"to_hf_config: the layer types imply different max_position_embeddings {sorted(lengths)} "
                             f"(a 'dynamic' layer type uses its training length); give them one max_seq_len.")
        (n_heads, head_dim), = sizes
        return {"num_attention_heads": n_heads, "head_dim": head_dim, "hidden_size": n_heads * head_dim,
                "max_position_embeddings": lengths.pop(), "layer_types": sorted(nested), "rope_parameters": nested}
    if model_type == "gptj":
        if type(encoding) is not RoPE or encoding.layout != "interleaved" or encoding.scaling is not None or \
                encoding.base != HF_DEFAULT_THETA:
            raise ValueError(f"to_hf_config: GPT-J hard-codes interleaved pairs, base 10000 and no scaling; got "
                             f"{encoding!r}.")
        return {"model_type": "gptj", "n_head": encoding.n_heads, "n_embd": encoding.dim,
                "n_positions": encoding.max_seq_len, "rotary_dim": encoding.rotary_dim}
    params, max_len = _rope_parameters(_check_exportable(encoding), model_type)
    out = {"num_attention_heads": encoding.n_heads, "head_dim": encoding.head_dim,
           "hidden_size": encoding.n_heads * encoding.head_dim, "max_position_embeddings": max_len,
           "rope_theta": params["rope_theta"], "rope_parameters": params}
    if "partial_rotary_factor" in params and params["rope_type"] != "proportional":
        out["partial_rotary_factor"] = params["partial_rotary_factor"]
    if model_type is not None:
        out["model_type"] = model_type
    return out


def _check_exportable(pe: Any) -> RoPE | MRoPE:
    if type(pe) is RoPE and pe.layout != "half":
        raise ValueError("to_hf_config: Hugging Face's Llama-like models pair channels with rotate_half; this rope "
                         "uses layout='interleaved'. Hint: posenc.convert_rope_layout(model, 'half') (permutes q/k "
                         "weights, same outputs), or model_type='gptj' for GPT-J.")
    return pe


def to_scaled(model_or_encoding: Transformer | RoPE, *, rope_type: str, inplace: bool = False,
              **params: Any) -> Transformer | RoPE:
    """A copy of a posenc model (or ``rope`` encoding) whose RoPE uses the scaling ``rope_type`` with ``params``.

    ``original_max_position_embeddings`` defaults to the length the rope was built (trained) for: its existing
    scaling's, else its ``max_seq_len``. Base, layout and rotary width are kept; weights are untouched, so the result
    is the zero-shot extended model, ready for a short fine-tune. A model's ``cfg.encoding_options["scaling"]`` is
    updated too, so ``save``/``load`` keep the scaling.

    Example:
        >>> long = to_scaled(model, rope_type="yarn", factor=4.0)  # trained at 256 -> runs at 1024
        >>> pi = to_scaled(model, rope_type="linear", factor=4.0)

    Args:
        model_or_encoding: a :class:`~posenc.Transformer` whose encoding is ``rope``, or a ``RoPE``.
        rope_type: any method of :mod:`posenc.rope_scaling` (``"default"`` removes scaling; add ``logn=True``
            for log-n query scaling).
        inplace: change and return the given object instead of a copy.
        **params: the method's parameters (``factor``, ``beta_fast``, ...).
    """
    if isinstance(model_or_encoding, Transformer):
        model = model_or_encoding if inplace else copy.deepcopy(model_or_encoding)
        stacks = [s for s in (model.encoder, model.decoder) if s is not None]
        if not all(type(s.pe) is RoPE for s in stacks):
            raise ValueError(f"to_scaled: the model's encoding is {model.cfg.encoding!r}; scalings apply to 'rope'.")
        scaling = None
        for stack in stacks:
            stack.pe = to_scaled(stack.pe, rope_type=rope_type, inplace=False, **params)
            scaling = stack.pe.scaling
        options = {k: v for k, v in model.cfg.encoding_options.items() if k != "scaling"}
        model.cfg.encoding_options = options if scaling is None else {**options, "scaling": dict(scaling)}
        return model
    if type(model_or_encoding) is not RoPE:
        raise TypeError(f"to_scaled: expected a posenc Transformer or a RoPE encoding; got "
                        f"{type(model_or_encoding).__name__}.")
    pe = model_or_encoding
    original = pe.scaling["original_max_position_embeddings"] if pe.scaling is not None else pe.max_seq_len
    scaling = {"rope_type": rope_type, "original_max_position_embeddings": original, **params}
    device = next(pe.buffers()).device  # its cos/sin tables live there
    new = RoPE(dim=pe.dim, n_heads=pe.n_heads, max_seq_len=pe.max_seq_len, causal=pe.causal, base=pe.base,
               layout=pe.layout, rotary_dim=pe.rotary_dim, scaling=scaling).to(device)
    if not inplace:
        return new
    pe.scaling, pe.attention_scale = new.scaling, new.attention_scale
    pe.rebuild_caches()  # the cos/sin tables at the new frequencies
    return pe
