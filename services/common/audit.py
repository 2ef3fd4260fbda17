"""The audit log's one recording point.

`AUDITED` lists, as data, every security-relevant RPC of every service and what to record about
it. `AuditInterceptor`, installed by the server bootstrap on every service, records each such
call once it succeeded (and, where listed, once it failed: failed logins) with who (the caller's
identity), what (action, resource, details), when, from where (the client address the gateway
appended to X-Forwarded-For) and the gateway's x-request-id — so no servicer carries audit code.

Auth keeps the log in its schema: in Auth the sink writes it directly; other services send their
events to Auth's RecordAuditEvents. Each event has an event_key (method, organization and the
request's request_id, else the gateway's request id), so a retried request is recorded once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from services.common.errors import DomainError, ServiceError
from services.common.handlers import Behavior, MethodInterceptor, call_metadata, call_unary, rewrap
from services.common.identity import identity_from_metadata
from services.common.names import resource

ORGANIZATION = resource("auth.aimesh.dev/Organization")

log = logging.getLogger("aimesh.audit")

Extract = Callable[[Any, Any], str]


@dataclass(frozen=True)
class Event:
    event_key: str
    org_id: str | None  # None: no organization known (a failed login for an unknown e-mail)
    action: str
    actor: str
    resource: str
    peer_address: str
    request_id: str
    details: dict[str, str] = field(default_factory=dict)


class AuditSink(Protocol):
    async def record(self, event: Event) -> None: ...


@dataclass(frozen=True)
class Audited:
    """What to record for one RPC. Extractors get (request, response); response is None for a
    recorded failure."""

    resource: Extract = lambda request, response: ""
    details: Callable[[Any, Any], dict[str, str]] = lambda request, response: {}
    # The organization when not the caller's (sign-up creates it; an invoice names its own).
    org: Extract | None = None
    # The actor when the call carries no identity (sign-up, login).
    actor: Extract | None = None
    on_success: bool = True
    on_failure: frozenset[grpc.StatusCode] = frozenset()


def _name(request: Any, response: Any) -> str:
    return str(getattr(response, "name", "") or getattr(request, "name", ""))


def _request_name(request: Any, response: Any) -> str:
    return str(request.name)


def _org_name(value: str) -> str:
    """The organization id in a name (empty stays empty: Auth then finds the organization)."""
    return ORGANIZATION.id(value, "organization") if value else ""


_AUTH = "/aimesh.auth.v1.AuthService/"
_BILLING = "/aimesh.billing.v1.BillingService/"
_USAGE = "/aimesh.usage.v1.UsageService/"

AUDITED: Mapping[str, Audited] = {
    _AUTH + "SignUp": Audited(
        resource=lambda q, r: r.organization, org=lambda q, r: _org_name(r.organization),
        actor=lambda q, r: r.user),
    _AUTH + "Login": Audited(
        on_success=False,
        on_failure=frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED}),
        org=lambda q, r: _org_name(q.organization),  # "" -> Auth finds the user's organization
        actor=lambda q, r: f"email:{q.email.strip().lower()}"),
    _AUTH + "RotateSigningKey": Audited(resource=lambda q, r: f"signingKeys/{r.kid}"),
    _AUTH + "CreateMembership": Audited(
        resource=_name, details=lambda q, r: {"email": r.email, "role": str(r.role)}),
    _AUTH + "UpdateMembership": Audited(resource=_name, details=lambda q, r: {"role": str(r.role)}),
    _AUTH + "DeleteMembership": Audited(resource=_request_name),
    _AUTH + "CreateApiKey": Audited(
        resource=_name, details=lambda q, r: {"scopes": " ".join(r.scopes)}),
    _AUTH + "RevokeApiKey": Audited(resource=_name),
    _BILLING + "CreatePlan": Audited(resource=_name),
    _BILLING + "UpdatePlan": Audited(resource=_name),
    _BILLING + "ChangePlan": Audited(resource=lambda q, r: q.plan, details=lambda q, r: {
        "plan": r.plan, "pending_plan": r.pending_plan}),
    _BILLING + "GenerateInvoice": Audited(
        resource=_name, org=lambda q, r: _org_name(r.organization),
        details=lambda q, r: {"state": str(r.state)}),
    _BILLING + "FinalizeInvoice": Audited(
        resource=_name, org=lambda q, r: _org_name(r.organization),
        details=lambda q, r: {"state": str(r.state)}),
    _BILLING + "MarkInvoicePaid": Audited(
        resource=_name, org=lambda q, r: _org_name(r.organization),
        details=lambda q, r: {"state": str(r.state)}),
    _BILLING + "VoidInvoice": Audited(
        resource=_name, org=lambda q, r: _org_name(r.organization),
        details=lambda q, r: {"state": str(r.state)}),
    _USAGE + "CreateBudget": Audited(resource=_name),
    _USAGE + "UpdateBudget": Audited(resource=_name),
    _USAGE + "DeleteBudget": Audited(resource=_request_name),
}


def _origin(metadata: Mapping[str, str], context: grpc.aio.ServicerContext) -> tuple[str, str]:
    """(client address, gateway request id). The gateway (use_remote_address) puts the address
    it accepted the connection from in x-envoy-external-address; else the last X-Forwarded-For
    hop it appended; else our own peer (a call that did not come through the gateway)."""
    forwarded = [h.strip() for h in metadata.get("x-forwarded-for", "").split(",") if h.strip()]
    peer = metadata.get("x-envoy-external-address") or (forwarded[-1] if forwarded else "") \
        or (context.peer() or "")
    return peer, metadata.get("x-request-id", "")


def _code(exc: BaseException) -> grpc.StatusCode | None:
    if isinstance(exc, DomainError):
        exc = exc.to_service_error()
    return exc.code if isinstance(exc, ServiceError) else None


class AuditInterceptor(MethodInterceptor):
    """Records the calls AUDITED lists (installed inside the error interceptor, so it sees the
    servicer's own exceptions). A failure to record is logged, never fails the call."""

    def __init__(
        self, sink: Callable[[], AuditSink], table: Mapping[str, Audited] = AUDITED
    ) -> None:
        self._sink = sink
        self.table = table

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        audited = self.table.get(method)
        if audited is None:
            return handler

        def around(behavior: Behavior) -> Behavior:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
                metadata = {k.lower(): v for k, v in call_metadata() if isinstance(v, str)}
                try:
                    response = await call_unary(behavior, request, context)
                except Exception as exc:
                    code = _code(exc)
                    if code in audited.on_failure:
                        await self._record(
                            method,
                            audited,
                            metadata,
                            context,
                            request,
                            None,
                            {"code": code.name if code else ""},
                        )
                    raise
                if audited.on_success:
                    await self._record(method, audited, metadata, context, request, response, {})
                return response

            return run

        return rewrap(handler, around, lambda behavior: behavior)

    async def _record(
        self,
        method: str,
        audited: Audited,
        metadata: Mapping[str, str],
        context: grpc.aio.ServicerContext,
        request: Any,
        response: Any,
        extra: dict[str, str],
    ) -> None:
        try:
            event = _event(method, audited, metadata, context, request, response, extra)
            await self._sink().record(event)
        except Exception:  # the action itself succeeded or failed already: never fail it here
            log.exception("could not record the audit event of %s", method)


def _event(
    method: str,
    audited: Audited,
    metadata: Mapping[str, str],
    context: grpc.aio.ServicerContext,
    request: Any,
    response: Any,
    extra: dict[str, str],
) -> Event:
    identity = identity_from_metadata(metadata)
    org = audited.org(request, response) if audited.org else (identity.org if identity else "")
    actor = (
        audited.actor(request, response)
        if audited.actor
        else (identity.subject if identity else "")
    )
    peer, gateway_request_id = _origin(metadata, context)
    retry_id = str(getattr(request, "request_id", "") or gateway_request_id or uuid.uuid4())
    outcome = "failed" if response is None else "ok"
    service, name = method[1:].split("/")
    action = f"{service.split('.')[1]}.{name}" + (".failed" if response is None else "")
    details = {**(audited.details(request, response) if response is not None else {}), **extra}
    return Event(
        event_key=f"{method}:{outcome}:{org or actor}:{retry_id}",
        org_id=org or None,
        action=action,
        actor=actor,
        resource=audited.resource(request, response) if response is not None else "",
        peer_address=peer,
        request_id=gateway_request_id,
        details=details,
    )


class RemoteAuditSink:
    """Sends events to Auth's RecordAuditEvents; a failed send is retried in the background
    (the event_key makes a duplicate harmless)."""

    RETRY_SECONDS = 300.0

    def __init__(
        self, channel: Callable[[], grpc.aio.Channel], spawn: Callable[[Awaitable[Any], str], Any]
    ) -> None:
        self._channel = channel
        self._spawn = spawn

    async def record(self, event: Event) -> None:
        try:
            await self._send(event, timeout=3)
        except grpc.aio.AioRpcError as exc:
            log.warning("audit event not delivered yet; retrying", extra={"code": exc.code().name})
            self._spawn(self._retry(event), "audit-retry")

    async def _retry(self, event: Event) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.RETRY_SECONDS
        delay = 1.0
        while loop.time() < deadline:
            await asyncio.sleep(delay)
            try:
                await self._send(event, timeout=5)
                return
            except grpc.aio.AioRpcError:
                delay = min(delay * 2, 30.0)
        log.error("audit event lost after retries", extra={"event_key": event.event_key})

    async def _send(self, event: Event, timeout: float) -> None:
        from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc

        stub = auth_pb2_grpc.AuthServiceStub(self._channel())
        await stub.RecordAuditEvents(
            auth_pb2.RecordAuditEventsRequest(
                events=[
                    auth_pb2.ReportedAuditEvent(
                        event_key=event.event_key,
                        organization=ORGANIZATION.format(event.org_id),
                        action=event.action,
                        actor=event.actor,
                        resource=event.resource,
                        peer_address=event.peer_address,
                        request_id=event.request_id,
                        details=event.details,
                    )
                ]
            ),
            timeout=timeout,
        )
