"""The documentation site's generated pages (``make docs``): one page per registered encoding, in English and Chinese,
the overview, the API reference stubs and the command line's ``--help`` texts.

Everything here is generated from the registry and the code at build time (``docs/hooks.py`` hands the pages to
MkDocs without writing them into ``docs/``), so a new encoding gets its page on the next build and no page can go
stale. The encoding pages reuse the gallery's pictures, captions and labels (:mod:`posenc.gallery`): the English and
Chinese pages are rendered from one source (:data:`TEXT` and :data:`posenc.gallery.CAPTIONS`), so they never drift.
Docstrings stay as written (English) on both.

Page sections of an encoding: what it is (its docstring), the formula (rendered by KaTeX: a ``Formula:`` section of
the docstring, else its family's general form), its options with types and defaults (from the constructor's
signature), its pictures, how one attention call runs on each backend (what :func:`posenc.explain` says), KV-cache
and ``torch.compile`` support (what the test suite checks), the tests that compare it with peer libraries, and the
paper.

Example:
    >>> pages = site_pages(figures=False)        # {"encodings/rope.md": "...", "zh/encodings/rope.md": ...}
"""

from __future__ import annotations

import argparse
import functools
import inspect
import io
import re
from pathlib import Path

import torch

from posenc import gallery, viz
from posenc.backends import BACKENDS, explain
from posenc.base import EncodingInfo, PositionalEncoding, encoding_class, get_encoding, list_encodings

__all__ = ["API_PAGES", "FAMILY_FORMULAS_TEX", "LANGS", "TEXT", "cli_page", "encoding_figures", "encoding_page",
           "formula_tex", "index_page", "nav", "overview_page", "public_names", "site_pages"]

LANGS = gallery.LANGS
ROOT = Path(__file__).resolve().parents[2]  # the repository (for the tests that compare an encoding with peers)

# The general form of each family in LaTeX, shown when an encoding's docstring has no ``Formula:`` section.
FAMILY_FORMULAS_TEX: dict[str, str] = {
    "none": r"\mathrm{attn} = \mathrm{softmax}\!\left(\frac{q k^\top}{\sqrt{d}}\right)\quad\text{(no position term)}",
    "absolute": r"x'_p = x_p + \mathrm{PE}(p)",
    "rotary": r"q'_m = R(m)\,q_m,\quad k'_n = R(n)\,k_n \;\Rightarrow\; q'^\top_m k'_n = q_m^\top R(n - m)\,k_n",
    "relative": r"\mathrm{attn} = \mathrm{softmax}\!\left(\frac{q k^\top}{\sqrt{d}} + b(i - j)\right)",
    "contextual": r"p_{ij} = \sum_{k=j}^{i} \sigma(q_i^\top k_k)\quad\text{(positions counted from the context)}",
    "multiscale": r"x'_p = x_p + \sum_s \mathrm{PE}_s(p \text{ at scale } s)",
    "2d": r"x'_{(r,c)} = x_{(r,c)} + \mathrm{PE}(r, c)\quad\text{or a rotation by } R(r, c)",
    "graph": r"x'_v = x_v + \mathrm{PE}(v \text{ from the graph structure})",
    "adaptive": r"b_{ij} = \sum_m w_m(x)\, b^{(m)}(i - j)\quad\text{(positions or their effect learned from input)}",
    "wrapper": r"\mathrm{PE}_{\text{wrapped}}(f(p))\quad\text{(the wrapped encoding at transformed positions)}",
}

