"""Where code may reach: the runtime a deployment installs never imports the local stack, and
the core imports nothing above it. Read from the source (every import statement, also those
inside functions), so a lazy import cannot hide a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import REPO

RUNTIME = ("pinwatch", "ingest", "consumers", "prober", "alerts", "dashboards")
# package -> first-party packages it may import (itself included)
ALLOWED = {
    "pinwatch": {"pinwatch"},
    "ingest": {"pinwatch", "ingest"},
    "consumers": {"pinwatch", "consumers"},
    "prober": {"pinwatch", "prober"},
    "alerts": {"pinwatch", "alerts"},
    "dashboards": {"pinwatch", "alerts", "dashboards"},
}
FIRST_PARTY = {*RUNTIME, "devstack", "tests", "benchmarks"}


def imports(path: Path) -> set[str]:
    """Top-level package names of every import in the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found & FIRST_PARTY


@pytest.mark.parametrize("package", RUNTIME)
def test_runtime_packages_import_only_what_their_layer_allows(package: str) -> None:
    wrong = {
        str(path.relative_to(REPO)): sorted(imports(path) - ALLOWED[package])
        for path in sorted((REPO / package).rglob("*.py"))
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from devstack.stack import Stack\n    import tests.support\n")
    assert imports(module) == {"devstack", "tests"}
