"""Token metering and budget holds: the ONE place generation usage meets the Usage service,
through the shared usage client (services/common/usage_client.py).

* `report_tokens` queues prompt and completion tokens in the durable outbox (Orchestrator's own
  schema) before the completion is sent; records are idempotent per (generation, resource
  type), so they count once.
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
    return (
        prompt_tokens * model.prompt_price_micros_per_million_tokens
        + completion_tokens * model.completion_price_micros_per_million_tokens
        + 999_999
    ) // 1_000_000


def _api_key(identity: Identity) -> str:
    return f"organizations/{identity.org}/apiKeys/{identity.key_id}" if identity.key_id else ""


async def report_tokens(
    usage: UsageClient | None,
    identity: Identity,
    model: str,
    generation_id: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    """Queue a generation's token counts for Usage, durably, before the caller replies. Never
    raises: a failed insert is logged (metering must not fail a chat that already ran)."""
    if usage is None:
        return
    try:
        await usage.meter_all(
            identity,
            [
                (ResourceType.RESOURCE_TYPE_PROMPT_TOKENS, prompt_tokens),
                (ResourceType.RESOURCE_TYPE_COMPLETION_TOKENS, completion_tokens),
            ],
            generation_id,
            model=model,
        )
    except Exception as exc:  # noqa: BLE001 - metering must never fail the generation
        log.error("usage not queued", extra={"generation_id": generation_id, "error": str(exc)})


@dataclass
class Spend:
    """Filled in by the generation as it finishes; settled into the hold."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    metered: bool = False  # the usage records are in the outbox


@asynccontextmanager
async def budget_hold(
    usage: UsageClient | None,
    identity: Identity,
    model: ModelEntry,
    prompt_tokens: int,
    max_output_tokens: int,
    generation_id: str,
) -> AsyncIterator[Spend]:
    spend = Spend()
    estimate = cost_micros(model, prompt_tokens, max_output_tokens)
    if usage is None or estimate == 0:
        yield spend
        return
    async with usage.reserve(
        org=identity.org,
        estimated_amount_micros=estimate,
        currency_code=model.currency_code,
        estimated_tokens=prompt_tokens + max_output_tokens,
        identity=identity,
        api_key=_api_key(identity),
        request_id=f"{generation_id}/hold",
        fail_open=True,
    ) as hold:
        try:
            yield spend
        finally:
            total = spend.prompt_tokens + spend.completion_tokens
            hold.settle(cost_micros(model, spend.prompt_tokens, spend.completion_tokens), total)
