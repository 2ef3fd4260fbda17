"""A local mesh for tests: the same launcher as scripts/up (scripts.stack), on free ports.

One TestMesh lives for the whole pytest session (fixture `mesh` in tests/conftest.py); tests ask
for the components they need and the mesh starts each once:

    async def test_x(mesh):
        mesh.ensure("auth", "usage")
        channel = mesh.channel("auth")        # grpc.aio channel, closed at session end
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import signal
import socket
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import grpc

from scripts.stack import Stack
from services.common.channels import open_channel
from services.common.config import HTTP_SERVICE_PORTS, SERVICES, Settings

# The one e-mail address the test mesh's Auth treats as a platform admin.
PLATFORM_ADMIN_EMAIL = "platform-admin@aimesh.test"


class PlaintextUnchecked(UserWarning):
    """A check skipped because the test mesh runs without mTLS (listed in pytest's summary)."""


# Ports handed out by free_port in this process: a stack asks for ~20 at once.
_handed_out: set[int] = set()
# Below this, ports are left alone (well-known services, this project's defaults).
_LOWEST_PORT = 20000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    """A TCP port for a test or bench server to listen on: free now on every address, not handed
    out before by this process, and below the kernel's ephemeral range.

    Not bind(0): that draws from the ephemeral range, where about one stack in a hundred got the
    same port twice among its ~20 (measured: 19 of 2,000 batches of 20), and where the kernel
    hands ports to other programs' bind(0) and outgoing connections between this pick and the
    server's own bind."""
    low, high = _LOWEST_PORT, _ephemeral_start()
    if high - low < 1000:  # an unusual ephemeral range: fall back to the kernel's pick
        return _kernel_pick()
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(1000):
        port = rng.randrange(low, high)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free TCP port in {low}-{high - 1} after 1000 tries")


@functools.cache  # read once per process: a stack asks for ~20 ports
def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    """Free on the wildcard address (so on loopback too), with no socket lingering on it."""
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _kernel_pick() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def private_addresses(var_dir: Path) -> dict[str, str]:
    """Overrides that give a stack of its own every service, metrics, gateway and admin address
    on a free port, its own var dir and quiet logs (benchmarks running beside other stacks)."""
    addresses = {f"AIMESH_{s.upper()}_ADDR": f"127.0.0.1:{free_port()}" for s in SERVICES}
    addresses.update(
        {f"AIMESH_{s.upper()}_METRICS_ADDR": f"127.0.0.1:{free_port()}" for s in SERVICES})
    addresses.update({
        "AIMESH_GATEWAY_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_GATEWAY_ADMIN_ADDR": f"127.0.0.1:{free_port()}",
        "AIMESH_VAR_DIR": str(var_dir), "AIMESH_LOG_LEVEL": "WARNING",
    })
    return addresses


def log_offsets(log_dir: Path) -> dict[Path, int]:
    """Every log file under `log_dir` (sub-stacks' folders too) and its size now."""
    return {path: path.stat().st_size for path in log_dir.rglob("*.log")}


def log_report(
    log_dir: Path,
    since: Mapping[Path, int] | None = None,
    lines: int = 60,
    line_chars: int = 4000,
) -> str:
    """The last `lines` lines each log under `log_dir` got after the offsets `since` (the whole
    log without), one block per file, for a failure's report: by the time someone reads it,
    the run's directory may be gone (a bench's temporary one) or out of reach (CI's)."""
    blocks = []
    for path in sorted(log_dir.rglob("*.log"), key=lambda p: p.stat().st_mtime):
        with path.open("rb") as handle:
            handle.seek((since or {}).get(path, 0))
            added = handle.read().decode(errors="replace").splitlines()
        if added:
            tail = [line[:line_chars] + (" …" if len(line) > line_chars else "")
                    for line in added[-lines:]]
            skipped = f" (last {lines} of {len(added)} lines)" if len(added) > lines else ""
            blocks.append(f"--- {path.relative_to(log_dir)}{skipped}\n" + "\n".join(tail))
    return "\n".join(blocks) or f"(nothing logged under {log_dir})"


class TestMesh:
    """Components started on demand, on ports that cannot collide with a developer's stack."""

    __test__ = False  # not a test class

    def __init__(self, tls_mode: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.var_dir = Path(tempfile.mkdtemp(prefix="aimesh-test-"))
        overrides = {
            f"AIMESH_{s.upper()}_ADDR": f"127.0.0.1:{free_port()}"
            for s in (*SERVICES, *HTTP_SERVICE_PORTS)
        }
        overrides.update({
            f"AIMESH_{s.upper()}_METRICS_ADDR": f"127.0.0.1:{free_port()}"
            for s in (*SERVICES, *HTTP_SERVICE_PORTS)
        })
        overrides.update(
            {
                "AIMESH_GATEWAY_ADDR": f"127.0.0.1:{free_port()}",
                "AIMESH_VAR_DIR": str(self.var_dir),
                "AIMESH_DRAIN_SECONDS": "3",
                "AIMESH_HEALTH_INTERVAL_SECONDS": "0.5",
                "AIMESH_AUTH_PLATFORM_ADMINS": PLATFORM_ADMIN_EMAIL,
                # Outboxes deliver promptly after Usage comes back (tests stop and restart it).
                "AIMESH_USAGE_OUTBOX_POLL_SECONDS": "0.5",
                "AIMESH_USAGE_OUTBOX_MAX_BACKOFF_SECONDS": "2",
                "AIMESH_TLS_MODE": tls_mode or os.environ.get("AIMESH_TEST_TLS_MODE", "mtls"),
            }
        )
        overrides.update(extra_env or {})
        # Triton is shared: reuse the developer's/CI's server on the default port if one runs.
        overrides.setdefault("AIMESH_TRITON_URL", os.environ.get("AIMESH_TRITON_URL", "127.0.0.1:8001"))
        self.stack = Stack.create(overrides, log_dir=self.var_dir / "log")
        self._channels: dict[str, grpc.aio.Channel] = {}

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    @property
    def env(self) -> dict[str, str]:
        return self.stack.env

    def address(self, service: str) -> str:
        return self.settings.address_of(service)

    def ensure(self, *services: str, timeout: float = 180.0) -> None:
        """Start each named service that is not running yet and wait until it is SERVING (not
        before its first readiness check passed: Speech's includes a warm-up that can take a
        minute on a loaded machine)."""
        started = []
        for service in services:
            process = self.stack.processes.get(service)
            if process is None or not process.alive():
                self.stack.start_service(service)
                started.append(service)
        if started:
            self.stack.wait_ready(started, timeout=timeout)

    def ensure_triton(self, timeout: float = 600.0) -> str:
        """A ready Triton (started once, or the one already running); returns its gRPC URL."""
        from scripts import triton_server

        host, ports = self.stack.triton_ports()
        if not triton_server.is_ready(ports, host):
            process = self.stack.processes.get("triton")
            if (process is None or not process.alive()) and triton_server.port_in_use(ports.grpc, host):
                # Another session (scripts/up, a second test run) is starting one: wait for it.
                triton_server.wait_ready(ports, host=host, timeout=timeout)
                return self.settings.triton_url
            if process is None or not process.alive():
                if self.stack.start_triton() is None:
                    raise RuntimeError("no Triton model repository at triton/models")
            self.stack.wait_ready(["triton"], timeout=timeout)
        missing = triton_server.missing_models(ports, host)
        if missing:
            raise RuntimeError(
                f"the Triton on {self.settings.triton_url} does not serve {', '.join(missing)} "
                "(started on another model repository?); stop it or set AIMESH_TRITON_URL"
            )
        return self.settings.triton_url

    def ensure_gateway(self, timeout: float = 60.0) -> str:
        """A ready Envoy gateway in front of the mesh; returns host:port."""
        process = self.stack.processes.get("gateway")
        if process is None or not process.alive():
            self.stack.start_gateway()
            self.stack.wait_ready(["gateway"], timeout=timeout)
        return self.settings.gateway_addr

    def restart(self, service: str, timeout: float = 180.0) -> None:
        self.stack.stop(service)
        self.ensure(service, timeout=timeout)

    def stop(self, service: str) -> int | None:
        return self.stack.stop(service)

    def crash(self, service: str) -> None:
        """SIGKILL `service` and everything it started (its process group, as a container dies):
        no drain, no shutdown hooks. Only processes this mesh started: it refuses others."""
        process = self.stack.processes.pop(service)
        if process.alive():
            os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait()

    def mtls_only(self, what: str) -> bool:
        """Guard for checks that only mean something under mTLS (the peer's certificate is what
        they test): True under mTLS, the default. In plaintext mode (AIMESH_TEST_TLS_MODE, for
        debugging) it warns, naming the checks, so none is dropped silently."""
        if self.settings.tls_mode == "mtls":
            return True
        warnings.warn(PlaintextUnchecked(f"not checked in plaintext mode: {what}"), stacklevel=2)
        return False

    def channel(self, service: str, identity: str = "gateway") -> grpc.aio.Channel:
        """An aio channel to `service` as mesh `identity` (under mTLS, with that identity's
        certificate: "gateway" may forward end-user identity headers to public RPCs; a service
        name acts as that service). Created in the running event loop, cached."""
        key = f"{service}/{identity}"
        if key not in self._channels:
            self._channels[key] = open_channel(self.settings, service, caller=identity)
        return self._channels[key]

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    def close(self, keep_logs: bool = False) -> None:
        """Stop everything; remove the var dir unless its logs are wanted (a failed session)."""
        self.stack.stop_all()
        if keep_logs:
            print(f"\ntest mesh logs kept in {self.stack.log_dir}")
        else:
            shutil.rmtree(self.var_dir, ignore_errors=True)
