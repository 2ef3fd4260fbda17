"""The one place that knows how to launch the local tritonserver.

The `nvidia-pytriton` wheel ships a real Triton 2.51 binary with the python backend. Three things
make it run outside its own wrapper:

* the python backend looks for `triton_python_backend_stub` inside its backend directory, and
  the wheel keeps one stub per Python version elsewhere, so we assemble a backend directory
  (under var/triton/, git-ignored) with the stub for *this* interpreter;
* the stub links libpython3.11; with a pyenv interpreter the system one is the wrong build
  (`'_thread.RLock' object has no attribute '_recursion_count'`), so LD_LIBRARY_PATH starts
  with the interpreter's own LIBDIR, then the wheel's bundled libraries;
* model.py runs inside that stub, whose sys.path is the base interpreter's; PYTHONPATH adds
  this venv's site-packages so models import numpy, torch, pocketsphinx ... without any
  local path inside the model code.

Usage: `python -m scripts.triton_server [--model-repository triton/models] [--grpc-port 8001]`.
Library: `server_command()` returns (argv, env); `start()` / `wait_ready()` / `stop()`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "triton" / "models"
DEFAULT_WORK_DIR = REPO_ROOT / "var" / "triton"


@dataclass(frozen=True)
class TritonPorts:
    grpc: int = 8001
    http: int = 8000
    metrics: int = 8002


def _pytriton_dir() -> Path:
    import pytriton  # imported lazily: only needed to locate the wheel's files

    return Path(pytriton.__file__).resolve().parent


def _libpython_dir() -> str:
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        raise RuntimeError("this interpreter reports no LIBDIR; cannot locate libpython")
    return str(libdir)


def _site_packages() -> list[str]:
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return list(dict.fromkeys(paths))


def prepare_backend_dir(work_dir: Path = DEFAULT_WORK_DIR) -> Path:
    """Assemble <work_dir>/backends/python with the stub for the running Python version."""
    dist = _pytriton_dir() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"pytriton ships no python backend stub for Python {version}: {stub}")
    backends = work_dir / "backends"
    python_dir = backends / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    sources = [
        dist / "backends" / "python" / "libtriton_python.so",
        dist / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ]
    for src in sources:
        dst = python_dir / src.name
        # Copy (not symlink): the backend resolves the stub relative to its own real location.
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dst)
    return backends


def server_command(
    model_repository: Path = DEFAULT_MODEL_REPOSITORY,
    ports: TritonPorts = TritonPorts(),
    *,
    work_dir: Path = DEFAULT_WORK_DIR,
    host: str = "127.0.0.1",
    log_verbose: int = 0,
    extra_args: Sequence[str] = (),
    base_env: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Return (argv, env) that run tritonserver on `model_repository`."""
    dist = _pytriton_dir() / "tritonserver"
    backends = prepare_backend_dir(work_dir)
    argv = [
        str(dist / "bin" / "tritonserver"),
        f"--model-repository={Path(model_repository).resolve()}",
        f"--backend-directory={backends}",
        f"--cache-directory={dist / 'caches'}",
        f"--grpc-address={host}",
        f"--grpc-port={ports.grpc}",
        f"--http-address={host}",
        f"--http-port={ports.http}",
        f"--metrics-address={host}",
        f"--metrics-port={ports.metrics}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--exit-timeout-secs=5",
        f"--log-verbose={log_verbose}",
        # Room for audio chunks and embedding batches in the stub's shared memory.
        "--backend-config=python,shm-default-byte-size=16777216",
        "--backend-config=python,shm-growth-byte-size=16777216",
        *extra_args,
    ]
    env = dict(os.environ if base_env is None else base_env)
    libs = [_libpython_dir(), str(_pytriton_dir().parent / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    pythonpath = _site_packages()
    if env.get("PYTHONPATH"):
        pythonpath.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Models run offline: weights come from installed packages, never from a hub.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("OMP_NUM_THREADS", "1")
    return argv, env


def repository_models(model_repository: Path = DEFAULT_MODEL_REPOSITORY) -> list[str]:
    """The model names in a Triton model repository (folders with a config.pbtxt)."""
    return sorted(d.name for d in model_repository.iterdir() if (d / "config.pbtxt").is_file())


def missing_models(
    ports: TritonPorts = TritonPorts(),
    host: str = "127.0.0.1",
    model_repository: Path = DEFAULT_MODEL_REPOSITORY,
    timeout: float = 2.0,
) -> list[str]:
    """Models of `model_repository` that the server on `ports` does not serve ready — a server
    started on another repository answers health/ready but lacks them."""
    missing = []
    for name in repository_models(model_repository):
        try:
            with urllib.request.urlopen(
                f"http://{host}:{ports.http}/v2/models/{name}/ready", timeout=timeout
            ) as resp:
                if resp.status == 200:
                    continue
        except (urllib.error.URLError, OSError):
            pass
        missing.append(name)
    return missing


def is_ready(
    ports: TritonPorts = TritonPorts(), host: str = "127.0.0.1", timeout: float = 1.0
) -> bool:
    """True when the server answers /v2/health/ready with 200 (all models loaded)."""
    try:
        with urllib.request.urlopen(
            f"http://{host}:{ports.http}/v2/health/ready", timeout=timeout
        ) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_ready(
    ports: TritonPorts = TritonPorts(),
    *,
    host: str = "127.0.0.1",
    timeout: float = 300.0,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Block until Triton is ready; fail fast if `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = ""
            if log_path is not None and log_path.exists():
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(
                f"tritonserver exited with {process.returncode} before ready\n{tail}"
            )
        if is_ready(ports, host):
            return
        time.sleep(0.5)
    raise TimeoutError(f"tritonserver not ready on {host}:{ports.http} after {timeout:.0f}s")


def start(
    model_repository: Path = DEFAULT_MODEL_REPOSITORY,
    ports: TritonPorts = TritonPorts(),
    *,
    work_dir: Path = DEFAULT_WORK_DIR,
    log_path: Path | None = None,
    timeout: float = 300.0,
) -> subprocess.Popen[bytes]:
    """Start tritonserver in the background, wait for readiness, return the process."""
    busy = [p for p in (ports.grpc, ports.http, ports.metrics) if port_in_use(p)]
    if busy:
        # Otherwise readiness could be answered by whatever already holds the port.
        raise RuntimeError(f"cannot start tritonserver: port(s) {busy} already in use")
    argv, env = server_command(model_repository, ports, work_dir=work_dir)
    log_path = log_path or work_dir / "tritonserver.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Not the repo root: there `triton/` would shadow packages for the model stubs.
            cwd=work_dir,
            start_new_session=True,
        )
    try:
        wait_ready(ports, timeout=timeout, process=proc, log_path=log_path)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the server (its stubs follow), escalate to SIGKILL after `timeout`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Kill the whole session we created: python backend stubs are its children.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run tritonserver on the aimesh model repository")
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--print-command", action="store_true", help="print argv and exit")
    args = parser.parse_args(argv)
    ports = TritonPorts(args.grpc_port, args.http_port, args.metrics_port)
    cmd, env = server_command(
        args.model_repository, ports, work_dir=args.work_dir, log_verbose=args.log_verbose
    )
    if args.print_command:
        for key in ("LD_LIBRARY_PATH", "PYTHONPATH"):
            print(f"{key}={env[key]}")
        print(" ".join(cmd))
        return 0
    # Foreground: replace this process so signals reach tritonserver directly.
    os.execve(cmd[0], cmd, env)
    return 0  # unreachable


if __name__ == "__main__":
    sys.exit(main())
