"""The layout's rules, read from the source (AST): who may import whom, who may speak SQL, size limits."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "platform" / "atomscreen"
SCIENCE = ("atoms", "potentials", "relax", "evaluate", "analysis", "data", "diffusion")
SHELL = ("cli", "compute", "store")


def _modules(root: Path = PACKAGE):
    return sorted(root.rglob("*.py"))


def _package(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root).parts
    return parts[0].removesuffix(".py") if parts else ""


def _imports(path: Path) -> list[str]:
    """Every atomscreen module this file imports, at any depth (lazy imports count too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("atomscreen"):
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("atomscreen")]
    return names


def _violations(sources: tuple[str, ...], forbidden: tuple[str, ...], root: Path = PACKAGE) -> list[str]:
    bad = []
    for path in _modules(root):
        if _package(path, root) in sources:
            for name in _imports(path):
                if any(name == f"atomscreen.{f}" or name.startswith(f"atomscreen.{f}.") for f in forbidden):
                    bad.append(f"{path.relative_to(root)} imports {name}")
    return bad


def test_science_packages_import_nothing_from_the_shell():
    assert _violations(SCIENCE, ("store", "compute", "cli")) == []


def test_store_imports_nothing_from_compute_cli_analysis_or_evaluate():
    assert _violations(("store",), ("compute", "cli", "analysis", "evaluate")) == []


def test_cli_imports_no_orm_model():
    assert _violations(("cli",), ("store.models",)) == []


def test_a_violation_is_detected(tmp_path):
    """The scan itself can fail: a lazy import of the store inside a science module is caught."""
    (tmp_path / "relax").mkdir()
    (tmp_path / "relax" / "bad.py").write_text("def f():\n    from atomscreen.store.models import Task\n")
    assert _violations(SCIENCE, ("store",), root=tmp_path) == [
        "relax/bad.py imports atomscreen.store.models", "relax/bad.py imports atomscreen.store.models.Task"]


SQL = re.compile(r"(?<!def )\bselect\(|session\.(execute|add|add_all|get|scalar|scalars)\b")


def test_only_the_store_speaks_sql():
    bad = [f"{p.relative_to(REPO)}:{n}" for p in _modules() if _package(p) != "store"
           for n, line in enumerate(p.read_text().splitlines(), 1) if SQL.search(line) and "select.select" not in line]
    assert bad == []


def test_only_the_job_module_indexes_a_payload_by_key():
    bad = [f"{p.relative_to(REPO)}:{n}" for p in _modules() if p.name != "jobs.py"
           for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"payload\[\s*['\"]", line)]
    assert bad == []


@pytest.mark.parametrize("package", SHELL)
def test_shell_modules_are_at_most_350_lines(package):
    long = {str(p.relative_to(PACKAGE)): n for p in (PACKAGE / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 350}
    assert long == {}


def _long_functions(paths) -> dict[str, int]:
    out = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 40:
                out[f"{path.relative_to(PACKAGE)}:{node.name}"] = node.end_lineno - node.lineno + 1
    return out


def test_no_function_in_the_shell_is_over_40_lines():
    shell = [p for p in _modules() if _package(p) in SHELL or p.name in ("jobs.py", "chem.py", "errors.py")]
    assert _long_functions(shell) == {}


def test_every_user_facing_error_shares_one_base():
    """The CLI catches AtomscreenError once: every error class the package defines derives from it."""
    from atomscreen.errors import AtomscreenError

    classes = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                classes.append((path, node.name))
    assert len(classes) >= 8
    for path, name in classes:
        module = "atomscreen." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        cls = getattr(__import__(module, fromlist=[name]), name)
        assert issubclass(cls, AtomscreenError), f"{module}.{name}"


def test_one_list_of_validity_checks_matches_the_table():
    from atomscreen.evaluate.validity import CHECK_LABELS, CHECKS
    from atomscreen.store.models import MoleculeCheck

    columns = [c.name for c in MoleculeCheck.__table__.columns]
    assert list(CHECKS) == columns[columns.index("bonds_determined"):columns.index("passes_all")]
    assert list(CHECK_LABELS) == list(CHECKS)
