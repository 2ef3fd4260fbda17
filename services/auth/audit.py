"""Auth's audit log: stores every service's security-relevant actions (its schema) and lists
an organization's. What gets recorded, and when, is decided in one place for all services:
services/common/audit.py."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.auth import crypto
from services.auth.errors import raise_violations
from services.auth.memberships import ORGANIZATION
from services.auth.store import Store
from services.common.audit import Event
from services.common.db import Row
from services.common.errors import FieldViolations

MAX_REPORTED_EVENTS = 100


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(self, event: Event) -> bool:
        """Store one event (False: its event_key was stored before). A failed login without an
        organization is filed under the user's own (oldest) one, if the e-mail is a user's."""
        async with self.store.connection() as conn:
            org_id = event.org_id
            if org_id is None and event.actor.startswith("email:"):
                user = await self.store.user_by_email(conn, event.actor[6:])
                membership = (await self.store.active_membership(conn, user["id"], None)
                              if user else None)
                org_id = membership["org_id"] if membership else None
            return await self.store.insert_audit_event(
                conn, crypto.new_id("ae_"), org_id, event.action, event.actor, event.resource,
                event.peer_address, event.request_id, event.details, event.event_key)

    async def record_reported(self, events: Sequence[Any]) -> int:
        """RecordAuditEvents: 1-100 events (auth.v1.ReportedAuditEvent) other services saw;
        returns how many were new."""
        v = FieldViolations()
        v.check(0 < len(events) <= MAX_REPORTED_EVENTS, "events",
                f"must hold 1-{MAX_REPORTED_EVENTS} events")
        for i, e in enumerate(events):
            v.check(bool(e.event_key), f"events[{i}].event_key", "is required")
            v.check(bool(e.action), f"events[{i}].action", "is required")
            ORGANIZATION.id(e.organization, f"events[{i}].organization", v)
        raise_violations(v)
        recorded = 0
        for e in events:
            recorded += await self.record(Event(
                event_key=e.event_key, org_id=ORGANIZATION.id(e.organization, "organization"),
                action=e.action, actor=e.actor,
                resource=e.resource, peer_address=e.peer_address, request_id=e.request_id,
                details=dict(e.details)))
        return recorded

    async def list(self, org_id: str, action: str | None, before: tuple[datetime, str] | None,
                   limit: int) -> list[Row]:
        async with self.store.connection() as conn:
            return await self.store.list_audit_events(conn, org_id, action, before, limit)
