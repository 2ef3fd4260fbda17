"""Tests that can silently not run are themselves a failure (issue 12, item 14):

- a component that fails to start (the gateway, a service) must fail the tests that need it:
  no `pytest.skip` inside an `except` handler, where a startup error would turn into a skip;
- checks that only hold under mTLS are guarded by `mesh.mtls_only(...)`, which names them in
  the report in plaintext mode; a bare `if ...tls_mode == "mtls":` around assertions would
  drop them silently. (An `if` on tls_mode whose body is a `pytest.skip(reason)` is a printed
  skip of the whole test, and one that asserts nothing only switches how to connect: allowed.)
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SUPPORT = TESTS / "support"


def _test_sources() -> list[tuple[Path, ast.Module]]:
    return [
        (p, ast.parse(p.read_text(), str(p)))
        for p in sorted(TESTS.rglob("*.py"))
        if SUPPORT not in p.parents
    ]


def _is_skip(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "skip"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "pytest"
    )


def _mentions_tls_mode(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "tls_mode" for n in ast.walk(node))


def _checks(statement: ast.AST) -> bool:
    """The statement asserts something (assert, pytest.raises) - a mode switch that only builds
    a channel differently drops nothing."""
    return any(
        isinstance(n, ast.Assert) or (isinstance(n, ast.Attribute) and n.attr == "raises")
        for n in ast.walk(statement)
    )


def test_no_skip_on_a_startup_failure() -> None:
    found = []
    for path, tree in _test_sources():
        for handler in (n for n in ast.walk(tree) if isinstance(n, ast.ExceptHandler)):
            for node in ast.walk(handler):
                if _is_skip(node):
                    found.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    assert not found, f"a failure turned into a skip (fail instead): {found}"


def test_no_assertion_dropped_silently_in_plaintext_mode() -> None:
    found = []
    for path, tree in _test_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _mentions_tls_mode(node.test):
                first = node.body[0]
                printed_skip = isinstance(first, ast.Expr) and _is_skip(first.value)
                if not printed_skip and any(_checks(n) for n in node.body + node.orelse):
                    found.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    assert not found, f"checks dropped silently without mTLS (use mesh.mtls_only): {found}"
