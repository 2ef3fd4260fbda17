"""The Python SDK's offline parts: google.rpc.Status → typed exceptions, the retry policy read
from the contract's idempotency levels, addresses and deadlines."""

from __future__ import annotations

import json
import sys

import pytest
from aimesh_sdk import contract, errors
from aimesh_sdk.client import _Settings, _split_base
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2


def _status(code: int, message: str, *details: object) -> status_pb2.Status:
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)  # type: ignore[arg-type]
        packed.append(a)
    return status_pb2.Status(code=code, message=message, details=packed)


def test_invalid_argument_carries_every_field_violation() -> None:
    exc = errors.from_status(_status(
        3, "bad", error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="aimesh.dev"),
        error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="query", description="empty"),
            error_details_pb2.BadRequest.FieldViolation(field="top_k", description="1-100")])))
    assert isinstance(exc, errors.InvalidArgument)
    assert exc.field_violations == [errors.FieldViolation("query", "empty"),
                                    errors.FieldViolation("top_k", "1-100")]


def test_budget_and_rate_limit_are_told_apart() -> None:
    budget = errors.from_status(_status(8, "over", error_details_pb2.ErrorInfo(
        reason="TOKEN_BUDGET_EXCEEDED", metadata={"budget": "budgets/b1"})))
    assert isinstance(budget, errors.BudgetExceeded) and budget.budget == "budgets/b1"
    assert not isinstance(budget, errors.RateLimited)
    # The gateway's ratelimit filter over gRPC: no details, only its headers.
    limited = errors.from_status(_status(8, "rate limited"), {"x-ratelimit-reset": "17"})
    assert isinstance(limited, errors.RateLimited) and limited.retry_after == 17.0
    # A service's throttle with RetryInfo.
    throttled = errors.from_status(_status(
        8, "slow down", error_details_pb2.ErrorInfo(reason="LOGIN_THROTTLED"),
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000))))
    assert isinstance(throttled, errors.RateLimited) and throttled.retry_after == 2.5
    # A quota that is neither stays a plain ResourceExhausted.
    quota = errors.from_status(_status(8, "full", error_details_pb2.ErrorInfo(reason="QUOTA")))
    assert type(quota) is errors.ResourceExhausted


def test_codes_map_to_classes_and_reasons_default_to_the_code() -> None:
    for code, cls in ((16, errors.Unauthenticated), (7, errors.PermissionDenied),
                      (5, errors.NotFound), (14, errors.Unavailable), (13, errors.Internal)):
        exc = errors.from_status(_status(code, "x"))
        assert isinstance(exc, cls) and exc.reason == exc.code.name


def test_retry_policy_follows_idempotency_levels() -> None:
    config = json.loads(contract.service_config())
    retried = {(n["service"], n["method"]) for c in config["methodConfig"] for n in c["name"]}
    assert ("aimesh.knowledge.v1.KnowledgeService", "GetDocument") in retried  # NO_SIDE_EFFECTS
    assert ("aimesh.knowledge.v1.KnowledgeService", "DeleteDocument") in retried  # IDEMPOTENT
    assert ("aimesh.knowledge.v1.KnowledgeService", "CreateDocument") not in retried
    assert ("aimesh.conversation.v1.ConversationService", "SendMessage") not in retried
    policy = config["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"] and policy["maxAttempts"] == 3


def test_addresses_and_deadlines() -> None:
    assert _split_base("https://api.example.com") == ("api.example.com:443", True)
    assert _split_base("http://127.0.0.1:8080/") == ("127.0.0.1:8080", False)
    assert _split_base("127.0.0.1:8080") == ("127.0.0.1:8080", False)
    settings = _Settings("127.0.0.1:8080", "amk_x", None, None, 30.0,
                         {"SendMessage": 120.0, "knowledge.GetDocument": 5.0}, ())
    methods = contract.methods()
    get = methods["/aimesh.knowledge.v1.KnowledgeService/GetDocument"]
    send = methods["/aimesh.conversation.v1.ConversationService/SendMessage"]
    listing = methods["/aimesh.knowledge.v1.KnowledgeService/ListDocuments"]
    assert settings.deadline(get, None) == 5.0
    assert settings.deadline(send, None) == 120.0
    assert settings.deadline(listing, None) == 30.0
    assert settings.deadline(listing, 2.0) == 2.0
    assert settings.metadata() == [("x-api-key", "amk_x")]


