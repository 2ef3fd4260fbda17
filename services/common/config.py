"""The one configuration loader: every AIMESH_* environment variable is read here, once.

Defaults are the embedded single-machine stack (local PostgreSQL, Redis, Triton); the scale-out
path changes only these values. A bad value stops the process with one line naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]

# Service name -> default local port. The order is the start order of scripts/up.
SERVICE_PORTS: dict[str, int] = {
    "auth": 50051,
    "usage": 50057,
    "billing": 50056,
    "knowledge": 50054,
    "orchestrator": 50053,
    "conversation": 50052,
    "speech": 50055,
}
SERVICES: tuple[str, ...] = tuple(SERVICE_PORTS)
# HTTP services behind the gateway (not gRPC): the OpenAI-compatible edge (services/edge).
HTTP_SERVICE_PORTS: dict[str, int] = {"edge": 50058}

# mtls: certificates from the local CA; istio: the sidecar's mTLS (identity from XFCC);
# plaintext: debugging only (services/common/tls.py).
TlsMode = Literal["mtls", "istio", "plaintext"]
TLS_MODES: tuple[TlsMode, ...] = ("mtls", "istio", "plaintext")


N = TypeVar("N", int, float)


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message names the variable."""


def _address(name: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}={value!r}: expected host:port, e.g. 127.0.0.1:50051")
    return value


