"""No runtime module may hard-code a loopback address: across hosts `127.0.0.1` reaches only the host that
says it. The one allowed literal is `rollout/network.py`'s `LOCAL_BIND_HOST`, the default bind address
of the services forkrl starts on one machine (`--host` flags, embedded mode); everything else refers to
that constant or gets its address from the spec, Ray or the pod. Docstrings and comments may mention it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ("operator", "trainer", "rollout")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
ALLOWED = {("rollout/network.py", "LOCAL_BIND_HOST")}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
        # attribute docstrings (a bare string right after an assignment) are documentation too
        for field in ("body", "orelse"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list):
                for stmt in stmts:
                    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                        ids.add(id(stmt.value))
    return ids


def loopback_literals(source: str, relative: str) -> list[tuple[int, str]]:
    """(line, literal) of every loopback string constant outside docstrings and the allowed constant."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    allowed_values = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            if any((relative, n) in ALLOWED for n in names) and isinstance(node.value, ast.Constant):
                allowed_values.add(id(node.value))
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
                and id(node) not in allowed_values and any(addr in node.value for addr in LOOPBACK)):
            found.append((node.lineno, node.value))
    return found


def test_runtime_modules_have_no_loopback_literals() -> None:
    offenders = []
    for folder in RUNTIME:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            offenders += [f"{relative}:{line}: {value!r}"
                          for line, value in loopback_literals(path.read_text(), relative)]
    assert offenders == [], "hard-coded loopback addresses:\n" + "\n".join(offenders)


@pytest.mark.parametrize("source, count", [
    ('x = "127.0.0.1"\n', 1),
    ('url = f"http://127.0.0.1:{port}"\n', 1),
    ('def f(host="localhost"): ...\n', 1),
    ('"""Serves on 127.0.0.1 by default."""\n', 0),
    ('LOCAL_BIND_HOST = "127.0.0.1"\n', 0),
    ('OTHER = "127.0.0.1"\n', 1),
])
def test_the_check_finds_literals_and_spares_docs(source: str, count: int) -> None:
    assert len(loopback_literals(source, "rollout/network.py")) == count
