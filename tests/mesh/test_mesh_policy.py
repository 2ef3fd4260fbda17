"""The caller graph (mesh_policy) and the retry policy derived from the protos."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from services.common import mesh_policy as mp
from tests.support.istio import mesh_manifests

ORCH = "/aimesh.orchestrator.v1.OrchestratorService/"
USAGE = "/aimesh.usage.v1.UsageService/"
STRANGER = "stranger"


def test_orchestrator_is_public_and_called_by_its_user_facing_services() -> None:
    # Public: the model catalog and stateless Generate through the gateway (issue 13); the
    # services that generate for their users; nobody else (Knowledge, Usage, ...).
    for identity in (*mp.IDENTITIES, STRANGER):
        expected = identity in ("gateway", "conversation", "speech", "edge")
        for method in ("Generate", "ListModels", "GetModel"):
            assert mp.is_allowed("orchestrator", identity, ORCH + method) is expected, identity


def test_edge_takes_only_the_gateway_on_its_public_prefix() -> None:
    assert mp.edge_allows("gateway", "/openai/v1/chat/completions")
    assert not mp.edge_allows("gateway", "/v1/models")
    for identity in (*mp.IDENTITIES, STRANGER):
        if identity != "gateway":
            assert not mp.edge_allows(identity, "/openai/v1/models"), identity
        assert mp.edge_allows(identity, "/readyz") is (identity != STRANGER)


def test_usage_accounting_only_from_services() -> None:
    for method in mp.USAGE_ACCOUNTING:
        assert not mp.is_allowed("usage", "gateway", method)
        assert not mp.is_allowed("usage", "operator", method)
        for svc in ("orchestrator", "speech", "knowledge", "billing"):
            assert mp.is_allowed("usage", svc, method), (svc, method)
    assert mp.is_allowed("usage", "billing", mp.USAGE_SET_RATE_LIMIT)
    for identity in ("gateway", "orchestrator", "speech", "knowledge", "operator"):
        assert not mp.is_allowed("usage", identity, mp.USAGE_SET_RATE_LIMIT), identity
    # The public part of Usage stays reachable through the gateway.
    assert mp.is_allowed("usage", "gateway", USAGE + "GetUsageSummary")


def test_gateway_envoy_callbacks() -> None:
    assert mp.is_allowed("auth", "gateway", mp.EXT_AUTHZ_CHECK)
    assert mp.is_allowed("usage", "gateway", mp.RATE_LIMIT)
    assert not mp.is_allowed("usage", "speech", mp.RATE_LIMIT)
    # Services ask Check about the API keys the gateway sends them (services/common/
    # gateway_keys.py); the edge and operators do not.
    for service in mp.SERVICES:
        assert mp.is_allowed("auth", service, mp.EXT_AUTHZ_CHECK), service
        assert not mp.may_forward_identity("auth", service, mp.EXT_AUTHZ_CHECK), service
    for identity in (mp.EDGE, mp.OPERATOR):
        assert not mp.is_allowed("auth", identity, mp.EXT_AUTHZ_CHECK), identity
    # ext_authz carries no end-user identity headers: the gateway strips them first.
    assert not mp.may_forward_identity("auth", "gateway", mp.EXT_AUTHZ_CHECK)


def test_edges_from_design() -> None:
    allowed = {
        ("knowledge", "orchestrator", "/aimesh.knowledge.v1.KnowledgeService/SearchDocuments"),
        ("conversation", "speech", "/aimesh.conversation.v1.ConversationService/SendMessage"),
        ("orchestrator", "speech", ORCH + "Generate"),
        ("usage", "knowledge", USAGE + "RecordUsage"),
    }
    for callee, caller, method in allowed:
        assert mp.is_allowed(callee, caller, method), (callee, caller, method)
    denied = {
        ("knowledge", "orchestrator", "/aimesh.knowledge.v1.KnowledgeService/DeleteDocument"),
        ("conversation", "orchestrator", "/aimesh.conversation.v1.ConversationService/SendMessage"),
        ("auth", "billing", "/aimesh.auth.v1.AuthService/GetOrganization"),
        ("billing", "usage", "/aimesh.billing.v1.BillingService/ListPlans"),
        ("nonexistent", "gateway", "/x.Y/Z"),
        ("auth", "gateway", "/aimesh.auth.v1.AuthServiceX/Login"),  # prefix must end at "/"
    }
    for callee, caller, method in denied:
        assert not mp.is_allowed(callee, caller, method), (callee, caller, method)


def test_health_for_all_reflection_for_operator() -> None:
    for callee in mp.POLICY:
        for identity in mp.IDENTITIES:
            assert mp.is_allowed(callee, identity, "/grpc.health.v1.Health/Check")
        assert not mp.is_allowed(callee, STRANGER, "/grpc.health.v1.Health/Check")
        reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        assert mp.is_allowed(callee, "operator", reflection)
        assert not mp.is_allowed(callee, "gateway", reflection)


def test_path_matches_is_istio_semantics() -> None:
    assert mp.path_matches("*", "/a.B/C") and not mp.path_matches("*", "")
    assert mp.path_matches("/a.B/*", "/a.B/C") and not mp.path_matches("/a.B/*", "/a.BC/D")
    assert mp.path_matches("*/C", "/a.B/C") and not mp.path_matches("*/C", "/a.B/CD")
    assert mp.path_matches("/a.B/C", "/a.B/C") and not mp.path_matches("/a.B/C", "/a.B/Cx")


def test_spiffe_ids() -> None:
    assert mp.spiffe_id("usage") == "spiffe://aimesh.local/ns/aimesh/sa/usage"
    assert mesh_manifests.istio_principal("gateway") == "cluster.local/ns/aimesh/sa/gateway"
    assert mp.identity_from_spiffe("spiffe://aimesh.local/ns/aimesh/sa/speech") == "speech"
    assert mp.identity_from_spiffe("spiffe://other.domain/ns/aimesh/sa/speech") is None
    assert mp.identity_from_spiffe("spiffe://aimesh.local/ns/other/sa/speech") is None
    assert mp.identity_from_spiffe("spiffe://aimesh.local/ns/aimesh/sa/nobody") is None
    with pytest.raises(ValueError):
        mp.spiffe_id("nobody")


def _descriptor_methods() -> dict[str, mp.MethodInfo]:
    methods = mp.load_methods()
    if not methods:
        pytest.skip(f"{mp.DESCRIPTOR_PATH} missing: run scripts/gen")
    return methods


def test_policy_names_only_methods_that_exist() -> None:
    """A renamed RPC must not silently fall out of (or into) the graph."""
    methods = _descriptor_methods()
    services = {m.service for m in methods.values()}
    for callee in mp.POLICY:
        for svc in mp.GRPC_SERVICES[callee]:
            assert svc in services, f"{svc} not in the descriptor"
        for rule in mp.rules_for(callee):
            for pattern in (*rule.methods, *rule.not_methods):
                svc = pattern[1:].split("/", 1)[0]
                if svc not in mp.GRPC_SERVICES[callee]:
                    continue  # health, reflection
                if pattern.endswith("/*"):
                    continue
                assert pattern in methods, f"{callee}: {pattern} is not an RPC"


def test_idempotent_methods_come_from_the_protos() -> None:
    methods = _descriptor_methods()
    idem = set(mp.idempotent_methods())
    assert idem and idem <= set(methods)
    for path, info in methods.items():
        assert (path in idem) is info.idempotent
    # Reads are idempotent, request_id-deduped writes are not.
    assert "/aimesh.orchestrator.v1.OrchestratorService/ListModels" in idem
    assert "/aimesh.usage.v1.UsageService/ReserveBudget" not in idem


def test_client_service_config_retries_only_idempotent() -> None:
    methods = _descriptor_methods()
    for callee in mp.POLICY:
        config = mp.client_service_config(callee, methods)
        json.dumps(config)
        for entry in config["methodConfig"]:
            (name,) = entry["name"]
            info = methods[f"/{name['service']}/{name['method']}"]
            if "retryPolicy" in entry:
                assert info.idempotent
                assert entry["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
            else:
                assert not info.idempotent
            assert entry.get("waitForReady", False) is info.idempotent
            assert ("timeout" in entry) is info.unary
        listed = {
            f"/{e['name'][0]['service']}/{e['name'][0]['method']}"
            for e in config["methodConfig"]
            if "retryPolicy" in e
        }
        expected = {
            p for p, m in methods.items() if m.idempotent and m.service in mp.GRPC_SERVICES[callee]
        }
        assert listed == expected


# --- the policy in action: a server that fails once, as a killed replica would -----------

GET = "GetUsageSummary"  # NO_SIDE_EFFECTS in the protos
RESERVE = "ReserveBudget"  # retry-unsafe: request_id dedupe, never retried transparently


@pytest.fixture()
async def flaky_usage() -> AsyncIterator[tuple[int, dict[str, int]]]:
    calls: dict[str, int] = {GET: 0, RESERVE: 0}

    def handler(method: str) -> grpc.RpcMethodHandler:
        async def run(
            request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
        ) -> health_pb2.HealthCheckResponse:
            calls[method] += 1
            if calls[method] == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "replica going away")
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

        return grpc.unary_unary_rpc_method_handler(
            run,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        )

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "aimesh.usage.v1.UsageService", {GET: handler(GET), RESERVE: handler(RESERVE)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port, calls
    await server.stop(None)


async def test_idempotent_retried_non_idempotent_not(
    flaky_usage: tuple[int, dict[str, int]],
) -> None:
    _descriptor_methods()
    port, calls = flaky_usage
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=mp.client_channel_options("usage")
    ) as channel:

        def stub(method: str) -> grpc.aio.UnaryUnaryMultiCallable:
            return channel.unary_unary(
                f"/aimesh.usage.v1.UsageService/{method}",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )

        reply = await stub(GET)(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert calls[GET] == 2  # failed once, retried once
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub(RESERVE)(health_pb2.HealthCheckRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert calls[RESERVE] == 1  # never replayed: the caller decides, with its request_id


def test_no_client_retries_behind_the_sidecar() -> None:
    methods = _descriptor_methods()
    config = mp.client_service_config("usage", methods, retries=False)
    assert config["methodConfig"] and all("retryPolicy" not in e for e in config["methodConfig"])