def _url(schemes: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname:
            raise ConfigError(
                f"{name}={value!r}: expected a {'/'.join(schemes)}:// URL with a host"
            )
        return value

    return parse


def _ranged(kind: Callable[[str], N], what: str, low: N, high: N) -> Callable[[str, str], N]:
    """A parser of `kind` numbers (int, float) between low and high inclusive."""

    def parse(name: str, value: str) -> N:
        try:
            number = kind(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r}: expected {what}") from None
        if not low <= number <= high:
            raise ConfigError(f"{name}={value!r}: expected {low}..{high}")
        return number

    return parse


def _int(low: int, high: int) -> Callable[[str, str], int]:
    return _ranged(int, "an integer", low, high)


def _float(low: float, high: float) -> Callable[[str, str], float]:
    return _ranged(float, "a number", low, high)


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={value!r}: expected true/false")


def _choice(*options: str) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        if value not in options:
            raise ConfigError(f"{name}={value!r}: expected one of {', '.join(options)}")
        return value

    return parse


def _text(name: str, value: str) -> str:
    return value


def _env(var: str, default: str, parse: Callable[[str, str], object] = _text) -> object:
    """Field metadata: which variable feeds the field, its default and its parser."""
    return field(default=None, metadata={"env": var, "default": default, "parse": parse})


@dataclass(frozen=True)
class Settings:
    """Every setting of every aimesh process. Construct with `Settings.from_env()`."""

    database_url: str = _env(
        "AIMESH_DATABASE_URL",
        "postgresql://postgres@127.0.0.1:5432/aimesh",
        _url(("postgresql", "postgres")),
    )  # type: ignore[assignment]
    db_pool_max: int = _env("AIMESH_DB_POOL_MAX", "10", _int(1, 200))  # type: ignore[assignment]
    redis_url: str = _env(
        "AIMESH_REDIS_URL", "redis://127.0.0.1:6379/0", _url(("redis", "rediss", "unix"))
    )  # type: ignore[assignment]
    triton_url: str = _env("AIMESH_TRITON_URL", "127.0.0.1:8001", _address)  # type: ignore[assignment]
    gateway_addr: str = _env("AIMESH_GATEWAY_ADDR", "127.0.0.1:8080", _address)  # type: ignore[assignment]
    log_level: str = _env("AIMESH_LOG_LEVEL", "INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR"))  # type: ignore[assignment]
    # Seconds a draining server lets in-flight RPCs finish after SIGTERM.
    drain_seconds: float = _env("AIMESH_DRAIN_SECONDS", "10", _float(0, 300))  # type: ignore[assignment]
    # Seconds between readiness probes of a service's dependencies.
    health_interval_seconds: float = _env("AIMESH_HEALTH_INTERVAL_SECONDS", "2", _float(0.1, 60))  # type: ignore[assignment]
    # Where runtime state lives locally: certificates, blobs, Milvus Lite file, logs.
    var_dir: str = _env("AIMESH_VAR_DIR", str(REPO_ROOT / "var"))  # type: ignore[assignment]
    # Export spans to the console (debugging).
    trace_console: bool = _env("AIMESH_TRACE_CONSOLE", "false", _bool)  # type: ignore[assignment]
    # OTLP/gRPC collector (host:port) that every service and the gateway send spans to; empty = off.
    otlp_endpoint: str = _env(
        "AIMESH_OTLP_ENDPOINT", "", lambda n, v: v and _address(n, v.split("://")[-1])
    )  # type: ignore[assignment]
    # Share of requests traced (Envoy decides at the edge, services follow the caller's choice;
    # calls with no caller use the same ratio). Tracing every request costs the gateway path
    # about 13 % throughput here (bench.observability); 10 % keeps that near 1 %.
    trace_sample_percent: float = _env(
        "AIMESH_TRACE_SAMPLE_PERCENT", "10", _float(0, 100)
    )  # type: ignore[assignment]
    # Prometheus metrics on each service's AIMESH_<SVC>_METRICS_ADDR (false: record nothing).
    metrics_enabled: bool = _env("AIMESH_METRICS", "true", _bool)  # type: ignore[assignment]
    # The Prometheus that scripts/up starts (scraping every service, Envoy and Triton).
    prometheus_addr: str = _env("AIMESH_PROMETHEUS_ADDR", "127.0.0.1:9090", _address)  # type: ignore[assignment]
    # Transport security between mesh peers: mtls (local CA certificates, the default), istio (the
    # sidecar does mTLS; caller identity from its XFCC header), plaintext (debugging only: peer
    # authorization is off).
    tls_mode: TlsMode = _env("AIMESH_TLS_MODE", "mtls", _choice(*TLS_MODES))  # type: ignore[assignment]
    # The local CA and per-identity certificates (scripts/ca.py); empty = <var_dir>/certs.
    certs_dir: str = _env("AIMESH_CERTS_DIR", "")  # type: ignore[assignment]
    # Orchestrator: the model catalog (JSON) and hosted-provider endpoints and credentials.
    orchestrator_catalog: str = _env(
        "AIMESH_ORCHESTRATOR_CATALOG", str(REPO_ROOT / "services" / "orchestrator" / "catalog.json")
    )  # type: ignore[assignment]
    openai_base_url: str = _env(
        "AIMESH_OPENAI_BASE_URL", "https://api.openai.com/v1", _url(("http", "https"))
    )  # type: ignore[assignment]
    openai_api_key: str = _env("AIMESH_OPENAI_API_KEY", "")  # type: ignore[assignment]
    anthropic_base_url: str = _env(
        "AIMESH_ANTHROPIC_BASE_URL", "https://api.anthropic.com", _url(("http", "https"))
    )  # type: ignore[assignment]
    anthropic_api_key: str = _env("AIMESH_ANTHROPIC_API_KEY", "")  # type: ignore[assignment]
    # Seconds a provider may take to produce its first token before the next one is tried.
    provider_first_token_seconds: float = _env(
        "AIMESH_PROVIDER_FIRST_TOKEN_SECONDS", "20", _float(0.1, 600)
    )  # type: ignore[assignment]
    # Milliseconds Generate gathers answer text before sending the next delta (the first is sent
    # at once): a model streaming faster costs every hop one message per interval, not per token.
    stream_linger_ms: float = _env("AIMESH_STREAM_LINGER_MS", "20", _float(0, 1000))  # type: ignore[assignment]
    # Consecutive failures that open a provider deployment's circuit, and how long it stays open.
    circuit_failure_threshold: int = _env("AIMESH_CIRCUIT_FAILURE_THRESHOLD", "5", _int(1, 1000))  # type: ignore[assignment]
    circuit_open_seconds: float = _env("AIMESH_CIRCUIT_OPEN_SECONDS", "30", _float(0.1, 3600))  # type: ignore[assignment]
    # Comma-separated words/phrases the guardrails block (case-insensitive) in prompts and output.
    guardrail_blocklist: str = _env("AIMESH_GUARDRAIL_BLOCKLIST", "")  # type: ignore[assignment]
    # Model SendMessage uses when neither the request nor the conversation names one.
    default_model: str = _env("AIMESH_DEFAULT_MODEL", "models/grounded-extractive-v1")  # type: ignore[assignment]
    # Usage: rate limits (requests per minute) for organizations without a policy from Billing.
    ratelimit_default_org_rpm: int = _env(
        "AIMESH_RATELIMIT_DEFAULT_ORG_RPM", "600", _int(1, 10_000_000)
    )  # type: ignore[assignment]
    ratelimit_default_key_rpm: int = _env(
        "AIMESH_RATELIMIT_DEFAULT_KEY_RPM", "120", _int(1, 10_000_000)
    )  # type: ignore[assignment]
    # Billing: platform tax rate x 1,000,000 (190000 = 19 %), used when a plan sets none.
    billing_tax_rate_micros: int = _env("AIMESH_BILLING_TAX_RATE_MICROS", "0", _int(0, 1_000_000))  # type: ignore[assignment]
    # Usage client outbox: seconds between drain attempts when idle, and the backoff cap after
    # failures.
    usage_outbox_poll_seconds: float = _env(
        "AIMESH_USAGE_OUTBOX_POLL_SECONDS", "2", _float(0.05, 600)
    )  # type: ignore[assignment]
    usage_outbox_max_backoff_seconds: float = _env(
        "AIMESH_USAGE_OUTBOX_MAX_BACKOFF_SECONDS", "30", _float(0.1, 3600)
    )  # type: ignore[assignment]
    # Auth: master secret for encrypting signing keys at rest and keying API-key/refresh-token
    # hashes (HKDF-derived subkeys). Changing it invalidates every API key and refresh token.
    auth_secret: str = _env("AIMESH_AUTH_SECRET", "aimesh-local-dev-secret-change-me")  # type: ignore[assignment]
    # Key that signs List methods' page tokens (services/common/pagination.py); every replica of
    # a service must share it. Changing it invalidates outstanding page tokens only.
    page_token_secret: str = _env(
        "AIMESH_PAGE_TOKEN_SECRET", "aimesh-local-dev-page-tokens-change-me"
    )  # type: ignore[assignment]
    auth_access_token_seconds: int = _env(
        "AIMESH_AUTH_ACCESS_TOKEN_SECONDS", "900", _int(30, 86_400)
    )  # type: ignore[assignment]
    # Comma-separated e-mails of platform admins (may rotate signing keys).
    auth_platform_admins: str = _env("AIMESH_AUTH_PLATFORM_ADMINS", "")  # type: ignore[assignment]
    # Envoy admin interface (loopback only); if the port is busy the gateway picks a free one.
    gateway_admin_addr: str = _env("AIMESH_GATEWAY_ADMIN_ADDR", "127.0.0.1:9901", _address)  # type: ignore[assignment]
    # Gateway behaviour when the rate-limit service is unreachable: false = fail open (serve).
    gateway_ratelimit_fail_closed: bool = _env(
        "AIMESH_GATEWAY_RATELIMIT_FAIL_CLOSED", "false", _bool
    )  # type: ignore[assignment]
    # Knowledge: Milvus server URI (http://host:19530); empty = a Milvus Lite file under var_dir.
    milvus_uri: str = _env(
        "AIMESH_MILVUS_URI", "", lambda n, v: v and _url(("http", "https", "tcp"))(n, v)
    )  # type: ignore[assignment]
    # Knowledge: OpenSearch URL for the keyword index; empty = PostgreSQL full-text search.
    opensearch_url: str = _env(
        "AIMESH_OPENSEARCH_URL", "", lambda n, v: v and _url(("http", "https"))(n, v)
    )  # type: ignore[assignment]
    # Knowledge: where raw uploaded documents are kept; empty = <var_dir>/knowledge/blobs.
    knowledge_blob_dir: str = _env("AIMESH_KNOWLEDGE_BLOB_DIR", "")  # type: ignore[assignment]
    # Knowledge: stored bytes allowed per organization (RESOURCE_EXHAUSTED beyond).
    knowledge_org_quota_bytes: int = _env(
        "AIMESH_KNOWLEDGE_ORG_QUOTA_BYTES", str(10 * 1024**3), _int(1, 2**50)
    )  # type: ignore[assignment]
    # Edge: seconds a Realtime WebSocket may go without an event either way while no turn
    # (utterance, transcription or response) is under way; then it is closed (code 1000,
    # reason "idle timeout").
    realtime_idle_seconds: float = _env(
        "AIMESH_REALTIME_IDLE_SECONDS", "120", _float(1, 3600)
    )  # type: ignore[assignment]
    service_addrs: Mapping[str, str] = field(default_factory=dict)
    # Each service's loopback Prometheus endpoint: port 94xx, xx = its default port's last two
    # digits.
    metrics_addrs: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            if "env" not in f.metadata:
                continue
            raw = env.get(f.metadata["env"], f.metadata["default"])
            values[f.name] = f.metadata["parse"](f.metadata["env"], raw)
        def addresses(suffix: str, default: Callable[[int], str]) -> dict[str, str]:
            out = {}
            for service, port in {**SERVICE_PORTS, **HTTP_SERVICE_PORTS}.items():
                var = f"AIMESH_{service.upper()}_{suffix}"
                out[service] = _address(var, env.get(var, default(port)))
            return out

        values["service_addrs"] = addresses("ADDR", lambda port: f"127.0.0.1:{port}")
        # Metrics on 94xx: xx = the service's default port's last two digits.
        values["metrics_addrs"] = addresses(
            "METRICS_ADDR", lambda port: f"127.0.0.1:{9400 + port % 100}"
        )
        return cls(**values)  # type: ignore[arg-type]

    @property
    def certs_path(self) -> Path:
        return Path(self.certs_dir) if self.certs_dir else Path(self.var_dir) / "certs"

    def address_of(self, service: str) -> str:
        """host:port where `service` listens (and where callers reach it)."""
        return self.service_addrs[service]

    def metrics_address_of(self, service: str) -> str:
        """host:port of `service`'s Prometheus endpoint."""
        return self.metrics_addrs[service]

    def listen_port(self, service: str) -> int:
        return int(self.address_of(service).rpartition(":")[2])

    def as_env(self) -> dict[str, str]:
        """The settings as AIMESH_* variables, for launching child processes consistently."""
        out: dict[str, str] = {}
        for f in fields(self):
            if "env" in f.metadata:
                value = getattr(self, f.name)
                out[f.metadata["env"]] = (
                    ("true" if value else "false") if isinstance(value, bool) else str(value)
                )
        for service, addr in self.service_addrs.items():
            out[f"AIMESH_{service.upper()}_ADDR"] = addr
        for service, addr in self.metrics_addrs.items():
            out[f"AIMESH_{service.upper()}_METRICS_ADDR"] = addr
        return out
