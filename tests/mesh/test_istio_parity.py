"""The committed Istio policy says exactly what is enforced locally.

AuthorizationPolicies are evaluated here with Istio's documented semantics (DENY first; if
any ALLOW policy selects the workload, a request needs a matching ALLOW rule) and compared,
request by request, with mesh_policy.is_allowed / may_forward_identity, which the local
interceptor uses. VirtualServices are checked against the idempotency in the protos.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common import mesh_policy as mp
from services.common.identity import IDENTITY_HEADERS
from tests.support.istio import mesh_manifests, render

ROOT = Path(__file__).resolve().parents[2]
MESH = ROOT / "istio" / "base" / "mesh"
STRANGER = "stranger"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MESH / name).read_text()) if d]


def test_committed_manifests_are_fresh() -> None:
    for relative, text in render.render().items():
        path = render.BASE / relative
        assert path.exists() and path.read_text() == text, (
            f"{path} is stale: run .venv/bin/python istio/tools/render.py"
        )


def test_render_check_cli_reports_a_stale_file(tmp_path: Path) -> None:
    """`render.py --check` (what CI and reviewers run) fails on a stale copy and names it."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "base"
    shutil.copytree(render.BASE, copy)

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(render.TOOLS_DIR / "render.py"), "--check", "--out", str(copy)],
            capture_output=True, text=True, timeout=60, check=False,
        )

    assert check().returncode == 0, check().stderr
    (copy / "mesh" / "virtual-services.yaml").write_text("# edited by hand\n")
    stale = check()
    assert stale.returncode == 1 and "virtual-services.yaml" in stale.stderr


# --- a small Istio AuthorizationPolicy evaluator (HTTP rules) ---------------------------


def _match_any(patterns: Iterable[str], value: str | None) -> bool:
    return value is not None and any(mp.path_matches(p, value) for p in patterns)


def _source_matches(source: dict[str, Any], principal: str) -> bool:
    if "principals" in source and not _match_any(source["principals"], principal):
        return False
    if "notPrincipals" in source and _match_any(source["notPrincipals"], principal):
        return False
    unknown = set(source) - {"principals", "notPrincipals"}
    assert not unknown, f"evaluator does not model {unknown}"
    return True


def _operation_matches(op: dict[str, Any], path: str) -> bool:
    if "paths" in op and not _match_any(op["paths"], path):
        return False
    if "notPaths" in op and _match_any(op["notPaths"], path):
        return False
    unknown = set(op) - {"paths", "notPaths"}
    assert not unknown, f"evaluator does not model {unknown}"
    return True


def _when_matches(cond: dict[str, Any], headers: dict[str, str]) -> bool:
    key = cond["key"]
    assert key.startswith("request.headers[") and key.endswith("]"), key
    return _match_any(cond["values"], headers.get(key[len("request.headers[") : -1]))


def _rule_matches(rule: dict[str, Any], principal: str, path: str, headers: dict[str, str]) -> bool:
    if "from" in rule and not any(_source_matches(f["source"], principal) for f in rule["from"]):
        return False
    if "to" in rule and not any(_operation_matches(t["operation"], path) for t in rule["to"]):
        return False
    return all(_when_matches(c, headers) for c in rule.get("when", []))


def _selects(policy: dict[str, Any], workload: str) -> bool:
    selector = policy["spec"].get("selector")
    return selector is None or selector["matchLabels"] == {"app.kubernetes.io/name": workload}


def istio_allows(
    policies: list[dict[str, Any]],
    workload: str,
    principal: str,
    path: str,
    headers: dict[str, str],
) -> bool:
    mine = [p for p in policies if _selects(p, workload)]
    for p in mine:
        if p["spec"].get("action") == "DENY" and any(
            _rule_matches(r, principal, path, headers) for r in p["spec"].get("rules", [])
        ):
            return False
    allows = [p for p in mine if p["spec"].get("action", "ALLOW") == "ALLOW"]
    if not allows:
        return True
    return any(
        _rule_matches(r, principal, path, headers)
        for p in allows
        for r in p["spec"].get("rules", [])
    )


def _method_universe() -> list[str]:
    paths = set(mp.load_methods()) | set(mesh_manifests.COMMON_METHODS)
    for callee in mp.POLICY:
        for rule in mp.rules_for(callee):
            paths.update(p.replace("*", "Anything") for p in (*rule.methods, *rule.not_methods))
        for svc in mp.GRPC_SERVICES[callee]:
            paths.add(f"/{svc}/NotYetInTheProtos")
    paths.update(["/inference.GRPCInferenceService/ModelInfer", "/x.Unknown/Call"])
    return sorted(paths)


