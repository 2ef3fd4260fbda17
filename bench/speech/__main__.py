"""Speech benchmark: the mesh (gateway -> Speech -> Triton) against the engine, side by side.

    .venv/bin/python -m bench.speech [--repeats 2] [--max-streams 12] [--tiny]

Starts (or reuses) Triton, the Speech, Auth and Usage services and the gateway on free ports
(the tests' launcher), signs up a user, then measures in one run and prints ratios:
* accuracy and parity: Piper clips (several rates and gains, noise, cut after the last word)
  through the gateway's StreamingRecognize vs the pocketsphinx engine fed the same audio
  directly (in this process): word error rate of each against the text, and how many clips the
  mesh transcribed word for word like the engine;
* streaming ASR real-time factor (audio sent as fast as flow control allows): wall time /
  audio time, through the gateway vs the engine (one Triton sequence);
* end of speech -> final with audio paced in real time, at endpointing silences of 300, 500
  and 800 ms: printed as measured and minus the configured silence (target <= 150 ms);
* TTS time to first audio byte through the gateway: Piper (the default voice) vs eSpeak NG, and
  the engine directly;
* concurrent real-time streams: N streams at once, each paced in real time; a level is
  sustained when every stream gets its final and the p95 end-of-speech -> final latency stays
  under the endpointing silence + 1.5 s. Reports the largest sustained N on this machine;
* Converse through the gateway (local responder, Piper): a spoken question paced in real time,
  end of the caller's speech -> first byte of the answer's audio, split into endpointing +
  final, the reply's first text, and its first audio.
Every target prints a `verdict <target>: MET|MISSED (<measured>)` line; the machine load is
printed at the start and the end (absolute timings on a shared machine are noisy).
`--tiny` runs one clip, one repeat and up to 2 streams: what a test can afford.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
from aimesh.conversation.v1 import conversation_pb2, conversation_pb2_grpc
from aimesh.speech.v1 import speech_pb2, speech_pb2_grpc
from aimesh_sdk.audio import CHUNK_MS, pcm_chunks

from bench.accounts import bench_account
from bench.report import print_load, verdict
from services.common.triton import TritonClient
from tests.support.mesh import TestMesh
from tests.support.speech import (
    PARITY_SENTENCES,
    SENTENCES,
    cut_after_last_word,
    engine_transcript,
    parity_clip,
    synthesize,
    word_error_rate,
)

RATE = 16000
SILENCE_MS = 500  # the default endpointing silence
SILENCE_SETTINGS = (300, 500, 800)
SLACK_SECONDS = (
    1.5  # recognition time allowed after the endpoint for a stream to count as real time
)
LEAD_SECONDS = 0.3
TAIL_SECONDS = 1.2
TTS_TEXT = "Your meeting with the design team starts at nine tomorrow morning in room four."
# Targets (issue 14).
FINAL_BEYOND_SILENCE_TARGET = 0.150
PIPER_FIRST_BYTE_TARGET = 0.100
STREAMS_TARGET = 12
CONVERSE_TARGET = 1.2
# Converse: what the assistant knows (the local responder answers from the conversation's
# context), and what the caller asks.
CONVERSE_FACTS = (
    "You are a helpful voice assistant. The weather today is sunny and warm with a light breeze. "
    "The weather tomorrow will be cloudy with some rain in the afternoon."
)
CONVERSE_QUESTION = "What is the weather like today?"
CONVERSE_VERDICT = "Converse end of speech -> first answer audio byte <= 1.2 s"


async def microphone(audio: np.ndarray, realtime: float) -> AsyncIterator[bytes]:
    """CHUNK_MS chunks of `audio`, each sent once its last sample has been "recorded" (like a
    microphone: never ahead of the audio; unpaced when realtime is 0)."""
    started = time.perf_counter()
    sent = 0
    for chunk in pcm_chunks(audio.tobytes(), RATE):
        sent += len(chunk) // 2
        if realtime > 0:
            delay = started + sent / RATE / realtime - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        yield chunk


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
    # end of speech (as sent) -> arrival of the END_OF_UTTERANCE event, and that event's
    # offset: where in the audio the endpoint was decided (seconds from the stream start)
    eos_to_endpoint: float | None = None
    endpoint_offset: float | None = None
    speech_end: float = 0.0  # seconds into the audio


async def gateway_stream(
    stub: speech_pb2_grpc.SpeechServiceStub,
    metadata: list[tuple[str, str]],
    speech: np.ndarray,
    realtime: float,
    silence_ms: int = SILENCE_MS,
    frame: bool = True,
) -> StreamResult:
    audio = framed(speech) if frame else speech
    speech_end = (LEAD_SECONDS if frame else 0.0) + speech.size / RATE  # seconds into the audio
    started = time.perf_counter()
    config = speech_pb2.StreamingRecognitionConfig(
        config=speech_pb2.RecognitionConfig(
            encoding=speech_pb2.AUDIO_ENCODING_LINEAR16,
            sample_rate_hertz=RATE,
            language_code="en-US",
        )
    )
    config.endpointing.silence_duration.FromMilliseconds(silence_ms)

    async def requests() -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        nonlocal started
        yield speech_pb2.StreamingRecognizeRequest(streaming_config=config)
        started = time.perf_counter()
        async for chunk in microphone(audio, realtime):
            yield speech_pb2.StreamingRecognizeRequest(audio_content=chunk)

    final_at: float | None = None
    endpoint_at: float | None = None
    endpoint_offset: float | None = None
    texts: list[str] = []
    async for response in stub.StreamingRecognize(requests(), metadata=metadata, timeout=300):
        if response.speech_event_type == speech_pb2.SPEECH_EVENT_TYPE_END_OF_UTTERANCE:
            if endpoint_at is None:
                endpoint_at = time.perf_counter()
                endpoint_offset = response.speech_event_offset.ToNanoseconds() / 1e9
        for result in response.results:
            if result.is_final and result.alternatives[0].transcript:
                final_at = final_at or time.perf_counter()
                texts.append(result.alternatives[0].transcript)
    text = " ".join(texts)
    ended = time.perf_counter()
    eos = started + speech_end / realtime if realtime > 0 else None
    return StreamResult(
        ended - started,
        (final_at - eos) if (final_at and eos) else None,
        text,
        (endpoint_at - eos) if (endpoint_at and eos) else None,
        endpoint_offset,
        speech_end,
    )


async def direct_stream(client: TritonClient, speech: np.ndarray, realtime: float) -> StreamResult:
    """The engine alone: the speech (no VAD, so no lead/tail silence) as one Triton sequence,
    in the same chunks the gateway path sends (pcm_chunks' CHUNK_MS)."""
    chunk = RATE * CHUNK_MS // 1000
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
    stub: speech_pb2_grpc.SpeechServiceStub, metadata: list[tuple[str, str]], voice: str = ""
) -> float:
    started = time.perf_counter()
    call = stub.StreamingSynthesize(
        speech_pb2.StreamingSynthesizeRequest(
            text=TTS_TEXT,
            voice=voice,
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


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def words_of(text: str) -> str:
    return " ".join("".join(c if c.isalpha() or c in " '" else " " for c in text.lower()).split())


async def accuracy(stub: Any, metadata: list[tuple[str, str]], tiny: bool) -> None:
    variants = ((1.0, 1.0, 0.4, 20.0), (0.8, 0.35, 0.8, 40.0), (1.25, 1.8, 0.25, 10.0))
    plan = [(t, v) for t in PARITY_SENTENCES for v in variants][: 1 if tiny else None]
    mesh_wer: list[float] = []
    engine_wer: list[float] = []
    same = 0
    for i, (text, (length_scale, gain, lead, noise)) in enumerate(plan):
        pcm = parity_clip(
            text, length_scale=length_scale, gain=gain, lead=lead, noise=noise, seed=i
        )
        expected = engine_transcript(pcm)
        got = (await gateway_stream(stub, metadata, pcm, 0, frame=False)).transcript
        same += got.split() == expected.split()
        mesh_wer.append(word_error_rate(words_of(text), got))
        engine_wer.append(word_error_rate(words_of(text), expected))
    mesh, engine = statistics.mean(mesh_wer), statistics.mean(engine_wer)
    print(
        f"accuracy on {len(plan)} Piper clips (rates x0.8-1.25, gains x0.35-1.8, noise, "
        "cut after the last word):"
    )
    print(
        f"  WER gateway StreamingRecognize {mesh:.3f}   engine on the whole clip {engine:.3f}"
        f"   ratio {ratio(mesh, engine)}"
    )
    print(f"  word-for-word parity with the engine: {same}/{len(plan)} clips")


async def realtime_factor(
    stub: Any,
    metadata: list[tuple[str, str]],
    client: TritonClient,
    speech: dict[str, np.ndarray],
    repeats: int,
) -> None:
    rtf_gw: list[float] = []
    rtf_direct: list[float] = []
    for _ in range(repeats):
        for a in speech.values():
            rtf_gw.append((await gateway_stream(stub, metadata, a, 0)).wall / (a.size / RATE))
            rtf_direct.append((await direct_stream(client, a, 0)).wall / (a.size / RATE))
    print(
        "streaming ASR real-time factor (wall / speech time, lower is faster; audio sent unpaced):"
    )
    print(line("gateway -> Speech -> Triton (+1.5 s of silence, decoded too)", rtf_gw, "x"))
    print(line("engine direct (Triton sequence)", rtf_direct, "x"))
    print(
        "  ratio gateway/direct (p50): "
        f"{ratio(statistics.median(rtf_gw), statistics.median(rtf_direct))}"
    )


def latency_parts(r: StreamResult, silence_ms: int) -> dict[str, float] | None:
    """End of speech -> final beyond the silence, in the order it is spent (seconds): where in
    the audio the detector closed the utterance beyond the silence (the classifier's frames and
    its hangover), the wait for the client's chunk holding that point to be recorded, that
    chunk's way to Speech and the END_OF_UTTERANCE event's way back, and the final after it."""
    if r.eos_to_final is None or r.eos_to_endpoint is None or r.endpoint_offset is None:
        return None
    chunk = CHUNK_MS / 1000
    chunk_end = -(-round(r.endpoint_offset * 1000) // CHUNK_MS) * chunk  # recorded at
    return {
        "vad": r.endpoint_offset - r.speech_end - silence_ms / 1000,
        "chunk": chunk_end - r.endpoint_offset,
        "transit": r.eos_to_endpoint - (chunk_end - r.speech_end),
        "final": r.eos_to_final - r.eos_to_endpoint,
    }


async def endpointing(
    stub: Any,
    metadata: list[tuple[str, str]],
    client: TritonClient,
    speech: dict[str, np.ndarray],
    verdicts: list[str],
) -> None:
    print("end of speech -> final result (real-time pacing), by endpointing silence:")
    for silence_ms in SILENCE_SETTINGS:
        results = [
            await gateway_stream(stub, metadata, a, 1.0, silence_ms) for a in speech.values()
        ]
        lat = [r.eos_to_final for r in results if r.eos_to_final is not None]
        beyond = [x - silence_ms / 1000 for x in lat]
        beyond_p50 = statistics.median(beyond)
        print(
            line(f"gateway, silence {silence_ms} ms", lat)
            + f"   beyond the silence p50 {beyond_p50 * 1000:.0f} ms (target <= 150)"
        )
        parts = [p for r in results if (p := latency_parts(r, silence_ms)) is not None]
        if parts:
            medians = {k: statistics.median(p[k] for p in parts) * 1000 for k in parts[0]}
            print("    p50 parts (ms): " + "  ".join(f"{k} {v:.0f}" for k, v in medians.items()))
        verdicts.append(
            verdict(
                f"end of speech -> final <= 150 ms beyond a {silence_ms} ms silence",
                beyond_p50 <= FINAL_BEYOND_SILENCE_TARGET,
                f"p50 {beyond_p50 * 1000:.0f} ms beyond",
            )
        )
    lat_direct = [
        d.eos_to_final
        for a in speech.values()
        if (d := await direct_stream(client, a, 1.0)).eos_to_final is not None
    ]
    print(line("engine direct (END -> final, no endpointing)", lat_direct))


async def tts(
    stub: Any,
    metadata: list[tuple[str, str]],
    client: TritonClient,
    repeats: int,
    verdicts: list[str],
) -> None:
    piper = [await tts_first_byte_gateway(stub, metadata) for _ in range(repeats * 3)]
    espeak = [
        await tts_first_byte_gateway(stub, metadata, "voices/en-us") for _ in range(repeats * 3)
    ]
    direct = [await tts_first_byte_direct(client) for _ in range(repeats * 3)]
    print("TTS time to first audio byte:")
    print(line("gateway, Piper (default voice)", piper) + "   target <= 0.100 s")
    print(line("gateway, eSpeak NG (voices/en-us)", espeak))
    print(line("engine direct (eSpeak NG)", direct))
    print(
        "  ratio Piper/eSpeak through the gateway (p50): "
        f"{ratio(statistics.median(piper), statistics.median(espeak))}"
    )
    verdicts.append(
        verdict(
            "Piper first audio byte through the gateway <= 100 ms",
            statistics.median(piper) <= PIPER_FIRST_BYTE_TARGET,
            f"p50 {statistics.median(piper) * 1000:.0f} ms",
        )
    )


async def concurrency(
    stub: Any,
    metadata: list[tuple[str, str]],
    speech: dict[str, np.ndarray],
    max_streams: int,
    verdicts: list[str],
) -> None:
    print(
        "concurrent real-time streams through the gateway (sustained: all finals, "
        f"p95 end-of-speech -> final < {SILENCE_MS / 1000 + SLACK_SECONDS:.1f} s):"
    )
    sentences = list(speech)
    sustained = 0
    n = 1
    while n <= max_streams:
        plan = [sentences[i % len(sentences)] for i in range(n)]
        results = await asyncio.gather(
            *(gateway_stream(stub, metadata, speech[s], 1.0) for s in plan)
        )
        latencies = [r.eos_to_final for r in results if r.eos_to_final is not None]
        ok = len(latencies) == n and pct(latencies, 0.95) < SILENCE_MS / 1000 + SLACK_SECONDS
        p95 = f"{pct(latencies, 0.95):.2f}s" if latencies else "n/a"
        print(
            f"  {n:3d} streams: finals {len(latencies)}/{n}, p95 latency {p95}  "
            f"{'ok' if ok else 'NOT sustained'}"
        )
        if not ok:
            break
        sustained = n
        n = n * 2 if n < 4 else n + 2
    print(f"  sustained concurrent real-time streams on this machine: {sustained}")
    verdicts.append(
        verdict(
            f"sustained concurrent real-time streams >= {STREAMS_TARGET} (Piper speech)",
            sustained >= STREAMS_TARGET,
            f"{sustained} streams, tried up to {max_streams}",
        )
    )


@dataclass
class TurnTiming:
    """Seconds from the end of the caller's speech to each step of the answer."""

    final: float  # the final transcript (endpointing silence + recognition)
    text: float  # the reply's first text
    audio: float  # the reply's first audio byte


async def converse_turn(
    stub: speech_pb2_grpc.SpeechServiceStub,
    conversations: conversation_pb2_grpc.ConversationServiceStub,
    metadata: list[tuple[str, str]],
    question: np.ndarray,
) -> TurnTiming | None:
    """One spoken question through the gateway's Converse, paced like a microphone that stays
    open (silence) until the answer is complete."""
    created = await conversations.CreateConversation(
        conversation_pb2.CreateConversationRequest(
            conversation=conversation_pb2.Conversation(
                title="speech bench", system_prompt=CONVERSE_FACTS
            )
        ),
        metadata=metadata,
        timeout=30,
    )
    config = speech_pb2.ConverseConfig(
        conversation=created.name,
        recognition_config=speech_pb2.RecognitionConfig(
            encoding=speech_pb2.AUDIO_ENCODING_LINEAR16,
            sample_rate_hertz=RATE,
            language_code="en-US",
        ),
        output_audio_config=speech_pb2.AudioOutputConfig(
            encoding=speech_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=RATE
        ),
    )
    audio = np.concatenate([np.zeros(int(LEAD_SECONDS * RATE), np.int16), question])
    answered = asyncio.Event()
    eos = 0.0

    async def requests() -> AsyncIterator[speech_pb2.ConverseRequest]:
        nonlocal eos
        yield speech_pb2.ConverseRequest(config=config)
        eos = time.perf_counter() + audio.size / RATE
        async for chunk in microphone(audio, 1.0):
            yield speech_pb2.ConverseRequest(audio_content=chunk)
        silence = np.zeros(RATE * CHUNK_MS // 1000, np.int16).tobytes()
        deadline = time.perf_counter() + 30
        async for chunk in microphone(np.zeros(RATE * 30, np.int16), 1.0):
            if answered.is_set() or time.perf_counter() > deadline:
                return
            yield speech_pb2.ConverseRequest(audio_content=silence[: len(chunk)])

    final = text = first_audio = 0.0
    async for response in stub.Converse(requests(), metadata=metadata, timeout=120):
        kind = response.WhichOneof("event")
        now = time.perf_counter()
        if kind == "transcript" and response.transcript.is_final and not final:
            final = now
        elif kind == "text_delta" and not text:
            text = now
        elif kind == "audio" and not first_audio:
            first_audio = now
        elif kind == "turn_complete":
            answered.set()
        elif kind == "error":
            print(f"  Converse error: {response.error.message}")
    if not (final and text and first_audio):
        return None
    return TurnTiming(final - eos, text - eos, first_audio - eos)


async def converse(
    stub: speech_pb2_grpc.SpeechServiceStub,
    channel: grpc.aio.Channel,
    metadata: list[tuple[str, str]],
    client: TritonClient,
    repeats: int,
    verdicts: list[str],
) -> None:
    conversations = conversation_pb2_grpc.ConversationServiceStub(channel)
    question = cut_after_last_word(await synthesize(client, CONVERSE_QUESTION))
    turns = [await converse_turn(stub, conversations, metadata, question) for _ in range(repeats)]
    done = [t for t in turns if t is not None]
    print(
        f"Converse through the gateway (local responder, Piper; {SILENCE_MS} ms endpointing), "
        f"from the end of the caller's speech, {len(done)}/{len(turns)} turns answered:"
    )
    if not done:
        verdicts.append(verdict(CONVERSE_VERDICT, False, "no answer"))
        return
    print(line("final transcript", [t.final for t in done]))
    print(line("first text of the reply", [t.text for t in done]))
    print(line("first byte of the reply's audio", [t.audio for t in done]) + "   target <= 1.200 s")
    first_audio = statistics.median(t.audio for t in done)
    verdicts.append(
        verdict(
            CONVERSE_VERDICT,
            first_audio <= CONVERSE_TARGET and len(done) == len(turns),
            f"p50 {first_audio:.3f} s",
        )
    )


async def main(repeats: int, max_streams: int, tiny: bool) -> None:
    mesh = TestMesh()
    try:
        mesh.ensure_triton()
        mesh.ensure("auth", "usage", "speech", "orchestrator", "conversation")
        gateway = mesh.ensure_gateway()
        async with httpx.AsyncClient(base_url=f"http://{gateway}", timeout=10) as http:
            # Rate limits lifted: a free plan's 60 requests a minute would stop the stream ramp.
            account = await bench_account(http, mesh.settings)
        metadata = list(account.jwt_metadata)
        client = TritonClient(mesh.settings.triton_url, default_timeout=120.0)
        channel = grpc.aio.insecure_channel(gateway)
        stub = speech_pb2_grpc.SpeechServiceStub(channel)
        sentences = SENTENCES[:1] if tiny else SENTENCES
        # Cut right after the last word, so the end of speech is where the audio says it is.
        speech = {s: cut_after_last_word(await synthesize(client, s)) for s in sentences}
        total = sum(a.size for a in speech.values()) / RATE
        print(
            f"speech benchmark: {len(speech)} utterances, {total:.1f} s of speech, "
            f"triton {mesh.settings.triton_url}, gateway {gateway}"
        )
        print_load("at the start")
        verdicts: list[str] = []
        await gateway_stream(stub, metadata, speech[sentences[0]], 0)  # channels, pools
        await accuracy(stub, metadata, tiny)
        await realtime_factor(stub, metadata, client, speech, repeats)
        await endpointing(stub, metadata, client, speech, verdicts)
        await tts(stub, metadata, client, repeats, verdicts)
        await converse(stub, channel, metadata, client, 1 if tiny else repeats + 1, verdicts)
        await concurrency(stub, metadata, speech, max_streams, verdicts)
        print_load("at the end")
        print("\n".join(verdicts))
        await channel.close()
        await client.close()
    finally:
        await mesh.aclose()
        mesh.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-streams", type=int, default=12)
    parser.add_argument("--tiny", action="store_true", help="one clip, one repeat, 2 streams")
    args = parser.parse_args()
    if args.tiny:
        args.repeats, args.max_streams = 1, 2
    asyncio.run(main(args.repeats, args.max_streams, args.tiny))
