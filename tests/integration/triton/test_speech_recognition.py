from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.common.errors import ServiceError
from services.common.triton import ASR_MODEL, StreamResponse, TritonClient, parse_recognition
from tests.support.speech import SENTENCES, recognize, synthesize, word_error_rate

# Measured here with the Piper voice: about 0.0-0.35 per sentence. The bound catches a
# broken pipeline (wrong rate, lost chunks, mixed streams give ~1.0) without flaking.
MAX_MEAN_WER = 0.5


async def test_transcribes_synthesized_speech(triton: TritonClient) -> None:
    rates: list[float] = []
    for sentence in SENTENCES[:3]:
        audio = await synthesize(triton, sentence)
        interim, text, final = await recognize(triton, audio)
        rates.append(word_error_rate(sentence, text))
        # Interim hypotheses arrived before the final one.
        assert interim, "no interim results"
        # Word timings: increasing, inside the audio.
        starts = final["WORD_START_MS"].reshape(-1)
        ends = final["WORD_END_MS"].reshape(-1)
        words = [w.decode() for w in final["WORDS"].reshape(-1)]
        assert len(words) == len(starts) == len(ends) == len(text.split())
        assert all(s < e for s, e in zip(starts, ends))
        assert list(starts) == sorted(starts)
        audio_ms = len(audio) * 1000 // 16000
        assert ends[-1] <= audio_ms + 20
        assert int(final["AUDIO_MS"].reshape(-1)[0]) == audio_ms
        conf = final["WORD_CONFIDENCE"].reshape(-1)
        assert ((conf >= 0) & (conf <= 1)).all()
    mean = sum(rates) / len(rates)
    print(f"ASR word error rate per sentence {[round(r, 2) for r in rates]}, mean {mean:.2f}")
    assert mean <= MAX_MEAN_WER


async def test_interim_false_on_start_sends_the_final_only(triton: TritonClient) -> None:
    audio = await synthesize(triton, SENTENCES[1])
    with_interim, text, _ = await recognize(triton, audio, with_interim=True)
    without, same_text, final = await recognize(triton, audio, with_interim=False)
    assert with_interim and not without
    assert same_text == text and final["WORDS"].size == len(text.split())


async def test_wrong_sample_rate_is_invalid_argument(triton: TritonClient) -> None:
    with pytest.raises(ServiceError) as err:
        async with triton.recognize() as stream:
            await stream.send(
                {
                    "AUDIO": np.zeros((1, 800), dtype=np.int16),
                    "SAMPLE_RATE": np.array([[8000]], dtype=np.int32),
                }
            )
            # A well-formed END, so the only problem in the stream is the sample rate.
            await stream.end({"AUDIO": np.zeros((1, 0), dtype=np.int16)})
            async for _ in stream:
                pass
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.violations[0][0] == "SAMPLE_RATE"


async def test_empty_audio_is_invalid_argument(triton: TritonClient) -> None:
    with pytest.raises(ServiceError) as err:
        async with triton.recognize() as stream:
            await stream.end(
                {
                    "AUDIO": np.zeros((1, 0), dtype=np.int16),
                    "SAMPLE_RATE": np.array([[16000]], dtype=np.int32),
                }
            )
            async for _ in stream:
                pass
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "AUDIO" in err.value.message


async def test_oversized_chunk_is_invalid_argument(triton: TritonClient) -> None:
    with pytest.raises(ServiceError) as err:
        async with triton.recognize() as stream:
            await stream.send(
                {
                    "AUDIO": np.zeros((1, 16000 * 11), dtype=np.int16),
                    "SAMPLE_RATE": np.array([[16000]], dtype=np.int32),
                }
            )
            async for _ in stream:
                pass
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_silent_stream_is_closed_by_idle_timeout(triton: TritonClient) -> None:
    with pytest.raises(ServiceError) as err:
        async with triton.sequence(ASR_MODEL, idle_timeout=1.0) as stream:
            await stream.send(
                {
                    "AUDIO": np.zeros((1, 1600), dtype=np.int16),
                    "SAMPLE_RATE": np.array([[16000]], dtype=np.int32),
                }
            )
            async for _ in stream:  # the caller never sends more audio nor END
                pass
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.value.reason == "STREAM_IDLE_TIMEOUT"


async def test_twenty_concurrent_streams_do_not_mix(triton: TritonClient) -> None:
    sentences = SENTENCES
    audios = [await synthesize(triton, s) for s in sentences]
    # pocketsphinx is deterministic: one stream at a time gives the reference transcripts.
    baseline = [(await recognize(triton, a))[1] for a in audios]
    assert len(set(baseline)) == len(baseline)
    results = await asyncio.gather(
        *(recognize(triton, audios[i % len(audios)], chunk=3200) for i in range(20))
    )
    # Chunking differs from the baseline (3200 vs 1600), so compare by closeness, not equality.
    for i, (_interim, text, _final) in enumerate(results):
        own = word_error_rate(baseline[i % len(audios)], text)
        others = [word_error_rate(b, text) for j, b in enumerate(baseline) if j != i % len(audios)]
        assert own < min(others), (i, text, baseline)