# Labels of the generated pages. Keys shared with the gallery come from posenc.gallery.TEXT (one translation).
TEXT: dict[str, dict[str, str]] = {
    "what": {"en": "What it is", "zh": "简介"},
    "when": {"en": "When to use it", "zh": "适用场景"},
    "formula": {"en": "Formula", "zh": "公式"},
    "options": {"en": "Options", "zh": "选项"},
    "options_intro": {
        "en": "Keyword-only arguments of `posenc.get_encoding({name!r}, dim=..., n_heads=..., **options)`, from the "
              "constructor's signature (`dim`, `n_heads`, `max_seq_len` and `causal` are common to every encoding).",
        "zh": "`posenc.get_encoding({name!r}, dim=..., n_heads=..., **options)` 的仅限关键字参数，取自构造函数签名"
              "（`dim`、`n_heads`、`max_seq_len` 和 `causal` 为所有编码共有）。",
    },
    "option": {"en": "option", "zh": "选项"},
    "type": {"en": "type", "zh": "类型"},
    "default": {"en": "default", "zh": "默认值"},
    "no_options": {"en": "No options beyond the common four.", "zh": "除四个公共参数外没有其他选项。"},
    "pictures": {"en": "Pictures", "zh": "图示"},
    "backends": {"en": "How it runs on each backend", "zh": "在各个后端上的运行方式"},
    "backends_intro": {
        "en": "What `posenc.explain` says for one causal call, q, k, v of shape (1, 4, 16, 16) in float32 on CPU "
              "(`dim=64, n_heads=4`):",
        "zh": "`posenc.explain` 对一次因果注意力调用给出的结论（q、k、v 形状为 (1, 4, 16, 16)，float32，CPU，"
              "`dim=64, n_heads=4`）：",
    },
    "backend": {"en": "backend", "zh": "后端"},
    "computes": {"en": "computes this call", "zh": "能否计算此调用"},
    "why_not": {"en": "why not", "zh": "原因"},
    "auto": {"en": "`backend=\"auto\"` chooses", "zh": "`backend=\"auto\"` 的选择"},
    "needs_layer": {
        "en": "A bare `posenc.attention` call needs more than q, k, v for this encoding (a `posenc.Transformer` "
              "passes it): ",
        "zh": "对此编码，单独调用 `posenc.attention` 需要 q、k、v 以外的输入（`posenc.Transformer` 会自动传入）：",
    },
    "support": {"en": "KV cache and torch.compile", "zh": "KV 缓存与 torch.compile"},
    "kv": {
        "en": "KV-cache decoding equals the full forward (checked for every registered encoding by "
              "`tests/test_contract.py::test_kv_cache_decoding_equals_full_forward`).",
        "zh": "KV 缓存逐步解码与完整前向计算一致（`tests/test_contract.py::test_kv_cache_decoding_equals_full_forward`"
              " 对每个注册的编码进行检查）。",
    },
    "compile": {
        "en": "`torch.compile`: a `posenc.Transformer` with this encoding is traced by `make test-slow` "
              "(`tests/test_compile.py::test_no_graph_breaks_every_encoding`), which lists the encodings allowed a "
              "graph break.",
        "zh": "`torch.compile`：`make test-slow`（`tests/test_compile.py::test_no_graph_breaks_every_encoding`）会追踪"
              "使用此编码的 `posenc.Transformer`，并列出允许出现图中断的编码。",
    },
    "peers": {"en": "Peers and conformance", "zh": "同类实现与一致性"},
    "peer_tests": {"en": "Tests that compare it with a peer library:", "zh": "与其他库的实现进行比较的测试："},
    "no_peer_tests": {"en": "No test compares it with a peer library.", "zh": "没有测试将其与其他库的实现进行比较。"},
    "conformance": {
        "en": "RoPE implementations of peer libraries are checked by `posenc conform`: see [Conformance]({link}).",
        "zh": "其他库的 RoPE 实现由 `posenc conform` 检查：见[一致性]({link})。",
    },
    "paper_head": {"en": "Paper", "zh": "论文"},
    "family_form": gallery.TEXT["family_form"],
    "encodings": {"en": "Encodings", "zh": "编码"},
    "encodings_intro": {
        "en": "Every registered encoding, one page each, generated from the registry: {n} encodings.",
        "zh": "每个注册的编码各占一页，由注册表生成：共 {n} 种编码。",
    },
    "name": {"en": "name", "zh": "名称"},
    "summary": {"en": "what it is", "zh": "简介"},
    "overview_title": {"en": "posenc", "zh": "posenc"},
    "overview_tagline": {
        "en": "Positional encodings for Transformers, behind one interface — with the attention that applies them, a "
              "small Transformer that takes any of them by name, and a lab that shows what each one does.",
        "zh": "Transformer 的位置编码，统一在一个接口之后——附带应用它们的注意力实现、可按名称选用任意编码的小型 "
              "Transformer，以及展示每种编码作用的实验室。",
    },
    "overview_why": {
        "en": "Self-attention alone is blind to order: without position information \"the cat chases the dog\" and "
              "\"the dog chases the cat\" are the same bag of words. posenc collects the ways of telling a "
              "Transformer where each token is — absolute, relative and bias, rotary, contextual, multi-scale, 2-D "
              "and graph encodings — so you can drop any of them into your own attention code, or compare them on "
              "tasks that isolate what positions do.",
        "zh": "仅靠自注意力无法感知顺序：没有位置信息时，“猫追狗”和“狗追猫”是同一袋词。posenc 汇集了告诉 "
              "Transformer 每个词元位置的各种方法——绝对、相对与偏置、旋转、上下文、多尺度、二维和图编码——"
              "你可以把其中任何一种放进自己的注意力代码，或在专门考察位置作用的任务上比较它们。",
    },
    "overview_start": {"en": "Start here", "zh": "从这里开始"},
    "overview_links": {
        "en": "- [Drop an encoding into your attention](guides/your-attention.md)\n"
              "- [Port a model from Hugging Face and check it](guides/port-from-hf.md)\n"
              "- [Extend RoPE past its training length](guides/extend-rope.md)\n"
              "- [Run a lab sweep](guides/lab-sweep.md)\n"
              "- [Add your own encoding](guides/add-encoding.md)\n"
              "- [Every encoding](encodings/index.md) · [API reference](api/posenc.md) · "
              "[Results](conformance.md)",
        "zh": "- [在你的注意力中使用编码](../guides/your-attention.md)（英文）\n"
              "- [从 Hugging Face 移植模型并检查](../guides/port-from-hf.md)（英文）\n"
              "- [将 RoPE 扩展到训练长度之外](../guides/extend-rope.md)（英文）\n"
              "- [运行实验室扫描](../guides/lab-sweep.md)（英文）\n"
              "- [添加你自己的编码](../guides/add-encoding.md)（英文）\n"
              "- [全部编码](encodings/index.md) · [API 参考](../api/posenc.md)（英文）",
    },
    "install": {"en": "Install", "zh": "安装"},
    "other_lang": {"en": "[中文](zh/index.md)", "zh": "[English](../index.md)"},
}

