"""The Python SDK as a user gets it: the wheel built by scripts/build_sdk.py, installed into a
fresh virtualenv outside the repository (dependencies from the package index), driving the real
gateway — the `aimesh` CLI and a client program (sdk_script.py) through sign-up → key → upload →
search → chat → TTS → transcription → usage, and the typed exceptions for 401/403/404/400/
budget/429."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

from scripts import build_sdk
from tests.integration.sdk.conftest import Venv
from tests.support.mesh import TestMesh

SCRIPT = Path(__file__).with_name("sdk_script.py")


def test_wheel_installs_alone_and_matches_the_contract(venv: Venv) -> None:
    code = ("import aimesh_sdk, aimesh.knowledge.v1.knowledge_pb2 as k, aimesh_sdk._build as b;"
            "import importlib.util as u, json;"
            "print(json.dumps([aimesh_sdk.__file__, aimesh_sdk.__version__, b.CONTRACT_SHA256,"
            " u.find_spec('services') is None]))")
    probe = subprocess.run(
        [str(venv.python), "-c", code],
        cwd=venv.root, capture_output=True, text=True, env=venv.env("unused"), check=True)
    sdk_file, version, digest, no_services = json.loads(probe.stdout)
    assert sdk_file.startswith(str(venv.root / "venv")), sdk_file
    assert version == "1.0.0"
    assert digest == build_sdk.contract_digest()
    assert no_services, "the repository's server code leaked into the SDK environment"


def _json(result: subprocess.CompletedProcess[str]) -> object:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def test_cli_end_to_end(venv: Venv, platform: str, tmp_path: Path) -> None:
    email = f"cli-{datetime.now(UTC).strftime('%H%M%S%f')}@example.com"
    signup = venv.cli(platform, "--json", "signup", "--email", email, "--organization", "CLI Org",
                      env={"AIMESH_PASSWORD": "correct horse battery staple"})
    org = _json(signup)["organization"]  # type: ignore[index]
    config = venv.root / "config" / "aimesh" / "config.json"
    assert config.stat().st_mode & 0o077 == 0, "the config file holds tokens: owner-only"

    whoami = _json(venv.cli(platform, "--json", "whoami"))
    assert whoami["organization"] == org and "ROLE_OWNER" in whoami["roles"]  # type: ignore[index]

    key = _json(venv.cli(platform, "--json", "keys", "create", "laptop"))
    assert key["secret"].startswith("amk_")  # type: ignore[index]
    listed = _json(venv.cli(platform, "--json", "keys", "list"))
    assert [k["name"] for k in listed] == [key["name"]]  # type: ignore[index]
    assert all("secret" not in k for k in listed)  # type: ignore[union-attr]

    handbook = venv.root / "handbook.md"
    handbook.write_text("# Travel\n\nTrain tickets are reimbursed within 14 days. "
                        "Flights need approval from a manager.\n")
    upload = venv.cli(platform, "docs", "upload", str(handbook), "--wait")
    assert upload.returncode == 0, upload.stderr
    assert "100%" in upload.stderr, "no progress bar"
    assert "READY" in upload.stdout, upload.stdout
    doc = upload.stdout.split()[0]
    assert doc.startswith("documents/")

    search = _json(venv.cli(platform, "--json", "docs", "search", "train ticket reimbursement"))
    assert search["results"][0]["document"] == doc  # type: ignore[index]

    chat = venv.cli(platform, "chat", "How fast are train tickets reimbursed?", "--doc", doc)
    assert chat.returncode == 0, chat.stderr
    answer, _, cites = chat.stdout.partition("\n  [1] ")
    assert "14 days" in answer, chat.stdout
    assert "handbook.md" in cites and doc in cites, "no citation printed"

    wav = venv.root / "hello.wav"
    spoken = _json(venv.cli(platform, "--json", "speak", "Good morning, this is a test.", "-o",
                            str(wav), "--sample-rate", "16000"))
    assert spoken["seconds"] > 0.5 and wav.stat().st_size > 16000  # type: ignore[index]
    heard = _json(venv.cli(platform, "--json", "transcribe", str(wav)))
    assert heard["transcript"].strip(), "nothing recognized in synthesized speech"  # type: ignore[index]

    usage = _json(venv.cli(platform, "--json", "usage", "--days", "1", "--by", "model"))
    assert usage["organization"] == org  # type: ignore[index]
    assert _json(venv.cli(platform, "--json", "budgets")) == []
    assert _json(venv.cli(platform, "--json", "invoices")) == []
    assert venv.cli(platform, "docs", "list").returncode == 0

    # Errors: reason and fix on stderr, documented exit codes.
    bad = venv.cli(platform, "docs", "search", " " * 3, "--top-k", "500")
    assert bad.returncode == 6, bad.stderr
    assert "error:" in bad.stderr and "top_k" in bad.stderr and "fix:" in bad.stderr
    missing = venv.cli(platform, "keys", "revoke", "no-such-key")
    assert missing.returncode in (5, 6), missing.stderr
    revoked = venv.cli(platform, "keys", "revoke", key["name"])  # type: ignore[index]
    assert revoked.returncode == 0, revoked.stderr
    denied = venv.cli(platform, "docs", "list", env={"AIMESH_API_KEY": key["secret"]})  # type: ignore[index]
    assert denied.returncode == 3, denied.stderr
    assert "error:" in denied.stderr and "fix:" in denied.stderr
    unreachable = venv.cli("127.0.0.1:9", "--timeout", "3", "docs", "list")
    assert unreachable.returncode == 8, unreachable.stderr
    assert "scripts/up" in unreachable.stderr
    assert venv.cli(platform, "logout").returncode == 0
    signed_out = venv.cli(platform, "docs", "list")
    assert signed_out.returncode == 3 and "aimesh login" in signed_out.stderr
    assert venv.cli(platform, "no-such-command").returncode == 2


def _run_script(venv: Venv, platform: str, *args: str) -> dict[str, dict[str, object]]:
    script = venv.root / SCRIPT.name
    shutil.copyfile(SCRIPT, script)
    result = subprocess.run([str(venv.python), str(script), platform, *args], check=False,
                            cwd=venv.root,
                            capture_output=True, text=True, timeout=600, env=venv.env(platform))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    steps = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {s.pop("step"): s for s in steps}


async def test_sdk_program_end_to_end(venv: Venv, platform: str, mesh: TestMesh) -> None:
    workdir = venv.root / "work"
    workdir.mkdir(exist_ok=True)
    steps = _run_script(venv, platform, "flow", str(workdir))
    assert str(steps["installed"]["sdk_file"]).startswith(str(venv.root / "venv"))

    uploaded = steps["uploaded"]
    assert uploaded["state"] == "STATE_READY"
    # 64-byte chunks: progress is reported per chunk and ends at the total.
    assert int(uploaded["progress_calls"]) > 3  # type: ignore[call-overload]
    assert uploaded["last"] == [uploaded["total"], uploaded["total"]]
    assert steps["listed"]["names"] == [uploaded["name"]]  # paged one at a time
    assert steps["searched"]["documents"][0] == uploaded["name"]  # type: ignore[index]
    assert "27 vacation days" in steps["searched"]["texts"][0]  # type: ignore[index]

    chat = steps["chat"]
    assert "27 vacation days" in str(chat["text"]), chat
    assert int(chat["deltas"]) >= 1 and chat["state"] == "STATE_COMPLETE"  # type: ignore[call-overload]
    assert uploaded["name"] in chat["citations"]  # type: ignore[operator]
    assert "March" in str(steps["async"]["text"]) and int(steps["async"]["citations"]) >= 1  # type: ignore[call-overload]
    assert steps["async"]["names"] == [uploaded["name"]]

    assert float(steps["tts"]["seconds"]) > 1.0  # type: ignore[arg-type]
    assert str(steps["transcribed"]["text"]).strip()
    assert str(steps["recognized"]["text"]).strip()
    assert {"RESOURCE_TYPE_CHUNKS_EMBEDDED", "RESOURCE_TYPE_CHARACTERS_SYNTHESIZED"} <= set(
        steps["usage"]["kinds"])  # type: ignore[arg-type]

    errors = steps["errors"]
    assert errors["401"], "no Unauthenticated for a bogus key"
    assert errors["403"] == "SCOPE_REQUIRED", errors
    assert errors["404"], "no NotFound for a missing document"
    assert {"query", "top_k"} <= set(errors["400"]), errors  # type: ignore[arg-type]
    assert errors["budget"].get("reason") == "BUDGET_EXCEEDED", errors  # type: ignore[union-attr]
    assert str(errors["budget"]["budget"]).startswith("budgets/")  # type: ignore[index]

    # 429: the key's plan allows 5 requests a minute (set as Billing does on a plan change).
    key = steps["ratelimit_key"]
    org = str(key["name"]).split("/apiKeys/")[0]
    usage = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage", identity="billing"))
    await usage.SetRateLimitPolicy(usage_pb2.SetRateLimitPolicyRequest(
        policy=usage_pb2.RateLimitPolicy(name=f"{org}/rateLimitPolicy",
                                         organization_requests_per_minute=1000,
                                         api_key_requests_per_minute=5, plan="test")), timeout=10)
    limited = _run_script(venv, platform, "ratelimit", str(key["secret"]))["ratelimited"]
    assert limited["code"] == "RESOURCE_EXHAUSTED", limited
    assert int(limited["ok"]) <= 5  # type: ignore[call-overload]
    assert limited["retry_after"] is not None and 0 <= float(limited["retry_after"]) <= 60  # type: ignore[arg-type]