def test_authorization_policies_equal_local_graph() -> None:
    policies = _docs("authorization-policies.yaml") + [
        d for d in _docs("peer-authentication.yaml") if d["kind"] == "AuthorizationPolicy"
    ]
    callees = [*mp.POLICY, mp.TRITON]
    checked = 0
    mismatches = []
    for callee, identity, path, header in itertools.product(
        callees, (*mp.IDENTITIES, STRANGER), _method_universe(), (None, *IDENTITY_HEADERS)
    ):
        with_header = header is not None
        principal = (
            f"cluster.local/ns/{mp.NAMESPACE}/sa/{identity}"
            if identity != STRANGER
            else "cluster.local/ns/other/sa/stranger"
        )
        headers = {header: "value"} if header else {}
        local = mp.is_allowed(callee, identity, path) and (
            not with_header
            or callee == mp.TRITON
            or mp.may_present(callee, identity, path, header)
        )
        if istio_allows(policies, callee, principal, path, headers) != local:
            mismatches.append((callee, identity, path, header, local))
        checked += 1
    assert not mismatches, mismatches[:20]
    assert checked > 1000


def test_evaluator_sees_a_tampered_policy() -> None:
    """The parity check can fail: widen one rule and it must notice."""
    policies = _docs("authorization-policies.yaml")
    for p in policies:
        if p["metadata"]["name"] == "orchestrator-callers":
            p["spec"]["rules"][0]["from"][0]["source"]["principals"].append(
                "cluster.local/ns/aimesh/sa/knowledge"
            )
    generate = "/aimesh.orchestrator.v1.OrchestratorService/Generate"
    assert istio_allows(
        policies, "orchestrator", "cluster.local/ns/aimesh/sa/knowledge", generate, {}
    )
    assert not mp.is_allowed("orchestrator", "knowledge", generate)


def test_every_workload_has_policies_and_baseline_denies() -> None:
    names = {d["metadata"]["name"] for d in _docs("authorization-policies.yaml")}
    assert "allow-nothing" in names
    for callee in mp.POLICY:
        assert {f"{callee}-callers", f"{callee}-identity-headers"} <= names


# --- traffic policy -------------------------------------------------------------------------


def test_peer_authentication_strict_mesh_wide() -> None:
    docs = _docs("peer-authentication.yaml")
    root = [
        d
        for d in docs
        if d["kind"] == "PeerAuthentication" and d["metadata"]["namespace"] == "istio-system"
    ]
    assert root and root[0]["metadata"]["name"] == "default"
    assert "selector" not in root[0]["spec"] and root[0]["spec"]["mtls"]["mode"] == "STRICT"
    for d in docs:
        if d["kind"] == "PeerAuthentication":
            assert d["spec"]["mtls"]["mode"] == "STRICT"


def test_destination_rules() -> None:
    hosts = set()
    for d in _docs("destination-rules.yaml"):
        tp = d["spec"]["trafficPolicy"]
        assert tp["tls"]["mode"] == "ISTIO_MUTUAL"
        assert tp["outlierDetection"]["consecutiveGatewayErrors"] > 0
        assert tp["connectionPool"]["http"]["http2MaxRequests"] > 0
        hosts.add(d["spec"]["host"])
    assert hosts == {mesh_manifests.host(c) for c in (*mp.POLICY, mp.TRITON)}


def test_virtual_service_retries_follow_idempotency() -> None:
    methods = mp.load_methods()
    if not methods:
        pytest.skip(f"{mp.DESCRIPTOR_PATH} missing: run scripts/gen")
    known = {**methods, **mesh_manifests.COMMON_METHODS}
    covered: set[str] = set()
    for vs in _docs("virtual-services.yaml"):
        routes = vs["spec"]["http"]
        assert "match" not in routes[-1], "last route must be the catch-all"
        assert routes[-1]["retries"]["attempts"] == 0, "Istio's default retries replay writes"
        for route in routes:
            retries = route.get("retries", {})
            paths = [m["uri"]["exact"] for m in route.get("match", [])]
            covered.update(paths)
            if retries.get("attempts", 0) > 0:
                assert "resource-exhausted" not in retries["retryOn"]
                assert set(retries["retryOn"].split(",")) == {"unavailable"}
                for p in paths:
                    assert known[p].idempotent, f"{p} is retried but not idempotent"
            for p in paths:
                if p in known and not known[p].unary:
                    assert "timeout" not in route, f"{p} is a stream but has a route timeout"
                    assert "perTryTimeout" not in retries, f"{p} stream has perTryTimeout"
    for path, info in methods.items():
        if info.service.startswith("aimesh.") and (info.idempotent or not info.unary):
            assert path in covered, f"{path} has no explicit route"