async def test_caller_going_away_cancels_the_stream(triton: TritonClient) -> None:
    audio = await synthesize(triton, SENTENCES[3])
    got_interim = asyncio.Event()

    async def caller() -> None:
        async with triton.recognize() as stream:
            for i in range(0, len(audio) // 2, 1600):
                await stream.send(
                    {
                        "AUDIO": audio[i : i + 1600].reshape(1, -1),
                        "SAMPLE_RATE": np.array([[16000]], dtype=np.int32),
                    }
                )
            async for _ in stream:
                got_interim.set()
                await asyncio.sleep(3600)  # a caller that hangs until it is cancelled

    task = asyncio.create_task(caller())
    await asyncio.wait_for(got_interim.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The model keeps serving, and a full stream still gets its typed final result.
    _interim, text, final = await recognize(triton, audio)
    result = parse_recognition(StreamResponse("x", final, True))
    assert result.is_final and result.transcript == text
    assert [w.word for w in result.words] == text.split()
    assert result.audio_ms == len(audio) * 1000 // 16000


async def test_chunk_for_a_dropped_sequence_is_failed_precondition(triton: TritonClient) -> None:
    # After max_sequence_idle_microseconds Triton forgets a sequence; its next chunk then carries
    # no START flag. Reproduce that message without waiting 30 s: skip START on purpose.
    stream = triton.sequence(ASR_MODEL)
    stream._sent = 1  # the START request "was sent" long ago
    await stream.send({"AUDIO": np.zeros((1, 1600), dtype=np.int16)})
    with pytest.raises(ServiceError) as err:
        async for _ in stream:
            pass
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.reason == "TRITON_SEQUENCE_NOT_OPEN"
    assert "START" in err.value.message


async def test_end_of_utterance_gives_one_final_per_utterance_on_one_sequence(
    triton: TritonClient,
) -> None:
    first = await synthesize(triton, SENTENCES[0])
    second = await synthesize(triton, SENTENCES[1])
    finals: list[dict[str, np.ndarray]] = []
    request_ids: set[str] = set()
    async with triton.recognize() as stream:

        async def feed() -> None:
            for audio, last in ((first, False), (second, True)):
                for i in range(0, len(audio), 1600):
                    piece = {"AUDIO": audio[i : i + 1600].reshape(1, -1)}
                    if i == 0 and audio is first:
                        piece["SAMPLE_RATE"] = np.array([[16000]], dtype=np.int32)
                    flush = i + 1600 >= len(audio)
                    if flush and last:
                        await stream.end(piece)
                    else:
                        await stream.send(piece, end_of_utterance=flush)

        feeder = asyncio.create_task(feed())
        try:
            async for response in stream:
                request_ids.add(response.request_id)
                if bool(response["IS_FINAL"].reshape(-1)[0]):
                    finals.append(response.outputs)
        finally:
            feeder.cancel()
    # Every response came from the one sequence (request ids are "<sequence id>-<n>").
    assert {rid.split("-")[0] for rid in request_ids} == {str(stream.sequence_id)}
    assert len(finals) == 2
    first_ms, total_ms = len(first) * 1000 // 16000, (len(first) + len(second)) * 1000 // 16000
    results = [parse_recognition(StreamResponse("x", f, True)) for f in finals]
    assert [r.audio_ms for r in results] == [first_ms, total_ms]
    for i, (result, sentence) in enumerate(zip(results, SENTENCES[:2])):
        # Its own utterance, not the other one or a merge (accuracy: the mean-WER test).
        other = SENTENCES[1 - i]
        assert word_error_rate(sentence, result.transcript) < word_error_rate(
            other, result.transcript
        ), result.transcript
        assert [w.word for w in result.words] == result.transcript.split()
    # Timings count from the sequence start: the second utterance's words lie after the first's
    # audio, and all timings increase.
    assert all(first_ms <= w.start_ms and w.end_ms <= total_ms + 20 for w in results[1].words)
    assert all(w.end_ms <= first_ms + 20 for w in results[0].words)
    starts = [w.start_ms for r in results for w in r.words]
    assert starts == sorted(starts)


async def test_end_after_a_flushed_utterance_closes_quietly(triton: TritonClient) -> None:
    audio = await synthesize(triton, SENTENCES[0])
    responses: list[StreamResponse] = []
    async with triton.recognize() as stream:
        await stream.send(
            {"AUDIO": audio.reshape(1, -1), "SAMPLE_RATE": np.array([[16000]], dtype=np.int32)},
            end_of_utterance=True,
        )
        await stream.end({"AUDIO": np.zeros((1, 0), dtype=np.int16)})
        async for response in stream:
            responses.append(response)
    finals = [r for r in responses if bool(r["IS_FINAL"].reshape(-1)[0])]
    # One final (the flushed utterance); END with nothing new adds none, and no error.
    assert len(finals) == 1 and parse_recognition(finals[0]).transcript
