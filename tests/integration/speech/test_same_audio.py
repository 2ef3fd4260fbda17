"""The same audio gets the same transcript, however busy the machine is: N streams of identical
audio run at once through StreamingRecognize while other processes keep both cores busy, and
every stream's finals equal those of one stream on a quieter machine.

(Recognition of "the same" audio once seemed to vary under load. It was not the same audio: the
tests rendered their Piper clips with Piper's random sampling noise, a new clip every run. This
test holds the mesh to the property itself with byte-identical audio.)"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from tests.integration.speech.conftest import (
    Speech,
    finals,
    stream_recognize,
    with_pauses,
)
from tests.support.speech import piper_speech

STREAMS = 8
BUSY_PROCESSES = 2  # the machine's cores


def _spin() -> None:
    while True:
        pass


@contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """`count` processes spinning on the CPU for the duration of the block."""
    context = multiprocessing.get_context("spawn")
    spinners = [context.Process(target=_spin, daemon=True) for _ in range(count)]
    for spinner in spinners:
        spinner.start()
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.join()


def transcripts(responses: list) -> list[str]:
    return [r.alternatives[0].transcript if r.alternatives else "" for r in finals(responses)]


async def test_same_audio_same_transcript_across_concurrent_streams_under_load(
    speech: Speech,
) -> None:
    audio = with_pauses(
        piper_speech("what is the capital of france"),
        piper_speech("the weather today is sunny with a high of seventy degrees"),
    )
    assert np.array_equal(audio, with_pauses(
        piper_speech("what is the capital of france"),
        piper_speech("the weather today is sunny with a high of seventy degrees"),
    )), "the test audio must be identical on every rendering"
    reference = transcripts(await stream_recognize(speech, audio, interim_results=True))
    assert len(reference) == 2 and all(reference), reference
    with busy_cores(BUSY_PROCESSES):
        # Half the streams send as fast as they can, half at the pace of speech.
        runs = await asyncio.gather(*(
            stream_recognize(speech, audio, interim_results=True, realtime=float(i % 2))
            for i in range(STREAMS)
        ))
    heard = [transcripts(run) for run in runs]
    assert all(h == reference for h in heard), (reference, heard)
