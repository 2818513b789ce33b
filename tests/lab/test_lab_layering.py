"""Layering: core <- encodings <- model <- lab <- command line and pictures. The lab imports no CLI module (the CLI
builds its flags from the lab's dataclasses), statically and at run time."""

import ast
from pathlib import Path

import posenc.lab

LAB = Path(posenc.lab.__file__).parent
FACES = ("posenc.cli", "posenc.viz", "posenc.bench", "posenc.gallery", "posenc.demo")  # what sits above the lab


def _package(path: Path) -> str:
    return ".".join(("posenc", "lab", *path.relative_to(LAB).parent.parts))


def _imports(source: str, package: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``source``, relative ones resolved against ``package``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]  # from posenc import cli
    return found


def test_no_lab_module_imports_the_command_line_or_the_pictures():
    wrong = [f"{path.relative_to(LAB.parent)}:{line}: {module}"
             for path in sorted(LAB.rglob("*.py"))
             for line, module in _imports(path.read_text(encoding="utf-8"), _package(path))
             if any(module == face or module.startswith(face + ".") for face in FACES)]
    assert wrong == [], "the lab imports a layer above it:\n" + "\n".join(wrong)


def test_the_scan_resolves_relative_imports():
    # the scan above can fail: a relative import of the CLI from a lab module is seen as posenc.cli
    assert _package(LAB / "tasks" / "base.py") == "posenc.lab.tasks"
    assert [m for _, m in _imports("from ..cli import types\nfrom . import flags\n", "posenc.lab")] == [
        "posenc.cli", "posenc.cli.types", "posenc.lab", "posenc.lab.flags"]
    assert [m for _, m in _imports("from ...cli.types import int_in\n", "posenc.lab.tasks")] == [
        "posenc.cli.types", "posenc.cli.types.int_in"]


def test_building_the_lab_flags_loads_no_cli_module(fresh_python):
    out = fresh_python("import sys, argparse\n"
                       "from posenc.lab.flags import add_dataclass_flags\n"
                       "add_dataclass_flags(argparse.ArgumentParser())\n"
                       "print(sorted(m for m in sys.modules if m.startswith('posenc.cli')))\n")
    assert out.strip() == "[]"
