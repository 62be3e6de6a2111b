"""The role packages import only what their docstrings allow (kegpackd/*/__init__.py).

Read from the source with ``ast``, so an import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kegpackd"
ROLES = ("archive", "engine", "packaging", "daemon", "compose")
# Shared small modules at the top: what every role may use.
SHARED = frozenset(
    {
        "errors",
        "shown",
        "values",
        "backoff",
        "logs",
        "owner",
        "quiesce",
        "config",
        "configread",
        "labels",
        "__init__",
    }
)
# What each role may import besides itself and the shared modules.
ALLOWED: dict[str, frozenset[str]] = {
    "archive": frozenset(),
    "engine": frozenset(),
    "packaging": frozenset(
        {"archive", "engine.port", "engine.models", "engine.naming", "engine.credentials"}
    ),
    "compose": frozenset({"engine.port", "engine.models", "engine.naming", "packaging"}),
    "daemon": frozenset({"archive", "engine", "packaging", "compose"}),
}
# The shared modules that may reach into a role: config validates every section.
SHARED_REACH: dict[str, frozenset[str]] = {
    "config": frozenset({"engine.credentials", "engine.endpoint", "engine.naming", "archive"}),
    "configread": frozenset({"engine.credentials"}),
}
# Third-party modules a role must not use: the archive formats run anywhere (a thread, a
# fuzzer) and know nothing of event loops or HTTP.
FORBIDDEN_THIRD_PARTY = {"archive": ("anyio", "asyncio", "aiohttp", "aiodocker")}
SHARED_THIRD_PARTY_FREE = ("aiohttp", "aiodocker")


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute, as written (``kegpackd.engine.port``, ``re``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "kegpackd":
                names.update(f"kegpackd.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return names


def allowed(target: str, rules: frozenset[str]) -> bool:
    """``target`` (a path below kegpackd, ``engine.port``) is one of ``rules`` or inside one."""
    return any(target == rule or target.startswith(rule + ".") for rule in rules)


def violations(role: str) -> list[str]:
    found = []
    for path in sorted((PACKAGE / role).glob("*.py")):
        for name in sorted(imported(path)):
            top = name.split(".")[0]
            if top in FORBIDDEN_THIRD_PARTY.get(role, ()):
                found.append(f"{path.name} imports {name}")
            if top != "kegpackd" or name == "kegpackd":
                continue
            target = name.removeprefix("kegpackd.")
            if target == "__version__" or allowed(
                target, frozenset({role}) | SHARED | ALLOWED[role]
            ):
                continue
            found.append(f"{path.name} imports {name}")
    return found


@pytest.mark.parametrize("role", ROLES)
def test_each_role_package_imports_only_what_its_rules_allow(role: str) -> None:
    """archive: nothing of the others; engine: itself; packaging: not the daemon; and so on."""
    assert violations(role) == []


def test_every_role_package_says_what_it_may_import() -> None:
    """Each role's ``__init__`` has a docstring with a "May import" line."""
    for role in ROLES:
        doc = ast.get_docstring(ast.parse((PACKAGE / role / "__init__.py").read_text()))
        assert doc is not None, role
        assert "May import" in doc, role


def test_the_shared_modules_reach_into_no_role_but_as_listed() -> None:
    """Shared top-level modules stay below the roles (config alone reads their grammars)."""
    found = []
    for module in SHARED - {"__init__"}:
        for name in imported(PACKAGE / f"{module}.py"):
            if name.split(".")[0] in SHARED_THIRD_PARTY_FREE:
                found.append(f"{module} imports {name}")
            if not name.startswith("kegpackd.") or name == "kegpackd.__version__":
                continue
            target = name.removeprefix("kegpackd.")
            if not allowed(target, SHARED | SHARED_REACH.get(module, frozenset())):
                found.append(f"{module} imports {name}")
    assert found == []


def test_every_module_is_in_a_role_package_or_named_shared() -> None:
    """A new top-level module is a decision: shared, or an entry point (cli, plugin, peer)."""
    top = {p.stem for p in PACKAGE.glob("*.py")}
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert (top | packages) - SHARED - set(ROLES) == {"__main__", "cli", "plugin", "peer"}
