"""Inference benchmark: the mesh path (Triton over gRPC) side by side with in-process baselines.

    .venv/bin/python -m bench.inference [--rounds 2]

Reuses a tritonserver already answering on AIMESH_TRITON_URL, otherwise starts one (and stops it).
Prints:
* ASR real-time factor (processing time / audio duration, audio sent as fast as possible) and
  latency from the end of audio to the final result (audio paced in real time, like a live
  microphone), through Triton and with pocketsphinx run directly in this process on the same
  audio and the same 100 ms chunking; the ratio is the mesh overhead. On a CPU shared with other
  work the paced Triton path can fall behind real time, which shows up as extra latency.
* TTS time to first audio chunk and real-time factor (synthesis time / audio duration).
* Embeddings per second at batch 1 and batch 32.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from bench.report import print_load, verdict
from scripts import triton_server as launcher
from services.common.config import Settings
from services.common.triton import TritonClient

SENTENCES = (
    "please turn on the kitchen lights and call my mother tomorrow morning",
    "the weather today is sunny with a high of seventy degrees",
    "i would like to order a large pizza with cheese",
    "the meeting starts at nine in the morning",
)
RATE = 16000
CHUNK = 1600  # 100 ms
TTS_TEXT = (
    "Welcome to the aimesh platform. This benchmark measures how quickly speech is synthesized, "
    "how soon the first audio arrives, and how much the service mesh adds on top."
)


@contextlib.contextmanager
def triton() -> Iterator[str]:
    url = Settings.from_env().triton_url
    host, _, port = url.rpartition(":")
    ports = launcher.TritonPorts(grpc=int(port), http=int(port) - 1, metrics=int(port) + 1)
    if launcher.port_in_use(ports.grpc, host):
        launcher.wait_ready(ports, host=host)
        yield url
        return
    proc = launcher.start(ports=ports)
    try:
        yield url
    finally:
        launcher.stop(proc)


def chunks(audio: np.ndarray) -> list[np.ndarray]:
    return [audio[i : i + CHUNK] for i in range(0, len(audio), CHUNK)]


# --- ASR ---------------------------------------------------------------------------------------


def asr_direct(audio: np.ndarray, decoder: object, pace: bool = False) -> tuple[float, float, str]:
    """(processing seconds, end-of-audio latency seconds, transcript) in this process.

    Paced like asr_triton(pace=True): one chunk per 100 ms of wall time, so both paths face the
    same real-time schedule and the latency ratio isolates the mesh overhead.
    """
    parts = chunks(audio)
    start = time.perf_counter()
    decoder.start_utt()  # type: ignore[attr-defined]
    for i, part in enumerate(parts[:-1]):
        decoder.process_raw(part.tobytes(), False, False)  # type: ignore[attr-defined]
        decoder.hyp()  # type: ignore[attr-defined]  # same interim work as the model
        if pace:
            time.sleep(max(0.0, start + (i + 1) * CHUNK / RATE - time.perf_counter()))
    end_of_audio = time.perf_counter()
    decoder.process_raw(parts[-1].tobytes(), False, False)  # type: ignore[attr-defined]
    decoder.end_utt()  # type: ignore[attr-defined]
    hyp = decoder.hyp()  # type: ignore[attr-defined]
    list(decoder.seg())  # type: ignore[attr-defined]
    done = time.perf_counter()
    return done - start, done - end_of_audio, hyp.hypstr if hyp else ""


async def asr_triton(
    client: TritonClient, audio: np.ndarray, pace: bool
) -> tuple[float, float, str]:
    """(processing seconds, end-of-audio latency seconds, transcript) through Triton.

    Unpaced: chunks are sent as fast as the stream accepts them (throughput, for the RTF).
    Paced: one chunk per 100 ms like a live microphone (for the end-of-audio latency).
    """
    parts = chunks(audio)
    rate = np.array([[RATE]], dtype=np.int32)
    end_sent = 0.0
    start = time.perf_counter()
    text = ""
    async with client.recognize() as stream:

        async def feed() -> None:
            nonlocal end_sent
            for i, part in enumerate(parts[:-1]):
                await stream.send({"AUDIO": part.reshape(1, -1), "SAMPLE_RATE": rate})
                if pace:
                    await asyncio.sleep(
                        max(0.0, start + (i + 1) * CHUNK / RATE - time.perf_counter())
                    )
            end_sent = time.perf_counter()
            await stream.end({"AUDIO": parts[-1].reshape(1, -1), "SAMPLE_RATE": rate})

        feeder = asyncio.create_task(feed())
        async for response in stream:
            if bool(response["IS_FINAL"].reshape(-1)[0]):
                text = response["TRANSCRIPT"].reshape(-1)[0].decode()
        await feeder
    done = time.perf_counter()
    return done - start, done - end_sent, text


# --- main --------------------------------------------------------------------------------------


@dataclass
class AsrResult:
    seconds: float  # audio length of all utterances
    utterances: int
    direct_rtf: float
    triton_rtf: float
    direct_latency_ms: float
    triton_latency_ms: float


async def _utterances(client: TritonClient) -> list[np.ndarray]:
    """The benchmark sentences spoken by the synthesizer, at the recognizer's rate."""
    audios: list[np.ndarray] = []
    for s in SENTENCES:
        parts = [
            c async for c in client.synthesize(s, voice="en-us+f2", rate_wpm=130, sample_rate=RATE)
        ]
        audios.append(np.concatenate(parts))
    return audios


