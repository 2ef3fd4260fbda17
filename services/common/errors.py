"""The one error helper: domain code raises ServiceError; the server runtime sends it as a
google.rpc.Status carrying ErrorInfo{reason, domain "aimesh.dev"} and, for bad input,
BadRequest field violations. Envoy's transcoder turns the same status into a JSON body.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry import trace

ERROR_DOMAIN = "aimesh.dev"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
_Detail = TypeVar("_Detail", bound=Any)
# Errors travel in HTTP/2 headers (grpc-message, grpc-status-details-bin), which proxies cap
# (Envoy: 60 KiB): an error quoting a huge bad value must not turn into a protocol error.
MAX_MESSAGE_CHARS = 1024
MAX_VIOLATION_CHARS = 256


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ServiceError(Exception):
    """An expected failure with a gRPC status code, a stable machine-readable reason and details."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str | None = None,
        violations: Sequence[tuple[str, str]] = (),
        metadata: Mapping[str, str] | None = None,
        retry_after_seconds: float | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        message = _clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or code.name
        self.violations = tuple(
            (_clip(f, MAX_VIOLATION_CHARS), _clip(d, MAX_VIOLATION_CHARS)) for f, d in violations
        )
        self.metadata = dict(metadata or {})
        self.retry_after_seconds = retry_after_seconds
        # Sent beside the status (e.g. x-ratelimit-*): a refused call has no other reply headers,
        # so these travel in its trailers-only reply, which the gateway passes on as headers.
        self.headers = tuple(headers)

    @classmethod
    def from_status(
        cls, status: status_pb2.Status, headers: Sequence[tuple[str, str]] = ()
    ) -> ServiceError:
        """The error another service answered with (its code, message, reason, metadata, field
        violations and retry delay), to refuse a call with exactly that."""
        code = next((c for c in grpc.StatusCode if c.value[0] == status.code),
                    grpc.StatusCode.UNKNOWN)
        info = error_info(status)
        delay = next((d for d in _details(status, error_details_pb2.RetryInfo)), None)
        return cls(
            code, status.message, info.reason if info else None, field_violations(status),
            dict(info.metadata) if info else None,
            delay.retry_delay.ToTimedelta().total_seconds() if delay else None, headers)

    def to_status(self) -> status_pb2.Status:
        details: list[any_pb2.Any] = []
        metadata = dict(self.metadata)
        span = trace.get_current_span().get_span_context()
        if span.is_valid:  # a user's error report then leads to the request's trace
            metadata.setdefault("trace_id", format(span.trace_id, "032x"))
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=metadata
        )
        details.append(_pack(info))
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations
                ]
            )
            details.append(_pack(bad))
        if self.retry_after_seconds is not None:
            seconds = int(self.retry_after_seconds)
            nanos = int((self.retry_after_seconds - seconds) * 1e9)
            retry = error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos)
            )
            details.append(_pack(retry))
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return (*self.headers, (STATUS_DETAILS_KEY, self.to_status().SerializeToString()))

    def __repr__(self) -> str:
        return f"ServiceError({self.code.name}, {self.message!r}, reason={self.reason!r})"


class DomainError(Exception):
    """Base of a service's plain-Python domain errors (no gRPC types in the domain). The service
    maps each kind to a status in one place, its `to_service_error`; the server runtime and any
    other edge (Auth's ext_authz Check) call it."""

    def to_service_error(self) -> ServiceError:
        raise NotImplementedError


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def invalid_argument(
    message: str,
    violations: Sequence[tuple[str, str]] | Mapping[str, str] = (),
    reason: str = "INVALID_ARGUMENT",
    metadata: Mapping[str, str] | None = None,
) -> ServiceError:
    pairs = list(violations.items()) if isinstance(violations, Mapping) else list(violations)
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message, reason, pairs, metadata)


def not_found(message: str, reason: str = "NOT_FOUND", **kw: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, message, reason, **kw)  # type: ignore[arg-type]


def already_exists(message: str, reason: str = "ALREADY_EXISTS", **kw: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.ALREADY_EXISTS, message, reason, **kw)  # type: ignore[arg-type]


def failed_precondition(
    message: str, reason: str = "FAILED_PRECONDITION", **kw: object
) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message, reason, **kw)  # type: ignore[arg-type]


def etag_mismatch(resource: str) -> ServiceError:
    """ABORTED: the resource changed since the client read the etag it sent (AIP-154)."""
    return ServiceError(
        grpc.StatusCode.ABORTED,
        f"{resource} changed since it was read (etag mismatch)",
        "ETAG_MISMATCH",
        metadata={"resource": resource},
    )


def unavailable(message: str, reason: str = "UNAVAILABLE", **kw: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message, reason, **kw)  # type: ignore[arg-type]


def deadline_exceeded(
    message: str, reason: str = "DEADLINE_EXCEEDED", **kw: object
) -> ServiceError:
    return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, message, reason, **kw)  # type: ignore[arg-type]


def resource_exhausted(
    message: str, reason: str = "RESOURCE_EXHAUSTED", **kw: object
) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, reason, **kw)  # type: ignore[arg-type]


def unauthenticated(message: str, reason: str = "UNAUTHENTICATED", **kw: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, message, reason, **kw)  # type: ignore[arg-type]


def permission_denied(
    message: str, reason: str = "PERMISSION_DENIED", **kw: object
) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, message, reason, **kw)  # type: ignore[arg-type]


def out_of_range(message: str, reason: str = "OUT_OF_RANGE", **kw: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.OUT_OF_RANGE, message, reason, **kw)  # type: ignore[arg-type]


class FieldViolations:
    """Collects every problem with a request, so one error names all bad fields at once."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def check(self, ok: bool, field: str, description: str) -> bool:
        if not ok:
            self.add(field, description)
        return ok

    def extend(self, items: Iterable[tuple[str, str]]) -> None:
        self.items.extend(items)

    def raise_if_any(self, message: str | None = None) -> None:
        if self.items:
            summary = message or "; ".join(f"{f}: {d}" for f, d in self.items)
            raise invalid_argument(summary, self.items)


def status_from_rpc_error(error: grpc.RpcError) -> status_pb2.Status | None:
    """The rich google.rpc.Status a peer attached to a failed call, if any (for clients and
    tests)."""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return None


def _details(status: status_pb2.Status, kind: type[_Detail]) -> Iterator[_Detail]:
    """The details of `status` that are a `kind` message, unpacked."""
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            yield message


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    return next(_details(status, error_details_pb2.ErrorInfo), None)


def field_violations(status: status_pb2.Status) -> list[tuple[str, str]]:
    bad = next(_details(status, error_details_pb2.BadRequest), None)
    return [(v.field, v.description) for v in bad.field_violations] if bad else []


assert code_pb2.INVALID_ARGUMENT == grpc.StatusCode.INVALID_ARGUMENT.value[0]
