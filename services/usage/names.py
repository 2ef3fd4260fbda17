"""Resource names and caller checks shared by Usage's RPCs (plain Python, no gRPC types)."""

from __future__ import annotations

import datetime as dt
import re
import uuid

from services.common.errors import FieldViolations, permission_denied
from services.common.identity import Identity

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_KEY = re.compile(r"^organizations/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})/apiKeys/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def is_valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def parse_org(value: str, field: str, v: FieldViolations) -> str:
    """"organizations/{org}" -> org id ("" after recording a violation)."""
    prefix = "organizations/"
    if value.startswith(prefix) and is_valid_id(value[len(prefix):]):
        return value[len(prefix):]
    v.add(field, 'must be "organizations/{organization}"')
    return ""


def org_name(org: str) -> str:
    return f"organizations/{org}"


def parse_api_key(value: str, field: str, v: FieldViolations, org: str | None = None) -> str:
    """Validates "organizations/{org}/apiKeys/{key}" (of `org` when given); returns it."""
    if not value:
        return ""
    match = _KEY.match(value)
    if match is None:
        v.add(field, 'must be "organizations/{organization}/apiKeys/{api_key}"')
        return ""
    if org and match.group(1) != org:
        v.add(field, "belongs to another organization")
        return ""
    return value


def parse_uuid_name(value: str, collection: str, field: str, v: FieldViolations) -> uuid.UUID | None:
    prefix = f"{collection}/"
    if value.startswith(prefix):
        try:
            return uuid.UUID(value[len(prefix):])
        except ValueError:
            pass
    v.add(field, f'must be "{collection}/{{id}}"')
    return None


def valid_currency(code: str) -> bool:
    return bool(_CURRENCY.match(code))


def month_start(t: dt.datetime) -> dt.datetime:
    t = t.astimezone(dt.UTC)
    return dt.datetime(t.year, t.month, 1, tzinfo=dt.UTC)


def next_month(start: dt.datetime) -> dt.datetime:
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def resolve_org(identity: Identity | None, requested: str, field: str, v: FieldViolations) -> str:
    """The organization an RPC acts on: the requested one (must be the caller's unless the
    caller is a platform admin or an internal service call without user identity), else the
    caller's. The mesh policy restricts which peers may call without identity."""
    if requested:
        org = parse_org(requested, field, v)
        v.raise_if_any()
        if identity is not None and identity.org != org and not identity.is_platform_admin:
            raise permission_denied(
                f"{requested} is not the caller's organization", reason="ORGANIZATION_MISMATCH"
            )
        return org
    if identity is None:
        v.add(field, "required for calls without a caller identity")
        v.raise_if_any()
    assert identity is not None
    return identity.org
