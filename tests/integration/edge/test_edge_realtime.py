"""The Realtime WebSocket bridge through the real gateway, with the official `openai` package's
realtime client (`client.beta.realtime.connect`, its `websockets` extra) as users run it, and a
raw `websockets` client where a browser's handshake matters (credential in the subprotocol).
Speech, Auth, Usage and Triton are the session mesh's real services."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soxr
import websockets

from tests.integration.edge.conftest import EdgeStack
from tests.support.accounts import Account, create_key
from tests.support.speech import piper_pcm, word_error_rate

SENTENCE = "the weather today is sunny with a high of seventy degrees"
RATE = 24_000
CHUNK = RATE // 10 * 2  # 100 ms of pcm16


def speech_24k(text: str) -> bytes:
    """Piper's voice saying `text`, as pcm16 at 24 kHz (OpenAI's Realtime default); the same
    audio on every call (piper_pcm has no sampling noise)."""
    pcm, rate = piper_pcm(text)
    return soxr.resample(pcm, rate, RATE).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(int(RATE * seconds) * 2)


def realtime_client(edge: EdgeStack, key: str) -> openai.AsyncOpenAI:
    ws_base = edge.openai_base.replace("http://", "ws://")
    return openai.AsyncOpenAI(base_url=edge.openai_base, websocket_base_url=ws_base,
                              api_key=key, max_retries=0)


@asynccontextmanager
async def connect(edge: EdgeStack, key: str, **query: str) -> AsyncIterator[Any]:
    client = realtime_client(edge, key)
    async with client.beta.realtime.connect(model=query.pop("model", "grounded-extractive-v1"),
                                            extra_query=query) as conn:
        yield conn


async def until(conn: Any, kind: str, timeout: float = 90) -> Any:
    """Events up to and including the first of `kind` (the last one returned)."""
    async with asyncio.timeout(timeout):
        while True:
            event = await conn.recv()
            if event.type == kind:
                return event


async def collect(conn: Any, last: str, timeout: float = 120) -> list[Any]:
    events = []
    async with asyncio.timeout(timeout):
        while True:
            events.append(await conn.recv())
            if events[-1].type == last:
                return events


async def append(conn: Any, audio: bytes) -> None:
    for i in range(0, len(audio), CHUNK):
        await conn.input_audio_buffer.append(audio=base64.b64encode(audio[i:i + CHUNK]).decode())


async def usage_records(http: httpx.AsyncClient, account: Account, kind: str,
                        want: int = 1) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for _ in range(100):
        reply = await http.get("/v1/usageRecords", headers=account.bearer,
                               params={"pageSize": 200})
        assert reply.status_code == 200, reply.text
        records = [r for r in reply.json().get("usageRecords", [])
                   if r.get("resourceType") == kind]
        if len(records) >= want:
            break
        await asyncio.sleep(0.2)
    return records


async def converse_calls(http: httpx.AsyncClient, account: Account) -> int:
    """How many Converse calls the account's session made: Speech meters each call's audio
    seconds once, when the call ends (call this after the session closed)."""
    records = await usage_records(http, account, "RESOURCE_TYPE_AUDIO_SECONDS")
    await asyncio.sleep(1.0)  # a second call's record would be written by now as well
    return len(await usage_records(http, account, "RESOURCE_TYPE_AUDIO_SECONDS",
                                   want=len(records)))


async def session_messages(http: httpx.AsyncClient, account: Account) -> list[dict[str, Any]]:
    """The stored messages of the account's one conversation (a voice session's), read
    through the gateway's Conversation API as the account's user."""
    reply = await http.get("/v1/conversations", headers=account.bearer)
    assert reply.status_code == 200, reply.text
    conversations = reply.json().get("conversations", [])
    assert len(conversations) == 1, conversations
    reply = await http.get(f"/v1/{conversations[0]['name']}/messages", headers=account.bearer)
    assert reply.status_code == 200, reply.text
    return reply.json().get("messages", [])  # type: ignore[no-any-return]


async def test_transcription_session_server_vad(
    edge: EdgeStack, edge_http: httpx.AsyncClient, edge_account: Account, api_key: str
) -> None:
    audio = silence(0.3) + speech_24k(SENTENCE) + silence(1.2)
    async with connect(edge, api_key, intent="transcription") as conn:
        created = await conn.recv()
        assert created.type == "transcription_session.created"
        await conn.send({"type": "transcription_session.update", "session": {
            "input_audio_format": "pcm16",
            "input_audio_transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500,
                               "prefix_padding_ms": 300}}})
        updated = await until(conn, "transcription_session.updated")
        assert updated.session.turn_detection.silence_duration_ms == 500
        await append(conn, audio)
        events = await collect(conn, "conversation.item.input_audio_transcription.completed")
    kinds = [e.type for e in events]
    for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                 "input_audio_buffer.committed", "conversation.item.created"):
        assert kind in kinds, kinds
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index(
        "input_audio_buffer.committed")
    started = next(e for e in events if e.type == "input_audio_buffer.speech_started")
    assert 0 <= started.audio_start_ms < 300  # speech began at 300 ms, minus the prefix padding
    done = events[-1]
    assert done.item_id == started.item_id
    deltas = "".join(e.delta for e in events
                     if e.type == "conversation.item.input_audio_transcription.delta")
    assert deltas.strip() == done.transcript.strip()
    assert word_error_rate(SENTENCE, done.transcript.lower()) <= 0.3, done.transcript
    records = await usage_records(edge_http, edge_account, "RESOURCE_TYPE_AUDIO_SECONDS")
    assert records and sum(int(r["quantityMicros"]) for r in records) >= 3_000_000, records


async def test_transcription_manual_commit_and_bad_events(edge: EdgeStack, api_key: str) -> None:
    audio = speech_24k(SENTENCE)
    async with connect(edge, api_key, intent="transcription") as conn:
        await until(conn, "transcription_session.created")
        await conn.send({"type": "transcription_session.update",
                         "session": {"turn_detection": None}})
        await until(conn, "transcription_session.updated")
        # Each bad event gets an error naming it; the session goes on.
        bad = [
            ({"type": "no.such.event", "event_id": "e1"}, "invalid_event_type"),
            ({"type": "input_audio_buffer.append", "audio": "***not base64"}, "invalid_audio"),
            ({"type": "input_audio_buffer.append", "audio": 7}, "invalid_type"),
            ({"type": "transcription_session.update", "session": {"turn_detection": {
                "type": "semantic_vad"}}}, "unsupported_feature"),
            ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty"),
        ]
        for event, code in bad:
            await conn.send(event)
            error = await until(conn, "error")
            assert error.error.code == code, (event, error)
        await conn.send({"type": "no.such.event", "event_id": "e1"})
        error = await until(conn, "error")
        assert error.error.event_id == "e1" and "no.such.event" in error.error.message
        await append(conn, audio)
        await conn.input_audio_buffer.commit()
        committed = await until(conn, "input_audio_buffer.committed")
        done = await until(conn, "conversation.item.input_audio_transcription.completed")
    assert done.item_id == committed.item_id
    assert word_error_rate(SENTENCE, done.transcript.lower()) <= 0.4, done.transcript


def _ws_url(edge: EdgeStack, query: str = "model=x&intent=transcription") -> str:
    return edge.openai_base.replace("http://", "ws://") + "/realtime?" + query


async def test_raw_frames_bad_json_and_oversized(edge: EdgeStack, api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}", "OpenAI-Beta": "realtime=v1"}
    async with websockets.connect(_ws_url(edge), additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["type"] == "transcription_session.created"
        await ws.send("{not json")
        assert json.loads(await ws.recv())["error"]["code"] == "invalid_json"
        await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                  "audio": "A" * (2 * 1024 * 1024)}))
        assert json.loads(await ws.recv())["error"]["code"] == "message_too_large"
        await ws.send("[1, 2]")
        assert json.loads(await ws.recv())["error"]["code"] == "invalid_event"
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert json.loads(await ws.recv())["type"] == "input_audio_buffer.cleared"


async def test_browser_subprotocol_credential(edge: EdgeStack, api_key: str) -> None:
    """A browser cannot set headers: the key travels as a subprotocol, the reply echoes
    `realtime`, and the key itself never reaches the edge."""
    protocols = ["realtime", f"openai-insecure-api-key.{api_key}", "openai-beta.realtime-v1"]
    async with websockets.connect(_ws_url(edge), subprotocols=protocols) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "transcription_session.created"
    with pytest.raises(websockets.InvalidStatus) as refused:
        bad = ["realtime", "openai-insecure-api-key.amk_not_a_real_key"]
        async with websockets.connect(_ws_url(edge), subprotocols=bad):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 401


async def test_browser_subprotocol_jwt(edge: EdgeStack, edge_account: Account) -> None:
    """A signed-in user's access token (a JWT) works the same way: jwt_authn verifies it there.
    It must be the last subprotocol offered: jwt_authn takes the header's value after the
    prefix to its end (API keys, read by Auth's Check, may stand anywhere in the list)."""
    protocols = ["realtime", "openai-beta.realtime-v1",
                 f"openai-insecure-api-key.{edge_account.access_token}"]
    async with websockets.connect(_ws_url(edge), subprotocols=protocols) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "transcription_session.created"
    forged = edge_account.access_token[:-4] + ("AAAA" if not edge_account.access_token.endswith(
        "AAAA") else "BBBB")
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(_ws_url(edge), subprotocols=[  # type: ignore[list-item]
                "realtime", f"openai-insecure-api-key.{forged}"]):
            pass
    assert refused.value.response.status_code == 401


async def test_auth_refused_before_upgrade(
    edge: EdgeStack, edge_http: httpx.AsyncClient, edge_account: Account
) -> None:
    with pytest.raises(websockets.InvalidStatus) as missing:
        async with websockets.connect(_ws_url(edge)):
            pass
    assert missing.value.response.status_code == 401
    body = json.loads(missing.value.response.body or b"{}")
    assert body["error"]["type"] == "authentication_error"
    with pytest.raises(websockets.InvalidStatus) as wrong:  # the official client, a wrong key
        async with connect(edge, "amk_wrong_key_0123456789", intent="transcription") as conn:
            await conn.recv()
    assert wrong.value.response.status_code == 401
    key = await create_key(edge_http, edge_account)
    reply = await edge_http.post(f"/v1/{key['name']}:revoke", headers=edge_account.bearer,
                                 json={})
    assert reply.status_code == 200, reply.text
    for _ in range(50):  # revocation reaches the key cache at once; allow a beat
        try:
            async with websockets.connect(_ws_url(edge), additional_headers={
                    "Authorization": f"Bearer {key['secret']}"}):
                await asyncio.sleep(0.1)
        except websockets.InvalidStatus as exc:
            assert exc.response.status_code == 401
            break
    else:
        raise AssertionError("a revoked key still opens Realtime sessions")


async def test_idle_session_is_closed(edge: EdgeStack, api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    async with websockets.connect(_ws_url(edge), additional_headers=headers) as ws:
        await ws.recv()
        async with asyncio.timeout(40):  # AIMESH_REALTIME_IDLE_SECONDS=10 in this stack
            with pytest.raises(websockets.ConnectionClosedOK) as closed:
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.reason == "idle timeout"


# --- the voice loop (Converse) ---------------------------------------------------------------

QUESTION = "what is the capital of france"


@pytest.fixture
def voice(edge: EdgeStack) -> EdgeStack:
    """The edge stack's Speech runs Converse on the stack's Conversation and Orchestrator."""
    return edge


async def speak(conn: Any, text: str, trailing_silence: float = 1.5) -> None:
    await append(conn, silence(0.3) + speech_24k(text) + silence(trailing_silence))


async def configure_voice(conn: Any, **session: Any) -> None:
    await until(conn, "session.created")
    await conn.session.update(session={
        "voice": "alloy", "instructions": "You are a helpful voice assistant.",
        "input_audio_transcription": {"model": "whisper-1"},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}, **session})
    await until(conn, "session.updated")


async def test_spoken_question_answered_with_audio(
    voice: EdgeStack, edge_http: httpx.AsyncClient, edge_account: Account, api_key: str
) -> None:
    async with connect(voice, api_key) as conn:
        await configure_voice(conn)
        await speak(conn, QUESTION)
        events = await collect(conn, "response.done", timeout=180)
    kinds = [e.type for e in events]
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.committed",
             "response.created", "response.audio.delta", "response.done"]
    assert [kinds.index(k) for k in order] == sorted(kinds.index(k) for k in order), kinds
    heard = next(e for e in events
                 if e.type == "conversation.item.input_audio_transcription.completed")
    assert word_error_rate(QUESTION, heard.transcript.lower()) <= 0.4, heard.transcript
    audio = b"".join(base64.b64decode(e.delta) for e in events
                     if e.type == "response.audio.delta")
    assert len(audio) > RATE  # more than half a second of pcm16 at 24 kHz
    transcript = "".join(e.delta for e in events if e.type == "response.audio_transcript.delta")
    done_text = next(e for e in events if e.type == "response.audio_transcript.done").transcript
    assert transcript.strip() and transcript == done_text
    done = events[-1].response
    assert done.status == "completed" and done.output[0].content[0].transcript == transcript
    assert done.usage.output_tokens > 0 and done.usage.total_tokens >= done.usage.output_tokens
    # Audio tokens at OpenAI's documented rates: the question's audio (speech start minus
    # the prefix padding to end of utterance, ~2-3 s) at 100 ms, the answer's at 50 ms.
    details_in, details_out = done.usage.input_token_details, done.usage.output_token_details
    assert 10 <= details_in.audio_tokens <= 50, details_in
    answer_ms = len(audio) // 2 * 1000 // RATE
    assert abs(details_out.audio_tokens - answer_ms / 50) <= 1, (details_out, answer_ms)
    assert done.usage.output_tokens == details_out.text_tokens + details_out.audio_tokens
    assert done.usage.input_tokens == details_in.text_tokens + details_in.audio_tokens
    for kind in ("RESOURCE_TYPE_AUDIO_SECONDS", "RESOURCE_TYPE_CHARACTERS_SYNTHESIZED",
                 "RESOURCE_TYPE_COMPLETION_TOKENS"):
        assert await usage_records(edge_http, edge_account, kind), kind