def test_recognition_config_carries_endpointing_only_when_asked() -> None:
    from aimesh_sdk import audio

    default = audio.recognition_config(16000)
    assert not default.HasField("endpointing") and not default.single_utterance
    tuned = audio.recognition_config(48000, silence_ms=400, max_utterance_seconds=12.5,
                                     speech_start_timeout_seconds=3, single_utterance=True,
                                     interim_results=True)
    assert tuned.endpointing.silence_duration.ToMilliseconds() == 400
    assert tuned.endpointing.max_utterance_duration.ToMilliseconds() == 12_500
    assert tuned.endpointing.speech_start_timeout.ToSeconds() == 3
    assert tuned.config.sample_rate_hertz == 48000 and tuned.single_utterance


def test_microphone_chunks_stop_at_the_limit_or_on_stop() -> None:
    from types import SimpleNamespace

    from aimesh_sdk import audio

    ok = SimpleNamespace(input_overflow=False)
    mic = audio.Microphone(16000, seconds=0.25)  # 4,000 samples = 8,000 bytes
    for _ in range(5):  # what the device callback delivers: 100 ms blocks
        mic._on_audio(b"\x01\x00" * 1600, 1600, None, ok)
    assert [len(c) for c in mic.chunks()] == [3200, 3200, 1600]
    mic = audio.Microphone(16000)
    mic._on_audio(b"\x01\x00" * 1600, 1600, None, SimpleNamespace(input_overflow=True))
    mic.stop()
    mic._on_audio(b"\x02\x00" * 1600, 1600, None, ok)  # after stop(): dropped
    assert list(mic.chunks()) == [b"\x01\x00" * 1600] and mic.overflows == 1
    requests = list(audio.stream_requests(iter([b"ab", b"cd"]), 16000, interim_results=True))
    assert requests[0].streaming_config.interim_results
    assert [r.audio_content for r in requests[1:]] == [b"ab", b"cd"]


def test_cli_parser_commands_and_transcribe_options() -> None:
    from aimesh_sdk import cli

    parser = cli.build_parser()
    args = parser.parse_args(["transcribe", "--mic", "--seconds", "5", "--no-interim",
                              "--silence-ms", "300", "--device", "2"])
    assert args.mic and args.seconds == 5 and args.interim is False and args.silence_ms == 300
    assert cli._audio_device(args.device) == 2 and cli._audio_device("USB") == "USB"
    assert parser.parse_args(["transcribe", "a.wav"]).interim is None
    for argv in (["keys", "list"], ["docs", "rm", "documents/x"], ["budgets", "create"],
                 ["login", "--email", "a@b.c"], ["invoices"], ["speak", "hi", "-o", "x.wav"]):
        assert callable(parser.parse_args(argv).func), argv


def test_microphone_without_its_library_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from aimesh_sdk import audio, cli

    monkeypatch.setitem(sys.modules, "sounddevice", None)  # `import sounddevice` fails
    with pytest.raises(audio.MicrophoneUnavailable) as missing:
        audio.Microphone(16000).open()
    assert "aimesh-sdk[mic]" in missing.value.fix
    with pytest.raises(SystemExit) as exited:
        cli.main(["--api-key", "amk_x", "--address", "127.0.0.1:9", "transcribe", "--mic"])
    assert exited.value.code == cli.EXIT_NO_AUDIO == 9
