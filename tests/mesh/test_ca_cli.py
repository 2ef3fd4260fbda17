"""scripts/ca.py as setup runs it: idempotent, --check reports problems, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _ca(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ca.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_create_then_keep(tmp_path: Path) -> None:
    first = _ca("--dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "CA created" in first.stdout and "issued gateway" in first.stdout
    second = _ca("--dir", str(tmp_path))
    assert second.returncode == 0 and "CA kept; issued none" in second.stdout
    assert _ca("--dir", str(tmp_path), "--check").returncode == 0


def test_check_names_the_problem(tmp_path: Path, expired_certs_dir: Path) -> None:
    result = _ca("--dir", str(expired_certs_dir), "--check", "--identity", "conversation")
    assert result.returncode == 1
    assert "conversation" in result.stderr and "expired at" in result.stderr
    missing = _ca("--dir", str(tmp_path / "none"), "--check", "--identity", "auth")
    assert missing.returncode == 1 and "missing" in missing.stderr


def test_bad_input(tmp_path: Path) -> None:
    unknown = _ca("--dir", str(tmp_path), "--identity", "nobody")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    unwritable = _ca("--dir", str(blocker / "certs"))
    assert unwritable.returncode == 1 and "cannot write certificates" in unwritable.stderr
