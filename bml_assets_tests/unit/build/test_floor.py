"""build/ is floor 3: it imports floors 0-2 and itself, never Dagster nor the Dagster layer;
no module below the Dagster layer imports Dagster; only the settings read ``BML_*``."""

from __future__ import annotations

import ast
from pathlib import Path

import bml_assets
from bml_assets_tests.unit.storage.test_floor import _imports

PACKAGE = Path(bml_assets.__file__).parent
BELOW_DAGSTER = ("domain", "storage", "sources", "features", "lake", "build", "quality.py")


def _modules(*parts: str) -> list[Path]:
    found: list[Path] = []
    for part in parts:
        path = PACKAGE / part
        found += [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
    return found


def test_build_imports_only_the_floors_below_it_and_no_dagster() -> None:
    modules = _modules("build")
    assert {p.name for p in modules} >= {"context.py", "choice.py", "minute_view.py", "partition_data.py"}
    below = ("domain", "storage", "sources", "features", "lake", "quality", "build")
    for path in modules:
        ours = {n for n in _imports(path) if n.split(".")[0] == "bml_assets"}
        assert all(n.split(".")[1] in below for n in ours if "." in n), (path.name, ours)
        assert not any(n.split(".")[0] == "dagster" for n in _imports(path)), path.name


def test_no_module_below_the_dagster_layer_imports_dagster() -> None:
    for path in _modules(*BELOW_DAGSTER):
        assert not any(n.split(".")[0] == "dagster" for n in _imports(path)), path
        assert not any(n.startswith(("bml_assets.defs", "bml_assets.definitions")) for n in _imports(path)), path


def _reads_bml_variable(node: ast.AST) -> bool:
    """``os.environ[...]``, ``os.environ.get(...)`` or ``os.getenv(...)`` of a ``BML_*`` name."""
    text = ast.unparse(node)
    if "environ" not in text and "getenv" not in text:
        return False
    return any(isinstance(c, ast.Constant) and str(c.value).startswith("BML_") for c in ast.walk(node))


def test_only_the_settings_read_the_environment() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "domain" / "settings.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        readers = [
            ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Subscript | ast.Call) and _reads_bml_variable(n)
        ]
        assert readers == [], (path, readers)
        assert not any(n.split(".")[0] == "dotenv" for n in _imports(path)), path
