"""Usage metering for Speech, behind ONE function: `meter()`.

Records go through services.common.usage_client: written to the durable outbox in Speech's own
schema and delivered to Usage by its background drainer, so Usage being down delays counting but
never drops it. Each record's request id derives from the caller's request_id (or a fresh one
for streams), and Usage dedupes on it, so a retried call is metered once. The outbox insert runs
in the background: a speech stream never waits on the ledger.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from aimesh.usage.v1 import usage_pb2

from services.common.identity import Identity
from services.common.server import Runtime
from services.common.usage_client import record_usage_soon

AUDIO_SECONDS = usage_pb2.RESOURCE_TYPE_AUDIO_SECONDS
CHARACTERS = usage_pb2.RESOURCE_TYPE_CHARACTERS_SYNTHESIZED


def meter(
    runtime: Runtime,
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
    kind = usage_pb2.ResourceType.Name(resource_type).removeprefix("RESOURCE_TYPE_").lower()
    record_usage_soon(
        runtime,
        org=identity.org,
        resource_type=resource_type,
        # Whole micro-units, rounded once here (half to even), then carried exactly.
        quantity=Decimal(round(quantity * 1_000_000)) / 1_000_000,
        request_id=f"{request_id or uuid.uuid4()}/{kind}",
        source="speech",
        subject=identity.subject,
        api_key=identity.key_id or "",
        model=model,
    )
