"""ruff and mypy over services/ and scripts/ with the settings in pyproject.toml (line length
included), and no import cycles there: run with the contract tests so that everyone sees a
failure when they run them. `.venv/bin/ruff check` and `.venv/bin/mypy` run the same checks
alone; generated code (gen/) is configured out of both."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("services", "scripts")


def _run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False)


def test_ruff_reports_nothing() -> None:
    result = _run("ruff", "check", "--no-cache", *CHECKED)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_mypy_reports_nothing() -> None:
    result = _run("mypy")  # files, strictness and the gen/ stubs path: [tool.mypy]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The same settings refuse a line over the configured length and a type error."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from __future__ import annotations\n\n\n"
        f"LONG = {'x' * 120!r}\n\n\n"
        "def twice(n: int) -> int:\n    return n * 2\n\n\nHALF: str = twice(1)\n"
    )
    config = str(ROOT / "pyproject.toml")
    ruff = _run("ruff", "check", "--no-cache", "--config", config, str(probe))
    mypy = _run("mypy", "--config-file", config, "--no-incremental", str(probe))
    assert ruff.returncode == 1 and "E501" in ruff.stdout, ruff.stdout
    assert mypy.returncode == 1 and "[assignment]" in mypy.stdout, mypy.stdout


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every module of `modules` that `path` imports anywhere (inside functions and
    TYPE_CHECKING blocks too: a cycle there is still a cycle in the design)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_no_import_cycles() -> None:
    files = {_module_name(p): p for top in CHECKED for p in (ROOT / top).rglob("*.py")}
    graph = {name: _imports(path, set(files)) - {name} for name, path in files.items()}
    cycles = []
    for start in sorted(graph):
        # Depth-first search for a path back to `start` through modules after it (each cycle
        # is reported once, from its smallest module).
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    cycles.append(" → ".join([*path, start]))
                elif nxt > start and nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)
