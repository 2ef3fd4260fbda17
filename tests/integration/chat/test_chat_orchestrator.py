"""Orchestrator.Generate against the real Triton responder and Redis; hosted providers are the
local replay server (hosted APIs cannot be reached from here)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from aimesh.orchestrator.v1 import orchestrator_pb2 as pb
from aimesh.orchestrator.v1 import orchestrator_pb2_grpc

from services.common.errors import error_info, field_violations, status_from_rpc_error
from tests.integration.chat.conftest import CIRCUIT_OPEN_SECONDS, CIRCUIT_THRESHOLD, ChatStack
from tests.integration.chat.replay_server import ANSWER

CONTEXT = ("The Eiffel Tower is in Paris and was finished in 1889. "
           "Mount Everest is the highest mountain on Earth. Bananas are yellow when ripe.")


def _identity() -> list[tuple[str, str]]:
    return [("x-aimesh-org", f"org-{uuid.uuid4().hex[:12]}"), ("x-aimesh-subject", "user-1"),
            ("x-aimesh-roles", "member")]


def _request(model: str = "models/grounded-extractive-v1", question: str = "When was the Eiffel Tower finished?",
             **kw: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(model=model, messages=[
        pb.ChatMessage(role=pb.ROLE_SYSTEM, content=CONTEXT),
        pb.ChatMessage(role=pb.ROLE_USER, content=question)], **kw)  # type: ignore[arg-type]


async def _run(chat: ChatStack, request: pb.GenerateRequest, md: list[tuple[str, str]] | None = None) -> list[pb.GenerateResponse]:
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chat.orchestrator)
    return [e async for e in stub.Generate(request, metadata=md or _identity(), timeout=60)]


def _text(events: list[pb.GenerateResponse]) -> str:
    return "".join(e.delta.text for e in events if e.HasField("delta"))


async def test_grounded_generation_streams_in_contract_order(chat: ChatStack) -> None:
    events = await _run(chat, _request())
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "metadata" and kinds[-1] == "completion" and set(kinds[1:-1]) == {"delta"}
    assert events[0].metadata.provider == "triton"
    assert "1889" in _text(events)
    done = events[-1].completion
    assert done.finish_reason == pb.FINISH_REASON_STOP
    assert done.usage.completion_tokens > 0 and done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens


async def test_unknown_model_lists_valid_ones(chat: ChatStack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _run(chat, _request(model="models/no-such-model"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "models/grounded-extractive-v1" in (caught.value.details() or "")


async def test_prompt_beyond_context_is_invalid_with_sizes(chat: ChatStack) -> None:
    huge = "word " * 20_000
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _run(chat, _request(question=huge))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_from_rpc_error(caught.value)
    assert status is not None
    (field, description), = field_violations(status)
    assert field == "messages" and "prompt_tokens=" in description and "context_window_tokens=8192" in description


async def test_bad_parameters_name_every_field(chat: ChatStack) -> None:
    request = _request(temperature=3.0, top_p=0.0, max_output_tokens=100_000, stop=["x"] * 5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _run(chat, request)
    status = status_from_rpc_error(caught.value)
    assert status is not None
    fields = {f for f, _ in field_violations(status)}
    assert {"temperature", "top_p", "max_output_tokens", "stop"} <= fields


async def test_primary_dies_before_first_token_falls_back_without_duplicates(chat: ChatStack) -> None:
    direct = _text(await _run(chat, _request()))
    events = await _run(chat, _request(model="models/fallback-test"))
    assert events[0].metadata.provider == "triton"
    assert _text(events) == direct  # the fallback's answer, once
    attempts = events[-1].completion.provider_attempts
    assert [(a.provider, a.status.code) for a in attempts] == [("openai", grpc.StatusCode.UNAVAILABLE.value[0]), ("triton", 0)]


async def test_anthropic_deployment_through_the_service(chat: ChatStack) -> None:
    events = await _run(chat, _request(model="models/claude-test"))
    assert events[0].metadata.provider == "anthropic"
    assert _text(events) == "".join(ANSWER)
    assert events[-1].completion.usage.prompt_tokens == 25  # provider-reported usage wins


async def test_circuit_opens_after_failures_then_recovers(chat: ChatStack) -> None:
    chat.replay.fail_next["flaky"] = CIRCUIT_THRESHOLD
    for _ in range(CIRCUIT_THRESHOLD):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _run(chat, _request(model="models/flaky-test"))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    seen = len(chat.replay.requests)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _run(chat, _request(model="models/flaky-test"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "circuit open" in (caught.value.details() or "")
    status = status_from_rpc_error(caught.value)
    info = error_info(status) if status else None
    assert info is not None and info.metadata["providers_tried"] == "openai/flaky"
    assert len(chat.replay.requests) == seen  # skipped, not called
    await asyncio.sleep(CIRCUIT_OPEN_SECONDS + 0.2)
    events = await _run(chat, _request(model="models/flaky-test"))
    assert _text(events) == "".join(ANSWER)


async def test_one_orgs_client_errors_do_not_open_the_circuit_for_others(chat: ChatStack) -> None:
    """The reported scenario (issue 12 item 3): org P's requests that the provider refuses as
    invalid (a client error, INVALID_ARGUMENT) must not make org V's valid chat on the same
    deployment fail with "circuit open"."""
    org_p, refused = _identity(), []
    for _ in range(CIRCUIT_THRESHOLD + 3):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _run(chat, _request(model="models/picky-test", question="REJECT this"), org_p)
        refused.append(caught.value.code())
    events = await _run(chat, _request(model="models/picky-test"), _identity())  # org V
    assert _text(events) == "".join(ANSWER)
    # And org P's error stays the client error it is, not an outage.
    assert set(refused) == {grpc.StatusCode.INVALID_ARGUMENT}


async def test_one_orgs_used_up_budget_does_not_open_the_circuit(chat: ChatStack) -> None:
    """RESOURCE_EXHAUSTED of a budget is org P's own limit: org V's chat on the same priced
    deployment keeps working after more refusals than the circuit threshold."""
    from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

    assert chat.usage is not None, "the Usage service did not start in this mesh"
    org_p = [("x-aimesh-org", f"org-{uuid.uuid4().hex[:12]}"), ("x-aimesh-subject", "user-1"),
             ("x-aimesh-roles", "owner")]
    await usage_pb2_grpc.UsageServiceStub(chat.usage).CreateBudget(usage_pb2.CreateBudgetRequest(
        budget=usage_pb2.Budget(scope=usage_pb2.Budget.SCOPE_ORGANIZATION, display_name="tiny",
                                monthly_token_limit=10)), metadata=org_p, timeout=10)
    for _ in range(CIRCUIT_THRESHOLD + 2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _run(chat, _request(model="models/claude-test"), org_p)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    events = await _run(chat, _request(model="models/claude-test"), _identity())  # org V
    assert _text(events) == "".join(ANSWER)


async def test_guardrails_redact_pii_and_block_terms(chat: ChatStack) -> None:
    md = _identity()
    request = pb.GenerateRequest(model="models/grounded-extractive-v1", messages=[
        pb.ChatMessage(role=pb.ROLE_SYSTEM, content="Support is reachable at help@example.com or +1 415 555 2671. "
                                                    "The office opens at nine."),
        pb.ChatMessage(role=pb.ROLE_USER, content="How do I reach support?")])
    events = await _run(chat, request, md)
    text = _text(events)
    assert "help@example.com" not in text and "555 2671" not in text
    categories = {a.category for a in events[-1].completion.guardrail_actions}
    assert {"pii.email", "pii.phone"} <= categories
    blocked = await _run(chat, _request(question="Tell me the forbidden phrase please"), md)
    done = blocked[-1].completion
    assert done.finish_reason == pb.FINISH_REASON_CONTENT_FILTER and not _text(blocked)
    assert done.guardrail_actions[0].kind == pb.GuardrailAction.KIND_BLOCK
    assert "forbidden phrase" in done.guardrail_actions[0].reason


async def test_temperature_zero_is_cached_and_request_id_replays(chat: ChatStack) -> None:
    md = _identity()
    first = await _run(chat, _request(temperature=0.0), md)
    again = await _run(chat, _request(temperature=0.0), md)
    assert not first[-1].completion.cached and again[-1].completion.cached
    assert _text(first) == _text(again) and not again[-1].completion.provider_attempts
    rid = str(uuid.uuid4())
    one = await _run(chat, _request(model="models/claude-test", request_id=rid), md)
    await asyncio.sleep(0.3)  # the replay record is written after the stream ends
    two = await _run(chat, _request(model="models/claude-test", request_id=rid), md)
    assert _text(one) == _text(two) and two[-1].completion.cached


async def test_cancelling_generate_cancels_upstream(chat: ChatStack) -> None:
    chat.replay.disconnected.clear()
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chat.orchestrator)
    call = stub.Generate(_request(model="models/slow-test"), metadata=_identity(), timeout=60)
    deltas = 0
    async for event in call:
        deltas += event.HasField("delta")
        if deltas == 3:
            break
    call.cancel()
    await asyncio.wait_for(chat.replay.disconnected.wait(), 10)


async def test_list_get_count(chat: ChatStack) -> None:
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chat.orchestrator)
    md = _identity()
    listed = await stub.ListModels(pb.ListModelsRequest(page_size=2), metadata=md)
    assert len(listed.models) == 2 and listed.next_page_token and listed.total_size >= 5
    model = await stub.GetModel(pb.GetModelRequest(name="models/grounded-extractive-v1"), metadata=md)
    assert model.context_window_tokens == 8192
    counted = await stub.CountTokens(pb.CountTokensRequest(model=model.name, messages=_request().messages), metadata=md)
    assert 0 < counted.prompt_tokens < counted.context_window_tokens
    assert counted.available_output_tokens == model.max_output_tokens


async def test_tokens_are_metered_to_usage(chat: ChatStack) -> None:
    from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

    assert chat.usage is not None
    org = f"org-{uuid.uuid4().hex[:12]}"
    md = [("x-aimesh-org", org), ("x-aimesh-subject", "user-1"), ("x-aimesh-roles", "admin")]
    events = await _run(chat, _request(model="models/claude-test"), md)
    usage = events[-1].completion.usage
    stub = usage_pb2_grpc.UsageServiceStub(chat.usage)
    found: dict[int, int] = {}
    for _ in range(60):  # the outbox drains in the background
        listed = await stub.ListUsageRecords(usage_pb2.ListUsageRecordsRequest(organization=f"organizations/{org}"), metadata=md)
        found = {r.resource_type: r.quantity_micros for r in listed.usage_records}
        if len(found) == 2:
            break
        await asyncio.sleep(0.5)
    assert found == {usage_pb2.RESOURCE_TYPE_PROMPT_TOKENS: usage.prompt_tokens * 1_000_000,
                     usage_pb2.RESOURCE_TYPE_COMPLETION_TOKENS: usage.completion_tokens * 1_000_000}


async def test_used_up_budget_is_resource_exhausted(chat: ChatStack) -> None:
    from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

    if chat.usage is None:
        pytest.skip("the Usage service did not start in this mesh")
    org = f"org-{uuid.uuid4().hex[:12]}"
    md = [("x-aimesh-org", org), ("x-aimesh-subject", "user-1"), ("x-aimesh-roles", "owner")]
    await usage_pb2_grpc.UsageServiceStub(chat.usage).CreateBudget(usage_pb2.CreateBudgetRequest(
        budget=usage_pb2.Budget(scope=usage_pb2.Budget.SCOPE_ORGANIZATION, display_name="tiny",
                                monthly_token_limit=10)), metadata=md, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _run(chat, _request(model="models/claude-test"), md)  # priced: needs a budget hold
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    events = await _run(chat, _request(), md)  # the free responder needs no hold
    assert events[-1].completion.finish_reason == pb.FINISH_REASON_STOP


# --- the metadata as soon as the deployment that serves is certain (issue 15, chat TTFT) ------


async def _read_all(call: grpc.aio.UnaryStreamCall) -> list[pb.GenerateResponse]:
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


async def test_metadata_comes_while_the_last_deployment_still_works(chat: ChatStack) -> None:
    """The only deployment of held-test accepted the request and holds its answer: the metadata
    (no fallback could follow) is already on the wire, then the answer as usual."""
    chat.replay.release.clear()
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chat.orchestrator)
    call = stub.Generate(_request(model="models/held-test"), metadata=_identity(), timeout=60)
    try:
        first = await asyncio.wait_for(call.read(), 30)
        assert first.metadata.model == "models/held-test" and first.metadata.deployment == "held"
        assert first.metadata.generation_id
        assert not chat.replay.release.is_set()  # no text exists yet
    finally:
        chat.replay.release.set()
    rest = await _read_all(call)
    assert [e.WhichOneof("event") for e in rest][-1] == "completion"
    assert _text(rest) == "".join(ANSWER) and "metadata" not in {e.WhichOneof("event") for e in rest}
    assert rest[-1].completion.finish_reason == pb.FINISH_REASON_STOP


async def test_last_deployment_dying_after_its_metadata_is_unavailable_and_not_metered(chat: ChatStack) -> None:
    """doomed-test's only deployment accepts (200) then dies before any text: the metadata
    already went out, then the status (UNAVAILABLE, as without it); nothing is metered."""
    from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

    assert chat.usage is not None, "the Usage service did not start in this mesh"
    org = f"org-{uuid.uuid4().hex[:12]}"
    md = [("x-aimesh-org", org), ("x-aimesh-subject", "user-1"), ("x-aimesh-roles", "admin")]
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chat.orchestrator)
    events: list[pb.GenerateResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in stub.Generate(_request(model="models/doomed-test"), metadata=md, timeout=60):
            events.append(event)
    assert [e.WhichOneof("event") for e in events] == ["metadata"]
    assert events[0].metadata.deployment == "accept-then-die"
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    status = status_from_rpc_error(caught.value)
    info = error_info(status) if status else None
    assert info is not None and info.reason == "ALL_PROVIDERS_FAILED"
    assert info.metadata["providers_tried"] == "openai/accept-then-die"
    # A later generation of the same organization is metered; it is all the ledger holds.
    served = await _run(chat, _request(model="models/claude-test"), md)
    usage = served[-1].completion.usage
    expected = sorted([(usage_pb2.RESOURCE_TYPE_PROMPT_TOKENS, usage.prompt_tokens * 1_000_000),
                       (usage_pb2.RESOURCE_TYPE_COMPLETION_TOKENS, usage.completion_tokens * 1_000_000)])
    records: list[tuple[int, int]] = []
    for _ in range(60):  # the outbox drains in the background
        listed = await usage_pb2_grpc.UsageServiceStub(chat.usage).ListUsageRecords(
            usage_pb2.ListUsageRecordsRequest(organization=f"organizations/{org}"), metadata=md)
        records = sorted((r.resource_type, r.quantity_micros) for r in listed.usage_records)
        if len(records) >= 2:
            break
        await asyncio.sleep(0.5)
    assert records == expected


async def test_a_primary_dying_after_acceptance_falls_back_with_one_metadata(chat: ChatStack) -> None:
    """A deployment with a fallback after it gets no early metadata: its acceptance proves
    nothing. The one metadata names the fallback that served."""
    events = await _run(chat, _request(model="models/doomed-primary-test"))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "metadata" and kinds.count("metadata") == 1 and kinds[-1] == "completion"
    assert (events[0].metadata.provider, events[0].metadata.deployment) == ("triton", "grounded_responder")
    attempts = events[-1].completion.provider_attempts
    assert [(a.provider, a.status.code) for a in attempts] == [
        ("openai", grpc.StatusCode.UNAVAILABLE.value[0]), ("triton", 0)]
    assert "1889" in _text(events)
