"""Usage metering for Speech, behind ONE function: `meter()`.

Reports go to UsageService.RecordUsage in the background (a speech stream never waits on the
ledger), deduplicated by a request id derived from the caller's request_id or the stream, so a
retried call is metered once. When services/common/usage_client.py lands, `meter()` becomes a
call into it and nothing else in Speech changes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc
from google.protobuf import timestamp_pb2

from services.common.channels import Channels
from services.common.identity import Identity

log = logging.getLogger("aimesh.speech.metering")

AUDIO_SECONDS = usage_pb2.RESOURCE_TYPE_AUDIO_SECONDS
CHARACTERS = usage_pb2.RESOURCE_TYPE_CHARACTERS_SYNTHESIZED
_ATTEMPTS = 4
# Reports in flight; a set (not Runtime.spawn's list) so finished ones are forgotten.
_pending: set[asyncio.Task[None]] = set()


def meter(
    channels: Channels,
    identity: Identity,
    resource_type: int,
    quantity: float,
    request_id: str = "",
    model: str = "",
) -> None:
    """Record `quantity` units of `resource_type` for the caller's organization, in the
    background. `request_id` dedupes retries ("<request id>/<resource type>" in the ledger)."""
    if quantity <= 0:
        return
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    kind = usage_pb2.ResourceType.Name(resource_type).removeprefix("RESOURCE_TYPE_").lower()
    # The gateway's headers carry bare ids; the ledger wants resource names.
    org = identity.org.removeprefix("organizations/")
    key = identity.key_id or ""
    if key and not key.startswith("organizations/"):
        key = f"organizations/{org}/apiKeys/{key}"
    record = usage_pb2.UsageRecord(
        organization=f"organizations/{org}",
        api_key=key,
        user=identity.subject if identity.subject.startswith("users/") else "",
        resource_type=resource_type,  # type: ignore[arg-type]
        model=model,
        quantity_micros=round(quantity * 1_000_000),
        occur_time=now,
        request_id=f"{request_id or uuid.uuid4()}/{kind}",
        source="speech",
    )
    task = asyncio.ensure_future(_send(channels, identity, record))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def drain(timeout: float = 5.0) -> None:
    """On shutdown: give reports in flight a moment to land (registered with runtime.on_shutdown)."""
    if _pending:
        await asyncio.wait(list(_pending), timeout=timeout)


async def _send(channels: Channels, identity: Identity, record: usage_pb2.UsageRecord) -> None:
    stub = usage_pb2_grpc.UsageServiceStub(channels.get("usage"))
    delay = 0.5
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            await stub.RecordUsage(
                usage_pb2.RecordUsageRequest(records=[record]),
                metadata=identity.to_headers(),
                timeout=5.0,
            )
            return
        except grpc.aio.AioRpcError as exc:
            # Safe to resend: the ledger dedupes on request_id.
            retryable = exc.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            if not retryable or attempt == _ATTEMPTS:
                log.warning(
                    "usage not recorded",
                    extra={
                        "request_id": record.request_id,
                        "code": exc.code().name,
                        "detail": exc.details(),
                    },
                )
                return
        await asyncio.sleep(delay)
        delay *= 2
