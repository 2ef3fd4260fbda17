"""Auth's domain errors: what went wrong in Auth's own terms. The domain modules raise these
(never gRPC status codes); `AuthError.to_service_error` is the one place that maps each kind to
a gRPC status, used by the server runtime and by the ext_authz Check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from services.common.errors import DomainError, FieldViolations, ServiceError


class AuthError(DomainError):
    """An expected failure with a stable machine-readable reason."""

    def __init__(self, message: str, reason: str, metadata: Mapping[str, str] | None = None,
                 retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.retry_after_seconds = retry_after_seconds

    def to_service_error(self) -> ServiceError:
        return ServiceError(_STATUS[type(self)], self.message, self.reason,
                            violations=getattr(self, "violations", ()), metadata=self.metadata,
                            retry_after_seconds=self.retry_after_seconds)


class InvalidInput(AuthError):
    """The request itself is wrong; `violations` name each bad field."""

    def __init__(self, violations: Sequence[tuple[str, str]], message: str | None = None) -> None:
        super().__init__(message or "; ".join(f"{f}: {d}" for f, d in violations),
                         "INVALID_ARGUMENT")
        self.violations = tuple(violations)


class BadCredentials(AuthError):
    """The caller could not be identified (wrong password, unknown/revoked token or key)."""


class Forbidden(AuthError):
    """The caller is known but may not do this."""


class NotFound(AuthError):
    pass


class AlreadyExists(AuthError):
    pass


class Conflict(AuthError):
    """The resource changed since the caller read it (etag mismatch)."""


class Precondition(AuthError):
    """The request is valid but the current state forbids it (e.g. the last owner)."""


class Exhausted(AuthError):
    """A limit was reached (login throttling, key count)."""


_STATUS: dict[type[AuthError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    BadCredentials: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Conflict: grpc.StatusCode.ABORTED,
    Precondition: grpc.StatusCode.FAILED_PRECONDITION,
    Exhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def raise_violations(violations: FieldViolations) -> None:
    """Raise InvalidInput naming every collected bad field, if any."""
    if violations.items:
        raise InvalidInput(violations.items)


def invalid(field_name: str, description: str) -> InvalidInput:
    return InvalidInput([(field_name, description)])


def role_required(action: str, minimum: str) -> Forbidden:
    return Forbidden(f"{action} requires the {minimum.lower()} role or higher", "ROLE_REQUIRED",
                     {"required_role": minimum.upper()})
