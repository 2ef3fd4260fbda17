"""Users, organizations and memberships: who belongs to which organization with which role,
and the rules for changing that (only admins manage members, only owners touch owners, an
organization always keeps an owner)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from services.auth import crypto
from services.auth.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    Precondition,
    invalid,
    role_required,
)
from services.auth.principal import ROLE_BY_NAME, ROLE_NAMES, Principal
from services.auth.store import Store
from services.common.db import Row
from services.common.identity import Role
from services.common.names import resource

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
ORGANIZATION = resource("auth.aimesh.dev/Organization")


def check_update_mask(paths: Sequence[str]) -> None:
    """UpdateMembership changes the role only."""
    bad = [p for p in paths if p != "role"]
    if bad:
        raise InvalidInput([("update_mask", f"unsupported path(s): {', '.join(bad)}")],
                           "only 'role' can be updated")


class Memberships:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def get_user(self, user_id: str) -> Row:
        async with self.store.autocommit() as conn:
            user = await self.store.get_user(conn, user_id)
        if user is None:
            raise NotFound("user not found", "USER_NOT_FOUND")
        return user

    async def get_org(self, org_id: str) -> Row:
        async with self.store.autocommit() as conn:
            org = await self.store.get_org(conn, org_id)
        if org is None:
            raise NotFound("organization not found", "ORGANIZATION_NOT_FOUND")
        return org

    async def effective_role(self, principal: Principal) -> Role:
        """The caller's current role: from the database for users (a token's roles may be up to
        one access-token lifetime old), MEMBER for API keys (as documented on ApiKey.scopes)."""
        if principal.user_id is not None:
            async with self.store.connection() as conn:
                row = await self.store.active_membership(conn, principal.user_id, principal.org_id)
            if row is None:
                raise Forbidden("no longer a member of this organization", "NOT_A_MEMBER")
            return ROLE_BY_NAME[row["role"]]
        return Role.MEMBER

    async def require_role(self, principal: Principal, minimum: Role, action: str) -> Role:
        role = await self.effective_role(principal)
        if role < minimum:
            raise role_required(action, ROLE_NAMES[minimum])
        return role

    async def list(self, org_id: str, role: str | None, after: tuple[datetime, str] | None,
                   limit: int) -> tuple[list[Row], int]:
        async with self.store.connection() as conn:
            rows = await self.store.list_memberships(conn, org_id, role, after, limit)
            total = await self.store.count_memberships(conn, org_id, role)
        return rows, total

    async def create(self, principal: Principal, email: str, role: Role,
                     request_id: str) -> Row:
        email = email.strip().lower()
        if not EMAIL.match(email):
            raise invalid("membership.email", "must be an e-mail address")
        caller_role = await self.require_role(principal, Role.ADMIN, "inviting members")
        if role == Role.OWNER and caller_role < Role.OWNER:
            raise Forbidden("only an owner may grant the owner role", "ROLE_REQUIRED",
                            {"required_role": "OWNER"})
        async with self.store.connection() as conn:
            user = await self.store.user_by_email(conn, email)
            row = await self.store.insert_membership(
                conn, crypto.new_id("m_"), principal.org_id, user["id"] if user else None, email,
                ROLE_NAMES[role], "active" if user else "invited", principal.subject)
            if row is None:
                found = await self.store.membership_by_email(conn, principal.org_id, email)
                if request_id and found and found["inviter"] == principal.subject:
                    return found
                raise AlreadyExists("that e-mail already has a membership", "MEMBERSHIP_EXISTS")
        return row

    async def update_role(self, principal: Principal, membership_id: str, role: Role,
                          etag: str) -> Row:
        caller_role = await self.require_role(principal, Role.ADMIN, "changing roles")
        async with self.store.connection() as conn:
            await self.store.lock_org(conn, principal.org_id)
            row = await self.store.get_membership(conn, principal.org_id, membership_id)
            if row is None:
                raise NotFound("membership not found", "MEMBERSHIP_NOT_FOUND")
            if etag and etag != str(row["version"]):
                raise Conflict("the membership changed; re-read it", "ETAG_MISMATCH")
            if (role == Role.OWNER or row["role"] == "owner") and caller_role < Role.OWNER:
                raise Forbidden("only an owner may grant or remove the owner role",
                                "ROLE_REQUIRED", {"required_role": "OWNER"})
            if row["role"] == "owner" and role != Role.OWNER and row["state"] == "active" and \
                    await self.store.count_owners(conn, principal.org_id) <= 1:
                raise Precondition("the organization would have no owner", "LAST_OWNER")
            updated = await self.store.update_membership_role(conn, membership_id, ROLE_NAMES[role])
            assert updated is not None
        return updated

    async def delete(self, principal: Principal, membership_id: str,
                     allow_missing: bool) -> Row | None:
        """The deleted membership, or None when it did not exist and allow_missing is set."""
        async with self.store.connection() as conn:
            await self.store.lock_org(conn, principal.org_id)
            row = await self.store.get_membership(conn, principal.org_id, membership_id)
            if row is None:
                if allow_missing:
                    return None
                raise NotFound("membership not found", "MEMBERSHIP_NOT_FOUND")
            self_delete = row["user_id"] is not None and principal.user_id == row["user_id"]
            if not self_delete:
                caller_role = await self.require_role(principal, Role.ADMIN, "removing members")
                if row["role"] == "owner" and caller_role < Role.OWNER:
                    raise Forbidden("only an owner may remove an owner", "ROLE_REQUIRED",
                                    {"required_role": "OWNER"})
            if row["role"] == "owner" and row["state"] == "active" and \
                    await self.store.count_owners(conn, principal.org_id) <= 1:
                raise Precondition("the organization would have no owner", "LAST_OWNER")
            await self.store.delete_membership(conn, membership_id)
        return row
