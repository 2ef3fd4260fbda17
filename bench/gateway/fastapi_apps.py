"""The comparison path of bench.gateway: the common Python gateway design.

`gateway`: FastAPI app that strips client identity headers, checks the API key and counts the
same per-org and per-key limits with Auth's ext_authz Check (one gRPC hop, as for Envoy; over
the mesh's channels as the `gateway` identity: mTLS when the stack runs mTLS, like Envoy's
upstreams), then forwards with httpx to `backend`.
`backend`: FastAPI JSON endpoint equivalent to AuthService.GetOrganization (the same primary-key
SELECT). It reads auth.organizations only because this is a benchmark stand-in for Auth's own
endpoint; no service does this.

Run by bench.gateway under uvicorn (as many workers as Envoy's --concurrency); configured by
the stack's AIMESH_* settings and the BENCH_* variables it sets.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from envoy_api.service.auth.v3 import (
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from services.common.channels import open_channel
from services.common.config import Settings

_state: dict[str, Any] = {}


@asynccontextmanager
async def _backend_life(app: FastAPI) -> AsyncIterator[None]:
    pool = AsyncConnectionPool(os.environ["BENCH_DATABASE_URL"], min_size=4, max_size=10,
                               kwargs={"row_factory": dict_row}, open=False)
    await pool.open()
    _state["pool"] = pool
    yield
    await pool.close()


backend = FastAPI(lifespan=_backend_life)


@backend.get("/healthz")
async def backend_health() -> dict[str, str]:
    return {"status": "ok"}


@backend.get("/v1/organizations/{org_id}")
async def get_organization(org_id: str, request: Request) -> Response:
    if request.headers.get("x-aimesh-org") != org_id:
        return JSONResponse({"code": 5, "message": "organization not found"}, status_code=404)
    async with _state["pool"].connection() as conn:
        row = await (await conn.execute(
            "SELECT id, display_name, create_time, update_time FROM auth.organizations "
            "WHERE id = %s", (org_id,))).fetchone()
    if row is None:
        return JSONResponse({"code": 5, "message": "organization not found"}, status_code=404)
    return JSONResponse({"name": f"organizations/{row['id']}", "displayName": row["display_name"],
                         "createTime": row["create_time"].isoformat(),
                         "updateTime": row["update_time"].isoformat()})


@asynccontextmanager
async def _gateway_life(app: FastAPI) -> AsyncIterator[None]:
    settings = Settings.from_env(os.environ)
    auth = open_channel(settings, "auth", caller="gateway")
    _state["check"] = external_auth_pb2_grpc.AuthorizationStub(auth)
    _state["http"] = httpx.AsyncClient(base_url=os.environ["BENCH_BACKEND_URL"], timeout=10,
                                       limits=httpx.Limits(max_connections=64,
                                                           max_keepalive_connections=64))
    yield
    await _state["http"].aclose()
    await auth.close()


gateway = FastAPI(lifespan=_gateway_life)


@gateway.get("/healthz")
async def gateway_health() -> dict[str, str]:
    return {"status": "ok"}


@gateway.get("/v1/{path:path}")
async def proxy(path: str, request: Request) -> Response:
    headers = {k: v for k, v in request.headers.items() if not k.startswith("x-aimesh-")}
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        method="GET", path="/aimesh.auth.v1.AuthService/GetOrganization", headers=headers)
    decision = await _state["check"].Check(external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http))), timeout=2)
    if decision.status.code != 0:  # bad key, or over the rate limit (429)
        return Response(decision.denied_response.body, media_type="application/json",
                        status_code=decision.denied_response.status.code or 403)
    for option in decision.ok_response.headers:
        headers[option.header.key] = option.header.value
    for name in decision.ok_response.headers_to_remove:
        headers.pop(name, None)
    headers.pop("host", None)
    upstream = await _state["http"].get(f"/v1/{path}", headers=headers)
    return Response(upstream.content, status_code=upstream.status_code,
                    media_type=upstream.headers.get("content-type"))
