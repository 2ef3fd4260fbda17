"""bench.gateway's routing-only Envoy (bench/gateway/envoy_floor.py): the bootstrap it renders is
accepted by the real envoy binary (`envoy --mode validate`) in both mesh transports, routes to
Auth's cluster exactly as the gateway defines it, and has the router as its only HTTP filter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.gateway.envoy_floor import render_floor
from scripts import ca, gateway
from services.common.config import Settings
from tests.support.mesh import free_port


def _settings(tmp_path: Path, mode: str) -> Settings:
    return Settings.from_env({"AIMESH_TLS_MODE": mode, "AIMESH_VAR_DIR": str(tmp_path)})


def _validate(tmp_path: Path, config: dict[str, object]) -> None:
    path = tmp_path / "floor.json"
    path.write_text(json.dumps(config))
    result = gateway.validate(path)
    assert result.returncode == 0, f"envoy rejected it:\n{result.stdout[-3000:]}{result.stderr}"


@pytest.mark.parametrize("mode", ["mtls", "plaintext"])
def test_floor_config_validates_and_reuses_the_gateway_cluster(tmp_path: Path, mode: str) -> None:
    settings = _settings(tmp_path, mode)
    if mode == "mtls":
        ca.ensure_certificates(settings.certs_path)
    config = render_floor(settings, free_port())
    _validate(tmp_path, config)
    clusters = config["static_resources"]["clusters"]
    assert clusters == [gateway.service_cluster(settings, "auth")]
    assert ("transport_socket" in clusters[0]) == (mode == "mtls")
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = manager["typed_config"]["http_filters"]
    assert [f["name"] for f in filters] == ["envoy.filters.http.router"]
    assert "access_log" not in manager["typed_config"]


def test_validation_can_fail(tmp_path: Path) -> None:
    # Guards the test above: validation really loads the cluster's TLS files (none made here).
    path = tmp_path / "floor.json"
    path.write_text(json.dumps(render_floor(_settings(tmp_path, "mtls"), free_port())))
    result = gateway.validate(path)
    assert result.returncode != 0
    assert "Invalid path" in result.stdout + result.stderr
