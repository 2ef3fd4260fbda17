"""The edge's peer table (services/edge/server.py): a WebSocket connection's verified mesh
identity is forgotten when its socket ends (uvicorn's upgrade never reaches the HTTP
protocol's connection_lost, which forgets plain HTTP connections)."""

from __future__ import annotations

from typing import Any

from services.edge import server


async def test_websocket_peer_entry_is_dropped_when_the_socket_ends() -> None:
    seen: list[str | None] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(server._PEERS.get(("127.0.0.1", 40001)))

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError(f"refused: {message}")

    guard = server.PeerGuard(app, "mtls")
    for kind, path in (("websocket", "/openai/v1/realtime"), ("http", "/openai/v1/models")):
        server._PEERS[("127.0.0.1", 40001)] = "gateway"
        scope = {"type": kind, "path": path, "client": ("127.0.0.1", 40001), "headers": []}
        await guard(scope, None, send)
        remaining = server._PEERS.pop(("127.0.0.1", 40001), None)
        # The socket's one session is over; an HTTP connection may carry more requests.
        assert remaining == (None if kind == "websocket" else "gateway"), kind
    assert seen == ["gateway", "gateway"]
