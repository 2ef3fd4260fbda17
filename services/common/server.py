"""The grpc.aio server bootstrap every service runs: `serve(ServiceSpec(...))`.

It loads settings, configures JSON logs and tracing, opens the service's Postgres pool and
applies its migrations, connects Redis, registers the servicers, health (real readiness),
reflection and interceptors, then serves until SIGTERM/SIGINT and drains gracefully.
Start-up failures print one line naming the variable or address and exit non-zero.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import uvloop
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from services.common import (
    channels,
    deadlines,
    gateway_jwt,
    mesh_policy,
    metrics,
    telemetry,
    tls,
)
from services.common.access import AccessInterceptor
from services.common.audit import AuditInterceptor, AuditSink, RemoteAuditSink
from services.common.cache import ServiceCache
from services.common.config import ConfigError, Settings
from services.common.db import Database, StartupError, database_error, is_broken_connection
from services.common.errors import DomainError, ServiceError
from services.common.handlers import (
    InterceptorChain,
    MethodInterceptor,
    call_unary,
    iterate_stream,
    rewrap,
)
from services.common.request_checks import (
    check_request,
    checked_deserializer,
    checked_stream,
    described_method,
)

log = logging.getLogger("aimesh.server")
# Methods of Envoy's own gRPC protocols served here (ext_authz Check): only the gateway calls them.
ENVOY_METHOD_PREFIX = "/envoy."

HealthCheck = Callable[[], Awaitable[bool]]


@dataclass
class Runtime:
    """What a service's servicers get: settings, its database, its cache and lifecycle hooks."""

    name: str
    settings: Settings
    db: Database | None
    cache: ServiceCache | None
    health_checks: dict[str, HealthCheck] = field(default_factory=dict)
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    # Objects the servicers of one process share (e.g. Usage's rate limiter), by name.
    shared: dict[str, Any] = field(default_factory=dict)

    def add_health_check(self, name: str, check: HealthCheck) -> None:
        """Readiness also requires `check()` to be true (e.g. Triton's model is ready)."""
        self.health_checks[name] = check

    def on_shutdown(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        self.cleanups.append(cleanup)

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """Run a background task for the life of the server; it is cancelled on drain."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(_log_task_failure)
        self.tasks.append(task)
        return task


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())


@dataclass
class ServiceSpec:
    """How to run one service."""

    name: str
    # Adds the servicers to the server; may be async (to open clients first).
    register: Callable[[grpc.aio.Server, Runtime], Awaitable[None] | None]
    # Fully-qualified gRPC service names served, for health and reflection.
    service_names: Sequence[str]
    migrations: Path | None = None
    uses_db: bool = True
    uses_cache: bool = True
    # False where the service must keep serving without Redis (e.g. Auth falls back to SQL).
    cache_required_for_readiness: bool = True
    # Where its audit events go (services/common/audit.py); default: Auth's RecordAuditEvents.
    audit_sink: Callable[[Runtime], AuditSink] | None = None


@dataclass(frozen=True)
class Binding:
    """One gRPC service a process serves: the generated `add_XServicer_to_server`, a factory
    for the servicer (given the runtime) and the service descriptor (health + reflection)."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    make_servicer: Callable[[Runtime], Any]
    service: Any  # google.protobuf.descriptor.ServiceDescriptor


def spec_for(
    name: str, package_dir: Path, bindings: Sequence[Binding], **options: Any
) -> ServiceSpec:
    """A ServiceSpec serving `bindings`, migrating from `<package_dir>/migrations`."""

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        for binding in bindings:
            binding.add_to_server(binding.make_servicer(runtime), server)

    return ServiceSpec(
        name=name,
        register=register,
        service_names=[b.service.full_name for b in bindings],
        migrations=package_dir / "migrations",
        **options,
    )


class ErrorInterceptor(MethodInterceptor):
    """Turns ServiceError into a rich google.rpc.Status, unimplemented RPCs into UNIMPLEMENTED,
    an unreachable database into UNAVAILABLE (retryable), and unexpected exceptions into
    INTERNAL with a logged traceback (never a crashed stream, never a Python class name).
    Every request message first passes services.common.request_checks (malformed bytes, NUL
    characters: INVALID_ARGUMENT); idempotent reads whose database connection broke mid-call
    run once more. Also records the RPC's deadline so downstream calls inherit it."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        described, retry_once = described_method(method)
        # Envoy's own protocol (ext_authz Check) is sent only by the gateway, from HTTP headers
        # its codecs already refused NUL in; walking its ~20 header strings costs ~30 us a call.
        check_fields = not method.startswith(ENVOY_METHOD_PREFIX)
        return rewrap(
            handler,
            lambda b: _wrap_unary(b, method, retry_once, check_fields),
            lambda b: _wrap_stream(b, method),
            checked_deserializer(
                handler.request_deserializer, described.input_type if described else None
            ),
        )


def _checked(request: Any, fields: bool = True) -> Any:
    """A unary request after request_checks; a client stream wrapped to check each message."""
    # A message first: hasattr() on one raises and catches an AttributeError inside.
    if not isinstance(request, Message) and hasattr(request, "__aiter__"):
        return checked_stream(request)
    return check_request(request, fields)


async def _fail(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    """Abort the RPC with the status `exc` stands for (an abort already under way goes on)."""
    if _is_abort(exc):
        raise exc
    exc = database_error(exc) or exc
    if isinstance(exc, DomainError):
        exc = exc.to_service_error()
    if isinstance(exc, ServiceError):
        await context.abort(exc.code, exc.message, trailing_metadata=exc.trailing_metadata())
    if isinstance(exc, NotImplementedError):
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{method.lstrip('/')} is not implemented yet"
        )
    log.error("unhandled error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.lstrip('/')}")


def _wrap_unary(
    behavior: Callable[..., Any], method: str, retry_once: bool = False, check_fields: bool = True
) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        deadlines.start(context.time_remaining())
        try:
            request = _checked(request, check_fields)
            try:
                return await call_unary(behavior, request, context)
            except Exception as exc:
                if not (retry_once and is_broken_connection(exc)):
                    raise
                # A read that met a connection broken by a database restart: the pool hands out
                # a checked connection now, so one more run usually answers.
                log.warning("retrying %s once after a database error: %s", method, exc)
                return await call_unary(behavior, request, context)
        except Exception as exc:  # not CancelledError: a cancelled RPC stays cancelled
            await _fail(context, method, exc)

    return wrapped


def _wrap_stream(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        deadlines.start(context.time_remaining())
        try:
            async for item in iterate_stream(behavior, _checked(request), context):
                yield item
        except Exception as exc:  # not CancelledError: a cancelled RPC stays cancelled
            await _fail(context, method, exc)

    return wrapped


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises grpc.aio's internal AbortError; let it through untouched.
    return type(exc).__name__ in ("AbortError", "UsageError", "InternalError") and (
        type(exc).__module__.startswith("grpc")
    )


async def _run(spec: ServiceSpec, settings: Settings) -> int:
    runtime = await _open_runtime(spec, settings)
    server = _new_server(spec, settings, runtime)
    registered = spec.register(server, runtime)
    if inspect.isawaitable(registered):
        await registered
    health = _add_health_and_reflection(server, spec)
    # Not ready until the first readiness check has passed: grpc's servicer starts the overall
    # status ("") as SERVING, and a probe answered SERVING before the checks ran sent callers to
    # a service whose dependencies were still opening (Knowledge's vector index: INTERNAL on a
    # search; Speech before its warm-up). Every name gets a status, so none is missing.
    await _set_readiness(health, spec, ready=False)
    # What start-up built (modules, descriptors, the runtime's clients) lives as long as the
    # process: keep it out of the collector's full passes, which otherwise walk all of it.
    gc.collect()
    gc.freeze()
    address = _listen(server, spec, settings)
    await server.start()
    watcher = asyncio.ensure_future(
        _watch_readiness(health, spec, runtime, settings.health_interval_seconds)
    )
    log.info("serving", extra={"address": address, "services": list(spec.service_names)})
    await _until_signalled()
    log.info("draining", extra={"grace_seconds": settings.drain_seconds})
    watcher.cancel()
    await health.enter_graceful_shutdown()
    await server.stop(grace=settings.drain_seconds)
    await _close_runtime(runtime)
    log.info("stopped")
    return 0


async def _open_runtime(spec: ServiceSpec, settings: Settings) -> Runtime:
    """Migrate and open the service's database and connect its cache, as the spec asks."""
    runtime = Runtime(name=spec.name, settings=settings, db=None, cache=None)
    if spec.uses_db:
        runtime.db = Database(settings.database_url, spec.name, settings.db_pool_max)
        if spec.migrations is not None:
            await runtime.db.migrate(spec.migrations)
        await runtime.db.open()
    if spec.uses_cache:
        runtime.cache = ServiceCache(settings.redis_url, spec.name)
        try:
            await runtime.cache.ping()
        except Exception as exc:
            if spec.cache_required_for_readiness:
                raise StartupError(
                    f"cannot reach Redis at {settings.redis_url} (AIMESH_REDIS_URL): {exc}"
                ) from None
            log.warning("Redis unreachable at start; continuing without cache: %s", exc)
    return runtime


def _audit_sink(spec: ServiceSpec, runtime: Runtime) -> Callable[[], AuditSink]:
    """The service's audit sink, made on the first audited call: its own (Auth) or a client of
    Auth's RecordAuditEvents."""
    made: list[AuditSink] = []

    def sink() -> AuditSink:
        if not made:
            if spec.audit_sink is not None:
                made.append(spec.audit_sink(runtime))
            else:
                auth = channels.Channels(runtime.settings)
                runtime.on_shutdown(auth.close)
                made.append(RemoteAuditSink(lambda: auth.get("auth"), runtime.spawn))
        return made[0]

    return sink


def _new_server(spec: ServiceSpec, settings: Settings, runtime: Runtime) -> grpc.aio.Server:
    return grpc.aio.server(
        # Peer authorization first: a caller the mesh policy refuses reaches no servicer code.
        interceptors=[InterceptorChain([
            tls.interceptor_for(spec.name, settings.tls_mode),
            telemetry.RpcTelemetryInterceptor(),
            ErrorInterceptor(),
            # Inside the error interceptor: JWT callers the gateway admitted without Auth's Check
            # (revocation, rate limit), then the role × method matrix, before any servicer code.
            gateway_jwt.start(runtime),
            AccessInterceptor(),
            AuditInterceptor(_audit_sink(spec, runtime)),
        ])],
        options=[
            *mesh_policy.SERVER_KEEPALIVE_OPTIONS,
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ],
    )


def _add_health_and_reflection(
    server: grpc.aio.Server, spec: ServiceSpec
) -> health_aio.HealthServicer:
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [
            *spec.service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    return health


def _listen(server: grpc.aio.Server, spec: ServiceSpec, settings: Settings) -> str:
    """Bind the service's port (mTLS unless plaintext mode); returns the address."""
    address = f"0.0.0.0:{settings.listen_port(spec.name)}"
    try:
        bound = tls.add_listen_port(
            server,
            address,
            spec.name,
            settings.tls_mode,
            settings.certs_path,
        )
    except tls.CertificateError as exc:
        raise StartupError(
            f"TLS material for {spec.name} in {settings.certs_path} (AIMESH_CERTS_DIR) is "
            f"unusable: {exc}; run scripts/ca.py"
        ) from None
    except RuntimeError as exc:
        raise StartupError(
            f"cannot listen on {address} (AIMESH_{spec.name.upper()}_ADDR): {exc}"
        ) from None
    if bound == 0:
        raise StartupError(f"cannot listen on {address} (AIMESH_{spec.name.upper()}_ADDR)")
    return address


async def _ready(spec: ServiceSpec, runtime: Runtime) -> bool:
    """Every dependency the service needs answers: database, cache, registered checks."""
    checks: list[Awaitable[bool]] = []
    if runtime.db is not None:
        checks.append(runtime.db.ping())
    if runtime.cache is not None and spec.cache_required_for_readiness:
        checks.append(_safe(runtime.cache.ping()))
    checks.extend(_safe(check()) for check in runtime.health_checks.values())
    return all(await asyncio.gather(*checks))


async def _watch_readiness(
    health: health_aio.HealthServicer, spec: ServiceSpec, runtime: Runtime, interval_seconds: float
) -> None:
    # Liveness (the process answers) is separate from readiness (its dependencies answer):
    # Kubernetes restarts on the first, only stops routing on the second.
    await health.set("liveness", health_pb2.HealthCheckResponse.SERVING)
    last: bool | None = None
    while True:
        now = await _ready(spec, runtime)
        if now != last:
            await _set_readiness(health, spec, ready=now)
            log.info("readiness changed", extra={"ready": now})
            last = now
        await asyncio.sleep(interval_seconds)


async def _set_readiness(
    health: health_aio.HealthServicer, spec: ServiceSpec, *, ready: bool
) -> None:
    statuses = health_pb2.HealthCheckResponse
    status = statuses.SERVING if ready else statuses.NOT_SERVING
    # The overall status last: whoever waits for it finds every service's status set.
    for name in (*spec.service_names, ""):
        await health.set(name, status)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def _close_runtime(runtime: Runtime) -> None:
    """Cancel background tasks, run shutdown hooks (last registered first), close cache and db."""
    for task in runtime.tasks:
        task.cancel()
    await asyncio.gather(*runtime.tasks, return_exceptions=True)
    for cleanup in reversed(runtime.cleanups):
        try:
            await cleanup()
        except Exception:
            log.exception("cleanup failed")
    if runtime.cache is not None:
        await runtime.cache.close()
    if runtime.db is not None:
        await runtime.db.close()


async def _safe(check: Awaitable[bool]) -> bool:
    try:
        return bool(await asyncio.wait_for(check, timeout=3))
    except Exception:
        return False


def serve(spec: ServiceSpec) -> None:
    """Run `spec` until SIGTERM; exits the process (0 after a clean drain)."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"aimesh-{spec.name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    telemetry.configure(
        spec.name, settings.log_level, settings.trace_console, settings.otlp_endpoint,
        settings.trace_sample_percent
    )
    metrics.serve(spec.name, settings.metrics_address_of(spec.name), on=settings.metrics_enabled)
    if settings.tls_mode == "mtls":
        metrics.record_certificate(
            spec.name, str(tls.CertPaths(settings.certs_path).cert(spec.name))
        )
    channels.set_process_identity(spec.name)
    try:
        # uvloop: the same asyncio API with a libuv loop, cheaper per callback and per socket
        # event on the streaming paths (grpc.aio, psycopg and redis-py all run on it).
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            code = runner.run(_run(spec, settings))
    except (StartupError, ConfigError) as exc:
        print(f"aimesh-{spec.name}: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code)
