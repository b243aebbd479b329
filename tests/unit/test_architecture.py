"""The layering and the size of functions, checked on the source itself.

import-linter (``lint-imports``, contract in pyproject.toml) checks that no layer imports
from a layer above it; these tests check what it cannot: that the algorithm's package is
pure (torch, the standard library and cgrpo.types only) and that every function fits a
screen.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "cgrpo"
MAX_FUNCTION_LINES = 80


def _functions(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.end_lineno - node.lineno + 1


def test_every_function_fits_a_screen():
    too_long = [
        f"{path.relative_to(SRC).as_posix()}:{name} {lines}"
        for path in sorted(SRC.rglob("*.py"))
        for name, lines in _functions(path)
        if lines > MAX_FUNCTION_LINES
    ]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("path", sorted((SRC / "algo").glob("*.py")), ids=lambda p: p.name)
def test_the_algorithm_is_pure(path):
    """algo/ imports torch (not torch.distributed), the standard library and cgrpo.types:
    no I/O layer, no model, no configuration."""
    for module in _imports(path):
        top = module.split(".")[0]
        if module.startswith("cgrpo."):
            assert module == "cgrpo.types" or module.startswith("cgrpo.algo"), module
        elif top == "torch":
            assert not module.startswith("torch.distributed"), module
        else:
            assert top in sys.stdlib_module_names or top == "__future__", module


def _walks(model, parts) -> bool:
    """Whether the dotted ``parts`` name a field path of the pydantic ``model``."""
    for part in parts:
        if part not in getattr(model, "model_fields", {}):
            return False
        annotation = model.model_fields[part].annotation
        args = [a for a in getattr(annotation, "__args__", ()) if hasattr(a, "model_fields")]
        model = args[0] if args else annotation
    return True


def test_rules_are_named_once_and_report_real_settings():
    """Every cross-field rule has its own name and reports at a path of the schema; below
    a component's ``options`` (``policy.options.weight_sync``), at a field of the options
    of some registered component of that kind."""
    from cgrpo.config.rules import RULES
    from cgrpo.config.schema import COMPONENT_PATHS, Recipe
    from cgrpo.plugins import get_registries

    names = [r.name for r in RULES]
    assert len(names) == len(set(names))
    for r in RULES:
        head, _, rest = r.path.partition(".options.")
        if rest:
            kind = COMPONENT_PATHS[head]
            options = [c.options for c in get_registries()[kind]]
            assert any(_walks(o, rest.split(".")) for o in options), (r.name, r.path)
        else:
            assert _walks(Recipe, r.path.split(".")), (r.name, r.path)
