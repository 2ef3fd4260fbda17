"""Gateway benchmark: one RPC (AuthService.GetOrganization, a primary-key read in PostgreSQL)
through every path a caller can take, same machine, same run.

    .venv/bin/python -m bench.gateway [--seconds 6] [--concurrency 32] [--latency-requests 400]
                                      [--tls-modes mtls,plaintext]

For each mesh transport in --tls-modes (default: both the default mTLS upstreams and plaintext)
a stack of Auth + Usage + Envoy runs, and the paths are:
1. direct gRPC to Auth as the `gateway` identity (identity headers set by the client, as the
   gateway would; mTLS when the mode is mtls);
2. Envoy, gRPC, API key + rate limit: no ext_authz hop; the service (Auth here) admits the key
   from its cache of Auth's verdicts, asking Auth's Check on a miss (at most every 10 s per key
   and process), and counts the limit with Usage's limiter (services/common/gateway_keys.py);
3. Envoy, gRPC, JWT caller (the owner's access token) + rate limit: jwt_authn, no Check hop;
   Auth's interceptor checks revocation in memory and counts the limit
   (services/common/gateway_jwt.py), so paths 2 and 3 side by side compare the two admissions;
4. Envoy, JSON/HTTP (transcoder), API key + rate limit;
5. Envoy routing only (no admission): a second, minimal Envoy (bench/gateway/envoy_floor.py: the
   same binary and --concurrency, one listener, the router filter only, Auth's cluster as the
   gateway defines it, so mTLS with the gateway's certificate in mtls mode), called like path 1
   (the same channel code and identity headers; plaintext to Envoy, as to the gateway), so Auth
   does the same work as on path 1: the floor any gateway built on Envoy can reach, which the
   `bound` line compares with 3x FastAPI.
Plus, on the first mode's stack, the baseline:
6. FastAPI + httpx gateway (as many single-worker uvicorn pairs of gateway and backend as
   Envoy's --concurrency, the client's connections spread evenly over them): the same key
   check and limit (Auth's Check over gRPC, one hop) over the same mesh transport, then httpx
   forwards to an equivalent JSON endpoint (FastAPI + psycopg, the
   same SELECT as Auth).

Latency: sequential requests (p50/p99), rounds over all paths in a fresh order each. Throughput:
`--concurrency` in-flight requests for `--seconds` per path, in alternating slices. Interleaving
gives every path the same background load. The load generator is this Python process, on the same
cores: absolute numbers are bounded by the client too, ratios are the point. Prints the machine
load, a table, the ratios, one verdict line per issue-15 target, per mode a `bound` line (what 3x
FastAPI asks of any gateway, what Envoy's routing alone reaches, and whether that reaches 3x FastAPI
in this run), a `bound latency` line (what Envoy's routing alone adds, which latency targets any
Envoy gateway can reach on this machine, and what admission adds above routing) and a `cpu` line (Auth's own CPU per request on each gRPC path), and Envoy's own time
per request kind from its access log (bench/gateway/envoy_split.py), which the client's per-call
cost does not blur.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import httpx
from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.accounts import bench_account
from bench.chat.timing import cpu_seconds
from bench.gateway.envoy_floor import PROCESS as FLOOR_PROCESS
from bench.gateway.envoy_floor import start_floor
from bench.gateway.envoy_split import Split, envoy_split, print_split
from bench.report import load_average, verdict
from bench.scratch import scratch_dir
from scripts.gateway import ENVOY_CONCURRENCY
from scripts.stack import Stack
from services.common.channels import grpc_process_env, open_channel
from tests.support.mesh import free_port, private_addresses

Call = Callable[[], Awaitable[None]]


@dataclass
class Result:
    name: str
    p50_ms: float
    p99_ms: float
    rps: float
    errors: int
    # CPU the mesh's processes spent per request in the throughput phase (process -> us)
    cpu_us: dict[str, float] = field(default_factory=dict)
    # Counters read from a service's metrics, summed over the throughput phase (name -> delta)
    counted: dict[str, float] = field(default_factory=dict)


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
                  seconds: float, rounds: int = 4, warmup: int = 50,
                  latency_window: list[float] | None = None,
                  processes: dict[str, dict[str, int]] | None = None,
                  counters: dict[str, Callable[[], dict[str, float]]] | None = None
                  ) -> list[Result]:
    """Interleaved, so every path sees the same background load: latency samples round-robin
    over the paths, throughput in `rounds` alternating slices per path. `latency_window`, if
    given, receives the wall-clock start and end of the latency phase. `processes` (path name
    -> process name -> pid): the CPU they use per request in the throughput phase, which the
    machine's load blurs far less than latency does. `counters` (path name -> a reader of
    counters): how much each grew over the path's throughput slices."""
    processes = processes or {}
    counters = counters or {}
    for _, call in paths:
        for _ in range(warmup):  # warm connections, pools, caches
            await call()
    samples: dict[str, list[float]] = {name: [] for name, _ in paths}
    window_start = time.time()
    # A fresh order each round: a fixed one made the path right after `direct` pay for Auth
    # still finishing the direct call (its Check waited), ~0.3-0.5 ms on that path alone.
    order = random.Random(15)
    for _ in range(latency_requests):
        for name, call in order.sample(paths, len(paths)):
            start = time.perf_counter()
            await call()
            samples[name].append(time.perf_counter() - start)
    if latency_window is not None:
        latency_window[:] = [window_start, time.time()]
    totals = {name: [0, 0, 0.0] for name, _ in paths}
    cpu: dict[str, dict[str, float]] = {name: {} for name, _ in paths}
    counted: dict[str, dict[str, float]] = {name: {} for name, _ in paths}
    for _ in range(rounds):
        for name, call in paths:
            read = counters.get(name, dict)
            before, counted_before = cpu_seconds(processes.get(name, {})), read()
            done, errors, elapsed = await _throughput(call, concurrency, seconds / rounds)
            for process, used in cpu_seconds(processes.get(name, {})).items():
                cpu[name][process] = cpu[name].get(process, 0.0) + used - before[process]
            for counter, value in read().items():
                counted[name][counter] = (counted[name].get(counter, 0.0) + value
                                          - counted_before.get(counter, 0.0))
            totals[name][0] += done
            totals[name][1] += errors
            totals[name][2] += elapsed
    results = []
    for name, _ in paths:
        ordered = sorted(samples[name])
        done, errors, elapsed = totals[name]
        results.append(Result(name, statistics.median(ordered) * 1e3,
                              ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
                              done / elapsed, int(errors),
                              {p: 1e6 * used / max(done, 1) for p, used in cpu[name].items()},
                              counted[name]))
    return results


