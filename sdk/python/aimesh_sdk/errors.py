"""Typed exceptions for aimesh errors.

Every aimesh error is a google.rpc.Status: a gRPC code, a message, and details — ErrorInfo
{reason, domain "aimesh.dev", metadata}, BadRequest field violations for bad input, RetryInfo
when waiting helps. `from_rpc_error` turns a failed gRPC call into the matching exception:

    try:
        client.knowledge.GetDocument(GetDocumentRequest(name="documents/nope"))
    except NotFound as exc:
        print(exc.reason)                  # "NOT_FOUND" or a more specific reason
    except InvalidArgument as exc:
        for v in exc.field_violations:     # FieldViolation(field, description)
            print(v.field, v.description)

The gateway's own rejections (rate limit, no route) carry the same shape, so callers never
parse messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
ERROR_DOMAIN = "aimesh.dev"
BUDGET_REASONS = frozenset({"BUDGET_EXCEEDED", "TOKEN_BUDGET_EXCEEDED"})


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field: its path (e.g. "document.display_name") and what is wrong."""

    field: str
    description: str


@dataclass
class AimeshError(Exception):
    """Base class of every error the SDK raises for a failed call."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    status: status_pb2.Status | None = None

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)
        if not self.reason:
            self.reason = self.code.name

    def __str__(self) -> str:
        return f"{self.code.name} ({self.reason}): {self.message}"

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked the caller to wait before retrying (RetryInfo), if any."""
        return _retry_delay(self.status)


class InvalidArgument(AimeshError):
    """INVALID_ARGUMENT: the request is wrong; `field_violations` names every bad field."""

    @property
    def field_violations(self) -> list[FieldViolation]:
        bad = _unpack(self.status, error_details_pb2.BadRequest)
        if bad is None:
            return []
        return [FieldViolation(v.field, v.description) for v in bad.field_violations]


class Unauthenticated(AimeshError):
    """UNAUTHENTICATED: no, unknown, expired or revoked credentials."""


class PermissionDenied(AimeshError):
    """PERMISSION_DENIED: the credentials are valid but lack the role or key scope."""


class NotFound(AimeshError):
    """NOT_FOUND: no such resource in the caller's organization."""


class AlreadyExists(AimeshError):
    """ALREADY_EXISTS: a resource with that id or unique value exists."""


class FailedPrecondition(AimeshError):
    """FAILED_PRECONDITION: the resource is not in a state that allows the call."""


class ResourceExhausted(AimeshError):
    """RESOURCE_EXHAUSTED: a quota, rate limit or budget is used up."""


class RateLimited(ResourceExhausted):
    """The organization's or API key's request rate is over its plan's limit.

    `retry_after` is the number of seconds until the limit window resets (from RetryInfo or
    the gateway's x-ratelimit-reset header)."""

    def __init__(self, *args: Any, retry_after_seconds: float | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._retry_after = retry_after_seconds

    @property
    def retry_after(self) -> float | None:
        delay = _retry_delay(self.status)
        return delay if delay is not None else self._retry_after


class BudgetExceeded(ResourceExhausted):
    """A spend or token budget of the organization (or API key) would be exceeded this period.

    `budget` is its name (`budgets/{budget}`); `metadata` holds the limit and what is used."""

    @property
    def budget(self) -> str:
        return self.metadata.get("budget", "")


class Aborted(AimeshError):
    """ABORTED: a concurrent change won (etag mismatch); read again and retry."""


class OutOfRange(AimeshError):
    """OUT_OF_RANGE: a size or position is beyond its limit."""


class Unavailable(AimeshError):
    """UNAVAILABLE: the service or gateway cannot be reached now; retry later."""


class DeadlineExceeded(AimeshError):
    """DEADLINE_EXCEEDED: the call did not finish within its deadline."""


class Cancelled(AimeshError):
    """CANCELLED: the call was cancelled (usually by the caller)."""


class Internal(AimeshError):
    """INTERNAL or UNKNOWN: a server-side failure."""


_BY_CODE: dict[grpc.StatusCode, type[AimeshError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNKNOWN: Internal,
}
_CODE_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def _unpack(status: status_pb2.Status | None, kind: type[Any]) -> Any:
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            return message
    return None


def _retry_delay(status: status_pb2.Status | None) -> float | None:
    info = _unpack(status, error_details_pb2.RetryInfo)
    if info is None or not info.HasField("retry_delay"):
        return None
    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9


def from_status(
    status: status_pb2.Status, headers: dict[str, str] | None = None
) -> AimeshError:
    """The typed exception for a google.rpc.Status (a failed call, or an in-band error such as
    a chat answer's Message.error)."""
    code = _CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    info = _unpack(status, error_details_pb2.ErrorInfo)
    reason = info.reason if info is not None else ""
    metadata = dict(info.metadata) if info is not None else {}
    cls = _BY_CODE.get(code, AimeshError)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if reason in BUDGET_REASONS:
            cls = BudgetExceeded
        elif _is_rate_limit(reason, status, headers or {}):
            reset = (headers or {}).get("x-ratelimit-reset")
            return RateLimited(code, status.message, reason or "RATE_LIMITED", metadata, status,
                               retry_after_seconds=float(reset) if reset and _is_number(reset) else None)
    return cls(code, status.message, reason, metadata, status)


def _is_rate_limit(reason: str, status: status_pb2.Status, headers: dict[str, str]) -> bool:
    # The gateway's ratelimit filter answers without ErrorInfo (gRPC) or with the generic
    # RESOURCE_EXHAUSTED reason plus RetryInfo (JSON); services throttle with *_THROTTLED.
    if reason.endswith("THROTTLED") or reason == "RATE_LIMITED":
        return True
    if "x-ratelimit-limit" in headers or "x-ratelimit-reset" in headers:
        return True
    return reason in ("", "RESOURCE_EXHAUSTED") and _retry_delay(status) is not None


def _is_number(text: str | None) -> bool:
    try:
        float(text or "")
        return True
    except ValueError:
        return False


def from_rpc_error(error: grpc.RpcError) -> AimeshError:
    """The typed exception for a failed gRPC call (sync or asyncio)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or ""
    headers: dict[str, str] = {}
    status: status_pb2.Status | None = None
    for source in ("initial_metadata", "trailing_metadata"):
        try:
            items = getattr(error, source)() or ()
        except Exception:  # noqa: BLE001 - a call that never started has no metadata
            items = ()
        for key, value in items:
            if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
            elif isinstance(value, str):
                headers[key] = value
    if status is None:
        status = status_pb2.Status(code=code.value[0], message=details)
    return from_status(status, headers)
