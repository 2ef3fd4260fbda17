"""The neural voice: Piper (en_US-joe-medium, served on Triton) is the default en-US voice,
streamed sentence by sentence; eSpeak NG still speaks the other languages; ListVoices reports
both families. Intelligibility is measured by the recognizer itself: its word error rate on
Piper sentences (fetched through the gateway) stays at or under 15 %, where eSpeak's formant
voice is mostly not understood."""

from __future__ import annotations

import re

import numpy as np
from aimesh.speech.v1 import speech_pb2

from tests.integration.speech.conftest import Speech
from tests.support.speech import engine_transcript, word_error_rate

# Everyday assistant sentences (several phrasings of requests, facts, times and places).
SENTENCES = (
    "Please call Stella and ask her to bring these things with her from the store.",
    "I would like to book a table for two at seven tonight.",
    "Our meeting was moved to Thursday afternoon. Please tell the others.",
    "The meeting starts at nine in the morning.",
    "Can you tell me how to get to the train station?",
    "The quick brown fox jumps over the lazy dog.",
    "He said he would do everything in his power to help them.",
    "Remind me to water the plants when I get home.",
    "What time does the library open on Saturday?",
    "Send a message to my brother saying I will be late.",
    "The store closes at eight in the evening.",
    "Please turn off the lights in the living room.",
    "How much does a ticket to the museum cost?",
    "I need to buy milk, bread and some apples.",
    "My flight leaves from the airport at noon.",
    "Thank you very much for your help today.",
)
MAX_MEAN_WER = 0.15


def words_of(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


async def synthesize(speech: Speech, text: str, voice: str = "") -> np.ndarray:
    response = await speech.stub.Synthesize(
        speech_pb2.SynthesizeRequest(
            text=text,
            voice=voice,
            audio_config=speech_pb2.AudioOutputConfig(
                encoding=speech_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000
            ),
        ),
        metadata=speech.metadata,
        timeout=120,
    )
    return np.frombuffer(response.audio_content, dtype="<i2")


async def test_the_recognizer_understands_the_default_voice(gateway_speech: Speech) -> None:
    rates = []
    for sentence in SENTENCES:
        heard = engine_transcript(await synthesize(gateway_speech, sentence))
        rates.append(word_error_rate(words_of(sentence), heard))
    mean = sum(rates) / len(rates)
    print(f"recognizer WER on the default (Piper) voice: {mean:.3f} over {len(rates)} sentences")
    assert mean <= MAX_MEAN_WER, list(zip(SENTENCES, rates))
    espeak = [
        word_error_rate(
            words_of(s), engine_transcript(await synthesize(gateway_speech, s, "voices/en-us"))
        )
        for s in SENTENCES[:4]
    ]
    print(f"recognizer WER on eSpeak NG en-us (same recognizer): {sum(espeak) / 4:.3f}")


async def test_list_voices_reports_both_families(speech: Speech) -> None:
    voices = (
        await speech.stub.ListVoices(
            speech_pb2.ListVoicesRequest(page_size=1000), metadata=speech.metadata
        )
    ).voices
    by_name = {v.name: v for v in voices}
    joe = by_name["voices/en-us-joe"]
    assert joe.family == "piper" and "en-US" in joe.language_codes
    assert joe.natural_sample_rate_hertz == 22050
    assert by_name["voices/de"].family == "espeak"
    assert {v.family for v in voices} == {"piper", "espeak"}


async def test_piper_streams_sentence_by_sentence(speech: Speech) -> None:
    text = "First sentence here. And a second one follows. Then the third."
    chunks = [
        c
        async for c in speech.stub.StreamingSynthesize(
            speech_pb2.StreamingSynthesizeRequest(
                text=text,
                audio_config=speech_pb2.AudioOutputConfig(
                    encoding=speech_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000
                ),
            ),
            metadata=speech.metadata,
            timeout=120,
        )
    ]
    spans = sorted({(c.text_start_offset, c.text_end_offset) for c in chunks})
    assert len(spans) == 3 and spans[0][0] == 0 and spans[-1][1] == len(text)
    # Audio follows the text: each chunk's offset grows, and every sentence has real sound.
    offsets = [c.audio_offset.ToNanoseconds() for c in chunks]
    assert offsets == sorted(offsets)
    for span in spans:
        pcm = np.concatenate(
            [
                np.frombuffer(c.audio_content, "<i2")
                for c in chunks
                if (c.text_start_offset, c.text_end_offset) == span
            ]
        )
        assert pcm.size > 0.3 * 16000 and np.abs(pcm).max() > 1000