class Http1:
    """A minimal keep-alive HTTP/1.1 GET client (one connection per concurrent caller): httpx
    costs more CPU per request than the gateways being measured, on the same two cores. With
    several `addresses`, new connections go to each in turn."""

    def __init__(self, addresses: list[str], path: str, headers: dict[str, str]) -> None:
        self.targets = [(host, int(port)) for host, _, port in
                        (address.rpartition(":") for address in addresses)]
        lines = [f"GET {path} HTTP/1.1", f"host: {addresses[0]}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0
        self.all: list[asyncio.StreamWriter] = []

    async def __call__(self) -> None:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            # Chosen before the await: connections opened at once still go to each in turn.
            host, port = self.targets[self.opened % len(self.targets)]
            self.opened += 1
            reader, writer = await asyncio.open_connection(host, port)
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
                   log_path: Path, keep_alive: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "uvicorn", module, "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning", "--no-access-log",
             *keep_alive],
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


async def _start_stack(mode: str, scratch: Path) -> tuple[Stack, Path]:
    var_dir = scratch / mode
    overrides = {**private_addresses(var_dir), "AIMESH_TLS_MODE": mode}
    stack = Stack.create(overrides, log_dir=var_dir / "log")
    for service in ("auth", "usage"):
        stack.start_service(service)
    stack.wait_ready(["auth", "usage"], timeout=90)
    stack.start_gateway()
    stack.wait_ready(["gateway"], timeout=60)
    return stack, var_dir


FLOOR = "Envoy routing only (no admission)"
# Issue 15's latency targets: what the gateway may add over direct gRPC.
KEY_P50_MS, KEY_P99_MS, JWT_P50_MS = 1.0, 3.0, 0.6


