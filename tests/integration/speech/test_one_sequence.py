"""One client stream = one Triton ASR sequence: a RecognitionSession on the real ASR model, with
the requests it puts on the wire recorded. Utterances are flushed with END_OF_UTTERANCE on the
same sequence (one START, one END), every sample of the stream reaches the recognizer (the VAD
only places END_OF_UTTERANCE; silence is decoded, not dropped), and each utterance still gets its
own final with stream-relative, increasing word timings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.triton import ASR_END_OF_UTTERANCE, TritonClient
from services.speech.recognition import (
    Hypothesis,
    RecognitionOptions,
    RecognitionSession,
    UtteranceFailed,
)
from tests.integration.speech.conftest import RATE
from tests.support.mesh import TestMesh
from tests.support.speech import SENTENCES, word_error_rate


@dataclass(frozen=True)
class Sent:
    sequence_id: int
    start: bool
    end: bool
    end_of_utterance: bool
    samples: int


class _RecordingStub:
    """Wraps the client's GRPCInferenceService stub: records every streamed request."""

    def __init__(self, stub: Any) -> None:
        self.stub = stub
        self.sent: list[Sent] = []

    def ModelStreamInfer(self, requests: AsyncIterator[Any], **kwargs: Any) -> Any:
        async def tap() -> AsyncIterator[Any]:
            async for request in requests:
                names = [i.name for i in request.inputs]
                audio = request.inputs[names.index("AUDIO")] if "AUDIO" in names else None
                self.sent.append(
                    Sent(
                        request.parameters["sequence_id"].int64_param,
                        request.parameters["sequence_start"].bool_param,
                        request.parameters["sequence_end"].bool_param,
                        ASR_END_OF_UTTERANCE in names,
                        int(audio.shape[-1]) if audio is not None else 0,
                    )
                )
                yield request

        return self.stub.ModelStreamInfer(tap(), **kwargs)


async def test_multi_utterance_stream_uses_exactly_one_sequence(
    speech_mesh: TestMesh, utterances: dict[str, np.ndarray]
) -> None:
    first, second = utterances[SENTENCES[0]], utterances[SENTENCES[1]]
    lead, gap, offset = 0.4, 1.2, 7.0
    silence = np.zeros(int(gap * RATE), dtype=np.int16)
    part_one = np.concatenate([np.zeros(int(lead * RATE), dtype=np.int16), first, silence])
    part_two = np.concatenate([second, silence])
    client = TritonClient(speech_mesh.settings.triton_url, default_timeout=60.0)
    stub = client._stub = _RecordingStub(client._stub)
    session = RecognitionSession(
        client, RecognitionOptions(sample_rate=RATE, interim_results=True, audio_offset=offset)
    )
    events: list[Any] = []

    async def collect() -> None:
        async for event in session.events():
            events.append(event)

    reader = asyncio.create_task(collect())
    try:
        for chunk in np.array_split(part_one, len(part_one) // 1600):
            await session.push(chunk)
        await asyncio.sleep(1.5)  # the caller pauses between its messages
        for chunk in np.array_split(part_two, len(part_two) // 1600):
            await session.push(chunk)
        await session.finish()
        await session.close_events()
        await asyncio.wait_for(reader, 60)
    finally:
        reader.cancel()
        await session.abort()
        await client.close()

    assert not [e for e in events if isinstance(e, UtteranceFailed)], events
    finals = [e for e in events if isinstance(e, Hypothesis) and e.is_final]
    assert [f.utterance for f in finals] == [0, 1]
    # Exactly one sequence: one id, one START, one END_OF_UTTERANCE per utterance (both ended by
    # endpointing), then the caller's half-close sends END.
    assert session.sequences_opened == 1
    assert len({s.sequence_id for s in stub.sent}) == 1
    assert [s.start for s in stub.sent].count(True) == 1 and stub.sent[0].start
    assert [s.end for s in stub.sent].count(True) == 1 and stub.sent[-1].end
    assert [s.end_of_utterance for s in stub.sent].count(True) == 2
    # Never discards audio: the sequence got exactly the stream's samples, silence included.
    assert sum(s.samples for s in stub.sent) == len(part_one) + len(part_two)
    # Each final: its own sentence, word timings inside its own speech on the stream's clock.
    bounds = [
        (offset + lead, offset + lead + len(first) / RATE),
        (offset + len(part_one) / RATE, offset + (len(part_one) + len(second)) / RATE),
    ]
    for i, (final, sentence, (lo, hi)) in enumerate(zip(finals, SENTENCES[:2], bounds)):
        # Its own utterance, not the other one or a merge (accuracy is bounded elsewhere, on
        # the mean over sentences: one synthetic sentence alone can exceed any tight bound).
        other = SENTENCES[1 - i]
        assert word_error_rate(sentence, final.text) < word_error_rate(other, final.text), final.text
        assert final.words
        assert lo - 0.35 <= final.words[0].start and final.words[-1].end <= hi + 0.35, (
            final.words,
            lo,
            hi,
        )
    times = [t for f in finals for w in f.words for t in (w.start, w.end)]
    assert times == sorted(times)
