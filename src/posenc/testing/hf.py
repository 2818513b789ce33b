"""``check_hf_model``: check a Hugging Face model's own rotary code (its ``*RotaryEmbedding`` and
``apply_rotary_pos_emb``) against posenc's reference for the model's config, M-RoPE included.

Accepts a model (``nn.Module`` with ``.config``), a ``PretrainedConfig``, a config.json dict, or a path to a model
directory / config.json. From a config only the rotary module is built (it has no weights); nothing is downloaded.
transformers is needed (the ``peers`` extra).
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from posenc.testing.diagnose import ConformanceResult

__all__ = ["check_hf_model", "hf_rope_candidate", "load_hf_config"]


def load_hf_config(source: Any) -> Any:
    """A ``PretrainedConfig`` from a model, a config, a config.json dict or a local path (never downloads)."""
    if isinstance(source, nn.Module):
        return source.config
    if isinstance(source, (str, Path)):
        path = Path(source)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"conform: no config.json at {source}; pass a model directory or a config.json.")
        source = json.loads(path.read_text())
    if isinstance(source, Mapping):
        from transformers import AutoConfig
        data = dict(source)
        if "model_type" not in data:
            raise ValueError("conform: a Hugging Face config.json needs 'model_type' (e.g. 'llama') to find the "
                             "model's rotary code.")
        return AutoConfig.for_model(data.pop("model_type"), **data)
    if not hasattr(source, "model_type"):  # 5, None, a list: not something with a model's rotary code
        raise TypeError(f"conform: a Hugging Face source must be a model, a PretrainedConfig, a config.json dict or a "
                        f"path to a model directory / config.json; got {type(source).__name__} {source!r:.60}.")
    return source


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _rotary_class(module: Any) -> type:
    found = [c for name, c in vars(module).items() if inspect.isclass(c) and name.endswith("RotaryEmbedding")
             and "Vision" not in name and issubclass(c, nn.Module) and c.__module__ == module.__name__]
    found.sort(key=lambda c: ("Text" not in c.__name__, len(c.__name__)))
    if not found:
        raise TypeError(f"conform: {module.__name__} defines no *RotaryEmbedding module.")
    return found[0]


def _is_mrope(config: Any) -> bool:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return isinstance(params, Mapping) and "mrope_section" in params


def hf_rope_candidate(source: Any) -> tuple[Callable, Any, str]:
    """``(fn, text config, kind)`` where ``fn(q, k, positions)`` (``kind="rope"``) or ``fn(q, k, coords)``
    (``kind="mrope"``, coords ``(B, T, 3)``) runs the model's own rotary module and ``apply_rotary_pos_emb``."""
    config = load_hf_config(source)
    text = _text_config(config)
    rotary = None
    if isinstance(source, nn.Module):
        rotary = next((m for m in source.modules() if type(m).__name__.endswith("RotaryEmbedding")
                       and "Vision" not in type(m).__name__), None)
    if rotary is None:
        model_type = getattr(config, "model_type", None)
        try:
            module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        except ImportError as exc:
            raise ValueError(f"conform: transformers has no modeling module for model_type {model_type!r}: {exc}") \
                from exc
        cls = _rotary_class(module)
        rotary = cls(config=text)
    module = sys.modules[type(rotary).__module__]
    apply = getattr(module, "apply_rotary_pos_emb", None)
    if apply is None:
        raise TypeError(f"conform: {module.__name__} has no apply_rotary_pos_emb to pair with {type(rotary).__name__}.")
    rotary.eval()

    def rotate(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        r = cos.shape[-1]
        if r == q.shape[-1]:
            return apply(q, k, cos, sin)
        # partial rotary: the attention slices the rotary channels (GPT-NeoX, Phi, Qwen3-Next) before apply
        q_rot, k_rot = apply(q[..., :r], k[..., :r], cos, sin)
        return torch.cat((q_rot, q[..., r:]), -1), torch.cat((k_rot, k[..., r:]), -1)

    if _is_mrope(text):
        def mrope_fn(q: Tensor, k: Tensor, coords: Tensor) -> tuple[Tensor, Tensor]:
            cos, sin = rotary(q, coords.permute(2, 0, 1))  # HF position_ids (3, B, T)
            return rotate(q, k, cos, sin)
        return mrope_fn, text, "mrope"

    def fn(q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        ids = positions if positions.dim() == 2 else positions[None].expand(q.shape[0], -1)  # (B, T)
        cos, sin = rotary(q, ids)
        return rotate(q, k, cos, sin)
    return fn, text, "rope"


def check_hf_model(source: Any, *, layout: str | None = None, target: str | None = None,
                   **options: Any) -> ConformanceResult:
    """Check a Hugging Face model's rotary code (or that of a config's model type) against posenc's reference.

    Args:
        source: a model, a ``PretrainedConfig``, a config.json dict or a local model directory / config.json.
        layout: the pair layout the checkpoint expects; default ``"half"`` (``rotate_half``).
        **options: passed to :func:`~posenc.testing.check_rope` / :func:`~posenc.testing.check_mrope`
            (``dtypes``, ``max_position``, ...).
    """
    from posenc.testing.mrope import check_mrope
    from posenc.testing.rope import check_rope
    fn, text, kind = hf_rope_candidate(source)
    what = type(source).__name__ if isinstance(source, nn.Module) else "config"
    name = target or f"{getattr(text, 'model_type', 'hf')} ({what})"
    if kind == "mrope":
        return check_mrope(fn, text, layout=layout, target=name, **options)
    return check_rope(fn, text, layout=layout, target=name, **options)