class ModePaths:
    """The five measured paths of one stack (one mesh transport); starts the routing-only
    Envoy as one of the stack's processes."""

    def __init__(self, mode: str, stack: Stack) -> None:
        self.mode, self.stack = mode, stack
        self.closers: list[Callable[[], Awaitable[None]]] = []

    async def build(self) -> list[tuple[str, Call]]:
        settings = self.stack.settings
        gateway = settings.gateway_addr
        async with httpx.AsyncClient(base_url=f"http://{gateway}", timeout=10) as setup:
            self.account = account = await bench_account(setup, settings)
        request = auth_pb2.GetOrganizationRequest(name=account.organization)
        direct_channel = open_channel(settings, "auth", caller="gateway")
        envoy_channel = grpc.aio.insecure_channel(gateway)
        # The direct path's channel (options, interceptors), to the routing-only Envoy, whose
        # listener is plaintext like the gateway's: Envoy does the mesh transport.
        to_floor = replace(settings, tls_mode="plaintext", service_addrs={
            **settings.service_addrs, "auth": start_floor(self.stack)})
        floor_channel = open_channel(to_floor, "auth", caller="gateway")
        via_floor = auth_pb2_grpc.AuthServiceStub(floor_channel)
        direct = auth_pb2_grpc.AuthServiceStub(direct_channel)
        via_envoy = auth_pb2_grpc.AuthServiceStub(envoy_channel)
        identity, key_md, jwt_md = account.identity, account.key_metadata, account.jwt_metadata
        envoy_http = Http1([gateway], f"/v1/{account.organization}",
                           {"x-api-key": account.secret})
        self.closers += [envoy_http.close, direct_channel.close, envoy_channel.close,
                         floor_channel.close]

        async def call_direct() -> None:
            await direct.GetOrganization(request, metadata=identity, timeout=10)

        async def call_floor() -> None:
            await via_floor.GetOrganization(request, metadata=identity, timeout=10)

        async def call_envoy_key() -> None:
            await via_envoy.GetOrganization(request, metadata=key_md, timeout=10)

        async def call_envoy_jwt() -> None:
            await via_envoy.GetOrganization(request, metadata=jwt_md, timeout=10)

        m = self.mode
        return [(f"[{m}] direct gRPC (Auth)", call_direct),
                (f"[{m}] {FLOOR}", call_floor),
                (f"[{m}] Envoy gRPC + key + limit", call_envoy_key),
                (f"[{m}] Envoy gRPC + JWT + limit", call_envoy_jwt),
                (f"[{m}] Envoy JSON + key + limit", envoy_http)]

    async def close(self) -> None:
        for close in self.closers:
            await close()


def _start_fastapi(stack: Stack, workers: int, var_dir: Path,
                   extra: list[subprocess.Popen[bytes]]) -> list[int]:
    """`workers` FastAPI pairs (JSON backend + gateway in front, one uvicorn worker each, each
    gateway calling its own backend); the gateways' ports. The client spreads its connections
    over them in turn. One uvicorn with --workers N lets its workers race for each connection
    (22/10 of 32 in a measured run), which left how the load divides to chance."""
    ports = []
    for _ in range(workers):
        backend_port, gateway_port = free_port(), free_port()
        # The FastAPI gateway calls Auth through grpc.aio, as the mesh's Python processes do.
        env = grpc_process_env({**stack.env, "BENCH_DATABASE_URL": stack.settings.database_url,
                                "BENCH_BACKEND_URL": f"http://127.0.0.1:{backend_port}"})
        for module, port in (("bench.gateway.fastapi_apps:backend", backend_port),
                             ("bench.gateway.fastapi_apps:gateway", gateway_port)):
            # The client-facing one keeps idle connections across the other paths' slices,
            # like Envoy (uvicorn's 5 s default failed the first request of every slice).
            keep_alive = ("--timeout-keep-alive", "600") if port == gateway_port else ()
            extra.append(_start_uvicorn(module, port, env, var_dir / "log" / f"{port}.log",
                                        keep_alive))
            _wait_http(f"http://127.0.0.1:{port}/healthz", extra[-1])
        ports.append(gateway_port)
    return ports


