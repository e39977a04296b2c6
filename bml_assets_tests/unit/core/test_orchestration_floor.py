"""orchestration/ is floor 5: below the CLI and the demo, above the Dagster layer; it never imports
the command line, the demo or the replay server (its own room)."""

from __future__ import annotations

import ast
from pathlib import Path

import bml_assets.orchestration

FOLDER = Path(bml_assets.orchestration.__file__).parent
BELOW = ("domain", "storage", "sources", "features", "quality", "lake", "build", "defs", "definitions", "orchestration")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_orchestration_imports_only_the_floors_below_it() -> None:
    modules = sorted(FOLDER.glob("*.py"))
    assert {p.name for p in modules} >= {"runner.py", "plan.py", "backfill.py", "hot.py", "state.py"}
    for path in modules:
        ours = {n for n in _imports(path) if n.split(".")[0] == "bml_assets"}
        assert all(n.partition(".")[2].split(".")[0] in BELOW for n in ours), (path.name, ours)
