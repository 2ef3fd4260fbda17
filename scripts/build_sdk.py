"""Build the Python SDK wheel (aimesh-sdk) from sdk/python and the generated contract in gen/.

    python -m scripts.build_sdk [--out DIR]      # prints the wheel's path

The wheel carries `aimesh_sdk` (client layer + the `aimesh` CLI) and `aimesh.<svc>.v1` (the
generated *_pb2.py, *_pb2_grpc.py and *_pb2.pyi from gen/, so the SDK always matches the
contract of the commit it is built from). sdk/python holds no copy of gen/: the build stages
both into one folder and records the contract's digest in aimesh_sdk/_build.py.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SDK_DIR = ROOT / "sdk" / "python"
GEN_DIR = ROOT / "gen"
DEFAULT_OUT = ROOT / "build" / "sdk"


def contract_digest() -> str:
    return hashlib.sha256((GEN_DIR / "descriptor.binpb").read_bytes()).hexdigest()


def stage(into: Path) -> None:
    """sdk/python + gen/aimesh (generated modules only) in one source tree."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    shutil.copytree(SDK_DIR, into, ignore=ignore)
    shutil.copytree(GEN_DIR / "aimesh", into / "aimesh", ignore=ignore)
    (into / "aimesh" / "py.typed").touch()
    (into / "aimesh_sdk" / "_build.py").write_text(
        '"""Written by scripts/build_sdk.py."""\n\n'
        f'CONTRACT_SHA256 = "{contract_digest()}"  # sha256 of gen/descriptor.binpb\n'
    )


def build(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aimesh-sdk-") as tmp:
        src = Path(tmp) / "src"
        stage(src)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "--wheel-dir", str(out), str(src)],
            check=True,
        )
    wheels = sorted(out.glob("aimesh_sdk-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise SystemExit("scripts.build_sdk: pip produced no wheel")
    return wheels[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts.build_sdk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    args = parser.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