async def run(args: argparse.Namespace) -> tuple[list[Result], dict[str, Split]]:
    modes = [m.strip() for m in args.tls_modes.split(",") if m.strip()]
    stacks: list[tuple[str, Stack, Path]] = []
    extra: list[subprocess.Popen[bytes]] = []
    mode_paths: list[ModePaths] = []
    with scratch_dir("aimesh-bench-gw-") as scratch:
        try:
            return await _measure(args, modes, scratch, stacks, extra, mode_paths)
        finally:
            for built in mode_paths:
                await built.close()
            for process in extra:
                process.terminate()
                process.wait(timeout=10)
            for _, stack, _ in stacks:
                stack.stop_all()


async def _measure(args: argparse.Namespace, modes: list[str], scratch: Path,
                   stacks: list[tuple[str, Stack, Path]], extra: list[subprocess.Popen[bytes]],
                   mode_paths: list[ModePaths]) -> tuple[list[Result], dict[str, Split]]:
    """Start a mesh per TLS mode (in `scratch`) and the FastAPI baseline, then measure every path
    side by side; what it starts is appended to the lists, which `run` stops."""
    for mode in modes:
        stack, var_dir = await _start_stack(mode, scratch)
        stacks.append((mode, stack, var_dir))
    paths: list[tuple[str, Call]] = []
    for mode, stack, _ in stacks:
        built = ModePaths(mode, stack)
        mode_paths.append(built)
        paths += await built.build()
    first_mode, first_stack, first_dir = stacks[0]
    fastapi_ports = _start_fastapi(first_stack, ENVOY_CONCURRENCY, first_dir, extra)
    fastapi_http = Http1([f"127.0.0.1:{port}" for port in fastapi_ports],
                         f"/v1/{mode_paths[0].account.organization}",
                         {"x-api-key": mode_paths[0].account.secret})
    paths.append((f"[{first_mode}] FastAPI+httpx gateway", fastapi_http))
    window: list[float] = []
    processes = {name: _mesh_processes(stack, name) for mode, stack, _ in stacks
                 for name, _ in paths if name.startswith(f"[{mode}]")}
    limiters = {name: _limiter_counts(stack) for mode, stack, _ in stacks
                for name, _ in paths if name.startswith(f"[{mode}]")}
    results = await measure(paths, args.latency_requests, args.concurrency, args.seconds,
                            rounds=args.rounds, warmup=args.warmup, latency_window=window,
                            processes=processes, counters=limiters)
    await fastapi_http.close()
    splits = {mode: envoy_split(stack.log_dir / "gateway.log", *window)
              for mode, stack, _ in stacks}
    return results, splits


def _mesh_processes(stack: Stack, path: str) -> dict[str, int]:
    """The stack's processes whose CPU a path's requests are charged: the routing-only path's
    Envoy is its own, the real gateway everyone else's (each idles while the other works)."""
    other_envoy = "gateway" if path.endswith(FLOOR) else FLOOR_PROCESS
    return {p: proc.popen.pid for p, proc in stack.processes.items() if p != other_envoy}


def _limiter_counts(stack: Stack) -> Callable[[], dict[str, float]]:
    """A reader of Auth's rate-limit counters (its /metrics): requests its gateway limiter
    admitted, and the Redis round trips that took leases for them."""
    url = f"http://{stack.settings.metrics_address_of('auth')}/metrics"

    def read() -> dict[str, float]:
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
            for sample in family.samples:
                if sample.name == "aimesh_ratelimit_leases_total":
                    counts["leases"] = sample.value
                elif (sample.name == "aimesh_ratelimit_decisions_total"
                      and sample.labels.get("decision") == "allow"):
                    counts["admitted"] = sample.value
        return counts

    return read


def _leases(mode: str, paths: dict[str, Result]) -> str:
    """Redis round trips per 1000 requests Auth's limiter admitted, on the paths it counts."""
    parts = []
    for label, name in (("key+limit", "Envoy gRPC + key + limit"),
                        ("JWT+limit", "Envoy gRPC + JWT + limit"),
                        ("JSON key+limit", "Envoy JSON + key + limit")):
        counted = paths[f"[{mode}] {name}"].counted
        admitted, leases = counted.get("admitted", 0.0), counted.get("leases", 0.0)
        parts.append(f"{label} {1000 * leases / admitted:.1f} ({admitted:.0f} admitted)"
                     if admitted else f"{label} not measured")
    return (f"leases [{mode}]: Redis round trips taking rate-limit leases per 1000 requests "
            "Auth's limiter admitted (throughput phase): " + ", ".join(parts))


