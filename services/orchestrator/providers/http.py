"""What the HTTP providers share: one pooled httpx client and HTTP error mapping."""

from __future__ import annotations

import json

import grpc
import httpx

from services.common.config import Settings
from services.orchestrator.providers import ProviderError

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def make_client(connect_seconds: float = 5.0) -> httpx.AsyncClient:
    # Streams may pause between tokens; the router enforces first-token and idle limits itself.
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=connect_seconds, read=None, write=30.0, pool=10.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
    )


def _retry_after(response: httpx.Response) -> float | None:
    for header in ("retry-after-ms", "retry-after"):
        value = response.headers.get(header)
        if value:
            try:
                seconds = float(value)
            except ValueError:
                return None
            return seconds / 1000 if header == "retry-after-ms" else seconds
    return None


async def raise_for_status(provider: str, response: httpx.Response) -> None:
    """Turn a non-2xx reply into ProviderError carrying the provider's own error message."""
    if response.status_code < 300:
        return
    body = (await response.aread())[:4096].decode("utf-8", "replace")
    message = body.strip() or response.reason_phrase
    try:
        parsed = json.loads(body)
        error = parsed.get("error", parsed) if isinstance(parsed, dict) else {}
        if isinstance(error, dict) and error.get("message"):
            kind = error.get("code") or error.get("type") or ""
            message = f"{kind}: {error['message']}" if kind else str(error["message"])
    except ValueError:
        pass
    code = _CODES.get(response.status_code, grpc.StatusCode.UNAVAILABLE)
    raise ProviderError(
        f"{provider} HTTP {response.status_code}: {message}", code, _retry_after(response)
    )


def transport_error(provider: str, exc: httpx.HTTPError) -> ProviderError:
    # Said in words: Python class names are no part of an API error (clients see this message).
    if isinstance(exc, httpx.TimeoutException):
        what = "timed out"
    elif isinstance(exc, httpx.ConnectError):
        what = "could not connect"
    else:
        what = "transport error"
    detail = f" ({exc})" if str(exc) else ""
    return ProviderError(f"{provider}: {what}{detail}", grpc.StatusCode.UNAVAILABLE)


def load_json(provider: str, data: str) -> dict:
    try:
        value = json.loads(data)
    except ValueError:
        raise ProviderError(f"{provider}: malformed stream event: {data[:200]!r}") from None
    if not isinstance(value, dict):
        raise ProviderError(f"{provider}: malformed stream event: {data[:200]!r}")
    return value


class HTTPProvider:
    """Base of the hosted providers: settings (endpoints, keys) and the shared pooled client."""

    name = "http"

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client

    async def close(self) -> None:
        return None  # the client is shared; its owner closes it
