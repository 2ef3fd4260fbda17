"""gRPC's own switches (channels.GRPC_ENVIRONMENT) reach every Python process of the mesh and
nothing else: the local stack adds them where it starts this interpreter (services, relays,
helpers), never to tritonserver, Envoy or Prometheus, whose gRPC stacks they were not measured
for; the ConfigMap every service pod reads carries the same values in Kubernetes."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts import stack as stack_module
from scripts.stack import PYTHON, Stack
from services.common.channels import GRPC_ENVIRONMENT, grpc_process_env
from services.common.config import REPO_ROOT


class _Recorder:
    """Stands in for subprocess.Popen: keeps what each start would have run, starts nothing."""

    def __init__(self) -> None:
        self.started: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> Any:
        self.started.append((list(argv), dict(kwargs["env"])))
        return subprocess.CompletedProcess(argv, 0)


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    for name in GRPC_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    return Stack.create({"AIMESH_VAR_DIR": str(tmp_path), "AIMESH_TLS_MODE": "plaintext"})


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    recording = _Recorder()
    monkeypatch.setattr(stack_module.subprocess, "Popen", recording)
    return recording


def test_a_python_process_gets_the_switches_and_its_own_env_is_kept(stack: Stack,
                                                                     tmp_path: Path) -> None:
    assert GRPC_ENVIRONMENT == {"GRPC_EXPERIMENTS": "-event_engine_client"}
    out = tmp_path / "seen"
    probe = "import os, sys; open(sys.argv[1], 'w').write(os.environ.get('GRPC_EXPERIMENTS', '-'))"
    process = stack.spawn("probe", [PYTHON, "-c", probe, str(out)], lambda: True,
                          env={**stack.env, "EXTRA": "1"})
    assert process.popen.wait(timeout=30) == 0
    assert out.read_text() == GRPC_ENVIRONMENT["GRPC_EXPERIMENTS"]
    assert "GRPC_EXPERIMENTS" not in stack.env  # the stack's shared environment stays plain


def test_services_get_them_and_tritonserver_envoy_do_not(stack: Stack,
                                                          recorder: _Recorder) -> None:
    stack.start_service("usage")
    stack.start_triton()
    stack.start_gateway()
    by_program = {argv[0]: env for argv, env in recorder.started}
    service_env = by_program.pop(PYTHON)
    for name, value in GRPC_ENVIRONMENT.items():
        assert service_env[name] == value
    assert len(by_program) == 2  # tritonserver and envoy, each its own binary
    for env in by_program.values():
        assert not set(GRPC_ENVIRONMENT) & set(env)
        assert env["AIMESH_VAR_DIR"] == stack.env["AIMESH_VAR_DIR"]


def test_an_operators_own_value_wins_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                recorder: _Recorder) -> None:
    monkeypatch.setenv("GRPC_EXPERIMENTS", "")
    stack = Stack.create({"AIMESH_VAR_DIR": str(tmp_path), "AIMESH_TLS_MODE": "plaintext"})
    stack.start_service("usage")
    stack.start_triton()
    assert [env["GRPC_EXPERIMENTS"] for _, env in recorder.started] == ["", ""]
    assert grpc_process_env({"GRPC_EXPERIMENTS": "x"}) == {"GRPC_EXPERIMENTS": "x"}


def test_every_pod_reads_the_same_grpc_environment() -> None:
    config_map = yaml.safe_load((REPO_ROOT / "istio" / "base" / "config.yaml").read_text())
    for name, value in GRPC_ENVIRONMENT.items():
        assert config_map["data"][name] == value
