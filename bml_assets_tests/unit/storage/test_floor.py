"""storage/ is floor 1: it imports the domain and nothing else of bml_assets, and no Dagster."""

from __future__ import annotations

import ast
from pathlib import Path

import bml_assets.storage

FOLDER = Path(bml_assets.storage.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_storage_imports_only_the_domain_and_itself_and_no_dagster() -> None:
    modules = sorted(FOLDER.glob("*.py"))
    assert {p.name for p in modules} >= {"store.py", "locks.py", "state_db.py"}
    for path in modules:
        ours = {n for n in _imports(path) if n.split(".")[0] == "bml_assets"}
        assert all(n.startswith(("bml_assets.storage", "bml_assets.domain")) for n in ours), (path.name, ours)
        assert not any(n.split(".")[0] == "dagster" for n in _imports(path)), path.name
