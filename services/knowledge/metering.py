"""Usage metering for Knowledge: the ONE place that reports chunks embedded and searches.

Records go through the shared Usage client (services/common/usage_client.py: a durable outbox
in this service's schema, drained to Usage's RecordUsage). Reporting never fails or slows the
RPC that caused it: the outbox insert runs as a background task, and each record carries a
dedupe request_id so a retry cannot double-charge. Without the client module it only logs.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any

from services.common.server import Runtime

log = logging.getLogger("aimesh.knowledge.metering")
_pending: set[asyncio.Future[None]] = set()

CHUNKS_EMBEDDED = "RESOURCE_TYPE_CHUNKS_EMBEDDED"
SEARCHES = "RESOURCE_TYPE_SEARCHES"


def _usage_client() -> Any | None:
    try:
        return importlib.import_module("services.common.usage_client")
    except ImportError:
        return None


def report(runtime: Runtime, org: str, resource_type: str, quantity: int, request_id: str,
           subject: str = "", api_key: str = "") -> None:
    """Report `quantity` units of `resource_type` for `org` (fire-and-forget, idempotent)."""
    client = _usage_client()
    record = getattr(client, "record_usage", None) if client is not None else None
    if record is None:
        log.debug(
            "usage (not reported: no usage client yet)",
            extra={"org": org, "resource_type": resource_type, "quantity": quantity, "request_id": request_id},
        )
        return

    async def send() -> None:
        try:
            await record(
                runtime, org=org, resource_type=resource_type, quantity=quantity,
                request_id=request_id, source="knowledge", subject=subject, api_key=api_key,
            )
        except Exception as exc:  # metering must never break ingestion or search
            log.warning("usage report failed: %s", exc)

    task = asyncio.ensure_future(send())
    _pending.add(task)  # a strong reference until done; not runtime.spawn, whose list only grows
    task.add_done_callback(_pending.discard)