# Public modules of the API reference: page -> the module's dotted name (members: its ``__all__``).
API_PAGES: dict[str, str] = {
    "api/posenc.md": "posenc",
    "api/hf.md": "posenc.hf",
    "api/testing.md": "posenc.testing",
    "api/lab.md": "posenc.lab",
}

# Peer libraries whose import in a test file marks it as a comparison with a peer.
_PEER_IMPORTS = {"transformers": "transformers", "x_transformers": "x-transformers",
                 "rotary_embedding_torch": "rotary-embedding-torch", "torchtune": "torchtune", "fla": "fla",
                 "liger_kernel": "liger-kernel"}


def _t(key: str, lang: str, **fmt: object) -> str:
    return TEXT[key][lang].format(**fmt)


def _md(text: str) -> str:
    """reST inline markup of docstrings as Markdown: ``x`` and :role:`~a.b` become `x` and `b`."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: f"`{m.group(1).split('.')[-1] if '~' in m.group(0) else m.group(1)}`",
                  text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def formula_tex(cls: type[PositionalEncoding]) -> tuple[str, bool]:
    """The LaTeX of an encoding class's formula and whether it is its own (``False``: its family's general form).

    An encoding gives its own in a ``Formula:`` section of its docstring: the indented lines below hold LaTeX,
    between ``$$`` lines (which MkDocs' arithmatex and mkdocstrings both render).
    """
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Formula:\n((?:[ \t]+.*\n?|\n)+)", doc, re.M)
    if match:
        body = inspect.cleandoc(match.group(1)).strip()
        body = body.removeprefix("$$").removesuffix("$$").strip()
        if body:
            return body, True
    return FAMILY_FORMULAS_TEX[cls.family], False


def _description(cls: type) -> str:
    """The docstring without its first line, its ``Args:`` and ``Formula:`` sections (shown elsewhere on the page)."""
    doc = inspect.getdoc(cls) or ""
    lines = doc.splitlines()[1:]
    out, skipping = [], False
    for line in lines:
        if re.match(r"^(Args|Arguments|Formula|Attributes):\s*$", line):
            skipping = True
            continue
        if skipping and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        skipping = False
        out.append(line)
    return _md("\n".join(out).strip())  # a docstring's ``::`` code blocks stay indented (Markdown code)


def _arg_docs(cls: type) -> dict[str, str]:
    """The ``Args:`` entries of the class docstring, by name (``a, b: text`` documents both)."""
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Args:\n((?:[ \t]+.*\n?)+)", doc, re.M)
    if not match:
        return {}
    entries: dict[str, str] = {}
    current: list[str] = []
    for line in match.group(1).splitlines():
        head = re.match(r"^\s{2,4}([\w, ]+):\s*(.*)$", line)
        if head and not line.startswith(" " * 6):
            current = [n.strip() for n in head.group(1).split(",")]
            for n in current:
                entries[n] = head.group(2)
        else:
            for n in current:
                entries[n] += " " + line.strip()
    return {k: _md(v.strip()) for k, v in entries.items()}


def _options_table(cls: type[PositionalEncoding], lang: str) -> str:
    common = ("self", "dim", "n_heads", "max_seq_len", "causal")
    params = [p for p in inspect.signature(cls).parameters.values()
              if p.name not in common and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    intro = _t("options_intro", lang, name=cls.name)
    if not params:
        return f"{intro}\n\n{_t('no_options', lang)}\n"
    docs = _arg_docs(cls)
    rows = [f"| {_t('option', lang)} | {_t('type', lang)} | {_t('default', lang)} | |", "|---|---|---|---|"]
    for p in params:
        annotation = "" if p.annotation is p.empty else (p.annotation if isinstance(p.annotation, str)
                                                        else inspect.formatannotation(p.annotation))
        default = "required" if p.default is p.empty else repr(p.default)
        cell = docs.get(p.name, "").replace("|", "\\|")
        # the type as plain text: an escaped pipe inside a code span would show its backslash
        rows.append(f"| `{p.name}` | {annotation.replace('|', chr(92) + '|')} | `{default}` | {cell} |")
    return f"{intro}\n\n" + "\n".join(rows) + "\n"


@functools.cache
def _explained(name: str) -> tuple[str | None, str | None, tuple[tuple[str, str | None], ...]]:
    """One small causal call through :func:`posenc.explain`: (auto's answer, why a bare call cannot run, and per
    backend ``(name, None or why it cannot)``), computed once per encoding for both languages."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(gallery.SEED)
        pe = get_encoding(name, dim=64, n_heads=4, max_seq_len=64, causal=True)
        q, k, v = (torch.randn(1, 4, 16, 16) for _ in range(3))
    pos = torch.arange(16)
    try:
        auto = explain(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True)
    except (ValueError, TypeError, KeyError) as exc:  # encodings that read the layer's input or the layer itself
        return None, str(exc).strip("\"'"), ()
    rows: list[tuple[str, str | None]] = []
    for backend in sorted(BACKENDS.values(), key=lambda b: -b.priority):
        try:
            explain(q, k, v, pe, q_pos=pos, k_pos=pos, causal=True, backend=backend.name)
            rows.append((backend.name, None))
        except ValueError as exc:
            why = re.sub(r"^backend '\w+' cannot compute this call exactly: ", "", str(exc))
            rows.append((backend.name, why.removesuffix(" Use backend='auto'.")))
    return auto, None, tuple(rows)


def _backends_section(name: str, lang: str) -> str:
    auto, needs, rows = _explained(name)
    if auto is None:
        return f"{_t('needs_layer', lang)}\n\n> {needs}\n"
    table = [f"| {_t('backend', lang)} | {_t('computes', lang)} | {_t('why_not', lang)} |", "|---|---|---|"]
    for backend, why in rows:
        verdict = gallery.TEXT["no" if why else "yes"][lang]
        table.append(f"| `{backend}` | {verdict} | {(why or '').replace('|', chr(92) + '|')} |")
    return (f"{_t('backends_intro', lang)}\n\n" + "\n".join(table)
            + f"\n\n{_t('auto', lang)}:\n\n```text\n{auto}\n```\n")


@functools.cache
def _test_files() -> tuple[tuple[str, str], ...]:
    return tuple((p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8"))
                 for p in sorted((ROOT / "tests").rglob("test_*.py")))


def _peer_tests(name: str) -> list[tuple[str, list[str]]]:
    """Test files that import a peer library and name the encoding's key (``"name"`` in quotes)."""
    found = []
    for path, text in _test_files():
        if f'"{name}"' not in text and f"'{name}'" not in text:
            continue
        peers = sorted({label for module, label in _PEER_IMPORTS.items()
                        if re.search(rf"^\s*(from|import) {module}\b|importorskip\(\"{module}\"", text, re.M)})
        if peers:
            found.append((path, peers))
    return found


def encoding_figures(name: str) -> dict[str, bytes]:
    """The gallery's pictures of one encoding as PNG bytes, by plot kind (seeded: the same every build)."""
    import matplotlib.pyplot as plt

    figures = {}
    with torch.random.fork_rng(devices=[]):
        pe = viz.resolve_encoding(name)
        for kind in viz.applicable_kinds(pe):
            torch.manual_seed(gallery.SEED)
            fig = viz.plot(kind, name, **gallery.PLOT_OPTIONS[kind])
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=viz.DPI)
            plt.close(fig)
            figures[kind] = buf.getvalue()
    return figures


def encoding_page(info: EncodingInfo, *, lang: str = "en", figures: list[str] | None = None,
                  image_prefix: str = "img/") -> str:
    """The Markdown page of one encoding.

    Args:
        info: its row of :func:`posenc.list_encodings`.
        lang: ``"en"`` or ``"zh"`` (headings, labels, captions; docstrings stay as written).
        figures: the plot kinds drawn for it (PNG files ``{image_prefix}{name}-{kind}.png``); ``None`` for a page
            without pictures (tests), ``[]`` when it has none.
        image_prefix: the pictures' folder relative to the page.
    """
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}; got {lang!r}.")
    cls = encoding_class(info.name)
    tex, own = formula_tex(cls)
    conformance = "../conformance.md" if lang == "en" else "../../conformance.md"
    parts = [f"# `{info.name}`", "", f"*{info.summary.replace('``', '`')}*", "",
             f"{gallery.TEXT['family'][lang]}: **{info.family}** · {gallery.TEXT['params'][lang]}: "
             f"**{info.parameters:,}** · {gallery.TEXT['extrapolates'][lang]}: "
             f"**{gallery.TEXT['yes' if info.extrapolates else 'no'][lang]}**", "",
             f"## {_t('what', lang)}", "", _description(cls) or info.summary, "",
             f"## {_t('formula', lang)}", "", "$$", tex, "$$", ""]
    if not own:
        parts += [gallery.TEXT["family_form"][lang], ""]
    parts += [f"## {_t('options', lang)}", "", _options_table(cls, lang), ""]
    if figures is not None:
        parts += [f"## {_t('pictures', lang)}", ""]
        for kind in figures:
            parts += [f"![{kind} plot of {info.name}]({image_prefix}{info.name}-{kind}.png)", "",
                      f"*{gallery.CAPTIONS[kind][lang]}*", ""]
        if not figures:
            parts += [gallery.TEXT["no_plots"][lang], ""]
    parts += [f"## {_t('backends', lang)}", "", _backends_section(info.name, lang), "",
              f"## {_t('support', lang)}", "", f"- {_t('kv', lang)}", f"- {_t('compile', lang)}", "",
              f"## {_t('peers', lang)}", ""]
    tests = _peer_tests(info.name)
    if tests:
        parts += [_t("peer_tests", lang), ""] + [f"- `{path}`: {', '.join(peers)}" for path, peers in tests] + [""]
    else:
        parts += [_t("no_peer_tests", lang), ""]
    if info.family == "rotary" or info.name in ("mrope", "alibi", "t5"):
        parts += [_t("conformance", lang, link=conformance), ""]
    paper = (f"[arXiv:{info.paper}](https://arxiv.org/abs/{info.paper})" if info.paper
             else gallery.TEXT["none"][lang])
    parts += [f"## {_t('paper_head', lang)}", "", paper, ""]
    return "\n".join(parts)


