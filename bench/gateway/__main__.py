"""Gateway benchmark: one RPC (AuthService.GetOrganization, a primary-key read in PostgreSQL),
four paths, same machine, same run.

    .venv/bin/python -m bench.gateway [--seconds 6] [--concurrency 32] [--latency-requests 400]

1. direct gRPC to Auth (identity headers set by the client, as the gateway would);
2. Envoy, gRPC, API key (ext_authz → Auth) + rate limit (→ Usage);
3. Envoy, JSON/HTTP (transcoder), same key and limit;
4. FastAPI + httpx gateway (uvicorn): the same key check (Auth's Check over gRPC) and limit
   (Usage's ShouldRateLimit over gRPC), then httpx forwards to an equivalent JSON endpoint
   (FastAPI + psycopg, the same SELECT as Auth).

Latency: sequential requests (p50/p99), round-robin over the four paths. Throughput:
`--concurrency` in-flight requests for `--seconds` per path, in alternating slices. Interleaving
gives every path the same background load. Components run on free ports from scripts.stack (Auth, Usage, Envoy) plus two
uvicorn processes; the load generator is this Python process, on the same cores: absolute RPS
are bounded by the client too, ratios are the point. Prints a table and the ratios to direct.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc

from bench.accounts import bench_account
from scripts.stack import Stack
from services.common.config import SERVICES

Call = Callable[[], Awaitable[None]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Result:
    name: str
    p50_ms: float
    p99_ms: float
    rps: float
    errors: int


async def _throughput(call: Call, concurrency: int, seconds: float) -> tuple[int, int, float]:
    done = errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, errors
        while time.perf_counter() < stop_at:
            try:
                await call()
                done += 1
            except Exception:  # noqa: BLE001 - a benchmark counts failures, it does not stop
                errors += 1

    began = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return done, errors, time.perf_counter() - began


async def measure(paths: list[tuple[str, Call]], latency_requests: int, concurrency: int,
                  seconds: float, rounds: int = 4) -> list[Result]:
    """Interleaved, so every path sees the same background load: latency samples round-robin
    over the paths, throughput in `rounds` alternating slices per path."""
    for _, call in paths:
        for _ in range(50):  # warm connections, pools, caches
            await call()
    samples: dict[str, list[float]] = {name: [] for name, _ in paths}
    for _ in range(latency_requests):
        for name, call in paths:
            start = time.perf_counter()
            await call()
            samples[name].append(time.perf_counter() - start)
    totals = {name: [0, 0, 0.0] for name, _ in paths}
    for _ in range(rounds):
        for name, call in paths:
            done, errors, elapsed = await _throughput(call, concurrency, seconds / rounds)
            totals[name][0] += done
            totals[name][1] += errors
            totals[name][2] += elapsed
    results = []
    for name, _ in paths:
        ordered = sorted(samples[name])
        done, errors, elapsed = totals[name]
        results.append(Result(name, statistics.median(ordered) * 1e3,
                              ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
                              done / elapsed, int(errors)))
    return results


class Http1:
    """A minimal keep-alive HTTP/1.1 GET client (one connection per concurrent caller): httpx
    costs more CPU per request than the gateways being measured, on the same two cores."""

    def __init__(self, address: str, path: str, headers: dict[str, str]) -> None:
        self.host, _, port = address.rpartition(":")
        self.port = int(port)
        lines = [f"GET {path} HTTP/1.1", f"host: {address}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.all: list[asyncio.StreamWriter] = []

    async def __call__(self) -> None:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.all.append(writer)
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise RuntimeError("chunked responses are not supported by this client")
        await reader.readexactly(length)
        self.idle.append((reader, writer))
        if status != 200:
            raise RuntimeError(f"HTTP {status}")

    async def close(self) -> None:
        for writer in self.all:
            writer.close()


def _start_uvicorn(module: str, port: int, env: dict[str, str],
                   log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "uvicorn", module, "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning", "--no-access-log"],
            env=env, stdout=subprocess.DEVNULL, stderr=log)


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not up after {timeout}s")


async def run(args: argparse.Namespace) -> list[Result]:
    var_dir = Path(tempfile.mkdtemp(prefix="aimesh-bench-gw-"))
    overrides = {f"AIMESH_{s.upper()}_ADDR": f"127.0.0.1:{_free_port()}" for s in SERVICES}
    overrides.update({"AIMESH_GATEWAY_ADDR": f"127.0.0.1:{_free_port()}",
                      "AIMESH_GATEWAY_ADMIN_ADDR": f"127.0.0.1:{_free_port()}",
                      "AIMESH_VAR_DIR": str(var_dir), "AIMESH_LOG_LEVEL": "WARNING",
                      # The gateway's upstream mTLS is not wired yet (scripts/gateway.py).
                      "AIMESH_TLS_MODE": "plaintext"})
    stack = Stack.create(overrides, log_dir=var_dir / "log")
    extra: list[subprocess.Popen[bytes]] = []
    try:
        for service in ("auth", "usage"):
            stack.start_service(service)
        stack.wait_ready(["auth", "usage"], timeout=60)
        stack.start_gateway()
        stack.wait_ready(["gateway"], timeout=60)
        settings = stack.settings
        gateway = settings.gateway_addr

        async with httpx.AsyncClient(base_url=f"http://{gateway}", timeout=10) as setup:
            account = await bench_account(setup, settings)
        org, secret = account.organization, account.secret

        # The FastAPI pair: a JSON backend and the gateway in front of it.
        backend_port, fastapi_port = _free_port(), _free_port()
        env = {**stack.env, "BENCH_DATABASE_URL": settings.database_url,
               "BENCH_AUTH_ADDR": settings.address_of("auth"),
               "BENCH_USAGE_ADDR": settings.address_of("usage"),
               "BENCH_BACKEND_URL": f"http://127.0.0.1:{backend_port}"}
        for module, port in (("bench.gateway.fastapi_apps:backend", backend_port),
                             ("bench.gateway.fastapi_apps:gateway", fastapi_port)):
            extra.append(_start_uvicorn(module, port, env, var_dir / "log" / f"{port}.log"))
        _wait_http(f"http://127.0.0.1:{backend_port}/healthz", extra[0])
        _wait_http(f"http://127.0.0.1:{fastapi_port}/healthz", extra[1])

        request = auth_pb2.GetOrganizationRequest(name=org)
        direct_channel = grpc.aio.insecure_channel(settings.address_of("auth"))
        envoy_channel = grpc.aio.insecure_channel(gateway)
        direct = auth_pb2_grpc.AuthServiceStub(direct_channel)
        via_envoy = auth_pb2_grpc.AuthServiceStub(envoy_channel)
        identity, key_md = account.identity, account.key_metadata
        envoy_http = Http1(gateway, f"/v1/{org}", {"x-api-key": secret})
        fastapi_http = Http1(f"127.0.0.1:{fastapi_port}", f"/v1/{org}", {"x-api-key": secret})

        async def call_direct() -> None:
            await direct.GetOrganization(request, metadata=identity, timeout=10)

        async def call_envoy_grpc() -> None:
            await via_envoy.GetOrganization(request, metadata=key_md, timeout=10)

        results = await measure([("direct gRPC (Auth)", call_direct),
                                 ("Envoy gRPC + key + limit", call_envoy_grpc),
                                 ("Envoy JSON/HTTP + key + limit", envoy_http),
                                 ("FastAPI+httpx gateway", fastapi_http)],
                                args.latency_requests, args.concurrency, args.seconds)
        await envoy_http.close()
        await fastapi_http.close()
        await direct_channel.close()
        await envoy_channel.close()
        return results
    finally:
        for process in extra:
            process.terminate()
            process.wait(timeout=10)
        stack.stop_all()


def report(results: list[Result], concurrency: int) -> None:
    base = results[0]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nGetOrganization, {os.cpu_count()} cores shared by client and servers "
          f"(load average {load}); throughput at {concurrency} in flight\n")
    print(f"{'path':32} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'err':>5} "
          f"{'p50 +ms':>8} {'rps ratio':>9}")
    for r in results:
        print(f"{r.name:32} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.rps:8.0f} {r.errors:5d} "
              f"{r.p50_ms - base.p50_ms:8.2f} {r.rps / base.rps:9.2f}")
    envoy_grpc, envoy_json, fastapi = results[1], results[2], results[3]
    print(f"\nEnvoy gRPC adds {envoy_grpc.p50_ms - base.p50_ms:.2f} ms p50 over direct "
          f"(target <= 1 ms); Envoy JSON adds {envoy_json.p50_ms - base.p50_ms:.2f} ms.")
    print(f"Envoy gRPC serves {envoy_grpc.rps / fastapi.rps:.1f}x, Envoy JSON "
          f"{envoy_json.rps / fastapi.rps:.1f}x the FastAPI+httpx gateway's req/s (target >= 3x).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="throughput phase per path")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=400)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    report(results, args.concurrency)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
