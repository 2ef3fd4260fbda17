"""Speech benchmark: streaming ASR and TTS through the Envoy gateway vs the Triton engine directly.

    .venv/bin/python -m bench.speech [--repeats 3] [--max-streams 12]

Starts (or reuses) Triton, the Speech, Auth and Usage services and the gateway on free ports
(the tests' launcher), signs up a user, then measures in one run:
* streaming ASR real-time factor (audio sent as fast as flow control allows): wall time /
  audio time, through the gateway (StreamingRecognize) vs the engine (one Triton sequence);
* end-of-speech -> final latency with audio paced in real time: through the gateway it
  includes the endpointing silence (800 ms by default; printed with and without it), directly
  it is END -> final (the client knows where speech ends, no VAD);
* TTS time to first audio byte: StreamingSynthesize through the gateway vs the engine;
* concurrent real-time streams: N streams at once, each paced in real time; a level is
  sustained when every stream gets its final and the p95 end-of-speech -> final latency stays
  under the endpointing silence + 1.5 s. Reports the largest sustained N on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
from aimesh.speech.v1 import speech_pb2, speech_pb2_grpc

from aimesh_sdk.audio import paced, pcm_chunks
from services.common.triton import TritonClient
from tests.support.accounts import sign_up
from tests.support.speech import SENTENCES, synthesize
from tests.support.mesh import TestMesh

RATE = 16000
SILENCE_MS = 800  # the default endpointing silence
SLACK_SECONDS = (
    1.5  # recognition time allowed after the endpoint for a stream to count as real time
)
LEAD_SECONDS = 0.3
TAIL_SECONDS = 1.2
TTS_TEXT = "Your meeting with the design team starts at nine tomorrow morning in room four."


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def framed(speech: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [
            np.zeros(int(LEAD_SECONDS * RATE), np.int16),
            speech,
            np.zeros(int(TAIL_SECONDS * RATE), np.int16),
        ]
    )


@dataclass
class StreamResult:
    wall: float  # first request -> last response
    eos_to_final: float | None  # end of speech (as sent) -> final result
    transcript: str


async def gateway_stream(
    stub: speech_pb2_grpc.SpeechServiceStub,
    metadata: list[tuple[str, str]],
    speech: np.ndarray,
    realtime: float,
) -> StreamResult:
    audio = framed(speech)
    speech_end = LEAD_SECONDS + speech.size / RATE  # seconds into the audio
    started = time.perf_counter()

    async def requests() -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        yield speech_pb2.StreamingRecognizeRequest(
            streaming_config=speech_pb2.StreamingRecognitionConfig(
                config=speech_pb2.RecognitionConfig(
                    encoding=speech_pb2.AUDIO_ENCODING_LINEAR16,
                    sample_rate_hertz=RATE,
                    language_code="en-US",
                )
            )
        )
        async for chunk in paced(pcm_chunks(audio.tobytes(), RATE), RATE, realtime):
            yield speech_pb2.StreamingRecognizeRequest(audio_content=chunk)

    final_at: float | None = None
    text = ""
    async for response in stub.StreamingRecognize(requests(), metadata=metadata, timeout=120):
        for result in response.results:
            if result.is_final and final_at is None:
                final_at = time.perf_counter()
                text = result.alternatives[0].transcript
    ended = time.perf_counter()
    eos = started + speech_end / realtime if realtime > 0 else None
    return StreamResult(ended - started, (final_at - eos) if (final_at and eos) else None, text)


async def direct_stream(client: TritonClient, speech: np.ndarray, realtime: float) -> StreamResult:
    """The engine alone: the speech (no VAD, so no lead/tail silence) as one Triton sequence."""
    chunk = RATE // 5
    started = time.perf_counter()
    final_at: float | None = None
    end_sent = 0.0
    text = ""
    async with client.recognize() as stream:

        async def feed() -> None:
            nonlocal end_sent
            for i in range(0, speech.size, chunk):
                if realtime > 0:
                    delay = started + (i + chunk) / RATE / realtime - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                inputs = {"AUDIO": speech[i : i + chunk].reshape(1, -1)}
                if i == 0:
                    inputs["SAMPLE_RATE"] = np.array([[RATE]], dtype=np.int32)
                await stream.send(inputs)
            end_sent = time.perf_counter()
            await stream.end({"AUDIO": np.zeros((1, 160), dtype=np.int16)})

        feeder = asyncio.ensure_future(feed())
        async for response in stream:
            if bool(np.asarray(response["IS_FINAL"]).reshape(-1)[0]):
                final_at = time.perf_counter()
                text = np.asarray(response["TRANSCRIPT"]).reshape(-1)[0].decode()
        await feeder
    return StreamResult(
        time.perf_counter() - started, (final_at - end_sent) if final_at else None, text
    )


async def tts_first_byte_gateway(
    stub: speech_pb2_grpc.SpeechServiceStub, metadata: list[tuple[str, str]]
) -> float:
    started = time.perf_counter()
    call = stub.StreamingSynthesize(
        speech_pb2.StreamingSynthesizeRequest(
            text=TTS_TEXT,
            audio_config=speech_pb2.AudioOutputConfig(
                encoding=speech_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=RATE
            ),
        ),
        metadata=metadata,
        timeout=60,
    )
    first = 0.0
    async for _ in call:
        if not first:
            first = time.perf_counter() - started
    return first


async def tts_first_byte_direct(client: TritonClient) -> float:
    started = time.perf_counter()
    first = 0.0
    async for _ in client.synthesize(TTS_TEXT, sample_rate=RATE):
        if not first:
            first = time.perf_counter() - started
    return first


def line(label: str, values: list[float], unit: str = "s") -> str:
    return f"  {label:<44} p50 {statistics.median(values):7.3f}{unit}  max {max(values):7.3f}{unit}"


async def main(repeats: int, max_streams: int) -> None:
    mesh = TestMesh()
    try:
        mesh.ensure_triton()
        mesh.ensure("auth", "usage", "speech")
        gateway = mesh.ensure_gateway()
        async with httpx.AsyncClient(base_url=f"http://{gateway}", timeout=10) as http:
            account = await sign_up(http, "Speech Bench")
        metadata = [("authorization", f"Bearer {account.access_token}")]
        client = TritonClient(mesh.settings.triton_url, default_timeout=120.0)
        channel = grpc.aio.insecure_channel(gateway)
        stub = speech_pb2_grpc.SpeechServiceStub(channel)
        speech = {s: await synthesize(client, s) for s in SENTENCES}
        total = sum(a.size for a in speech.values()) / RATE
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"speech benchmark: {len(SENTENCES)} utterances, {total:.1f} s of speech, "
            f"triton {mesh.settings.triton_url}, gateway {gateway}, load average {load} on {os.cpu_count()} CPUs"
        )

        # Warm up both paths (decoder pool, TTS voice, channels).
        await gateway_stream(stub, metadata, speech[SENTENCES[0]], 0)
        await direct_stream(client, speech[SENTENCES[0]], 0)

        rtf_gw: list[float] = []
        rtf_direct: list[float] = []
        for _ in range(repeats):
            for a in speech.values():
                # Both over the speech duration; the gateway path also carries 1.5 s of silence
                # around it (cheap: silence never reaches Triton).
                rtf_gw.append((await gateway_stream(stub, metadata, a, 0)).wall / (a.size / RATE))
                rtf_direct.append((await direct_stream(client, a, 0)).wall / (a.size / RATE))
        print(
            "streaming ASR real-time factor (wall / speech time, lower is faster; audio sent unpaced):"
        )
        print(line("gateway -> Speech -> Triton", rtf_gw, "x"))
        print(line("engine direct (Triton sequence)", rtf_direct, "x"))
        print(
            f"  ratio gateway/direct (p50): {statistics.median(rtf_gw) / statistics.median(rtf_direct):.2f}"
        )

        lat_gw: list[float] = []
        lat_direct: list[float] = []
        for a in speech.values():
            result = await gateway_stream(stub, metadata, a, 1.0)
            if result.eos_to_final is not None:
                lat_gw.append(result.eos_to_final)
            direct = await direct_stream(client, a, 1.0)
            if direct.eos_to_final is not None:
                lat_direct.append(direct.eos_to_final)
        print("end of speech -> final result (real-time pacing):")
        print(line("gateway (incl. 800 ms endpointing silence)", lat_gw))
        print(line("gateway minus endpointing silence", [x - SILENCE_MS / 1000 for x in lat_gw]))
        print(line("engine direct (END -> final)", lat_direct))

        tts_gw = [await tts_first_byte_gateway(stub, metadata) for _ in range(repeats * 3)]
        tts_direct = [await tts_first_byte_direct(client) for _ in range(repeats * 3)]
        print("TTS time to first audio byte:")
        print(line("gateway StreamingSynthesize", tts_gw))
        print(line("engine direct", tts_direct))
        print(
            f"  ratio gateway/direct (p50): {statistics.median(tts_gw) / statistics.median(tts_direct):.2f}"
        )

        print(
            "concurrent real-time streams through the gateway (sustained: all finals, "
            f"p95 end-of-speech -> final < {SILENCE_MS / 1000 + SLACK_SECONDS:.1f} s):"
        )
        sustained = 0
        n = 1
        while n <= max_streams:
            plan = [SENTENCES[i % len(SENTENCES)] for i in range(n)]
            results = await asyncio.gather(
                *(gateway_stream(stub, metadata, speech[s], 1.0) for s in plan)
            )
            latencies = [r.eos_to_final for r in results if r.eos_to_final is not None]
            ok = len(latencies) == n and pct(latencies, 0.95) < SILENCE_MS / 1000 + SLACK_SECONDS
            p95 = f"{pct(latencies, 0.95):.2f}s" if latencies else "n/a"
            print(
                f"  {n:3d} streams: finals {len(latencies)}/{n}, p95 latency {p95}  {'ok' if ok else 'NOT sustained'}"
            )
            if not ok:
                break
            sustained = n
            n = n * 2 if n < 4 else n + 2
        print(f"  sustained concurrent real-time streams on this machine: {sustained}")
        await channel.close()
        await client.close()
    finally:
        await mesh.aclose()
        mesh.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-streams", type=int, default=12)
    args = parser.parse_args()
    asyncio.run(main(args.repeats, args.max_streams))