def index_page(infos: list[EncodingInfo], *, lang: str = "en") -> str:
    """The encodings' index: one row per registered encoding with a link to its page."""
    rows = [f"| {_t('name', lang)} | {gallery.TEXT['family'][lang]} | {_t('summary', lang)} |", "|---|---|---|"]
    rows += [f"| [`{i.name}`]({i.name}.md) | {i.family} | {i.summary.replace('``', '`').replace('|', chr(92) + '|')} |"
             for i in infos]
    return f"# {_t('encodings', lang)}\n\n{_t('encodings_intro', lang, n=len(infos))}\n\n" + "\n".join(rows) + "\n"


def overview_page(*, lang: str = "en") -> str:
    """The site's home page (``index.md``, ``zh/index.md``), from :data:`TEXT`."""
    install = "pip install -e \".[viz]\"   # or: make docs / make demo / make test from a clone"
    return (f"# {_t('overview_title', lang)}\n\n{_t('other_lang', lang)}\n\n**{_t('overview_tagline', lang)}**\n\n"
            f"{_t('overview_why', lang)}\n\n## {_t('install', lang)}\n\n```bash\n{install}\n```\n\n"
            f"## {_t('overview_start', lang)}\n\n{_t('overview_links', lang)}\n")


def public_names(module: str) -> list[str]:
    """The names a module's API page documents: its ``__all__``, else its public submodules (a package of modules
    such as :mod:`posenc.lab`)."""
    import importlib
    import pkgutil

    mod = importlib.import_module(module)
    if hasattr(mod, "__all__"):
        return sorted(mod.__all__, key=str.lower)
    return sorted(m.name for m in pkgutil.iter_modules(mod.__path__) if not m.name.startswith("_"))


