"""The documentation site's generated pages (``posenc.docsite``, read by ``docs/hooks.py`` at ``make docs``): every
registered encoding gets a page in English and Chinese, generated from the registry, with its formula, options,
backends, support and paper; the API and CLI pages cover the public names and commands."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest
import torch

import posenc
from posenc import docsite, gallery
from posenc.base import _REGISTRY, FAMILIES, list_encodings


@pytest.fixture(scope="module")
def pages() -> dict:
    return docsite.site_pages(figures=False)


def _info(name: str):
    return next(i for i in list_encodings() if i.name == name)


def test_every_registered_encoding_has_a_page_in_both_languages(pages):
    for name in posenc.registered_names():
        for path in (f"encodings/{name}.md", f"zh/encodings/{name}.md"):
            assert path in pages, f"{name} has no generated page {path}"
            assert pages[path].startswith(f"# `{name}`")
    for index in ("encodings/index.md", "zh/encodings/index.md"):
        assert all(f"[`{n}`]({n}.md)" in pages[index] for n in posenc.registered_names())


def test_nav_lists_every_generated_encoding_page(pages):
    nav = docsite.nav(pages, ["guides/a.md"], ["conformance.md"])
    listed = re.findall(r"'((?:zh/)?encodings/\w+\.md)'", repr(nav))
    assert sorted(listed) == sorted(p for p in pages if re.fullmatch(r"(zh/)?encodings/\w+\.md", p))


def test_an_encoding_registered_later_gets_its_page():
    """Pages come from the registry, not from a list: a class registered now appears on the next build."""

    @posenc.register("docs_probe")
    class DocsProbe(posenc.PositionalEncoding):
        """A probe encoding for this test (arXiv 0000.00000).

        Formula:
            $$
            b_{ij} = -\\lambda |i - j|
            $$

        Args:
            strength: the slope.
        """

        family = "relative"
        paper = "0000.00000"

        def __init__(self, *, dim: int, n_heads: int, max_seq_len: int = 2048, causal: bool = False,
                     strength: float = 0.5) -> None:
            super().__init__(dim=dim, n_heads=n_heads, max_seq_len=max_seq_len, causal=causal)
            self.strength = strength

        def bias(self, q_pos, k_pos):
            return -self.strength * (q_pos[:, None] - k_pos[None, :]).abs().float().expand(self.n_heads, -1, -1)

    try:
        pages = docsite.site_pages(figures=False, names=["docs_probe"])
        page = pages["encodings/docs_probe.md"]
        assert "b_{ij} = -\\lambda |i - j|" in page and "(general form of its family)" not in page
        assert "| `strength` | float | `0.5` | the slope. |" in page
        assert "[arXiv:0000.00000](https://arxiv.org/abs/0000.00000)" in page
        assert "| `reference` | yes |" in page and "| `chunked` | yes |" in page  # a bias runs on the backends
        assert "[`docs_probe`](docs_probe.md)" in pages["encodings/index.md"]
    finally:
        del _REGISTRY["docs_probe"]


def test_every_family_has_a_general_formula():
    assert set(docsite.FAMILY_FORMULAS_TEX) == set(FAMILIES)


def test_formula_section_is_read_from_the_docstring_else_the_family_form():
    class WithFormula:
        """Summary.

        Formula:
            $$
            x + y
            $$

        Args:
            a: b.
        """

        family = "absolute"

    class Without:
        """Summary only."""

        family = "rotary"

    assert docsite.formula_tex(WithFormula) == ("x + y", True)
    assert docsite.formula_tex(Without) == (docsite.FAMILY_FORMULAS_TEX["rotary"], False)


def test_options_come_from_the_constructor_signature():
    page = docsite.encoding_page(_info("rope"), lang="en")
    params = inspect.signature(posenc.base.encoding_class("rope").__init__).parameters
    for name, p in params.items():
        if name in ("self", "dim", "n_heads", "max_seq_len", "causal"):
            assert f"| `{name}` |" not in page
        else:
            assert f"| `{name}` |" in page and f"`{p.default!r}`" in page


def test_backend_section_says_what_explain_says():
    page = docsite.encoding_page(_info("alibi"), lang="en")
    pe = posenc.get_encoding("alibi", dim=64, n_heads=4, max_seq_len=64, causal=True)
    q = k = v = torch.zeros(1, 4, 16, 16)
    pos = torch.arange(16)
    chosen = posenc.explain(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True).split(":")[0]
    assert f"```text\n{chosen}:" in page
    for backend in posenc.backends.BACKENDS:
        assert f"| `{backend}` |" in page
    # an encoding that reads the layer's input says what a bare call needs instead of a table
    fox = docsite.encoding_page(_info("fox"), lang="en")
    assert "needs more than q, k, v" in fox and "features" in fox


def test_chinese_page_uses_the_gallery_translations():
    """English and Chinese pages come from one source: the labels and captions are the gallery's own strings."""
    zh = docsite.encoding_page(_info("rope"), lang="zh", figures=["waves"])
    en = docsite.encoding_page(_info("rope"), lang="en", figures=["waves"])
    assert gallery.CAPTIONS["waves"]["zh"] in zh and gallery.CAPTIONS["waves"]["en"] in en
    assert gallery.TEXT["family"]["zh"] in zh and docsite.TEXT["options"]["zh"] in zh
    # the same sections in the same order: one generator, two languages
    assert len(re.findall(r"^## ", zh, re.M)) == len(re.findall(r"^## ", en, re.M))
    assert set(docsite.TEXT) == {k for k, v in docsite.TEXT.items() if set(v) == set(docsite.LANGS)}


