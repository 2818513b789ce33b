"""The conformance kit as a pytest fixture: ``def test_my_rope(posenc_conform): posenc_conform.rope(fn, config)``.

Registered as a pytest plugin through the ``pytest11`` entry point of posenc's ``pyproject.toml``, so any project
with posenc installed gets the fixture in its own suite; without the entry point (a source checkout), enable it with
``-p posenc.testing.pytest_plugin`` or ``pytest_plugins = ["posenc.testing.pytest_plugin"]`` in a root conftest.

Each method runs the matching check (:func:`~posenc.testing.check_rope`, :func:`~posenc.testing.check_mrope`,
:func:`~posenc.testing.check_bias`, :func:`~posenc.testing.check_hf_model`) with the same arguments, returns the
:class:`~posenc.testing.ConformanceResult` when the candidate conforms, and otherwise fails the test with the
diagnosis and the per-case table. ``allow_precision=True`` also accepts the long-position precision limit of float32
angles (the ``precision`` verdict, shared by most libraries).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["Conform", "posenc_conform"]


class Conform:
    """What the ``posenc_conform`` fixture returns: one method per check, each failing the test on a bug."""

    def rope(self, candidate: Callable, config: Any, *, allow_precision: bool = False, **kwargs: Any) -> Any:
        """``check_rope(candidate, config, **kwargs)``; fails the test unless it passes (or, with
        ``allow_precision``, conforms)."""
        from posenc.testing import check_rope
        _flag(allow_precision)
        return self._verdict(check_rope(candidate, config, **kwargs), allow_precision)

    def mrope(self, candidate: Callable, config: Any, *, allow_precision: bool = False, **kwargs: Any) -> Any:
        from posenc.testing import check_mrope
        _flag(allow_precision)
        return self._verdict(check_mrope(candidate, config, **kwargs), allow_precision)

    def bias(self, candidate: Callable, config: dict, *, allow_precision: bool = False, **kwargs: Any) -> Any:
        from posenc.testing import check_bias
        _flag(allow_precision)
        return self._verdict(check_bias(candidate, config, **kwargs), allow_precision)

    def hf_model(self, source: Any, *, allow_precision: bool = False, **kwargs: Any) -> Any:
        from posenc.testing import check_hf_model
        _flag(allow_precision)
        return self._verdict(check_hf_model(source, **kwargs), allow_precision)

    @staticmethod
    def _verdict(result: Any, allow_precision: bool) -> Any:
        if result.passed or (allow_precision and result.conforms):
            return result
        pytest.fail(f"{result.kind} {result.target} does not conform ({result.verdict}): {result.diagnosis}\n\n"
                    f"{result.table()}", pytrace=False)


def _flag(allow_precision: Any) -> None:
    """Refuse a non-bool before the check runs (``"false"`` would be truthy)."""
    if not isinstance(allow_precision, bool):
        raise TypeError(f"posenc_conform: allow_precision must be true or false; got "
                        f"{type(allow_precision).__name__} {allow_precision!r}.")


@pytest.fixture
def posenc_conform() -> Conform:
    """posenc's conformance kit: ``posenc_conform.rope(fn, config)`` (also ``.mrope``, ``.bias``, ``.hf_model``)
    fails the test with the kit's diagnosis when the implementation does not conform."""
    return Conform()
