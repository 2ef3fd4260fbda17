"""Token metering: the ONE place generation usage goes to the Usage service.

Records are idempotent per (generation, resource type) so a retried report is counted once.
Reporting is best effort and off the response path: a Usage outage must not fail a chat.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from google.protobuf import timestamp_pb2

from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from services.common.channels import Channels
from services.common.identity import Identity

log = logging.getLogger("aimesh.orchestrator.metering")


async def report_tokens(
    channels: Channels, identity: Identity, model: str, generation_id: str,
    prompt_tokens: int, completion_tokens: int,
) -> None:
    """Report a generation's prompt and completion tokens (never raises)."""
    occur = timestamp_pb2.Timestamp()
    occur.FromDatetime(datetime.now(timezone.utc))
    common = {
        "organization": f"organizations/{identity.org}",
        "api_key": f"organizations/{identity.org}/apiKeys/{identity.key_id}" if identity.key_id else "",
        "user": "" if identity.key_id else f"users/{identity.subject}",
        "model": model,
        "occur_time": occur,
        "source": "orchestrator",
    }
    records = [
        usage_pb2.UsageRecord(resource_type=usage_pb2.RESOURCE_TYPE_PROMPT_TOKENS,
                              quantity_micros=prompt_tokens * 1_000_000,
                              request_id=f"{generation_id}/prompt_tokens", **common),
        usage_pb2.UsageRecord(resource_type=usage_pb2.RESOURCE_TYPE_COMPLETION_TOKENS,
                              quantity_micros=completion_tokens * 1_000_000,
                              request_id=f"{generation_id}/completion_tokens", **common),
    ]
    try:
        stub = usage_pb2_grpc.UsageServiceStub(channels.get("usage"))
        await stub.RecordUsage(
            usage_pb2.RecordUsageRequest(records=records), metadata=identity.to_headers(), timeout=5
        )
    except Exception as exc:
        log.warning("usage report failed", extra={"generation_id": generation_id, "error": str(exc)})
