"""The OpenAI-compatible HTTP edge: `/openai/v1/...` behind the gateway, calling the gRPC
services.

Why a service of its own: Envoy's JSON transcoder cannot answer one route with JSON or SSE
depending on a body field (`stream`), nor parse multipart uploads, and OpenAI's wire shapes are
not aimesh's protos. So the gateway routes /openai/v1/* here after the same jwt_authn, ext_authz
and rate-limit filters as every other route, and the edge calls Orchestrator, Knowledge and
Speech over gRPC as the `edge` mesh identity, forwarding the caller's x-aimesh-* identity —
budgets, guardrails, caching, fallback and metering happen in those services exactly as for
native calls.

Why FastAPI on uvicorn: Starlette gives streaming responses (SSE), multipart parsing (with
python-multipart) and WebSockets (the Realtime bridge shares this service) on asyncio, so
grpc.aio stubs run in the same loop; FastAPI adds pydantic models, so each OpenAI request and
response shape is written once (services/edge/schemas.py) and serves as validation, encoding and
the OpenAPI document (/openai/v1/openapi.json). All three are widely used, maintained and already
resolved with our pins; uvicorn runs it with mTLS from the local CA (services/edge/server.py).

    app.py        routes: decode, take the caller's identity, call the domain, encode
    chat.py       chat completions <-> Orchestrator.Generate (JSON and SSE, tools)
    embeddings.py embeddings <-> Knowledge.EmbedTexts
    audio.py      transcriptions <-> Speech.Recognize, speech <-> Speech.StreamingSynthesize
    realtime.py   the Realtime WebSocket (/openai/v1/realtime): session, event dispatch
    realtime_events.py            the Realtime wire format (beta events), session config
    realtime_transcription.py     transcription sessions <-> Speech.StreamingRecognize
    realtime_voice.py             voice sessions <-> Speech.Converse
    realtime_ga.py                the GA event names and shapes <-> the beta ones
    errors.py     OpenAI's error shape and status codes from downstream gRPC statuses
    schemas.py    the OpenAI wire models
    server.py     uvicorn, mTLS peer checks (only the gateway reaches /openai/v1)
"""
