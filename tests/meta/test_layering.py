"""The layering of DESIGN §1 is a test, not a wish.

Every import in every module is read from its AST (including imports inside functions and under
TYPE_CHECKING, which still express a dependency) and checked against the table of allowed
dependencies. The sandbox worker runtime gets a stricter rule: it may import only the stdlib,
its own package, and the two libraries it needs to speak and run (msgpack, RestrictedPython).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("primitives", "sandbox", "stream", "server", "evals")

# package -> first-party packages it may import (itself always allowed)
ALLOWED_FIRST_PARTY = {
    "primitives": set(),
    "sandbox": {"primitives"},
    "stream": {"primitives", "sandbox"},
    "server": {"primitives", "sandbox", "stream"},
    "evals": {"server"},
}
# third-party libraries per package (None = any)
ALLOWED_THIRD_PARTY: dict[str, set[str] | None] = {
    "primitives": {"pydantic", "pyarrow", "duckdb", "yaml"},
    "sandbox": {"pydantic", "pyarrow", "RestrictedPython", "msgpack", "pyseccomp", "seccomp"},
    "stream": None,
    "server": None,
    "evals": None,
}
WORKER_RUNTIME_THIRD_PARTY = {"msgpack", "RestrictedPython", "pyseccomp", "seccomp"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []


def _violations(path: Path, package: str, third_party: set[str] | None) -> list[str]:
    bad = []
    for line, top in _imports(path):
        if top == package or top in sys.stdlib_module_names or top == "__future__":
            continue
        if top in PACKAGES:
            ok = top in ALLOWED_FIRST_PARTY[package]
        else:
            ok = third_party is None or top in third_party
        if not ok:
            bad.append(f"{_name(path)}:{line} imports {top!r}")
    return bad


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_follow_design_layering(package: str) -> None:
    bad = [v for p in _modules(package) for v in _violations(p, package, ALLOWED_THIRD_PARTY[package])]
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_sandbox_worker_runtime_imports_only_stdlib_and_its_codec() -> None:
    runtime = ROOT / "sandbox" / "runtime"
    paths = sorted(runtime.rglob("*.py"))
    assert paths, "sandbox/runtime is missing"
    bad = []
    for path in paths:
        for line, top in _imports(path):
            if top in sys.stdlib_module_names or top == "__future__" or top in WORKER_RUNTIME_THIRD_PARTY:
                continue
            if top == "sandbox":
                # only sandbox.runtime.* is allowed inside the worker
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {top!r}")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sandbox")
                    and not node.module.startswith("sandbox.runtime")):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module!r}")
    assert not bad, "the worker runtime must stay minimal:\n" + "\n".join(bad)


def test_layering_check_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself must be able to fail: a primitives module importing stream is caught."""
    bad_module = tmp_path / "bad.py"
    bad_module.write_text("import json\nimport stream.engine\nfrom server import cli\n")
    bad = _violations(bad_module, "primitives", ALLOWED_THIRD_PARTY["primitives"])
    assert [v.split(":", 1)[1] for v in bad] == ["2 imports 'stream'", "3 imports 'server'"]
