"""The edge skeleton and the public model catalog: /openai/v1/models through the gateway with
the official `openai` client, the same catalog as JSON (/v1/models) and gRPC through Envoy,
and OpenAI-shaped errors for a bad key, an unknown model and an unknown path."""

from __future__ import annotations

import grpc
import httpx
import openai
import pytest
from aimesh.orchestrator.v1 import orchestrator_pb2 as opb
from aimesh.orchestrator.v1 import orchestrator_pb2_grpc

from tests.integration.edge.conftest import DEFAULT_MODEL, EdgeStack
from tests.support.accounts import Account, create_key


async def test_models_list_and_get_with_the_official_client(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    ids = [m.id for m in page.data]
    assert DEFAULT_MODEL in ids
    assert all(m.object == "model" for m in page.data)
    model = await client.models.retrieve(DEFAULT_MODEL)
    assert model.id == DEFAULT_MODEL and model.owned_by == "triton"


async def test_unknown_model_is_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("no-such-model")
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]


async def test_bad_key_is_authentication_error(edge: EdgeStack) -> None:
    async with openai.AsyncOpenAI(base_url=edge.openai_base, api_key="amk_bad_key",
                                  max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            await bad.models.list()
    assert caught.value.status_code == 401
    # Auth's refusal in OpenAI's error shape on the OpenAI prefix.
    assert caught.value.body["type"] == "authentication_error"  # type: ignore[index]
    assert caught.value.code == "api_key_invalid" and "API key" in caught.value.message


async def test_scoped_keys_follow_the_methods_they_reach(
    edge: EdgeStack, edge_http: httpx.AsyncClient, edge_account: Account
) -> None:
    """An API key scoped to `speech` may use /audio but not chat; `inference` the reverse."""
    speech_only = (await create_key(edge_http, edge_account, scopes=["speech"]))["secret"]
    inference = (await create_key(edge_http, edge_account, scopes=["inference"]))["secret"]
    async with openai.AsyncOpenAI(base_url=edge.openai_base, api_key=speech_only, max_retries=0) as oa:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await oa.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}])
        assert caught.value.code == "scope_required"
        with pytest.raises(openai.PermissionDeniedError):
            await oa.models.list()
    async with openai.AsyncOpenAI(base_url=edge.openai_base, api_key=inference, max_retries=0) as oa:
        assert (await oa.models.list()).data
        with pytest.raises(openai.PermissionDeniedError):
            await oa.embeddings.create(model="all-minilm-l6-v2", input="hi")


async def test_unknown_path_is_an_openai_404(edge_http: httpx.AsyncClient, api_key: str) -> None:
    reply = await edge_http.get("/openai/v1/no/such/thing",
                                headers={"authorization": f"Bearer {api_key}"})
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "unknown_url"


async def test_client_identity_headers_are_not_trusted(edge_http: httpx.AsyncClient) -> None:
    # x-aimesh-* sent by a client are stripped by the gateway before authentication.
    reply = await edge_http.get("/openai/v1/models", headers={
        "x-aimesh-org": "o_someone_else", "x-aimesh-subject": "users/u_x", "x-aimesh-roles": "owner"})
    assert reply.status_code == 401


async def test_catalog_is_public_as_json_and_grpc(
    edge_http: httpx.AsyncClient, edge: EdgeStack, edge_account: Account, api_key: str
) -> None:
    """Issue 13 item 2: ListModels/GetModel (and Generate) are public through the gateway."""
    reply = await edge_http.get("/v1/models", headers={"authorization": f"Bearer {api_key}"})
    assert reply.status_code == 200, reply.text
    assert f"models/{DEFAULT_MODEL}" in [m["name"] for m in reply.json()["models"]]
    async with grpc.aio.insecure_channel(edge.base_url.removeprefix("http://")) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        model = await stub.GetModel(opb.GetModelRequest(name=f"models/{DEFAULT_MODEL}"),
                                    metadata=[("authorization", f"Bearer {api_key}")], timeout=10)
        assert model.name == f"models/{DEFAULT_MODEL}"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListModels(opb.ListModelsRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_edge_refuses_peers_other_than_the_gateway(edge: EdgeStack) -> None:
    """The edge trusts identity headers only because only the gateway reaches it: another mesh
    identity (here Knowledge's certificate) is refused, a client without a certificate too."""
    import ssl

    from services.common import tls

    settings = edge.stack.settings
    if settings.tls_mode != "mtls":
        pytest.skip("peer checks need AIMESH_TEST_TLS_MODE=mtls (the default)")
    paths = tls.CertPaths(settings.certs_path)
    context = ssl.create_default_context(cafile=str(paths.ca_cert))
    context.check_hostname = False
    context.load_cert_chain(paths.cert("knowledge"), paths.key("knowledge"))
    url = f"https://{settings.address_of('edge')}"
    headers = {"x-aimesh-org": "o_x", "x-aimesh-subject": "users/u_x"}
    async with httpx.AsyncClient(verify=context) as as_knowledge:
        reply = await as_knowledge.get(f"{url}/openai/v1/models", headers=headers)
        assert reply.status_code == 403
        assert (await as_knowledge.get(f"{url}/readyz")).status_code == 200
    bare = ssl.create_default_context(cafile=str(paths.ca_cert))
    bare.check_hostname = False
    async with httpx.AsyncClient(verify=bare) as anonymous:
        with pytest.raises(httpx.HTTPError):
            await anonymous.get(f"{url}/openai/v1/models", headers=headers)