async def _measure_asr(client: TritonClient, audios: list[np.ndarray], rounds: int) -> AsrResult:
    """Recognition in-process (pocketsphinx) against through Triton, same audio, same run."""
    from pocketsphinx import Decoder

    seconds = sum(len(a) for a in audios) / RATE
    decoder = Decoder(samprate=RATE)
    direct_proc, direct_lat, mesh_proc, mesh_lat = [], [], [], []
    for _ in range(rounds):
        d_total = m_total = 0.0
        for audio in audios:
            proc, _, _ = asr_direct(audio, decoder)
            d_total += proc
            proc, _, _ = await asr_triton(client, audio, pace=False)
            m_total += proc
        direct_proc.append(d_total)
        mesh_proc.append(m_total)
    for audio in audios[:2]:  # paced: costs real time, two utterances are enough
        _, lat, _ = asr_direct(audio, decoder, pace=True)
        direct_lat.append(lat)
        _, lat, _ = await asr_triton(client, audio, pace=True)
        mesh_lat.append(lat)
    return AsrResult(
        seconds, len(audios),
        statistics.median(direct_proc) / seconds, statistics.median(mesh_proc) / seconds,
        statistics.median(direct_lat) * 1000, statistics.median(mesh_lat) * 1000,
    )


async def _measure_tts(client: TritonClient, rounds: int) -> tuple[float, float]:
    """Median time to the first audio chunk (s) and real-time factor of synthesis."""
    ttfc, tts_rtf = [], []
    for _ in range(max(3, rounds)):
        start = time.perf_counter()
        first = None
        samples = 0
        async for chunk in client.synthesize(TTS_TEXT, sample_rate=22050):
            if first is None:
                first = time.perf_counter() - start
            samples += len(chunk)
        total = time.perf_counter() - start
        ttfc.append(first or total)
        tts_rtf.append(total / (samples / 22050))
    return statistics.median(ttfc), statistics.median(tts_rtf)


async def _measure_embeddings(client: TritonClient) -> tuple[float, float]:
    """Embeddings per second one text per request, and 32 per request."""
    texts = [f"This is benchmark sentence number {i} about service meshes." for i in range(256)]
    await client.embed(texts[:32])  # warm up
    start = time.perf_counter()
    for t in texts[:64]:
        await client.embed([t])
    eps1 = 64 / (time.perf_counter() - start)
    start = time.perf_counter()
    await client.embed(texts)  # 8 requests of 32
    eps32 = len(texts) / (time.perf_counter() - start)
    return eps1, eps32


async def run(url: str, rounds: int) -> None:
    client = TritonClient(url, default_timeout=120.0)
    await client.wait_until_ready()
    asr = await _measure_asr(client, await _utterances(client), rounds)
    ttfc, tts_rtf = await _measure_tts(client, rounds)
    eps1, eps32 = await _measure_embeddings(client)
    await client.close()

    print_load()
    print(
        f"audio: {asr.utterances} utterances, {asr.seconds:.1f} s at 16 kHz, {CHUNK * 1000 // RATE} ms chunks, {rounds} rounds"
    )
    print(f"{'metric':44} {'in-process':>12} {'via Triton':>12} {'ratio':>8}")
    d_rtf, m_rtf = asr.direct_rtf, asr.triton_rtf
    d_lat, m_lat = asr.direct_latency_ms, asr.triton_latency_ms
    print(
        f"{'ASR real-time factor (lower is better)':44} {d_rtf:12.3f} {m_rtf:12.3f} {m_rtf / d_rtf:8.2f}"
    )
    print(
        f"{'ASR end-of-audio -> final result (ms)':44} {d_lat:12.1f} {m_lat:12.1f} {m_lat / d_lat:8.2f}"
    )
    print(f"{'TTS time to first audio chunk (ms)':44} {'':12} {ttfc * 1000:12.1f}")
    print(f"{'TTS real-time factor':44} {'':12} {tts_rtf:12.4f}")
    print(f"{'embeddings/s, batch 1':44} {'':12} {eps1:12.1f}")
    print(f"{'embeddings/s, batch 32':44} {'':12} {eps32:12.1f} {eps32 / eps1:8.2f}")
    # Issue 15's ingestion target needs the embedding model to gain from batches at all.
    print(verdict("embedding batch 32 faster per text than batch 1", eps32 > eps1,
                  f"{eps32 / eps1:.2f}x"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with triton() as url:
        asyncio.run(run(url, args.rounds))


if __name__ == "__main__":
    main()
