"""SendMessage: one turn of a chat, in the conversation's order.

Holds the conversation's turn, builds the prompt (system prompt + as much recent history as fits
the model's budget + the new message), starts the Orchestrator's answer while the user message
is stored (the user message is committed before anything is sent back, and a failed write
cancels the answer), streams the answer and stores the assistant message — in a `finally`
shielded from cancellation, so a disconnect or deadline still leaves the text produced so far,
INCOMPLETE.

Before the first token: one statement takes the turn and reads the conversation; the history
comes from Redis (none for a new conversation), the prompt is counted by the Orchestrator only
when an upper bound of its size might not fit; the user message is one INSERT statement.
After the answer, one statement stores the assistant message and releases the turn.

The turn: within one process, sends to a conversation queue on an asyncio.Lock (FIFO, so in
arrival order); across replicas, the holder also takes a lease on the conversation row
(`turn_holder`, renewed while it streams, expiring if its process dies). No database
connection is held while an answer streams, so concurrent streams are not capped by the pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from aimesh.conversation.v1 import conversation_pb2 as cpb
from aimesh.orchestrator.v1 import orchestrator_pb2 as opb
from aimesh.orchestrator.v1 import orchestrator_pb2_grpc
from google.rpc import status_pb2
from redis.exceptions import RedisError

from services.common import deadlines, gateway_jwt
from services.common.cache import ServiceCache
from services.common.channels import Channels
from services.common.errors import ServiceError, deadline_exceeded, status_from_rpc_error
from services.common.identity import Identity
from services.common.streams import coalesced, is_text_delta, merge_text_deltas
from services.conversation.conversations import conversation_deleted, conversation_not_found
from services.conversation.store import Row, Store

log = logging.getLogger("aimesh.conversation.chat")

# A gateway caller's SendMessage starts while its request is counted in the rate-limit windows:
# Chat.send waits for the count once it holds the turn, before anything lasting (gateway_jwt).
gateway_jwt.count_alongside("/aimesh.conversation.v1.ConversationService/SendMessage")

CONTEXT_MESSAGES = 100  # most recent messages considered for the prompt (and cached)
CONTEXT_TTL_SECONDS = 3600
MODEL_INFO_SECONDS = 60.0
RETRIEVAL_RESERVE_TOKENS = 400  # per retrieved chunk (chunks are at most ~2,000 characters)
TURN_LEASE_SECONDS = 30.0
LET_REQUEST_GO_TURNS = 6  # event-loop turns given to Generate's sending tasks (_let_request_go)
# Set on the conversation row held by `turn` when the turn's last write also released it.
TURN_RELEASED = "turn_released"
TEMPLATE_TOKENS = 8  # per message, at least what any chat template adds
_ROLE: dict[int, opb.Role] = {
    cpb.Message.ROLE_USER: opb.ROLE_USER,
    cpb.Message.ROLE_ASSISTANT: opb.ROLE_ASSISTANT,
}


@dataclass
class Turn:
    """What is known about the answer while it streams (for the final write)."""

    model: str
    text: list[str]
    completion: opb.Completion | None = None
    error: status_pb2.Status | None = None


def rpc_status(exc: grpc.aio.AioRpcError) -> status_pb2.Status:
    return status_from_rpc_error(exc) or status_pb2.Status(
        code=exc.code().value[0], message=exc.details() or ""
    )


def _busy() -> ServiceError:
    return deadline_exceeded(
        "timed out waiting for the previous message of this conversation to finish",
        reason="CONVERSATION_BUSY",
    )


class DownstreamError(ServiceError):
    """A downstream failure passed on unchanged: same code, message and status details (e.g.
    the Orchestrator's NOT_FOUND listing the valid models)."""

    def __init__(self, exc: grpc.aio.AioRpcError) -> None:
        super().__init__(exc.code(), exc.details() or exc.code().name)
        self.status = rpc_status(exc)

    def to_status(self) -> status_pb2.Status:
        return self.status


def reraise(exc: grpc.aio.AioRpcError) -> ServiceError:
    return DownstreamError(exc)


class Chat:
    def __init__(self, store: Store, cache: ServiceCache | None, channels: Channels) -> None:
        self.store = store
        self.cache = cache
        self.channels = channels
        self._models: dict[str, tuple[float, opb.Model]] = {}
        # conversation key -> (lock, number of sends holding or waiting for it)
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def turn(self, org: str, conv_id: str, timeout: float | None) -> AsyncIterator[Row]:
        """Hold the conversation's turn (see the module docstring) and read its row; waiting
        past `timeout` seconds is DEADLINE_EXCEEDED and stores nothing, a missing conversation
        NOT_FOUND, a deleted one FAILED_PRECONDITION."""
        key = f"{org}/{conv_id}"
        lock, users = self._turns.get(key) or (asyncio.Lock(), 0)
        self._turns[key] = (lock, users + 1)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            try:
                if users:  # wait_for runs a task: only when another send holds or awaits it
                    await asyncio.wait_for(lock.acquire(), timeout)
                else:
                    await lock.acquire()  # free, nobody queued: immediate
            except TimeoutError:
                raise _busy() from None
            try:
                holder = uuid.uuid4().hex
                delay = 0.02
                while (conv := await self._take_turn(org, conv_id, holder)) is None:
                    if deadline is not None and time.monotonic() + delay > deadline:
                        raise _busy()
                    await asyncio.sleep(delay)  # another replica holds it
                    delay = min(delay * 2, 0.5)
                renewer = asyncio.ensure_future(self._renew(org, conv_id, holder))
                try:
                    yield conv
                finally:
                    renewer.cancel()
                    if not conv.get(TURN_RELEASED):
                        await asyncio.shield(self.store.release_turn(org, conv_id, holder))
            finally:
                lock.release()
        finally:
            lock_, users = self._turns[key]
            if users <= 1:
                del self._turns[key]
            else:
                self._turns[key] = (lock_, users - 1)

    async def _take_turn(self, org: str, conv_id: str, holder: str) -> Row | None:
        """The conversation's row with its turn taken; None while another replica holds it."""
        conv = await self.store.take_turn(org, conv_id, holder, TURN_LEASE_SECONDS)
        if conv is not None:
            return conv
        existing = await self.store.get_conversation(org, conv_id)
        if existing is None:
            raise conversation_not_found(conv_id)
        if existing["delete_time"] is not None:
            raise conversation_deleted(conv_id, "undelete it to send messages")
        return None

    async def _renew(self, org: str, conv_id: str, holder: str) -> None:
        while True:
            await asyncio.sleep(TURN_LEASE_SECONDS / 3)
            try:
                await self.store.renew_turn(org, conv_id, holder, TURN_LEASE_SECONDS)
            except Exception as exc:  # noqa: BLE001 - retried on the next round
                log.warning("turn lease renewal failed", extra={"error": str(exc)})

    def orchestrator(self) -> orchestrator_pb2_grpc.OrchestratorServiceStub:
        return orchestrator_pb2_grpc.OrchestratorServiceStub(self.channels.get("orchestrator"))

    async def model(self, name: str, identity: Identity) -> opb.Model:
        """The model's limits (cached briefly); NOT_FOUND from the Orchestrator lists valid ones."""
        hit = self._models.get(name)
        if hit is not None and time.monotonic() - hit[0] < MODEL_INFO_SECONDS:
            return hit[1]
        try:
            model = await self.orchestrator().GetModel(
                opb.GetModelRequest(name=name), metadata=identity.to_headers()
            )
        except grpc.aio.AioRpcError as exc:
            raise reraise(exc) from None
        self._models[name] = (time.monotonic(), model)
        return model

    # --- recent context (Redis) ---------------------------------------------------------------

    def _context_key(self, org: str, conv_id: str, message_count: int) -> str:
        """Keyed by the conversation's message count: an entry describes exactly that many
        stored messages, so one left stale (a crash between the message and the cache write)
        is never read — the next turn sees another count and reads PostgreSQL."""
        assert self.cache is not None
        return self.cache.key("context", org, conv_id, str(message_count))

    async def history(self, org: str, conv_id: str, message_count: int) -> list[tuple[int, str]]:
        """(role, content) of the recent messages, oldest first: none for a new conversation,
        else Redis, else Postgres."""
        if message_count == 0:
            return []
        if self.cache is not None:
            try:
                raw = await self.cache.redis.get(self._context_key(org, conv_id, message_count))
                if raw is not None:
                    return [(int(r), c) for r, c in json.loads(raw)]
            except (RedisError, OSError, ValueError) as exc:
                log.warning("context cache read failed", extra={"error": str(exc)})
        rows = await self.store.recent_messages(org, conv_id, CONTEXT_MESSAGES)
        history = [(int(r["role"]), r["content"]) for r in rows if r["content"]]
        await self._save_history(org, conv_id, message_count, history)
        return history

    async def forget_history(self, org: str, conv_id: str, message_count: int) -> None:
        """Drop the cached context of a conversation whose stored messages changed in place
        (TruncateMessage): the next turn reads PostgreSQL."""
        if self.cache is None:
            return
        try:
            await self.cache.redis.delete(self._context_key(org, conv_id, message_count))
        except (RedisError, OSError) as exc:
            log.warning("context cache delete failed", extra={"error": str(exc)})

    async def _save_history(
        self,
        org: str,
        conv_id: str,
        message_count: int,
        history: list[tuple[int, str]],
        replaces: int | None = None,
    ) -> None:
        if self.cache is None:
            return
        try:
            pipe = self.cache.redis.pipeline(transaction=False)
            pipe.set(
                self._context_key(org, conv_id, message_count),
                json.dumps(history[-CONTEXT_MESSAGES:]),
                ex=CONTEXT_TTL_SECONDS,
            )
            if replaces is not None:
                pipe.delete(self._context_key(org, conv_id, replaces))
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("context cache write failed", extra={"error": str(exc)})

    # --- prompt -------------------------------------------------------------------------------

    async def prompt(
        self,
        identity: Identity,
        model: opb.Model,
        system_prompt: str,
        history: list[tuple[int, str]],
        content: str,
        max_output: int,
        reserve: int,
    ) -> list[opb.ChatMessage]:
        """System prompt + the most recent history that fits + the new message (oldest dropped)."""
        head = (
            [opb.ChatMessage(role=opb.ROLE_SYSTEM, content=system_prompt)] if system_prompt else []
        )
        turns = [opb.ChatMessage(role=_ROLE[r], content=c) for r, c in history if r in _ROLE]
        new = opb.ChatMessage(role=opb.ROLE_USER, content=content)
        budget = model.context_window_tokens - max_output - reserve
        if token_bound([*head, *turns, new]) <= budget:
            return [*head, *turns, new]  # fits whatever the exact count: no round trip
        for _ in range(4):
            messages = [*head, *turns, new]
            try:
                counted = await self.orchestrator().CountTokens(
                    opb.CountTokensRequest(model=model.name, messages=messages),
                    metadata=identity.to_headers(),
                )
            except grpc.aio.AioRpcError as exc:
                raise reraise(exc) from None
            over = counted.prompt_tokens - budget
            if over <= 0 or not turns:
                return messages
            # Drop the oldest turns worth about `over` tokens (estimated by length), then recount.
            per_char = counted.prompt_tokens / max(sum(len(m.content) for m in messages), 1)
            dropped = 0.0
            while turns and dropped < over:
                dropped += len(turns[0].content) * per_char + 4
                turns.pop(0)
        return [*head, *turns, new]

    # --- the turn -----------------------------------------------------------------------------

    async def send(
        self,
        identity: Identity,
        conv_id: str,
        request: cpb.SendMessageRequest,
        default_model: str,
        timeout: float | None,
        to_message: Callable[[Row], cpb.Message],
    ) -> AsyncGenerator[cpb.SendMessageResponse, None]:
        """One turn (see the module docstring): the user message, the streamed answer, the
        stored assistant message. A repeated request_id replays the stored turn."""
        org = identity.org
        async with self.turn(org, conv_id, timeout) as conv:
            # The gateway caller's request was counted in its rate-limit windows while the turn
            # was taken (a lease a refusal releases); nothing lasting happens before the count.
            await gateway_jwt.admission_settled()
            name = request.model or conv["default_model"] or default_model
            model = await self.model(name, identity)
            if request.request_id:
                earlier = await self.store.messages_for_request(org, conv_id, request.request_id)
                if earlier:
                    for event in _replayed(earlier, to_message):
                        yield event
                    return
            history = await self.history(org, conv_id, conv["message_count"])
            turn = Turn(model=model.name, text=[])
            call = await self._start_answer(identity, conv, request, model, history, turn)
            try:
                if call is not None:
                    await _let_request_go()
                user = await self._store_question(identity, conv_id, request)
            except BaseException:
                if call is not None:
                    call.cancel()  # nothing was stored or sent: the answer must not run on
                raise
            yield cpb.SendMessageResponse(user_message=to_message(user))
            history.append((cpb.Message.ROLE_USER, request.content))
            try:
                if call is not None:
                    async for event in self._relay(call, turn):
                        yield event
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and deadlines.expired():
                    # Generate carries this call's deadline, so it may end before this call
                    # is cancelled: the caller cut the answer off, stored INCOMPLETE as on a
                    # cancellation, not as a failed answer.
                    raise deadline_exceeded(
                        "the deadline passed while the answer streamed; the text produced so "
                        "far is stored as an INCOMPLETE message"
                    ) from None
                turn.error = rpc_status(exc)
                if not turn.text:
                    # Failed before any output (the metadata may come before an error): the
                    # message names the model asked for, not one that produced nothing.
                    turn.model = model.name
            finally:
                # Also on disconnect/deadline (CancelledError): store what was produced, even if
                # this task is cancelled again while writing.
                assistant = await asyncio.shield(
                    self._store_answer(identity, conv, request, turn, history, user)
                )
            yield cpb.SendMessageResponse(assistant_message=to_message(assistant))

    async def _start_answer(
        self,
        identity: Identity,
        conv: Row,
        request: cpb.SendMessageRequest,
        model: opb.Model,
        history: list[tuple[int, str]],
        turn: Turn,
    ) -> grpc.aio.UnaryStreamCall | None:
        """Build the prompt and start Generate (it runs while the user message is stored). A
        failure here is the turn's error (stored as a FAILED answer): None."""
        try:
            max_output = (
                request.max_output_tokens
                if request.HasField("max_output_tokens")
                else min(model.max_output_tokens, model.context_window_tokens // 4)
            )
            # Unset retrieval is automatic (Orchestrator: on when the org has READY documents).
            retrieves = request.retrieval.enabled or (
                not request.HasField("retrieval")
                and opb.Model.CAPABILITY_RETRIEVAL in model.capabilities
            )
            reserve = (request.retrieval.top_k or 5) * RETRIEVAL_RESERVE_TOKENS if retrieves else 0
            messages = await self.prompt(
                identity,
                model,
                conv["system_prompt"],
                history,
                request.content,
                max_output,
                reserve,
            )
        except grpc.aio.AioRpcError as exc:
            turn.error = rpc_status(exc)
            return None
        except ServiceError as exc:
            turn.error = exc.to_status()
            return None
        generate = opb.GenerateRequest(
            model=model.name, messages=messages, request_id=request.request_id
        )
        if request.HasField("retrieval"):
            generate.retrieval.CopyFrom(request.retrieval)
        if request.HasField("temperature"):
            generate.temperature = request.temperature
        if request.HasField("max_output_tokens"):
            generate.max_output_tokens = request.max_output_tokens
        return self.orchestrator().Generate(generate, metadata=identity.to_headers())

    async def _relay(
        self, call: grpc.aio.UnaryStreamCall, turn: Turn
    ) -> AsyncIterator[cpb.SendMessageResponse]:
        """Generate's events as SendMessage events, noting what the answer is so far."""
        try:
            # Read here until the first text (no task switch before it), then ahead.
            async for event in coalesced(call, merge_text_deltas, lingers=is_text_delta):
                kind = event.WhichOneof("event")
                if kind == "delta":
                    turn.text.append(event.delta.text)
                    yield cpb.SendMessageResponse(delta=cpb.AssistantDelta(text=event.delta.text))
                elif kind == "metadata":
                    turn.model = event.metadata.model
                    yield cpb.SendMessageResponse(generation=event.metadata)
                elif kind == "completion":
                    turn.completion = event.completion
                    for citation in event.completion.citations:
                        yield cpb.SendMessageResponse(citation=citation)
        finally:
            call.cancel()  # no-op when finished; otherwise cancels generation upstream

    async def _store_question(
        self, identity: Identity, conv_id: str, request: cpb.SendMessageRequest
    ) -> Row:
        return await self.store.insert_message(
            identity.org,
            conv_id,
            {
                "role": cpb.Message.ROLE_USER,
                "content": request.content,
                "state": cpb.Message.STATE_COMPLETE,
                "request_id": request.request_id or None,
            },
        )

    async def _store_answer(
        self,
        identity: Identity,
        conv: Row,
        request: cpb.SendMessageRequest,
        turn: Turn,
        history: list[tuple[int, str]],
        user: Row,
    ) -> Row:
        """The assistant message, in the statement that also releases the turn."""
        conv_id = conv["id"]
        completion = turn.completion
        content = "".join(turn.text)
        if turn.error is not None:
            state, finish = cpb.Message.STATE_FAILED, opb.FINISH_REASON_ERROR
        elif completion is None:
            state, finish = cpb.Message.STATE_INCOMPLETE, opb.FINISH_REASON_CANCELLED
        elif completion.finish_reason == opb.FINISH_REASON_ERROR:
            state, finish = cpb.Message.STATE_FAILED, opb.FINISH_REASON_ERROR
            turn.error = completion.error
        else:
            state, finish = cpb.Message.STATE_COMPLETE, completion.finish_reason
        extra = cpb.Message(citations=completion.citations) if completion is not None else None
        row = await self.store.insert_message(
            identity.org,
            conv_id,
            {
                "role": cpb.Message.ROLE_ASSISTANT,
                "content": content,
                "state": state,
                "model": turn.model,
                "prompt_tokens": completion.usage.prompt_tokens if completion else None,
                "completion_tokens": completion.usage.completion_tokens if completion else None,
                "citations": extra.SerializeToString()
                if extra is not None and extra.citations
                else None,
                "finish_reason": finish,
                "error": turn.error.SerializeToString() if turn.error is not None else None,
                "request_id": request.request_id or None,
            },
            release_turn_of=conv["turn_holder"],
        )
        conv[TURN_RELEASED] = True
        if content:
            history.append((cpb.Message.ROLE_ASSISTANT, content))
        # The context of the next turn, under the count the conversation now has.
        await self._save_history(
            identity.org,
            conv_id,
            row["conversation_message_count"],
            history,
            replaces=user["conversation_message_count"] - 1,
        )
        return row


async def _let_request_go() -> None:
    """Let Generate's request go out before the user message's INSERT starts: the call is sent
    by tasks of its own (the client interceptors', then the one writing the request), which
    otherwise wait behind the INSERT's work on this event loop (pool checkout, query, its
    wake-ups); Generate then reached the Orchestrator ~0.35 ms later (interleaved A/B, SSE
    through the gateway). Waiting for the call itself (wait_for_connection) would wait for the
    Orchestrator's response headers, which come with its first event."""
    for _ in range(LET_REQUEST_GO_TURNS):
        await asyncio.sleep(0)


def _replayed(
    earlier: list[Row], to_message: Callable[[Row], cpb.Message]
) -> list[cpb.SendMessageResponse]:
    """The events of a turn already stored under the same request_id."""
    events = [cpb.SendMessageResponse(user_message=to_message(earlier[0]))]
    if len(earlier) > 1:
        events.append(cpb.SendMessageResponse(assistant_message=to_message(earlier[1])))
    return events


def token_bound(messages: list[opb.ChatMessage]) -> int:
    """At least the prompt's token count under any tokenizer the Orchestrator may use: byte-level
    BPE and its own approximation give at most one token per UTF-8 byte, plus a per-message
    template overhead (the Orchestrator counts 4, and 3 to prime the reply)."""
    return sum(len(m.content.encode()) + TEMPLATE_TOKENS for m in messages) + TEMPLATE_TOKENS
