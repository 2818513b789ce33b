"""Hugging Face interop for rotary encodings: read HF configs, swap posenc's RoPE into HF models, scale a trained rope.

- :func:`from_hf_config` builds the ``rope`` encoding a Hugging Face config describes (``rope_theta``, ``head_dim``,
  ``partial_rotary_factor``, and ``rope_parameters`` / legacy ``rope_scaling``), raising on invalid parameters where
  transformers only logs a warning.
- :func:`patch_rotary` replaces a Llama-family model's rotary embedding (``model.model.rotary_emb``) with a module
  that returns posenc's cos/sin in Hugging Face's layout, so the model runs on posenc's frequencies.
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

from posenc.encodings.rope import RoPE
from posenc.model import Transformer

__all__ = ["PosencRotaryEmbedding", "from_hf_config", "patch_rotary", "to_scaled"]

HF_DEFAULT_THETA = 10_000.0  # transformers' RotaryEmbeddingConfigMixin.default_theta


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def _positive_int(config: Any, key: str) -> int:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"from_hf_config: the config needs a positive int {key!r}; got {value!r}.")
    return value


def from_hf_config(config: Any, *, layer_type: str | None = None) -> RoPE:
    """The ``rope`` encoding described by a Hugging Face config (a ``PretrainedConfig`` or a config.json dict).

    Reads ``num_attention_heads``, ``head_dim`` (default ``hidden_size // num_attention_heads``),
    ``max_position_embeddings``, ``rope_theta`` and ``partial_rotary_factor`` (top level or inside the RoPE dict), and
    ``rope_parameters`` (transformers >= 5) or the legacy ``rope_scaling`` with ``rope_type`` or ``type``. The
    encoding has ``dim = num_attention_heads * head_dim`` (what posenc sees of q is ``(B, H, T, head_dim)``), the
    half layout (``rotate_half``) and ``max_seq_len = max_position_embeddings``. As in transformers, a missing
    ``original_max_position_embeddings`` is ``max_position_embeddings`` (Phi-3's top-level field wins), a missing
    ``factor`` of ``yarn``/``longrope`` is their ratio, and ``dynamic`` stretches past ``max_position_embeddings``.

    Args:
        config: the model config.
        layer_type: for configs with one RoPE dict per layer type (e.g. ``"full_attention"``), which one to read.

    Raises:
        ValueError: missing sizes, an unknown or unsupported ``rope_type`` (``proportional``, multimodal), or invalid
            scaling parameters (e.g. ``factor < 1``, wrong ``long_factor`` length) that transformers only warns about.
    """
    n_heads = _positive_int(config, "num_attention_heads")
    head_dim = _get(config, "head_dim")
    if head_dim is None:
        head_dim = _positive_int(config, "hidden_size") // n_heads
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0:
        raise ValueError(f"from_hf_config: head_dim must be a positive int; got {head_dim!r}.")
    max_len = _positive_int(config, "max_position_embeddings")

    params = _get(config, "rope_parameters") or _get(config, "rope_scaling") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"from_hf_config: rope_parameters/rope_scaling must be a dict; got {type(params).__name__}.")
    params = dict(params)
    nested = [k for k, v in params.items() if isinstance(v, Mapping)]
    if nested:
        if layer_type not in nested:
            raise ValueError(f"from_hf_config: this config has one RoPE dict per layer type {nested}; pass "
                             f"layer_type= one of them (got {layer_type!r}).")
        params = dict(params[layer_type])
    elif layer_type is not None:
        raise ValueError(f"from_hf_config: layer_type={layer_type!r} given but the config has a single RoPE dict.")
    if "mrope_section" in params or params.get("rope_type", params.get("type")) in ("proportional", "axial"):
        raise ValueError(f"from_hf_config: rope_type {params.get('rope_type', params.get('type'))!r} / multimodal "
                         f"RoPE is not the 1-D `rope` encoding posenc builds here.")

    base = params.pop("rope_theta", None)
    base = _get(config, "rope_theta", HF_DEFAULT_THETA) if base is None else base
    fraction = params.pop("partial_rotary_factor", None)
    fraction = _get(config, "partial_rotary_factor", 1.0) if fraction is None else fraction
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"from_hf_config: partial_rotary_factor must be in (0, 1]; got {fraction!r}.")
    rope_type = params.get("rope_type", params.get("type", "default"))
    params["rope_type"] = rope_type
    params.pop("type", None)

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
    rotary_dim = int(head_dim * fraction)
    return RoPE(dim=n_heads * head_dim, n_heads=n_heads, max_seq_len=max_len, base=float(base), layout="half",
                rotary_dim=rotary_dim, scaling=None if rope_type == "default" and len(params) == 1 else params)


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

    def __init__(self, encoding: RoPE) -> None:
        super().__init__()
        self.encoding = encoding
        self.attention_scaling = encoding.attention_scale  # the attribute name transformers' rotary modules use

    @torch.no_grad()
    def forward(self, x: Tensor, position_ids: Tensor, layer_type: str | None = None) -> tuple[Tensor, Tensor]:
        cos, sin = self.encoding.cos_sin(position_ids.long(), dtype=torch.float32)  # (B, T, F)
        return torch.cat((cos, cos), dim=-1).to(x.dtype), torch.cat((sin, sin), dim=-1).to(x.dtype)


def _rotary_owner(model: nn.Module) -> nn.Module:
    for owner in (model, getattr(model, "model", None), getattr(getattr(model, "model", None), "language_model", None)):
        if isinstance(owner, nn.Module) and isinstance(getattr(owner, "rotary_emb", None), nn.Module):
            return owner
    raise TypeError(f"patch_rotary: found no `rotary_emb` module on {type(model).__name__} or its `.model`; it "
                    f"supports Llama-family models whose decoder computes position_embeddings=(cos, sin) once "
                    f"(LlamaForCausalLM, LlamaModel, Mistral, Qwen2, ...).")


def patch_rotary(model: nn.Module, encoding: RoPE) -> nn.Module:
    """Replace the rotary embedding of a Llama-family Hugging Face model with ``encoding``; in place, returns ``model``.

    The model's decoder calls ``rotary_emb(hidden, position_ids)`` once per forward and passes ``(cos, sin)`` to every
    layer's ``apply_rotary_pos_emb``; the replacement (:class:`PosencRotaryEmbedding`) returns posenc's numbers.
    With the equivalent encoding (:func:`from_hf_config` of the model's config) the logits are unchanged.

    Raises:
        TypeError: ``encoding`` is not a plain ``rope`` encoding (xPos scales q and k differently), or the model has
            no ``rotary_emb``.
        ValueError: interleaved layout (HF uses ``rotate_half``: convert with ``posenc.convert_rope_layout``),
            head_dim or rotary width different from the model's, or log-n scaling (it scales queries only, which
            a shared ``(cos, sin)`` cannot express).
    """
    if type(encoding) is not RoPE:
        raise TypeError(f"patch_rotary: expected a posenc `rope` encoding (RoPE); got {type(encoding).__name__}.")
    if encoding.layout != "half":
        raise ValueError(f"patch_rotary: Hugging Face pairs channels with rotate_half (layout='half'); the encoding "
                         f"uses layout={encoding.layout!r}. Build it with layout='half' or permute the q/k "
                         f"projections with posenc.permute_projection.")
    if encoding.scaling is not None and encoding.scaling["logn"]:
        raise ValueError("patch_rotary: log-n scaling multiplies queries only, but HF applies one (cos, sin) to both "
                         "q and k; remove 'logn' from the scaling.")
    config = getattr(model, "config", None)
    if config is not None and _get(config, "num_attention_heads") is not None:
        n_heads = _get(config, "num_attention_heads")
        head_dim = _get(config, "head_dim") or _get(config, "hidden_size") // n_heads
        params = _get(config, "rope_parameters") or {}
        fraction = params.get("partial_rotary_factor") if isinstance(params, Mapping) else None
        fraction = fraction or _get(config, "partial_rotary_factor", 1.0) or 1.0
        if encoding.head_dim != head_dim or encoding.rotary_dim != int(head_dim * fraction):
            raise ValueError(f"patch_rotary: the model has head_dim={head_dim} with {int(head_dim * fraction)} rotary "
                             f"channels, the encoding head_dim={encoding.head_dim}, rotary_dim={encoding.rotary_dim}. "
                             f"Hint: posenc.hf.from_hf_config(model.config) builds a matching encoding.")
    owner = _rotary_owner(model)
    old = owner.rotary_emb
    device = next((b.device for b in old.buffers()), None)
    owner.rotary_emb = PosencRotaryEmbedding(encoding if device is None else encoding.to(device))
    return model


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
    device = pe._cos.device
    new = RoPE(dim=pe.dim, n_heads=pe.n_heads, max_seq_len=pe.max_seq_len, causal=pe.causal, base=pe.base,
               layout=pe.layout, rotary_dim=pe.rotary_dim, scaling=scaling).to(device)
    if not inplace:
        return new
    pe.scaling, pe.attention_scale = new.scaling, new.attention_scale
    pe._grow_cache(pe._cos.shape[0], device)
    return pe