def api_page(module: str) -> str:
    """An API reference page: mkdocstrings renders every name of ``module.__all__`` from its docstring."""
    import importlib

    mod = importlib.import_module(module)
    doc = (inspect.getdoc(mod) or "").split("\n\n")[0].replace("``", "`")
    parts = [f"# `{module}`", "", doc, ""]
    for name in public_names(module):
        obj = getattr(mod, name, None) or importlib.import_module(f"{module}.{name}")
        home = getattr(obj, "__module__", None) or module
        if inspect.ismodule(obj):
            home, target = obj.__name__, obj.__name__
        else:
            target = f"{home}.{name}" if home.startswith("posenc") else f"{module}.{name}"
        parts += [f"::: {target}", "    options:", "      heading_level: 2", "      show_root_full_path: false", ""]
    return "\n".join(parts)


def cli_page() -> str:
    """Every ``posenc`` command's ``--help`` text, from the parser itself (never copied by hand)."""
    from posenc.cli import build_parser

    def walk(parser: argparse.ArgumentParser, prog: str, out: list[str]) -> None:
        out += [f"## `{prog}`", "", "```text", parser.format_help().rstrip(), "```", ""]
        for action in parser._actions:  # argparse keeps its subparsers here; there is no public accessor
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prog} {name}", out)

    out = ["# Command line", "", "The `--help` text of every `posenc` command, generated from the parser.", ""]
    walk(build_parser(), "posenc", out)
    return "\n".join(out)


