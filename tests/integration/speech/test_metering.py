"""Usage metering: characters synthesized and audio seconds recognized land in the Usage
ledger of the caller's organization, once per request_id."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import numpy as np
from aimesh.speech.v1 import speech_pb2
from aimesh.usage.v1 import usage_pb2, usage_pb2_grpc

from services.common.usage_client import to_micros
from tests.integration.speech.conftest import RATE, Speech, recognition_config
from tests.support.mesh import TestMesh


async def ledger(mesh: TestMesh, speech: Speech, want: int) -> list[usage_pb2.UsageRecord]:
    """The organization's speech records, polled until `want` arrived (metering is async)."""
    stub = usage_pb2_grpc.UsageServiceStub(mesh.channel("usage"))
    records: list[usage_pb2.UsageRecord] = []
    for _ in range(100):
        reply = await stub.ListUsageRecords(
            usage_pb2.ListUsageRecordsRequest(page_size=100), metadata=speech.metadata, timeout=10
        )
        records = [r for r in reply.usage_records if r.source == "speech"]
        if len(records) >= want:
            break
        await asyncio.sleep(0.1)
    return records


async def test_synthesis_and_recognition_are_metered_once(
    speech_mesh: TestMesh, speech: Speech
) -> None:
    speech_mesh.ensure("usage")
    text = "Metering counts every character."
    request_id = str(uuid.uuid4())
    request = speech_pb2.SynthesizeRequest(
        text=text,
        request_id=request_id,
        audio_config=speech_pb2.AudioOutputConfig(
            encoding=speech_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=RATE
        ),
    )
    for _ in range(2):  # a retry with the same request_id is metered once
        audio = await speech.stub.Synthesize(request, metadata=speech.metadata, timeout=30)
    recognized = await speech.stub.Recognize(
        speech_pb2.RecognizeRequest(
            config=recognition_config(), content=audio.audio_content, request_id=request_id
        ),
        metadata=speech.metadata,
        timeout=30,
    )
    records = await ledger(speech_mesh, speech, 2)
    await asyncio.sleep(0.5)  # would a duplicate arrive late?
    records = await ledger(speech_mesh, speech, 0)  # one more look, no waiting
    by_type = {r.resource_type: r for r in records}
    assert len(records) == 2, records
    chars = by_type[usage_pb2.RESOURCE_TYPE_CHARACTERS_SYNTHESIZED]
    assert chars.quantity_micros == len(text) * 1_000_000
    assert chars.model == "voices/en-us-joe"  # the default voice (Piper)
    seconds = by_type[usage_pb2.RESOURCE_TYPE_AUDIO_SECONDS]
    samples = np.frombuffer(audio.audio_content, dtype="<i2").size
    expected = samples / RATE
    # Exact seconds, rounded half-up to the micro once (usage_client.to_micros).
    assert seconds.quantity_micros == to_micros(Decimal(samples) / RATE)
    assert recognized.total_audio_processed.ToNanoseconds() == round(expected * 1e9)
