"""Speak a sentence into a WAV file with StreamingSynthesize (audio is written as it arrives).

.venv/bin/python -m examples.speak "Hello from aimesh." hello.wav [--voice voices/en-us]
    [--rate 1.0] [--sample-rate 16000] [--address 127.0.0.1:8080] [--token JWT_OR_KEY]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import grpc
from aimesh.speech.v1 import speech_pb2, speech_pb2_grpc

from aimesh_sdk.audio import WavWriter
from examples.transcribe import credentials


async def speak(args: argparse.Namespace) -> int:
    request = speech_pb2.StreamingSynthesizeRequest(
        text=args.text,
        voice=args.voice,
        speaking_rate=args.rate,
        audio_config=speech_pb2.AudioOutputConfig(
            encoding=speech_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=args.sample_rate
        ),
    )
    started = time.perf_counter()
    first = 0.0
    samples = 0
    async with grpc.aio.insecure_channel(args.address) as channel:
        stub = speech_pb2_grpc.SpeechServiceStub(channel)
        try:
            with WavWriter(args.out, args.sample_rate) as wav:
                async for chunk in stub.StreamingSynthesize(
                    request, metadata=credentials(args.token, args.org)
                ):
                    first = first or time.perf_counter() - started
                    wav.write(chunk.audio_content)
                    samples += len(chunk.audio_content) // 2
        except grpc.aio.AioRpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(
        f"wrote {args.out}: {samples / args.sample_rate:.2f} s at {args.sample_rate} Hz "
        f"(first audio after {first * 1000:.0f} ms)"
    )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description="Speak text into a WAV file.")
    parser.add_argument("text")
    parser.add_argument("out")
    parser.add_argument("--voice", default="voices/en-us-joe")
    parser.add_argument("--rate", type=float, default=1.0, help="speaking rate, 0.25-4.0")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument(
        "--address", default=os.environ.get("AIMESH_GATEWAY_ADDR", "127.0.0.1:8080")
    )
    parser.add_argument("--token", default=os.environ.get("AIMESH_TOKEN", ""))
    parser.add_argument(
        "--org", default="", help="call the Speech service directly as this organization"
    )
    raise SystemExit(asyncio.run(speak(parser.parse_args())))


if __name__ == "__main__":
    main()
