"""AIP-158 pagination, the one implementation every List method uses.

- `page_size`: 0 means DEFAULT_PAGE_SIZE, larger than MAX_PAGE_SIZE is coerced down, negative is
  INVALID_ARGUMENT naming `page_size`.
- `page_token`: opaque to clients, signed (HMAC-SHA256 with AIMESH_PAGE_TOKEN_SECRET) over the
  method, the caller's organization and the cursor, and carrying a digest of every other request
  field. A token that was altered, belongs to another organization or method, or is replayed with
  different filters is INVALID_ARGUMENT naming `page_token` — never a silently wrong page.

Usage in a servicer (`self.pages = Paginator(runtime.settings)` once):

    page = self.pages.start(request, org)
    rows = await store.list(..., limit=page.size + 1, after=page.cursor)
    rows, next_token = page.split(rows, lambda r: (r["create_time"], r["id"]))

Offset-paged lists use `page.offset` and `page.split(rows)` (or `page.slice(items)` for a list
held in memory). Cursor values may be str, int, bool, None, datetime or UUID.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf.message import Message

from services.common.config import Settings
from services.common.errors import invalid_argument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_VERSION = 1
_MAC_BYTES = 16
_PAGING_FIELDS = ("page_size", "page_token")

T = TypeVar("T")
Cursor = tuple[Any, ...]


def _encode_value(value: object) -> list[object]:
    """One cursor value as [type tag, JSON value]; the tag restores datetimes and UUIDs."""
    if isinstance(value, datetime):
        return ["t", value.isoformat()]
    if isinstance(value, uuid.UUID):
        return ["u", str(value)]
    if value is None or isinstance(value, (str, int, bool)):
        return ["v", value]
    raise TypeError(
        f"page cursor values must be str, int, bool, None, datetime or UUID, not {type(value)}"
    )


def _decode_value(item: object) -> object:
    if not isinstance(item, list) or len(item) != 2:
        raise ValueError("cursor item")
    tag, value = item
    if tag == "t" and isinstance(value, str):
        return datetime.fromisoformat(value)
    if tag == "u" and isinstance(value, str):
        return uuid.UUID(value)
    if tag == "v" and (value is None or isinstance(value, (str, int, bool))):
        return value
    raise ValueError("cursor item")


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def filter_digest(request: Message) -> str:
    """Digest of every field of a List request except page_size and page_token (AIP-158: a
    token is only valid with the same other fields)."""
    rest = type(request)()
    rest.CopyFrom(request)
    for name in _PAGING_FIELDS:
        if name in rest.DESCRIPTOR.fields_by_name:
            rest.ClearField(name)
    return hashlib.sha256(rest.SerializeToString(deterministic=True)).hexdigest()[:16]


class Paginator:
    """Issues and checks page tokens with the process's signing key."""

    def __init__(self, settings: Settings) -> None:
        self._key = hashlib.sha256(
            b"aimesh page tokens\0" + settings.page_token_secret.encode()
        ).digest()

    def _mac(self, method: str, org: str, payload: bytes) -> bytes:
        message = b"\0".join((method.encode(), org.encode(), payload))
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def start(self, request: Message, org: str) -> Page:
        """The page a List request asks for; INVALID_ARGUMENT for a negative size or a token
        this method did not issue to `org` for the same filters."""
        size: int = request.page_size
        token: str = request.page_token
        if size < 0:
            raise invalid_argument(
                f"page_size must not be negative (got {size})",
                [
                    (
                        "page_size",
                        f"must be 0 (the default, {DEFAULT_PAGE_SIZE}) to {MAX_PAGE_SIZE}; "
                        "larger values are coerced",
                    )
                ],
            )
        page = Page(
            paginator=self,
            method=request.DESCRIPTOR.full_name,
            org=org,
            filters=filter_digest(request),
            size=min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
            cursor=None,
        )
        if token:
            page = page._resume(token)
        return page


@dataclass(frozen=True)
class Page:
    """One List call's page: how many items to return and where the previous page ended."""

    paginator: Paginator
    method: str
    org: str
    filters: str
    size: int
    cursor: Cursor | None

    @property
    def offset(self) -> int:
        """For offset-paged lists: how many items earlier pages returned."""
        return int(self.cursor[0]) if self.cursor else 0

    def token_for(self, cursor: Sequence[Any]) -> str:
        payload = json.dumps(
            [_VERSION, self.filters, [_encode_value(v) for v in cursor]], separators=(",", ":")
        ).encode()
        mac = self.paginator._mac(self.method, self.org, payload)
        return f"{_b64encode(payload)}.{_b64encode(mac)}"

    def _resume(self, token: str) -> Page:
        def refuse(message: str, why: str) -> Exception:
            return invalid_argument(
                f"page_token {message}", [("page_token", why)], reason="INVALID_PAGE_TOKEN"
            )

        try:
            body, _, mac_text = token.partition(".")
            payload, mac = _b64decode(body), _b64decode(mac_text)
        except (ValueError, binascii.Error):
            raise refuse("is malformed", "not a next_page_token returned by this method") from None
        if not hmac.compare_digest(mac, self.paginator._mac(self.method, self.org, payload)):
            raise refuse(
                "was not issued by this method to this organization (altered or foreign)",
                "pass next_page_token from the previous call unchanged",
            )
        try:
            version, filters, items = json.loads(payload)
            cursor = tuple(_decode_value(item) for item in items)
        except (ValueError, TypeError):
            raise refuse("is malformed", "not a next_page_token returned by this method") from None
        if version != _VERSION or filters != self.filters:
            raise refuse(
                "was issued for a request with other filters",
                "every request field except page_size must match the call that returned the token",
            )
        return Page(self.paginator, self.method, self.org, self.filters, self.size, cursor)

    def split(
        self, rows: Sequence[T], cursor_of: Callable[[T], Sequence[Any]] | None = None
    ) -> tuple[list[T], str]:
        """Rows fetched with a limit of size + 1 -> (this page, next_page_token or "").
        Without `cursor_of` the next token holds the offset after this page."""
        page = list(rows[: self.size])
        if len(rows) <= self.size:
            return page, ""
        if cursor_of is None:
            return page, self.token_for((self.offset + self.size,))
        return page, self.token_for(tuple(cursor_of(page[-1])))

    def slice(self, items: Sequence[T]) -> tuple[list[T], str]:
        """A page of a list held in memory (catalogs): offset-paged."""
        return self.split(items[self.offset : self.offset + self.size + 1])
