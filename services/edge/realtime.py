"""The OpenAI Realtime WebSocket bridge: `GET /openai/v1/realtime?model=...` (upgraded by the
gateway after the same jwt_authn, ext_authz and rate-limit filters as every edge route; the API
key comes in `Authorization: Bearer` or, from browsers, in the `openai-insecure-api-key.<key>`
subprotocol, which Auth's Check reads and strips).

Both vocabularies of the `openai` package are spoken, chosen per connection: beta
(`client.beta.realtime`, header `OpenAI-Beta: realtime=v1` or subprotocol
`openai-beta.realtime-v1`) and otherwise GA (`client.realtime`; realtime_ga.py translates).

A session is a voice loop bridged to Speech's Converse (realtime_voice.py), or with
`?intent=transcription` a transcription-only session bridged to StreamingRecognize
(realtime_transcription.py). Audio stays in the client's format on the way in (Speech takes
pcm16 at 24 kHz and G.711 at 8 kHz itself and resamples with soxr); answers come back at the
rate the client asked for. Limits, metering and budgets are those of the underlying RPCs,
called with the caller's identity. Bad events get an `error` event and the session goes on;
a session idle for AIMESH_REALTIME_IDLE_SECONDS is closed (1000, "idle timeout").
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from services.common.config import Settings
from services.common.identity import Identity, identity_from_metadata
from services.edge.realtime_events import (
    EventError,
    ServerEvents,
    SessionConfig,
    apply_session,
    decode_audio,
    field_of,
    parse_event,
    unsupported,
)
from services.edge.realtime_ga import from_ga, is_beta, to_ga
from services.edge.realtime_transcription import Transcriber
from services.edge.realtime_voice import VoiceLoop

log = logging.getLogger("aimesh.edge.realtime")

PATH = "/openai/v1/realtime"
SUBPROTOCOL = "realtime"  # what browsers offer beside the key; echoed when offered


class Bridge(Protocol):
    """What a session's audio goes to (StreamingRecognize or Converse)."""

    async def append(self, audio: bytes) -> None: ...
    async def commit(self, event_id: str | None) -> None: ...
    async def clear(self) -> None: ...
    def check(self, config: SessionConfig, event_id: str | None) -> None: ...
    async def reconfigure(self) -> None: ...
    async def handle(self, kind: str, event: dict[str, Any]) -> None: ...
    def busy(self) -> bool: ...
    async def close(self) -> None: ...