def test_bad_language_is_refused():
    with pytest.raises(ValueError, match="lang must be one of"):
        docsite.encoding_page(_info("rope"), lang="fr")


def test_api_pages_cover_every_public_name(pages):
    for path, module in docsite.API_PAGES.items():
        for name in docsite.public_names(module):
            assert re.search(rf"^::: [\w.]+\.{name}$", pages[path], re.M), f"{module}.{name} missing from {path}"


def test_cli_page_has_every_command(pages):
    cli = pages["api/cli.md"]
    for command in ("posenc list", "posenc gallery", "posenc lab run", "posenc conform", "posenc rope-scaling"):
        assert f"## `{command}`" in cli
    assert "usage: posenc gallery" in cli


def test_overview_in_both_languages(pages):
    assert docsite.TEXT["overview_why"]["en"] in pages["index.md"]
    assert docsite.TEXT["overview_why"]["zh"] in pages["zh/index.md"]


def test_public_docstrings_parse_without_warnings(caplog):
    """The API reference renders every documented argument: an ``Args:`` entry that names no parameter of the
    signature (``a, b: ...``) or a combined one is shown as garbage by mkdocstrings, so the docstrings say each."""
    griffe = pytest.importorskip("griffe", reason="the docs extra (mkdocstrings' griffe) is not installed")
    src = str(docsite.ROOT / "src")
    package = griffe.load("posenc", search_paths=[src], resolve_aliases=True, resolve_external=False)
    objects = []
    for module in docsite.API_PAGES.values():
        mod = importlib.import_module(module)
        for name in docsite.public_names(module):
            obj = getattr(mod, name, None) or importlib.import_module(f"{module}.{name}")
            home = getattr(obj, "__module__", module) if not inspect.ismodule(obj) else obj.__name__
            path = obj.__name__ if inspect.ismodule(obj) else f"{home}.{name}"
            if not path.startswith("posenc"):
                continue
            target = package[path.removeprefix("posenc.")] if path != "posenc" else package
            objects.append(target)
            members = [m for m in target.members.values() if not m.is_alias and not m.name.startswith("_")]
            objects.extend(members + [c for m in members if m.is_class for c in m.members.values()
                                      if not c.is_alias and not c.name.startswith("_")])
    caplog.set_level("WARNING", logger="griffe")
    for obj in objects:
        if obj.docstring is not None:
            obj.docstring.parse("google")
    problems = [r.getMessage() for r in caplog.records if "does not appear in the function signature" in
                r.getMessage()]
    assert problems == []


@pytest.mark.parametrize("name", ["rope", "alibi", "sinusoidal", "fox"])
def test_core_encodings_show_their_own_formula(name):
    """These docstrings carry a ``Formula:`` section, so their pages show it, not their family's general form."""
    tex, own = docsite.formula_tex(posenc.base.encoding_class(name))
    assert own and tex.count("{") == tex.count("}")
    page = docsite.encoding_page(_info(name), lang="en")
    assert tex in page and docsite.TEXT["family_form"]["en"] not in page
