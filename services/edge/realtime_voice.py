"""Voice-loop Realtime sessions on Speech's Converse."""

from __future__ import annotations

from typing import Any

from services.edge.realtime_events import Session, unsupported


class VoiceLoop:
    """Not bridged yet: every audio event is refused (use ?intent=transcription)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    async def append(self, audio: bytes) -> None:
        raise unsupported("a voice session (so far; connect with ?intent=transcription)")

    async def commit(self, event_id: str | None) -> None:
        raise unsupported("a voice session (so far; connect with ?intent=transcription)")

    async def clear(self) -> None:
        return None

    async def reconfigure(self) -> None:
        return None

    async def handle(self, kind: str, event: dict[str, Any]) -> None:
        raise unsupported(f"{kind} (so far)", "type", event.get("event_id"))

    def busy(self) -> bool:
        return False

    async def close(self) -> None:
        return None
