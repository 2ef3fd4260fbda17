"""Transcribe a WAV file with StreamingRecognize, streaming it like a live microphone.

    .venv/bin/python -m examples.transcribe question.wav [--address 127.0.0.1:8080] [--token JWT_OR_KEY]
        [--interim] [--realtime 1.0]

Prints interim results (with --interim) on one updating line and each final result with word
timings. Through the gateway, pass an access token or API key (--token, or AIMESH_TOKEN);
directly against the Speech service on a local stack, pass --org to set the identity headers
the gateway would have set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc
from aimesh.speech.v1 import speech_pb2_grpc

from aimesh_sdk.audio import read_wav, recognize_requests, silence


def credentials(token: str, org: str) -> list[tuple[str, str]]:
    if org:  # straight to the service: what the gateway would set
        return [
            ("x-aimesh-org", org),
            ("x-aimesh-subject", "users/cli"),
            ("x-aimesh-roles", "member"),
        ]
    return [("authorization", f"Bearer {token}")] if token else []


async def transcribe(args: argparse.Namespace) -> int:
    pcm, rate = read_wav(args.wav)
    pcm += silence(1.0, rate)  # a short pause at the end so the last utterance ends naturally
    async with grpc.aio.insecure_channel(args.address) as channel:
        stub = speech_pb2_grpc.SpeechServiceStub(channel)
        requests = recognize_requests(
            pcm, rate, interim_results=args.interim, realtime=args.realtime
        )
        try:
            async for response in stub.StreamingRecognize(
                requests, metadata=credentials(args.token, args.org)
            ):
                if response.error.code:
                    print(
                        f"\n[utterance {response.utterance_index} failed: {response.error.message}]"
                    )
                for result in response.results:
                    best = result.alternatives[0]
                    if not result.is_final:
                        print(f"\r… {best.transcript}", end="", flush=True)
                        continue
                    print(f"\r{best.transcript}  (confidence {best.confidence:.2f})")
                    for word in best.words:
                        start = word.start_offset.ToNanoseconds() / 1e9
                        end = word.end_offset.ToNanoseconds() / 1e9
                        print(f"    {start:7.2f}-{end:7.2f}s  {word.word}")
        except grpc.aio.AioRpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description="Transcribe a mono 16-bit WAV file.")
    parser.add_argument("wav")
    parser.add_argument(
        "--address", default=os.environ.get("AIMESH_GATEWAY_ADDR", "127.0.0.1:8080")
    )
    parser.add_argument("--token", default=os.environ.get("AIMESH_TOKEN", ""))
    parser.add_argument(
        "--org", default="", help="call the Speech service directly as this organization"
    )
    parser.add_argument("--interim", action="store_true", help="show interim results")
    parser.add_argument(
        "--realtime", type=float, default=1.0, help="pacing: 1 = real time, 0 = as fast as possible"
    )
    raise SystemExit(asyncio.run(transcribe(parser.parse_args())))


if __name__ == "__main__":
    main()