class RealtimeSession:
    """One WebSocket: reads client events, sends server events, owns the bridge."""

    def __init__(self, ws: WebSocket, identity: Identity, settings: Settings,
                 channels: Any) -> None:
        self.ws = ws
        self.identity = identity
        self.settings = settings
        self.channels = channels
        self.events = ServerEvents()
        params = ws.query_params
        self.config = SessionConfig(
            model=params.get("model", ""),
            transcription_only=params.get("intent") == "transcription",
            transcription_model=("pocketsphinx-en-us" if params.get("intent") == "transcription"
                                 else None))
        self.beta = is_beta(ws.headers, ws.scope.get("subprotocols") or [])
        self._send_lock = asyncio.Lock()
        self.last_activity = asyncio.get_running_loop().time()  # of the last event either way
        self.open = True
        self.bridge: Bridge = self._bridge()

    def _bridge(self) -> Bridge:
        return Transcriber(self) if self.config.transcription_only else VoiceLoop(self)

    @property
    def metadata(self) -> list[tuple[str, str]]:
        headers = self.identity.to_headers()
        request_id = self.ws.headers.get("x-request-id")
        if request_id:
            headers.append(("x-request-id", request_id))
        return headers

    async def send(self, kind: str, **fields: Any) -> None:
        await self.send_event(self.events.event(kind, **fields))

    async def send_event(self, event: dict[str, Any]) -> None:
        if not self.open:
            return
        events = [event] if self.beta else to_ga(event, self.config)
        self.last_activity = asyncio.get_running_loop().time()
        async with self._send_lock:
            try:
                for each in events:
                    await self.ws.send_text(json.dumps(each))
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.open = False

    async def error(self, exc: EventError) -> None:
        await self.send_event(self.events.error(exc))

    async def run(self) -> None:
        await self.send_event(self.events.session(self.config, "created"))
        try:
            while self.open:
                message = await self._receive()
                if message is None:
                    break
                try:
                    event = parse_event(message)
                    if not self.beta:
                        event = from_ga(event, self.config.transcription_only)
                    await self.dispatch(event)
                except EventError as exc:
                    await self.error(exc)
        finally:
            self.open = False
            await self.bridge.close()

    async def _receive(self) -> str | bytes | None:
        """The next client message; None when the client left or the session idled out (no
        event either way for realtime_idle_seconds, and no turn under way)."""
        idle = self.settings.realtime_idle_seconds
        loop = asyncio.get_running_loop()
        while True:
            wait = max(0.05, self.last_activity + idle - loop.time())
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout=wait)
            except TimeoutError:
                if self.bridge.busy():
                    self.last_activity = loop.time()
                if loop.time() - self.last_activity < idle:
                    continue
                await self.close(1000, "idle timeout")
                return None
            self.last_activity = loop.time()
            if message["type"] == "websocket.disconnect":
                return None
            data = message.get("text")
            return data if data is not None else message.get("bytes") or b""

    async def close(self, code: int, reason: str) -> None:
        self.open = False
        if self.ws.application_state == WebSocketState.CONNECTED:
            async with self._send_lock:
                try:
                    await self.ws.close(code, reason)
                except (WebSocketDisconnect, RuntimeError, OSError):
                    pass

    async def dispatch(self, event: dict[str, Any]) -> None:
        kind: str = event["type"]
        event_id = event.get("event_id")
        if kind in ("session.update", "transcription_session.update"):
            await self._update(kind, event)
        elif kind == "input_audio_buffer.append":
            await self.bridge.append(decode_audio(event, self.config.input_audio_format))
        elif kind == "input_audio_buffer.commit":
            await self.bridge.commit(event_id)
        elif kind == "input_audio_buffer.clear":
            await self.bridge.clear()
            await self.send("input_audio_buffer.cleared")
        elif kind == "conversation.item.create":
            await self._create_item(event)
        else:
            await self.bridge.handle(kind, event)

    async def _update(self, kind: str, event: dict[str, Any]) -> None:
        event_id = event.get("event_id")
        wanted = "transcription_session.update" if self.config.transcription_only \
            else "session.update"
        if kind != wanted:
            raise EventError(f"{kind} is not valid in this session; send {wanted} (a "
                             "transcription session is opened with ?intent=transcription)",
                             "invalid_event_type", "type", event_id)
        session = field_of(event, "session", dict)
        before = self.config
        config = apply_session(self.config, session, event_id)
        if config.transcription_only and config.transcription_model is None:
            raise EventError("a transcription session needs input_audio_transcription",
                             "invalid_value", "session.input_audio_transcription", event_id)
        self.bridge.check(config, event_id)
        self.config = config
        if self.config != before:
            await self.bridge.reconfigure()
        await self.send_event(self.events.session(self.config, "updated"))

    async def _create_item(self, event: dict[str, Any]) -> None:
        item = field_of(event, "item", dict)
        contents = item.get("content") if isinstance(item.get("content"), list) else []
        kinds = sorted({str(c.get("type")) for c in contents if isinstance(c, dict)})
        if item.get("type") in ("function_call", "function_call_output"):
            raise unsupported("function calls", "item.type", event.get("event_id"))
        if "input_image" in kinds:
            raise unsupported("image input", "item.content", event.get("event_id"))
        raise unsupported(f"conversation items from the client ({', '.join(kinds) or 'empty'}"
                          "; speak instead)", "item", event.get("event_id"))


def chosen_subprotocol(ws: WebSocket) -> str | None:
    offered = ws.scope.get("subprotocols") or []
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


router = APIRouter()


@router.websocket(PATH)
async def realtime(ws: WebSocket) -> None:
    identity = identity_from_metadata(ws.headers.items())
    if identity is None:  # only the gateway reaches the edge, and it authenticates
        await ws.close(1008, "no caller identity: connect through the gateway")
        return
    await ws.accept(subprotocol=chosen_subprotocol(ws))
    backends = ws.app.state.backends
    session = RealtimeSession(ws, identity, backends.settings, backends.channels)
    try:
        await session.run()
    except Exception:
        log.exception("realtime session failed")
        await session.close(1011, "internal error")
    else:
        await session.close(1000, "")
