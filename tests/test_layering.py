"""The core's modules are layered as the data flows: checked against the module map below.

Every import of a core module, at the top of a file or inside a function, must be listed in
`MODULES`, and the map must have no cycle; a core module is never imported inside a function
(only optional third-party packages are). A change of structure is a change of this table, made
in the open, so the layering cannot erode quietly. The README's "Layout" section shows the same
map.
"""

from __future__ import annotations

import ast
import re
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "vlrnn_planner"

# module -> (responsibility, the core modules it imports), bottom layer first.
MODULES: dict[str, tuple[str, set[str]]] = {
    "errors": ("the library's exceptions", set()),
    "actions": ("the action vocabulary: Advance, ForwardBackward, Free; long saves as runs", set()),
    "budget": ("parse budgets; print byte sizes and durations", {"errors"}),
    "records": ("checked reading of JSON fields; the document envelope", {"errors"}),
    "strategies": ("lazy schedule generators and their closed-form costs", {"actions", "errors"}),
    "profile": ("CellProfile: a cell's measured bytes and seconds; its summary and JSON", {"budget", "errors", "records"}),
    "simulate": (
        "the one walk of a schedule's actions: invariants, memory, statistics",
        {"actions", "errors", "strategies"},
    ),
    "export": ("a schedule's actions as a networkx graph and as DOT", {"actions", "budget", "simulate"}),
    "schedule": (
        "Schedule and its Prediction: data, actions, summary, JSON",
        {"actions", "budget", "errors", "export", "records", "simulate", "strategies"},
    ),
    "cost": (
        "the cost model: memory parts, peak, seconds; per-block Chain costs",
        {"actions", "errors", "profile", "records", "schedule", "simulate", "strategies"},
    ),
    "cuts": ("cuts of a shrinking batch on prefix sums of sample-steps", set()),
    "solver": (
        "solve(profile, budget, workload): the fastest schedule that fits",
        {"budget", "cost", "cuts", "errors", "profile", "records", "schedule", "strategies"},
    ),
    "backends": ("the Backend protocol and discovery by entry point", {"errors"}),
    "plan": (
        "Plan: the policy, its cache of schedules, documents, summary",
        {"budget", "cost", "errors", "profile", "records", "schedule", "solver", "strategies"},
    ),
    "planner": (
        "auto_plan and plan_for_profile: budget plans from a backend or a profile",
        {"backends", "budget", "cost", "errors", "plan", "profile", "records", "solver"},
    ),
    "__init__": (
        "the public API and backward()",
        {"actions", "backends", "budget", "errors", "plan", "planner", "profile", "schedule"},
    ),
    "cli": ("the vlrnn-plan command", {"__init__", "actions", "budget", "cost", "errors", "plan", "simulate"}),
}

# Optional third-party packages, imported only inside the functions that need them.
OPTIONAL = {"torch", "networkx", "matplotlib", "tqdm"}


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported module, inside a function) for every import in ``module``; core modules by
    their name in `MODULES`, anything else by its top-level package."""
    tree = ast.parse((CORE / f"{module}.py").read_text(encoding="utf-8"))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        nested = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                core = parts[0] == "vlrnn_planner"
                found.append(((parts[1] if len(parts) > 1 else "__init__") if core else parts[0], in_function))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and not (node.module or "").startswith("vlrnn_planner"):
                found.append((node.module.split(".")[0], in_function))
            else:
                parts = (node.module or "").split(".")[1 if node.level == 0 else 0 :]
                if parts and parts[0]:  # from .x import y / from vlrnn_planner.x import y
                    found.append((parts[0], in_function))
                else:  # from . import x, y / from vlrnn_planner import x
                    for alias in node.names:
                        found.append((alias.name if alias.name in MODULES else "__init__", in_function))
        for child in ast.iter_child_nodes(node):
            visit(child, nested)

    visit(tree, False)
    return [(name, inside) for name, inside in found if name != "__future__"]


def test_every_module_is_in_the_map():
    assert {p.stem for p in CORE.glob("*.py")} == set(MODULES)


@pytest.mark.parametrize("module", list(MODULES))
def test_imports_match_the_map(module):
    imports = _imports(module)
    core = {name for name, _ in imports if name in MODULES}
    assert core == MODULES[module][1], f"{module} imports {sorted(core)}; update MODULES if that is intended"
    inside = sorted({name for name, inside in imports if inside and name in MODULES})
    assert not inside, f"{module} imports core modules inside functions: {inside}"
    for name, inside in imports:
        if name in MODULES:
            continue
        if inside:
            assert name in OPTIONAL, f"{module} imports {name} inside a function"
        else:
            assert name in sys.stdlib_module_names, f"{module} imports {name} at the top: only the standard library may be"


def test_the_map_has_no_cycle():
    try:
        order = list(TopologicalSorter({m: deps for m, (_, deps) in MODULES.items()}).static_order())
    except CycleError as e:  # pragma: no cover - the failure message
        pytest.fail(f"import cycle among the core's modules: {e.args[1]}")
    # The table is written bottom first: every module imports only modules listed above it.
    listed = list(MODULES)
    for module, (_, deps) in MODULES.items():
        assert all(listed.index(d) < listed.index(module) for d in deps), module
    assert set(order) == set(MODULES)


def test_nothing_outside_plan_touches_the_cache():
    for path in CORE.glob("*.py"):
        if path.stem != "plan":
            assert not re.search(r"\._cache\b", path.read_text(encoding="utf-8")), path.name
