"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP
statuses its client libraries map to exceptions (400 BadRequestError, 401 AuthenticationError,
403 PermissionDeniedError, 404 NotFoundError, 429 RateLimitError, 5xx InternalServerError).

Downstream gRPC failures keep their message; the code, the first field violation (as `param`)
and RetryInfo (as `retry-after`) come from the google.rpc.Status the service attached.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
from google.rpc import error_details_pb2

from services.common.errors import error_info, field_violations, status_from_rpc_error

_HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error"),
    grpc.StatusCode.ABORTED: (409, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "invalid_request_error"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "server_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "server_error"),
}

# aimesh ErrorInfo reasons that have a well-known OpenAI error code.
_CODES = {
    "MODEL_NOT_FOUND": "model_not_found",
    "BUDGET_EXCEEDED": "insufficient_quota",
    "QUOTA_EXCEEDED": "insufficient_quota",
    "CONTEXT_WINDOW_EXCEEDED": "context_length_exceeded",
    "CREDENTIALS_MISSING": "invalid_api_key",
    "CREDENTIALS_MALFORMED": "invalid_api_key",
    "API_KEY_INVALID": "invalid_api_key",
}


class OpenAIError(Exception):
    """An error the edge answers with: HTTP status plus OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after_seconds: float | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code
        self.retry_after_seconds = retry_after_seconds
        self.should_retry = should_retry

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.retry_after_seconds is not None:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after_seconds)))
            headers["retry-after-ms"] = str(max(1, int(self.retry_after_seconds * 1000)))
        if self.should_retry is not None:
            # Honoured by OpenAI's clients: a used-up budget is not worth retrying.
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        return headers


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def unsupported(param: str, what: str) -> OpenAIError:
    return OpenAIError(
        400, f"{what} is not supported by this server", param=param, code="unsupported_parameter"
    )


def from_rpc_error(
    exc: grpc.aio.AioRpcError, field_names: dict[str, str] | None = None
) -> OpenAIError:
    """The OpenAI error for a failed downstream call. `field_names` maps aimesh field paths
    (e.g. "max_output_tokens") to the OpenAI parameter the caller sent."""
    code = exc.code()
    status, kind = _HTTP.get(code, (500, "server_error"))
    rich = status_from_rpc_error(exc)
    message = (rich.message if rich is not None and rich.message else exc.details()) or code.name
    param = None
    oa_code: str | None = None
    retry_after: float | None = None
    if rich is not None:
        violations = field_violations(rich)
        if violations:
            param = _param(violations[0][0], field_names or {})
        info = error_info(rich)
        if info is not None:
            oa_code = _CODES.get(info.reason, info.reason.lower())
        for detail in rich.details:
            if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                oa_code = "insufficient_quota"  # a budget or quota, not a request rate
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    if code == grpc.StatusCode.NOT_FOUND and oa_code is None:
        oa_code = "not_found"
    should_retry = None
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if oa_code == "insufficient_quota":
            kind, should_retry = "insufficient_quota", False
        elif retry_after is None:
            retry_after = 1.0
    return OpenAIError(
        status,
        message,
        kind=kind,
        param=param,
        code=oa_code,
        retry_after_seconds=retry_after,
        should_retry=should_retry,
    )


def _param(field: str, names: dict[str, str]) -> str:
    head = field.split(".", 1)[0].split("[", 1)[0]
    if head in names:
        return names[head] + field[len(head) :]
    return field
