"""The observability half of istio/base: Prometheus and Grafana in the aimesh namespace, loaded
with the same rules (observability/prometheus/rules) and dashboards (observability/grafana)
that the local stack and its tests use, so what is checked here is what runs there.

Targets are found by the standard pod annotations (`prometheus.io/scrape|port|path`) that the
workload manifests, the gateway and Triton carry. Under Istio, the sidecar injector rewrites
those annotations to its merged-metrics port (15020), so Prometheus scrapes plain HTTP without
joining the mesh; its own pod and Grafana's run without sidecars.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from services.common import mesh_policy

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "observability" / "prometheus" / "rules"
DASHBOARDS_DIR = ROOT / "observability" / "grafana" / "dashboards"
NAMESPACE = mesh_policy.NAMESPACE
PROMETHEUS_IMAGE = "prom/prometheus:v2.53.2"
GRAFANA_IMAGE = "grafana/grafana:11.2.0"
USER_ID = 65534

# Where each service serves /metrics inside its pod (AIMESH_<SVC>_METRICS_ADDR).
METRICS_PORT = 9464


def scrape_annotations(port: int, path: str = "/metrics") -> dict[str, str]:
    """The pod annotations this Prometheus discovers targets by."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
            "prometheus.io/path": path}


def _meta(name: str) -> dict[str, Any]:
    return {"name": name, "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "aimesh",
                       "app.kubernetes.io/component": "observability"}}


def _prometheus_config() -> str:
    relabel = [
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
         "action": "keep", "regex": "true"},
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
         "action": "replace", "target_label": "__metrics_path__", "regex": "(.+)"},
        {"source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
         "action": "replace", "regex": "([^:]+)(?::\\d+)?;(\\d+)", "replacement": "$1:$2",
         "target_label": "__address__"},
        # The same `service` label the local stack's targets carry (dashboards group by it).
        {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
         "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    ]
    config = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": ["/etc/prometheus/rules/*.yml"],
        "scrape_configs": [{
            "job_name": "aimesh",
            "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [NAMESPACE]}}],
            "relabel_configs": relabel,
        }],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "privileged": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def _deployment(name: str, image: str, args: list[str], port: int, volumes: list[dict[str, Any]],
                mounts: list[dict[str, Any]], probe_path: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": _meta(name)["labels"],
                             "annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": {
                    "serviceAccountName": name,
                    # Prometheus lists pods (its Role); nothing else needs the API.
                    "automountServiceAccountToken": name == "prometheus",
                    "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID,
                                        "runAsGroup": USER_ID, "fsGroup": USER_ID,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
                        "args": args,
                        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": probe_path, "port": "http"},
                                           "periodSeconds": 10},
                        "livenessProbe": {"httpGet": {"path": probe_path, "port": "http"},
                                          "periodSeconds": 30, "failureThreshold": 4},
                        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                      "limits": {"cpu": "1", "memory": "1Gi"}},
                        "securityContext": _security(),
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    }


def _service(name: str, port: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name),
            "spec": {"selector": {"app.kubernetes.io/name": name},
                     "ports": [{"name": "http", "port": port, "targetPort": "http",
                                "protocol": "TCP", "appProtocol": "http"}]}}


def prometheus() -> list[dict[str, Any]]:
    name = "prometheus"
    rules = {p.name: p.read_text() for p in sorted(RULES_DIR.glob("*.yml"))}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name)},
        # Pod discovery in this namespace only.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(name),
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(name),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("prometheus-config"),
         "data": {"prometheus.yml": _prometheus_config()}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("prometheus-rules"),
         "data": rules},
        _deployment(
            name, PROMETHEUS_IMAGE,
            ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
             "--storage.tsdb.retention.time=15d", "--web.listen-address=:9090"],
            9090,
            volumes=[{"name": "config", "configMap": {"name": "prometheus-config"}},
                     {"name": "rules", "configMap": {"name": "prometheus-rules"}},
                     {"name": "data", "emptyDir": {"sizeLimit": "20Gi"}}],
            mounts=[{"name": "config", "mountPath": "/etc/prometheus", "readOnly": True},
                    {"name": "rules", "mountPath": "/etc/prometheus/rules", "readOnly": True},
                    {"name": "data", "mountPath": "/prometheus"}],
            probe_path="/-/ready",
        ),
        _service(name, 9090),
    ]


def grafana() -> list[dict[str, Any]]:
    name = "grafana"
    dashboards = {p.name: p.read_text() for p in sorted(DASHBOARDS_DIR.glob("*.json"))}
    datasources = {"apiVersion": 1, "datasources": [{
        "name": "Prometheus", "type": "prometheus", "access": "proxy", "isDefault": True,
        "url": f"http://prometheus.{NAMESPACE}.svc:9090"}]}
    providers = {"apiVersion": 1, "providers": [{
        "name": "aimesh", "folder": "aimesh", "type": "file", "disableDeletion": True,
        "options": {"path": "/var/lib/grafana/dashboards/aimesh"}}]}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name),
         "automountServiceAccountToken": False},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("grafana-provisioning"),
         "data": {"datasources.yaml": yaml.safe_dump(datasources, sort_keys=False),
                  "dashboards.yaml": yaml.safe_dump(providers, sort_keys=False)}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("grafana-dashboards"),
         "data": {k: json.dumps(json.loads(v), indent=1) for k, v in dashboards.items()}},
        _deployment(
            name, GRAFANA_IMAGE, [], 3000,
            volumes=[{"name": "provisioning", "configMap": {"name": "grafana-provisioning",
                      "items": [{"key": "datasources.yaml", "path": "datasources/aimesh.yaml"},
                                {"key": "dashboards.yaml", "path": "dashboards/aimesh.yaml"}]}},
                     {"name": "dashboards", "configMap": {"name": "grafana-dashboards"}},
                     {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}},
                     {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
            mounts=[{"name": "provisioning", "mountPath": "/etc/grafana/provisioning", "readOnly": True},
                    {"name": "dashboards", "mountPath": "/var/lib/grafana/dashboards/aimesh",
                     "readOnly": True},
                    {"name": "data", "mountPath": "/var/lib/grafana"},
                    {"name": "tmp", "mountPath": "/tmp"}],
            probe_path="/api/health",
        ),
        _service(name, 3000),
    ]


def documents() -> dict[str, list[dict[str, Any]]]:
    """File name (under istio/base/observability/) -> its manifests."""
    return {"prometheus.yaml": prometheus(), "grafana.yaml": grafana()}
