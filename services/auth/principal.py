"""Who is calling Auth, as the gateway forwards it, and the role names Auth stores."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.identity import Role

ROLE_NAMES = {
    Role.OWNER: "owner",
    Role.ADMIN: "admin",
    Role.MEMBER: "member",
    Role.VIEWER: "viewer",
}
ROLE_BY_NAME = {v: k for k, v in ROLE_NAMES.items()}


@dataclass(frozen=True)
class Principal:
    """Who a credential belongs to, as the gateway forwards it."""

    org_id: str
    subject: str  # "users/<id>" or "apiKeys/<id>"
    roles: tuple[str, ...]
    key_id: str | None = None
    scopes: tuple[str, ...] = ()
    session_id: str | None = None  # the refresh family an access token was issued in
    expire_time: float | None = None  # when an API key expires (epoch seconds)

    @property
    def user_id(self) -> str | None:
        return self.subject[6:] if self.subject.startswith("users/") else None
