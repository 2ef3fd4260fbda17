"""scripts/triton_server.py: the command it builds must carry the libpython and site-packages fixes."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from scripts import triton_server


def test_server_command(tmp_path: Path) -> None:
    ports = triton_server.TritonPorts(grpc=18101, http=18100, metrics=18102)
    argv, env = triton_server.server_command(
        Path("triton/models"), ports, work_dir=tmp_path, base_env={"PATH": "/usr/bin"}
    )
    assert Path(argv[0]).name == "tritonserver" and Path(argv[0]).exists()
    assert "--grpc-port=18101" in argv and "--http-port=18100" in argv
    assert "--metrics-port=18102" in argv
    assert any(a.startswith("--model-repository=/") for a in argv)
    # The stub for this interpreter sits in the assembled backend directory.
    stub = tmp_path / "backends" / "python" / "triton_python_backend_stub"
    assert stub.exists()
    assert f"--backend-directory={tmp_path / 'backends'}" in argv
    assert env["LD_LIBRARY_PATH"].split(":")[0] == sysconfig.get_config_var("LIBDIR")
    assert sysconfig.get_paths()["purelib"] in env["PYTHONPATH"].split(":")
    assert env["PATH"].startswith(str(Path(sys.executable).parent))
    assert env["HF_HUB_OFFLINE"] == "1"


def test_port_in_use_on_a_free_port() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert triton_server.port_in_use(free) is False


def test_model_repository_layout() -> None:
    repo = triton_server.DEFAULT_MODEL_REPOSITORY
    models = sorted(p.name for p in repo.iterdir() if p.is_dir())
    assert models == [
        "grounded_responder",
        "speech_recognition",
        "speech_synthesis",
        "text_embedding",
    ]
    for name in models:
        config = (repo / name / "config.pbtxt").read_text()
        assert f'name: "{name}"' in config
        assert 'backend: "python"' in config
        model_py = (repo / name / "1" / "model.py").read_text()
        # Same repository must run in an official Triton container: no local paths.
        assert "/work/" not in model_py and ".venv" not in model_py
