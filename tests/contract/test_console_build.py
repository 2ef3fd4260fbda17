"""The committed console build (console/dist, served by the gateway from disk) is what the
console's sources build to now: a source change without `npm run build` in console/ fails."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts import gateway

REPO = Path(__file__).resolve().parents[2]
CONSOLE = REPO / "console"


def test_gateway_serves_exactly_the_committed_files() -> None:
    built = sorted(p.relative_to(CONSOLE / "dist").as_posix()
                   for p in (CONSOLE / "dist").rglob("*") if p.is_file())
    assert built == sorted(gateway.CONSOLE_FILES)


def test_committed_console_build_is_current(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    assert npm, "npm is missing: scripts/setup installs it"
    if not (CONSOLE / "node_modules").is_dir() or not (REPO / "sdk/typescript/dist").is_dir():
        pytest.fail("console or SDK packages not installed/built: run scripts/setup")
    # The console bundles the SDK's compiled dist: build it from the current sources first, or a
    # dist left over from before a proto change makes the comparison (and any rebuild) stale.
    sdk = subprocess.run([npm, "run", "--silent", "build"], cwd=REPO / "sdk/typescript",
                         capture_output=True, text=True, timeout=300, check=False)
    assert sdk.returncode == 0, sdk.stdout[-3000:] + sdk.stderr[-3000:]
    out = tmp_path / "dist"
    result = subprocess.run([npm, "run", "--silent", "build", "--", "--outDir", str(out),
                             "--emptyOutDir"], cwd=CONSOLE, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in gateway.CONSOLE_FILES:
        assert filecmp.cmp(out / name, CONSOLE / "dist" / name, shallow=False), (
            f"console/dist/{name} is stale: run `npm run build` in sdk/typescript/, then in "
            "console/, and commit console/dist")
