"""Token metering and budget holds: the ONE place generation usage meets the Usage service,
through the shared usage client (services/common/usage_client.py).

* `report_tokens` queues prompt and completion tokens in the durable outbox (Orchestrator's own
  schema); records are idempotent per (generation, resource type), so they count once.
* `budget_hold` reserves the worst-case cost of a priced generation before it starts (a used-up
  budget fails the request with RESOURCE_EXHAUSTED) and settles the actual cost after. Models
  with no price (the Triton responder) skip the round trip.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from services.common.identity import Identity
from services.common.usage_client import ResourceType, UsageClient
from services.orchestrator.catalog import ModelEntry

log = logging.getLogger("aimesh.orchestrator.metering")


def cost_micros(model: ModelEntry, prompt_tokens: int, completion_tokens: int) -> int:
    return (prompt_tokens * model.prompt_price_micros_per_million_tokens
            + completion_tokens * model.completion_price_micros_per_million_tokens + 999_999) // 1_000_000


def _who(identity: Identity) -> dict[str, str]:
    if identity.key_id:
        return {"api_key": f"organizations/{identity.org}/apiKeys/{identity.key_id}"}
    return {"user": f"users/{identity.subject}"}


async def report_tokens(usage: UsageClient | None, identity: Identity, model: str, generation_id: str,
                        prompt_tokens: int, completion_tokens: int) -> None:
    """Queue a generation's token counts for Usage (never raises: metering must not fail a chat)."""
    if usage is None:
        return
    try:
        who = _who(identity)
        records = [
            usage.make_record(org=identity.org, resource_type=kind, quantity=count, model=model,
                              request_id=f"{generation_id}/{suffix}", source="orchestrator",
                              api_key=who.get("api_key", ""), user=who.get("user", ""))
            for kind, count, suffix in (
                (ResourceType.RESOURCE_TYPE_PROMPT_TOKENS, prompt_tokens, "prompt_tokens"),
                (ResourceType.RESOURCE_TYPE_COMPLETION_TOKENS, completion_tokens, "completion_tokens"))
        ]
        await usage.record_many(records)
    except Exception as exc:  # noqa: BLE001 - metering must never fail the generation
        log.error("usage not queued", extra={"generation_id": generation_id, "error": str(exc)})


@dataclass
class Spend:
    """Filled in by the generation as it finishes; settled into the hold."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@asynccontextmanager
async def budget_hold(usage: UsageClient | None, identity: Identity, model: ModelEntry,
                      prompt_tokens: int, max_output_tokens: int, generation_id: str) -> AsyncIterator[Spend]:
    spend = Spend()
    estimate = cost_micros(model, prompt_tokens, max_output_tokens)
    if usage is None or estimate == 0:
        yield spend
        return
    async with usage.reserve(
        org=identity.org, estimated_amount_micros=estimate, currency_code=model.currency_code,
        estimated_tokens=prompt_tokens + max_output_tokens, identity=identity,
        api_key=_who(identity).get("api_key", ""), request_id=f"{generation_id}/hold", fail_open=True,
    ) as hold:
        try:
            yield spend
        finally:
            total = spend.prompt_tokens + spend.completion_tokens
            hold.settle(cost_micros(model, spend.prompt_tokens, spend.completion_tokens), total)
