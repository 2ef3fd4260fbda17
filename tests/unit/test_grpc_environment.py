"""gRPC's own switches (channels.GRPC_ENVIRONMENT) reach every mesh process: the local stack's
environment, and the ConfigMap every pod reads in Kubernetes."""

from __future__ import annotations

from pathlib import Path

import yaml

from scripts.stack import Stack
from services.common.channels import GRPC_ENVIRONMENT
from services.common.config import REPO_ROOT


def test_the_stack_starts_processes_with_the_grpc_environment(
    tmp_path: Path, monkeypatch
) -> None:
    for name in GRPC_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    stack = Stack.create({"AIMESH_VAR_DIR": str(tmp_path), "AIMESH_TLS_MODE": "plaintext"})
    assert GRPC_ENVIRONMENT == {"GRPC_EXPERIMENTS": "-event_engine_client"}
    for name, value in GRPC_ENVIRONMENT.items():
        assert stack.env[name] == value


def test_triton_keeps_its_own_grpc_defaults(tmp_path: Path, monkeypatch) -> None:
    for name in GRPC_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    stack = Stack.create({"AIMESH_VAR_DIR": str(tmp_path), "AIMESH_TLS_MODE": "plaintext"})
    triton_env = stack.triton_base_env()
    assert not set(GRPC_ENVIRONMENT) & set(triton_env)
    assert triton_env["AIMESH_VAR_DIR"] == str(tmp_path)


def test_an_operators_own_value_wins(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GRPC_EXPERIMENTS", "")
    stack = Stack.create({"AIMESH_VAR_DIR": str(tmp_path), "AIMESH_TLS_MODE": "plaintext"})
    assert stack.env["GRPC_EXPERIMENTS"] == ""
    assert stack.triton_base_env()["GRPC_EXPERIMENTS"] == ""


def test_every_pod_reads_the_same_grpc_environment() -> None:
    config_map = yaml.safe_load((REPO_ROOT / "istio" / "base" / "config.yaml").read_text())
    for name, value in GRPC_ENVIRONMENT.items():
        assert config_map["data"][name] == value