def _bound(mode: str, direct: Result, floor: Result, fastapi: Result) -> str:
    """What 3x FastAPI asks of a gateway, against what Envoy's routing alone leaves."""
    reachable = floor.rps >= 3 * fastapi.rps
    return (f"bound [{mode}]: 3x FastAPI = {3 * fastapi.rps:.0f} req/s, direct = "
            f"{direct.rps:.0f} req/s: FastAPI is {fastapi.rps / direct.rps:.2f}x direct, so 3x "
            f"FastAPI needs {3 * fastapi.rps / direct.rps:.2f}x direct (no gateway in front of "
            f"the same service can exceed 1x); Envoy routing alone: "
            f"{floor.rps / direct.rps:.2f}x direct ({floor.rps / fastapi.rps:.2f}x FastAPI), so "
            + ("the 3x FastAPI target IS reachable by an Envoy gateway in this run (routing alone "
               "serves >= 3x FastAPI's req/s)" if reachable else
               "the 3x FastAPI target is NOT reachable by any Envoy gateway in this run (routing "
               "alone, with no admission at all, serves < 3x FastAPI's req/s)"
               + ("; nor by any gateway at all: 3x FastAPI exceeds direct in this run"
                  if 3 * fastapi.rps > direct.rps else "")))


def _reach(reachable: bool) -> str:
    return "IS reachable" if reachable else "is NOT reachable"


def _latency_bound(mode: str, direct: Result, floor: Result, key: Result, jwt: Result) -> str:
    """The latency targets against what Envoy's routing alone adds in this run (a target below
    it is out of reach for any Envoy gateway on this machine), and what admission adds above
    routing: the part the gateway's own work decides."""
    floor_p50, floor_p99 = floor.p50_ms - direct.p50_ms, floor.p99_ms - direct.p99_ms
    return (f"bound latency [{mode}]: Envoy routing alone adds {floor_p50:.2f} ms p50, "
            f"{floor_p99:.2f} ms p99 over direct in this run, so the key+limit p50 target "
            f"({KEY_P50_MS} ms) {_reach(floor_p50 <= KEY_P50_MS)}, the key+limit p99 target "
            f"({KEY_P99_MS} ms) {_reach(floor_p99 <= KEY_P99_MS)} and the JWT p50 target "
            f"({JWT_P50_MS} ms) {_reach(floor_p50 <= JWT_P50_MS)} by any Envoy gateway in this "
            f"run; admission above routing, p50: key+limit {key.p50_ms - floor.p50_ms:+.2f} ms, "
            f"JWT+limit {jwt.p50_ms - floor.p50_ms:+.2f} ms")


def _auth_cpu(mode: str, paths: dict[str, Result]) -> str:
    """Auth's own CPU per request on each path of `mode` (one Python process: what the service
    does per request, admission included, next to what the Envoy in front of it costs)."""
    auth = {label: paths[f"[{mode}] {name}"].cpu_us.get("auth", 0.0) for label, name in (
        ("direct", "direct gRPC (Auth)"), ("routing only", FLOOR),
        ("key+limit", "Envoy gRPC + key + limit"), ("JWT+limit", "Envoy gRPC + JWT + limit"))}
    if not auth["key+limit"] or not auth["JWT+limit"]:
        return f"cpu [{mode}]: Auth's CPU per request not measured"
    return (f"cpu [{mode}]: Auth's own CPU per request: "
            + ", ".join(f"{label} {us:.0f} us" for label, us in auth.items())
            + f"; direct / key+limit {auth['direct'] / auth['key+limit']:.2f}x, direct / "
            f"JWT+limit {auth['direct'] / auth['JWT+limit']:.2f}x (compare the rps ratios)")


