"""The layers a tool enforces (import-linter runs in `make test`), plus what it cannot express."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = ROOT / "batch" / "domain"
#: the job's own pure modules the domain may use besides the standard library
PURE = ("batch.domain", "batch.errors", "batch.codec")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_domain_imports_only_the_standard_library() -> None:
    """Every import in batch/domain is the standard library or one of the job's pure modules."""
    offending = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in DOMAIN.rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] not in sys.stdlib_module_names and not name.startswith(PURE)
    }
    assert not offending, sorted(offending)


def test_no_module_of_the_job_is_over_500_lines() -> None:
    """Modules stay small enough to read: no file under batch/ has more than 500 lines."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in (ROOT / "batch").rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 500
    }
    assert not long, long
