"""Inside the replay room (bml_assets/replay/__init__.py): ``server.py`` is its top,
imported by no other module of the room. (What the room may import from the rest of
the project is ARCHITECTURE.md's rule, test_architecture.py.)"""

from __future__ import annotations

import ast
from pathlib import Path

import bml_assets.replay

ROOM = Path(bml_assets.replay.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; the room uses no relative imports)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module or "")
    return found


def _room_modules() -> dict[str, set[str]]:
    return {str(p.relative_to(ROOM)): _imports(p) for p in sorted(ROOM.rglob("*.py"))}


def test_no_module_of_the_room_imports_the_server() -> None:
    importers = {
        name
        for name, imports in _room_modules().items()
        if "bml_assets.replay.server" in imports and name != "server.py"
    }
    assert importers == set()
