"""Usage metering for Knowledge: the ONE place that reports chunks embedded and searches.

Records go through the shared Usage client (services/common/usage_client.py: a durable outbox
in this service's schema, drained to Usage's RecordUsage), in the background so ingestion and
search never wait on it; each record's request_id makes a retry count once.
"""

from __future__ import annotations

from services.common.server import Runtime
from services.common.usage_client import record_usage_soon

CHUNKS_EMBEDDED = "RESOURCE_TYPE_CHUNKS_EMBEDDED"
SEARCHES = "RESOURCE_TYPE_SEARCHES"


def report(runtime: Runtime, org: str, resource_type: str, quantity: int, request_id: str,
           subject: str = "", api_key: str = "") -> None:
    """Report `quantity` units of `resource_type` for `org` (fire-and-forget, idempotent)."""
    record_usage_soon(
        runtime, org=org, resource_type=resource_type, quantity=quantity,
        request_id=request_id, source="knowledge", subject=subject, api_key=api_key,
    )