async def test_truncate_then_text_only_turn(voice: EdgeStack, edge_http: httpx.AsyncClient,
                                            edge_account: Account, api_key: str) -> None:
    """Barge-in as a Realtime client does it: on the caller's speech it stops playback and
    truncates the answer to what was played; the server sends no more audio for that item and
    keeps only the heard part of its transcript, also in the stored conversation (as OpenAI
    drops the truncated audio's transcript). The session then answers in text only."""
    async with connect(voice, api_key) as conn:
        await configure_voice(conn)
        await speak(conn, QUESTION)
        first = await until(conn, "response.audio.delta", timeout=180)
        played_ms = min(200, len(base64.b64decode(first.delta)) * 1000 // (2 * RATE))
        await conn.conversation.item.truncate(item_id=first.item_id, content_index=0,
                                              audio_end_ms=played_ms)
        rest = [first]  # the answer may finish streaming before the truncate arrives
        async with asyncio.timeout(180):
            while not {"response.done", "conversation.item.truncated"} <= {e.type for e in rest}:
                rest.append(await conn.recv())
        truncated = next(e for e in rest if e.type == "conversation.item.truncated")
        assert truncated.item_id == first.item_id and truncated.audio_end_ms == played_ms
        after = rest[rest.index(truncated):]
        assert not [e for e in after if e.type == "response.audio.delta"], "audio after truncate"
        await conn.send({"type": "conversation.item.retrieve", "item_id": first.item_id})
        item = (await until(conn, "conversation.item.retrieved")).item
        full = "".join(e.delta for e in rest if e.type == "response.audio_transcript.delta")
        heard = item.content[0].transcript
        assert len(heard) < len(full) or not full, (heard, full)
        answers = [m for m in await session_messages(edge_http, edge_account)
                   if m["role"] == "ROLE_ASSISTANT"]
        assert answers and answers[0].get("content", "").strip() == heard, (answers, heard)
        if len(heard) < len(full):
            assert answers[0]["state"] == "STATE_INCOMPLETE", answers[0]
        await conn.session.update(session={"modalities": ["text"]})
        await until(conn, "session.updated")
        await speak(conn, QUESTION)
        second = await collect(conn, "response.done", timeout=180)
    assert any(e.type == "response.text.delta" for e in second)
    assert not any(e.type == "response.audio.delta" for e in second)
    assert second[-1].response.status == "completed"


async def test_cancel_and_barge_in(voice: EdgeStack, edge_http: httpx.AsyncClient,
                                   edge_account: Account, api_key: str) -> None:
    """With a model that never stops talking: speaking over its answer cancels it (Converse's
    barge-in: response.done cancelled, turn_detected), and response.cancel cancels the next
    (Converse's CancelReply: the answer is stored incomplete, the session goes on)."""
    async with connect(voice, api_key, model="endless-test") as conn:
        await configure_voice(conn)
        await speak(conn, QUESTION)
        first = await until(conn, "response.audio_transcript.delta", timeout=180)
        await speak(conn, "stop please")
        events = []  # up to the second answer's first words (the first may stream on a bit)
        async with asyncio.timeout(180):
            while not (events and events[-1].type == "response.audio_transcript.delta"
                       and events[-1].response_id != first.response_id):
                events.append(await conn.recv())
        done = next(e for e in events if e.type == "response.done")
        assert done.response.id == first.response_id and done.response.status == "cancelled"
        assert done.response.status_details.reason == "turn_detected"
        second = events[-1]
        assert second.response_id != first.response_id
        await conn.response.cancel()
        cancelled = await until(conn, "response.done", timeout=60)
        assert cancelled.response.id == second.response_id
        assert cancelled.response.status == "cancelled"
        assert cancelled.response.status_details.reason == "client_cancelled"
        await conn.response.cancel()  # nothing left to cancel: an error, the session goes on
        error = await until(conn, "error")
        assert error.error.code == "response_cancel_not_active"
        await append(conn, silence(0.5))  # goes to the same Converse call
        messages = await session_messages(edge_http, edge_account)
        assert [m["role"] for m in messages] == ["ROLE_USER", "ROLE_ASSISTANT"] * 2, messages
        assert all(m["state"] == "STATE_INCOMPLETE" for m in messages[1::2]), messages
        await conn.session.update(session={"voice": "en-us-joe"})
        assert (await until(conn, "session.updated")).session.voice == "en-us-joe"
    assert await converse_calls(edge_http, edge_account) == 1  # cancelling restarted nothing


async def test_text_only_replies_are_not_synthesized(
    voice: EdgeStack, edge_http: httpx.AsyncClient, edge_account: Account, api_key: str
) -> None:
    """modalities ["text"]: the answer comes as text, Speech synthesizes nothing (no
    characters-synthesized usage, no output audio tokens); the caller's audio is still
    recognized and metered in audio seconds."""
    async with connect(voice, api_key) as conn:
        await configure_voice(conn, modalities=["text"])
        await speak(conn, QUESTION)
        events = await collect(conn, "response.done", timeout=180)
    kinds = {e.type for e in events}
    assert "response.text.delta" in kinds and not kinds & {"response.audio.delta",
                                                          "response.audio_transcript.delta"}
    done = events[-1].response
    assert done.status == "completed"
    assert done.usage.output_token_details.audio_tokens == 0
    assert done.usage.input_token_details.audio_tokens > 0
    # Audio seconds are metered when the Converse call ends (the session closed above),
    # after anything the answer metered.
    seconds = await usage_records(edge_http, edge_account, "RESOURCE_TYPE_AUDIO_SECONDS")
    assert seconds, "the caller's audio is metered"
    assert await usage_records(edge_http, edge_account, "RESOURCE_TYPE_COMPLETION_TOKENS")
    reply = await edge_http.get("/v1/usageRecords", headers=edge_account.bearer,
                                params={"pageSize": 200})
    kinds_metered = {r.get("resourceType") for r in reply.json().get("usageRecords", [])}
    assert "RESOURCE_TYPE_CHARACTERS_SYNTHESIZED" not in kinds_metered, kinds_metered


async def test_clear_drops_the_utterance_under_way(
    voice: EdgeStack, edge_http: httpx.AsyncClient, edge_account: Account, api_key: str
) -> None:
    """input_audio_buffer.clear in the middle of an utterance (Converse's ClearInput on the
    same call): that speech becomes no item and gets no answer; the next question does."""
    sentence = speech_24k(SENTENCE)
    async with connect(voice, api_key) as conn:
        await configure_voice(conn)
        await append(conn, silence(0.3) + sentence[: len(sentence) * 6 // 10 // 2 * 2])
        await until(conn, "input_audio_buffer.speech_started", timeout=60)
        await conn.input_audio_buffer.clear()
        await until(conn, "input_audio_buffer.cleared", timeout=60)
        await speak(conn, QUESTION)
        events = await collect(conn, "response.done", timeout=180)
    committed = [e for e in events if e.type == "input_audio_buffer.committed"]
    heard = [e for e in events
             if e.type == "conversation.item.input_audio_transcription.completed"]
    assert len(committed) == 1 and len(heard) == 1, [e.type for e in events]
    assert heard[0].item_id == committed[0].item_id
    assert word_error_rate(QUESTION, heard[0].transcript.lower()) <= 0.4, heard[0].transcript
    assert events[-1].response.status == "completed"
    assert await converse_calls(edge_http, edge_account) == 1  # clearing restarted nothing
    messages = await session_messages(edge_http, edge_account)
    assert [m["role"] for m in messages] == ["ROLE_USER", "ROLE_ASSISTANT"], messages
    assert word_error_rate(QUESTION, messages[0]["content"].lower()) <= 0.4, messages


# --- the GA vocabulary (client.realtime) ----------------------------------------------------


async def test_ga_client_transcription_and_voice(voice: EdgeStack, api_key: str) -> None:
    """The package's GA client (no OpenAI-Beta header): GA session shapes and event names."""
    client = realtime_client(voice, api_key)
    async with client.realtime.connect(model="gpt-realtime",
                                       extra_query={"intent": "transcription"}) as conn:
        created = await conn.recv()
        assert created.type == "session.created" and created.session.type == "transcription"
        await conn.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "whisper-1"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
        updated = await until(conn, "session.updated")
        assert updated.session.audio.input.turn_detection.silence_duration_ms == 500
        await append(conn, silence(0.3) + speech_24k(SENTENCE) + silence(1.2))
        done = await until(conn, "conversation.item.input_audio_transcription.completed")
        assert word_error_rate(SENTENCE, done.transcript.lower()) <= 0.3, done.transcript
    async with client.realtime.connect(model="grounded-extractive-v1") as conn:
        assert (await conn.recv()).type == "session.created"
        await conn.session.update(session={"type": "realtime", "instructions": "Be brief.",
                                           "audio": {"output": {"voice": "marin"}}})
        await until(conn, "session.updated")
        await speak(conn, QUESTION)
        events = await collect(conn, "response.done", timeout=180)
    kinds = {e.type for e in events}
    assert {"conversation.item.added", "response.output_audio.delta",
            "response.output_audio_transcript.delta", "conversation.item.done"} <= kinds, kinds
    assert not kinds & {"response.audio.delta", "response.audio_transcript.delta"}
    done = events[-1].response
    assert done.status == "completed" and done.output[0].content[0].type == "output_audio"
    assert done.usage.output_tokens > 0


async def test_g711_transcription(edge: EdgeStack, edge_http: httpx.AsyncClient,
                                  edge_account: Account, api_key: str) -> None:
    """G.711 mu-law at 8 kHz (telephony), as Realtime clients send it: the bridge hears what
    Speech's own Recognize hears in the same bytes."""
    import io

    import soundfile

    pcm = np.frombuffer(silence(0.3) + speech_24k(SENTENCE) + silence(1.2), "<i2")
    out = io.BytesIO()
    soundfile.write(out, soxr.resample(pcm, RATE, 8000).astype("<i2"), 8000, format="RAW",
                    subtype="ULAW")
    ulaw = out.getvalue()
    async with connect(edge, api_key, intent="transcription") as conn:
        await until(conn, "transcription_session.created")
        await conn.send({"type": "transcription_session.update",
                         "session": {"input_audio_format": "g711_ulaw"}})
        await until(conn, "transcription_session.updated")
        for i in range(0, len(ulaw), 800):  # 100 ms
            await conn.input_audio_buffer.append(audio=base64.b64encode(ulaw[i:i + 800]).decode())
        done = await until(conn, "conversation.item.input_audio_transcription.completed")
    # The telephone band costs pocketsphinx words (Speech's own mu-law tests ask only for
    # speech), so the reference is Speech itself on the same audio. (Its output once varied
    # from run to run: the test's Piper audio was a new random rendering in every run.)
    native = await edge_http.post("/v1/speech:recognize", headers=edge_account.bearer, json={
        "config": {"encoding": "AUDIO_ENCODING_MULAW", "sampleRateHertz": 8000,
                   "languageCode": "en-US"}, "content": base64.b64encode(ulaw).decode()})
    assert native.status_code == 200, native.text
    reference = " ".join(r["alternatives"][0]["transcript"]
                         for r in native.json().get("results", []))
    assert done.transcript.strip() and reference.strip()
    shared = set(reference.lower().split()) & set(done.transcript.lower().split())
    assert len(shared) >= 2, (reference, done.transcript)


async def test_budget_refusal_is_an_error_event(
    voice: EdgeStack, edge_http: httpx.AsyncClient, edge_account: Account, api_key: str
) -> None:
    """Budgets hold as for native calls: an organization over its cap gets the generation's
    refusal as an error event, and the session goes on."""
    reply = await edge_http.post("/v1/budgets", headers=edge_account.bearer, json={
        "displayName": "cap", "scope": "SCOPE_ORGANIZATION", "monthlyLimitMicros": "1",
        "currencyCode": "USD"})
    assert reply.status_code == 200, reply.text
    async with connect(voice, api_key, model="priced-test") as conn:
        await configure_voice(conn)
        await speak(conn, QUESTION)
        error = await until(conn, "error", timeout=180)
        assert "budget" in error.error.message.lower(), error
        await conn.session.update(session={"voice": "en-us-joe"})
        assert (await until(conn, "session.updated")).session.voice == "en-us-joe"


async def test_manual_turn_push_to_talk(voice: EdgeStack, api_key: str) -> None:
    """turn_detection null: the client commits its audio and asks for the answer."""
    async with connect(voice, api_key) as conn:
        await configure_voice(conn, turn_detection=None)
        await conn.response.create()
        assert (await until(conn, "error")).error.code == "response_create_empty"
        await append(conn, speech_24k(SENTENCE))  # said, then taken back
        await conn.input_audio_buffer.clear()
        await until(conn, "input_audio_buffer.cleared")
        question = speech_24k(QUESTION)
        await append(conn, question)
        await conn.input_audio_buffer.commit()
        committed = await until(conn, "input_audio_buffer.committed")
        await conn.response.create()
        events = await collect(conn, "response.done", timeout=180)
    kinds = [e.type for e in events]
    assert "input_audio_buffer.speech_started" not in kinds  # the client's turns, not VAD's
    heard = next(e for e in events
                 if e.type == "conversation.item.input_audio_transcription.completed")
    assert heard.item_id == committed.item_id
    # ("what is the cap old friends" once: the test's Piper audio was a new random rendering
    # in every run; piper_pcm renders without sampling noise now.)
    assert word_error_rate(QUESTION, heard.transcript.lower()) <= 0.4, heard.transcript
    assert any(e.type == "response.audio.delta" for e in events)
    assert events[-1].response.status == "completed"
    # The committed audio, at OpenAI's 1 token per 100 ms of user audio (a started one counts).
    question_ms = len(question) // 2 * 1000 // RATE
    usage = events[-1].response.usage
    assert usage.input_token_details.audio_tokens == -(-question_ms // 100), usage


async def test_a_refused_voice_is_reported_with_speechs_own_status(voice: EdgeStack,
                                                                  api_key: str) -> None:
    """Speech refuses an unknown voice while the session has audio for the call: the client
    hears Speech's NOT_FOUND every time. (Audio written as the refusal ended the call made
    grpc.aio report INTERNAL "Internal error from Core" instead, in most such sessions: the
    edge now sends audio only once Speech accepted the settings.)"""
    for _ in range(8):
        async with connect(voice, api_key) as conn:
            await configure_voice(conn, voice="no-such-voice")
            # One event of 5 s: the call's first requests are many chunks back to back.
            await conn.input_audio_buffer.append(audio=base64.b64encode(silence(5.0)).decode())
            error = await until(conn, "error", timeout=60)
            assert error.error.code == "not_found" and "no-such-voice" in error.error.message, error


async def test_unknown_voice_is_refused_until_the_session_changes(voice: EdgeStack,
                                                                  api_key: str) -> None:
    async with connect(voice, api_key) as conn:
        await configure_voice(conn, voice="no-such-voice")
        await append(conn, silence(0.2))
        error = await until(conn, "error", timeout=60)
        assert error.error.code == "not_found" and "no-such-voice" in error.error.message, error
        await append(conn, silence(0.2))  # the same settings are not tried again
        again = await until(conn, "error", timeout=60)
        assert again.error.code == "session_refused"
        await conn.session.update(session={"voice": "alloy"})
        await until(conn, "session.updated")
        await append(conn, silence(0.2))
        await conn.session.update(session={"instructions": "Be brief."})
        events = await collect(conn, "session.updated", timeout=60)
        assert not [e for e in events if e.type == "error"], events