def report(results: list[Result], concurrency: int, load_before: str) -> None:
    by_name = {r.name: r for r in results}
    fastapi = results[-1]
    print(f"\nGetOrganization, {os.cpu_count()} cores shared by client and servers; "
          f"Envoy --concurrency {ENVOY_CONCURRENCY}, FastAPI {ENVOY_CONCURRENCY} "
          f"single-worker uvicorn gateway+backend pairs, connections spread evenly; throughput "
          f"at {concurrency} in flight")
    print(f"machine load average (1, 5, 15 min): before {load_before}; after {load_average()}\n")
    print(f"{'path':46} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'err':>5} "
          f"{'p50 +ms':>8} {'p99 +ms':>8} {'rps ratio':>9}")
    base = results[0]
    for r in results:
        mode = r.name.split("]", 1)[0] + "]"
        base = by_name.get(f"{mode} direct gRPC (Auth)", base)
        print(f"{r.name:46} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.rps:8.0f} {r.errors:5d} "
              f"{r.p50_ms - base.p50_ms:8.2f} {r.p99_ms - base.p99_ms:8.2f} "
              f"{r.rps / base.rps:9.2f}")
    print("\nmesh CPU per request in the throughput phase (us, by process; the client and "
          "FastAPI's not counted):")
    for r in results:
        if r.cpu_us:
            parts = ", ".join(f"{p} {us:.0f}" for p, us in sorted(r.cpu_us.items()))
            print(f"  {r.name:46} {parts}; total {sum(r.cpu_us.values()):.0f}")
    print("\nratio: 'rps ratio' is to direct gRPC of the same mode")
    for mode in dict.fromkeys(r.name.split("]", 1)[0][1:] for r in results[:-1]):
        direct = by_name[f"[{mode}] direct gRPC (Auth)"]
        key = by_name[f"[{mode}] Envoy gRPC + key + limit"]
        jwt = by_name[f"[{mode}] Envoy gRPC + JWT + limit"]
        json_path = by_name[f"[{mode}] Envoy JSON + key + limit"]
        added_p50 = key.p50_ms - direct.p50_ms
        added_p99 = key.p99_ms - direct.p99_ms
        jwt_p50 = jwt.p50_ms - direct.p50_ms
        print(f"ratio [{mode}]: Envoy gRPC+key {key.rps / fastapi.rps:.2f}x FastAPI, "
              f"{key.rps / direct.rps:.2f}x direct; Envoy JSON {json_path.rps / fastapi.rps:.2f}x "
              f"FastAPI, {json_path.rps / direct.rps:.2f}x direct")
        print(verdict(f"[{mode}] key+limit added p50 <= {KEY_P50_MS} ms",
                      added_p50 <= KEY_P50_MS, f"{added_p50:.2f} ms"))
        print(verdict(f"[{mode}] key+limit added p99 <= {KEY_P99_MS} ms",
                      added_p99 <= KEY_P99_MS, f"{added_p99:.2f} ms"))
        print(verdict(f"[{mode}] JWT added p50 <= {JWT_P50_MS} ms", jwt_p50 <= JWT_P50_MS,
                      f"{jwt_p50:.2f} ms"))
        print(verdict(f"[{mode}] throughput >= 3x FastAPI+httpx", key.rps >= 3 * fastapi.rps,
                      f"{key.rps / fastapi.rps:.2f}x"))
        print(verdict(f"[{mode}] throughput >= 0.6x direct at {concurrency} in flight",
                      key.rps >= 0.6 * direct.rps, f"{key.rps / direct.rps:.2f}x"))
        # Neither path has an ext_authz hop; both count the rate limit in the service. The key
        # path also sends x-ratelimit-* headers and asks Check when its verdict expires.
        print(f"A/B [{mode}]: API-key vs JWT admission in the service (key path minus JWT path): "
              f"{key.p50_ms - jwt.p50_ms:+.2f} ms p50, {key.rps / jwt.rps:.2f}x the JWT req/s")
        print(_bound(mode, direct, by_name[f"[{mode}] {FLOOR}"], fastapi))
        print(_latency_bound(mode, direct, by_name[f"[{mode}] {FLOOR}"], key, jwt))
        print(_auth_cpu(mode, by_name))
        print(_leases(mode, by_name))
    errors = sum(r.errors for r in results)
    if errors:
        print(f"note: {errors} failed requests in the throughput phases (see 'err')")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="throughput phase per path")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=4, help="throughput slices per path")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up requests per path")
    parser.add_argument("--tls-modes", default="mtls,plaintext",
                        help="mesh transports to measure, comma-separated (first hosts FastAPI)")
    args = parser.parse_args(argv)
    load_before = load_average()
    results, splits = asyncio.run(run(args))
    report(results, args.concurrency, load_before)
    print()
    for mode, split in splits.items():
        print_split(mode, split)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
