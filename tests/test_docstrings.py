"""Every public function and method of the core has a numpydoc docstring.

A docstring at all; a Parameters section naming each parameter where there are any; a Returns
(or Yields) section where something is returned. What a section says is for review.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "vlrnn_planner"


def _parameters(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    names += [f"*{a.vararg.arg}"] if a.vararg else []
    names += [f"**{a.kwarg.arg}"] if a.kwarg else []
    return [n for n in names if n not in ("self", "cls")]


def _problems(fn: ast.FunctionDef, where: str) -> list[str]:
    doc = ast.get_docstring(fn)
    if not doc:
        return [f"{where}: no docstring"]
    if any(ast.unparse(d) == "property" for d in fn.decorator_list):
        return []
    found = []
    names = _parameters(fn)
    if names and "Parameters\n" not in doc:
        found.append(f"{where}: no Parameters section ({', '.join(names)})")
    elif names:
        section = doc.split("Parameters\n", 1)[1]
        for name in names:
            bare = name.lstrip("*")
            if not re.search(rf"(^|\n|, )\**{re.escape(bare)}\b", section):
                found.append(f"{where}: parameter {name} is not documented")
    returns = ast.unparse(fn.returns) if fn.returns is not None else "None"
    if returns not in ("None", "NoReturn") and "Returns\n" not in doc and "Yields\n" not in doc:
        found.append(f"{where}: no Returns section")
    return found


def _public(tree: ast.Module, module: str):
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield node, f"{module}.{node.name}"
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef) and not sub.name.startswith("_"):
                    yield sub, f"{module}.{node.name}.{sub.name}"


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.stem)
def test_public_functions_have_numpydoc(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    problems = [p for fn, where in _public(tree, path.stem) for p in _problems(fn, where)]
    assert not problems, "\n".join(problems)
