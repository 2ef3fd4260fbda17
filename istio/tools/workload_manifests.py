"""The workload half of istio/base: one ServiceAccount, Service and Deployment per service.

Seven services differ only in name and port, so their manifests are rendered from one
template (here, run by istio/tools/render.py) rather than hand-copied seven times. Hand-written
manifests (gateway, Triton, data stores, namespace) live beside them in istio/base/.
"""

from __future__ import annotations

from typing import Any

from observability_manifests import METRICS_PORT, scrape_annotations
from services.common import mesh_policy
from services.common.config import HTTP_SERVICE_PORTS, SERVICE_PORTS

# gRPC services, then the HTTP edge (services/edge: OpenAI-compatible API behind the gateway).
WORKLOADS: dict[str, int] = {**SERVICE_PORTS, **HTTP_SERVICE_PORTS}

IMAGE = "ghcr.io/aimesh/aimesh"  # one image, `python -m services.<svc>` picks the service
USER_ID = 10001

# Per-service resources: the inference-facing services hold bigger buffers (audio, contexts).
RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    name: {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    for name in WORKLOADS
}
for heavy in ("knowledge", "speech", "orchestrator"):
    RESOURCES[heavy] = {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }


def labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": "aimesh",
        "app.kubernetes.io/component": "service",
    }


def service_account(name: str) -> dict[str, Any]:
    # The ServiceAccount *is* the mesh identity: cluster.local/ns/aimesh/sa/<name>.
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": mesh_policy.NAMESPACE, "labels": labels(name)},
        "automountServiceAccountToken": False,
    }


def service(name: str, port: int) -> dict[str, Any]:
    if name in HTTP_SERVICE_PORTS:
        # HTTP/1.1 (JSON, SSE, multipart, WebSocket): Istio must treat it as HTTP, not gRPC.
        ports = [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP",
                  "appProtocol": "http"}]
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": mesh_policy.NAMESPACE, "labels": labels(name)},
            "spec": {"type": "ClusterIP", "selector": {"app.kubernetes.io/name": name},
                     "ports": ports},
        }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": mesh_policy.NAMESPACE, "labels": labels(name)},
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": name},
            # Named grpc-* *and* appProtocol: Istio must not sniff; it is HTTP/2 gRPC.
            "ports": [
                {
                    "name": "grpc",
                    "port": port,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                }
            ],
        },
    }


def container(name: str, port: int) -> dict[str, Any]:
    """The service's one container: its command, settings, probes and a locked-down runtime."""
    grpc_probe = {"port": port, "service": ""}
    http_probes = _http_probes(port) if name in HTTP_SERVICE_PORTS else {}
    serving_port = http_probes.pop("ports", [{"name": "grpc", "containerPort": port, "protocol": "TCP"}])
    return {
        "name": name,
        "image": f"{IMAGE}:0.1.0",
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", f"services.{name}"],
        "ports": [*serving_port,
                  {"name": "http-metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "env": [
            # Listen on all interfaces in the pod; the sidecar connects over the pod IP.
            {"name": f"AIMESH_{name.upper()}_ADDR", "value": f"0.0.0.0:{port}"},
            # Prometheus endpoint; the sidecar merges it into its own (scrape annotations).
            {"name": f"AIMESH_{name.upper()}_METRICS_ADDR", "value": f"0.0.0.0:{METRICS_PORT}"},
            {"name": "AIMESH_VAR_DIR", "value": "/var/lib/aimesh"},
        ],
        "envFrom": [
            {"configMapRef": {"name": "aimesh-config"}},
            {"secretRef": {"name": "aimesh-secrets", "optional": True}},
        ],
        "resources": RESOURCES[name],
        # gRPC health protocol: overall status ("") is readiness (database and cache answer);
        # "liveness" is SERVING while the event loop runs, so a database outage drains
        # traffic without restarting pods.
        "startupProbe": {
            "grpc": grpc_probe,
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        "readinessProbe": {
            "grpc": grpc_probe,
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "grpc": {"port": port, "service": "liveness"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        # Let Envoy and kube-proxy stop sending before SIGTERM starts the drain.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        **http_probes,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": USER_ID,
            "runAsGroup": USER_ID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "var", "mountPath": "/var/lib/aimesh"},
        ],
    }


def deployment(name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": mesh_policy.NAMESPACE, "labels": labels(name)},
        "spec": {
            "replicas": 2,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": labels(name),
                    "annotations": {
                        # The app dials peers at start; the sidecar must be up first.
                        "proxy.istio.io/config": '{"holdApplicationUntilProxyStarts": true}',
                        **scrape_annotations(METRICS_PORT),
                    },
                },
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": USER_ID,
                        "runAsGroup": USER_ID,
                        "fsGroup": USER_ID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": name}},
                        }
                    ],
                    "containers": [container(name, port)],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                        {"name": "var", "emptyDir": {"sizeLimit": "1Gi"}},
                    ],
                },
            },
        },
    }


def _http_probes(port: int) -> dict[str, Any]:
    """The HTTP edge: /readyz (its gRPC dependencies answer) and /healthz (the loop runs)."""
    ready = {"path": "/readyz", "port": port}
    return {
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "startupProbe": {"httpGet": ready, "periodSeconds": 2, "failureThreshold": 60},
        "readinessProbe": {"httpGet": ready, "periodSeconds": 5, "timeoutSeconds": 2,
                           "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 10,
                          "timeoutSeconds": 2, "failureThreshold": 3},
    }


def documents() -> dict[str, list[dict[str, Any]]]:
    """File name (under istio/base/workloads/) -> its manifests."""
    return {
        f"{name}.yaml": [service_account(name), service(name, port), deployment(name, port)]
        for name, port in WORKLOADS.items()
    }
