"""ARCHITECTURE.md's import rule, enforced: every import of a bml_assets module stays in
its room or goes to a room the rule allows, and only the rooms marked ``dagster`` import
Dagster. The rule is read from ARCHITECTURE.md itself (its ``rooms`` block), so the page
and the code cannot drift apart. Also: only the settings read the ``BML_*`` environment."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "ARCHITECTURE.md"
_BLOCK = re.compile(r"```rooms\n(.*?)```", re.S)

Rule = dict[str, tuple[frozenset[str], bool]]


def parse_rule(text: str) -> Rule:
    """room -> (rooms it may import, whether it may import dagster), from a ``rooms`` block."""
    block = _BLOCK.search(text)
    assert block, "no ```rooms block"
    rule: Rule = {}
    for line in block.group(1).splitlines():
        name, _, allowed = line.split("#", 1)[0].partition(":")
        if name.strip():
            targets = {t.strip() for t in allowed.split(",") if t.strip()}
            rule[name.strip()] = (frozenset(targets - {"dagster"}), "dagster" in targets)
    return rule


def room_of(module: str, rule: Rule) -> str | None:
    """The most specific room holding ``module``."""
    rooms = [r for r in rule if module == r or module.startswith(r + ".")]
    return max(rooms, key=len) if rooms else None


def modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, module: str) -> Iterator[tuple[str, int]]:
    """(imported module or name, line) of every import statement, top level or inside a function."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            yield base, node.lineno
            # ``from bml_assets.domain import schema`` imports a module by name
            yield from ((f"{base}.{alias.name}", node.lineno) for alias in node.names)


def violations(package: Path, rule: Rule) -> list[str]:
    known = modules(package)
    found: list[str] = []
    for module, path in sorted(known.items()):
        room = room_of(module, rule)
        if room is None:
            found.append(f"{module}: in no room of the rule")
            continue
        allowed, dagster = rule[room]
        for target, line in imports(path, module):
            where = f"{path.relative_to(package.parent)}:{line}"
            if target.split(".")[0] == "dagster":
                if not dagster:
                    found.append(f"{where} imports {target}, but room {room} may not import dagster")
            elif target.split(".")[0] == package.name and (target in known or target.rpartition(".")[0] in known):
                target = target if target in known else target.rpartition(".")[0]
                other = room_of(target, rule)
                text = f"{where} imports {target}: room {room} may not import room {other}"
                if other not in (room, None) and other not in allowed and text not in found:
                    found.append(text)
    return found


def test_every_import_follows_the_rule_of_architecture_md() -> None:
    problems = violations(REPO / "bml_assets", parse_rule(DOC.read_text(encoding="utf-8")))
    assert not problems, "against ARCHITECTURE.md:\n" + "\n".join(problems)


def test_the_checker_catches_an_import_up_a_floor_and_dagster_below_its_layer(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    for folder, source in {
        "low": "from pkg.high import thing\nimport dagster\n",
        "high": "from pkg.low import base\n",
        "side": "from ..low import base\n",
    }.items():
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
        (package / folder / "mod.py").write_text(source)
    (package / "__init__.py").write_text("")
    rule = parse_rule("```rooms\npkg.low:\npkg.high: pkg.low, dagster\npkg.side: pkg.low\npkg:\n```")
    assert violations(package, rule) == [
        "pkg/low/mod.py:1 imports pkg.high: room pkg.low may not import room pkg.high",
        "pkg/low/mod.py:2 imports dagster, but room pkg.low may not import dagster",
    ]


def _reads_bml_variable(node: ast.AST) -> bool:
    """``os.environ[...]``, ``os.environ.get(...)`` or ``os.getenv(...)`` of a ``BML_*`` name."""
    text = ast.unparse(node)
    if "environ" not in text and "getenv" not in text:
        return False
    return any(isinstance(c, ast.Constant) and str(c.value).startswith("BML_") for c in ast.walk(node))


def test_only_the_settings_read_the_environment() -> None:
    package = REPO / "bml_assets"
    for module, path in sorted(modules(package).items()):
        if module == "bml_assets.domain.settings":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        readers = [
            ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Subscript | ast.Call) and _reads_bml_variable(n)
        ]
        assert readers == [], (module, readers)
        assert not any(name.split(".")[0] == "dotenv" for name, _ in imports(path, module)), module