def site_pages(*, figures: bool = True, names: list[str] | None = None) -> dict[str, str | bytes]:
    """Every generated file of the site, by path under the docs folder: Markdown pages (str) and PNGs (bytes).

    Args:
        figures: draw the gallery's pictures (about a minute for the whole registry on 2 cores).
        names: only these encodings (default: every registered one).
    """
    with torch.random.fork_rng(devices=[]):
        infos = list_encodings()
    if names is not None:
        infos = [i for i in infos if i.name in set(names)]
    pages: dict[str, str | bytes] = {"index.md": overview_page(lang="en"), "zh/index.md": overview_page(lang="zh"),
                                     "api/cli.md": cli_page()}
    for path, module in API_PAGES.items():
        pages[path] = api_page(module)
    for lang, folder in (("en", "encodings"), ("zh", "zh/encodings")):
        pages[f"{folder}/index.md"] = index_page(infos, lang=lang)
    for info in infos:
        kinds: list[str] | None = None
        if figures:
            drawn = encoding_figures(info.name)
            kinds = list(drawn)
            for kind, png in drawn.items():
                pages[f"encodings/img/{info.name}-{kind}.png"] = png
        pages[f"encodings/{info.name}.md"] = encoding_page(info, lang="en", figures=kinds)
        pages[f"zh/encodings/{info.name}.md"] = encoding_page(info, lang="zh", figures=kinds,
                                                              image_prefix="../../encodings/img/")
    return pages


def nav(pages: dict[str, str | bytes], guides: list[str], results: list[str]) -> list:
    """MkDocs' navigation for the generated pages, the guides and the results (paths under the docs folder)."""
    encodings = sorted(p for p in pages if re.fullmatch(r"encodings/(?!index)\w+\.md", p))
    zh = sorted(p for p in pages if re.fullmatch(r"zh/encodings/(?!index)\w+\.md", p))
    return [
        {"Home": "index.md"},
        {"Guides": guides},
        {"Encodings": ["encodings/index.md"] + [{Path(p).stem: p} for p in encodings]},
        {"API reference": [{module: path} for path, module in API_PAGES.items()] + [{"Command line": "api/cli.md"}]},
        {"Results": results},
        {"中文": ["zh/index.md", "zh/encodings/index.md"] + [{Path(p).stem: p} for p in zh]},
    ]


if __name__ == "__main__":  # python -m posenc.docsite DIR: write the generated pages (to read them without MkDocs)
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "build/docs-generated")
    for rel, content in site_pages(figures="--no-figures" not in sys.argv).items():
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    print(f"wrote {out}")
