"""torch.compile of the small Transformer: no graph breaks on the hot path, and the same numbers as eager."""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc import Transformer, TransformerConfig

FAST = ["rope", "alibi"]
SLOW = [n for n in posenc.registered_names() if n not in FAST]


def _model(name: str) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(kind="decoder", vocab_size=50, dim=32, n_heads=4, encoding=name)).eval()


def _breaks(name: str) -> list[str]:
    explanation = torch._dynamo.explain(_model(name))(torch.randint(0, 50, (2, 16)))
    return [str(b.reason).splitlines()[0] for b in explanation.break_reasons]


@pytest.mark.parametrize("name", FAST)
def test_no_graph_breaks(name):
    assert _breaks(name) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_no_graph_breaks_every_encoding(name):
    breaks = _breaks(name)
    # sandwich and dynamic size a lookup table by the range of distances in the call (O(T) memory instead of an
    # O(T^2) MLP evaluation), a host-side decision that breaks the graph once per call; everything else must trace
    # in one graph.
    assert breaks == [] or name in {"sandwich", "dynamic"}, breaks


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rope", "alibi", "sinusoidal"])
def test_compiled_model_equals_eager(name):
    model, x = _model(name), torch.randint(0, 50, (2, 16))
    eager = model(x)
    compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", FAST)
def test_fullgraph_under_no_grad(name):
    """Under no_grad, ``auto`` asks whether FlexAttention could run on CPU (no gradients needed), which once looked
    up a C++ compiler on PATH inside the traced code: dynamo cannot trace that file-system call, so
    ``fullgraph=True`` failed. The ``eager`` backend traces with dynamo exactly as inductor would, without the
    minutes of code generation."""
    model, x = _model(name), torch.randint(0, 50, (2, 16))
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="eager")(x)
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)


def test_first_rope_call_compiled_before_any_eager_one(fresh_python):
    """In a fresh process the CPU RoPE kernel is not loaded yet, so the first rotation under ``torch.compile`` loads it
    inside the traced frame. The fused-path check once read the kernel's build state there, and the guard dynamo put
    on that dict failed on the frame that created it ("Guard failed on the same frame it was created")."""
    fresh_python(
        "import torch\n"
        "from posenc import Transformer, TransformerConfig\n"
        "model = Transformer(TransformerConfig(kind='decoder', vocab_size=50, dim=32, n_heads=4, encoding='rope'))\n"
        "x = torch.randint(0, 50, (2, 16))\n"
        "with torch.no_grad():\n"
        "    compiled = torch.compile(model.eval(), fullgraph=True, backend='eager')(x)\n"
        "    torch.testing.assert_close(compiled, model(x), atol=1e-6, rtol=1e-6)\n")


FRONTIER = [n for n in ("fox", "data_dependent_alibi", "stick_breaking", "sinks", "inkling", "deberta", "path")
            if n in posenc.registered_names()]


@pytest.mark.parametrize("name", FRONTIER)
def test_layer_aware_encodings_under_torch_compile(name):
    """The encodings that read the layer trace with dynamo (features, per-layer instances, their terms and
    normalisers) and give eager's numbers and gradients; a decode step through the KV cache too. ``backend="eager"``
    runs dynamo's tracing without inductor's minutes of code generation."""
    model, x = _model(name), torch.randint(0, 50, (2, 12))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
    model.train()
    grads = []
    for fn in (model, compiled):
        model.zero_grad(set_to_none=True)
        fn(x).float().logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4, msg=n)
    model.eval()
    with torch.no_grad():
        cache, eager_cache = posenc.KVCache(), posenc.KVCache()
        compiled(x[:, :8], cache=cache)
        model(x[:, :8], cache=eager_cache)
        torch.testing.assert_close(compiled(x[:, 8:9], cache=cache), model(x[:, 8:9], cache=eager_cache),
                                   atol=1e-5, rtol=1e-5)
