"""The import rules of docs/architecture.md, checked on the source: tests are not a library,
the product stands alone, and the cluster tool knows nothing of the product's stacks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    """Top-level package names a module imports (absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _offenders(trees: list[str], forbidden: set[str]) -> list[str]:
    found = []
    for tree in trees:
        for path in sorted((REPO / tree).rglob("*.py")):
            bad = _imports(path) & forbidden
            if bad:
                found.append(f"{path.relative_to(REPO)} imports {', '.join(sorted(bad))}")
    return found


@pytest.mark.parametrize(
    ("trees", "forbidden"),
    [
        # Nothing outside tests/ imports tests.
        (
            ["operator", "hydrator", "client", "tools", "demo", "benchmarks", "images", "scripts"],
            {"tests"},
        ),
        # The product ships alone: nothing of the repo's tooling, demo or benchmarks.
        (
            ["operator", "hydrator", "client"],
            {"localkube", "sidecar_state_stack", "demo", "benchmarks", "images"},
        ),
        # The cluster tool is product-independent: the stacks build on it, not the reverse.
        (["tools/localkube"], {"sidecar_state_stack", "demo", "benchmarks"}),
    ],
    ids=["no-tests-outside-tests", "product-alone", "localkube-alone"],
)
def test_import_rules(trees: list[str], forbidden: set[str]) -> None:
    assert _offenders(trees, forbidden) == []


def test_the_rule_checker_sees_an_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom tests.e2e import x\nfrom . import y\n")
    assert _imports(module) == {"os", "tests"}
