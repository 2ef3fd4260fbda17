"""Speech fixtures: the Speech service on real Triton models (ASR + TTS), reached directly with
gateway identity headers, and through the Envoy gateway with a signed-up account's bearer token.

Test audio is Piper speech synthesized on Triton (the neural en_US-joe-medium voice, which the
recognizer understands well), framed by silence like a caller pausing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
import pytest
from aimesh.speech.v1 import speech_pb2, speech_pb2_grpc

from services.common.errors import field_violations, status_from_rpc_error
from services.common.triton import TritonClient
from tests.support.mesh import TestMesh
from tests.support.speech import SENTENCES, synthesize

RATE = 16000
QUESTION = "the weather today is sunny with a high of seventy degrees"
INTERRUPTION = "the meeting starts at nine in the morning"


@dataclass
class Speech:
    stub: speech_pb2_grpc.SpeechServiceStub
    metadata: Sequence[tuple[str, str]]  # what the caller sends with each Speech call
    # The same caller's identity headers, for direct set-up calls to other services.
    identity: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        self.identity = self.identity or self.metadata


def identity(org: str | None = None, subject: str | None = None) -> list[tuple[str, str]]:
    """Headers the gateway would set for a member of (by default) a fresh organization."""
    return [
        ("x-aimesh-org", org or f"test-{uuid.uuid4().hex[:12]}"),
        ("x-aimesh-subject", subject or f"users/test-{uuid.uuid4().hex[:8]}"),
        ("x-aimesh-roles", "member"),
    ]


@pytest.fixture(scope="session")
async def speech_mesh(mesh: TestMesh) -> TestMesh:
    mesh.ensure_triton()
    mesh.ensure("speech")
    return mesh


@pytest.fixture
async def speech(speech_mesh: TestMesh) -> Speech:
    return Speech(speech_pb2_grpc.SpeechServiceStub(speech_mesh.channel("speech")), identity())


@pytest.fixture(scope="session")
async def gateway_speech(speech_mesh: TestMesh) -> AsyncIterator[Speech]:
    """Speech through Envoy (gRPC), authenticated as a freshly signed-up user."""
    from tests.support.accounts import sign_up

    speech_mesh.ensure("auth", "usage")
    # A gateway that fails to start fails these tests (never a skip): the mesh raises.
    address = speech_mesh.ensure_gateway()
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as http:
        account = await sign_up(http, "Speech Test")
    async with grpc.aio.insecure_channel(address) as channel:
        yield Speech(
            speech_pb2_grpc.SpeechServiceStub(channel),
            [("authorization", f"Bearer {account.access_token}")],
            identity(account.org_id, account.user),
        )


@pytest.fixture(scope="session")
async def utterances(speech_mesh: TestMesh) -> dict[str, np.ndarray]:
    """sentence -> 16 kHz int16 speech (no surrounding silence)."""
    client = TritonClient(speech_mesh.settings.triton_url, default_timeout=60.0)
    try:
        return {s: await synthesize(client, s) for s in SENTENCES}
    finally:
        await client.close()


def with_pauses(*parts: np.ndarray, lead: float = 0.4, gap: float = 1.2) -> np.ndarray:
    """Speech parts separated by silence (longer than the default 800 ms endpointing)."""
    silence = np.zeros(int(gap * RATE), dtype=np.int16)
    out: list[np.ndarray] = [np.zeros(int(lead * RATE), dtype=np.int16)]
    for part in parts:
        out += [part, silence]
    return np.concatenate(out)


def recognition_config(word_time_offsets: bool = True) -> speech_pb2.RecognitionConfig:
    return speech_pb2.RecognitionConfig(
        encoding=speech_pb2.AUDIO_ENCODING_LINEAR16,
        sample_rate_hertz=RATE,
        language_code="en-US",
        enable_word_time_offsets=word_time_offsets,
    )


def streaming_config(**overrides: object) -> speech_pb2.StreamingRecognitionConfig:
    config = speech_pb2.StreamingRecognitionConfig(config=recognition_config())
    for key, value in overrides.items():
        if key == "audio_offset_seconds":
            config.audio_offset.FromNanoseconds(round(float(value) * 1e9))  # type: ignore[arg-type]
        else:
            setattr(config, key, value)
    return config


async def stream_recognize(
    speech: Speech,
    pcm: np.ndarray,
    *,
    realtime: float = 0.0,
    **config: object,
) -> list[speech_pb2.StreamingRecognizeResponse]:
    from aimesh_sdk.audio import paced, pcm_chunks

    async def requests() -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        yield speech_pb2.StreamingRecognizeRequest(streaming_config=streaming_config(**config))
        async for chunk in paced(pcm_chunks(pcm.tobytes(), RATE), RATE, realtime):
            yield speech_pb2.StreamingRecognizeRequest(audio_content=chunk)

    return [
        r
        # Generous: every sample is decoded, and tests run streams side by side on 2 busy cores.
        async for r in speech.stub.StreamingRecognize(
            requests(), metadata=speech.metadata, timeout=180
        )
    ]


def finals(
    responses: Sequence[speech_pb2.StreamingRecognizeResponse],
) -> list[speech_pb2.StreamingRecognitionResult]:
    return [r for resp in responses for r in resp.results if r.is_final]


def rpc_error_details(exc: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    status = status_from_rpc_error(exc)
    return field_violations(status) if status is not None else []


@pytest.fixture(scope="session")
async def questions(speech_mesh: TestMesh) -> dict[str, np.ndarray]:
    client = TritonClient(speech_mesh.settings.triton_url, default_timeout=60.0)
    try:
        return {q: await synthesize(client, q) for q in (QUESTION, INTERRUPTION)}
    finally:
        await client.close()
