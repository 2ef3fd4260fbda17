"""Audio through the gateway with the official `openai` client: speech (WAV and streamed PCM)
from Speech's synthesizer, transcribed back by Speech's recognizer in every response format,
and bad uploads answered with OpenAI-shaped 4xx errors."""

from __future__ import annotations

import io
import json
import wave

import httpx
import openai
import pytest

from tests.support.speech import ASR_RATE_WPM, SENTENCES, word_error_rate

SPEAK = "aimesh-tts"
HEAR = "pocketsphinx-en-us"
SENTENCE = SENTENCES[2]  # "i would like to order a large pizza with cheese"
# The pace the Speech tests found pocketsphinx hears best (eSpeak NG speaks 175 wpm).
SPEED = ASR_RATE_WPM / 175


async def _speech(client: openai.AsyncOpenAI, **kwargs: object) -> bytes:
    args = {"model": SPEAK, "voice": "en-us", "input": SENTENCE, "speed": SPEED, **kwargs}
    reply = await client.audio.speech.create(**args)  # type: ignore[arg-type]
    return reply.content


async def test_speech_to_transcription_round_trip(client: openai.AsyncOpenAI) -> None:
    audio = await _speech(client, response_format="wav")
    try:  # the recognizer's first sequence after a start is slow: warm it, whatever it says
        await client.audio.transcriptions.create(model=HEAR, file=("warm.wav", audio))
    except openai.APIStatusError as exc:
        print(f"warm-up transcription: {exc.status_code} {exc.message}")
    with wave.open(io.BytesIO(audio)) as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2 and wav.getnframes() > 8000
    text = await client.audio.transcriptions.create(model=HEAR, file=("speech.wav", audio, "audio/wav"))
    heard = text.text.lower()
    # pocketsphinx on eSpeak NG is rough: what was heard must be closer to what was said than to
    # any other sentence (as the Speech tests judge it).
    assert word_error_rate(SENTENCE, heard) < 0.7, heard
    others = [s for s in SENTENCES if s != SENTENCE]
    assert all(word_error_rate(SENTENCE, heard) < word_error_rate(o, heard) for o in others), heard

    verbose = await client.audio.transcriptions.create(
        model=HEAR, file=("speech.wav", audio), response_format="verbose_json",
        timestamp_granularities=["word", "segment"])
    assert verbose.duration > 1.0 and verbose.language == "english"
    assert verbose.words and verbose.segments
    assert all(w.start <= w.end for w in verbose.words)
    assert verbose.words[0].start >= verbose.segments[0].start - 0.01

    srt = await client.audio.transcriptions.create(model=HEAR, file=("speech.wav", audio),
                                                   response_format="srt")
    assert str(srt).startswith("1\n00:00:") and " --> " in str(srt)
    vtt = await client.audio.transcriptions.create(model=HEAR, file=("speech.wav", audio),
                                                   response_format="vtt")
    assert str(vtt).startswith("WEBVTT\n\n00:00:")
    plain = await client.audio.transcriptions.create(model=HEAR, file=("speech.wav", audio),
                                                     response_format="text")
    assert str(plain).strip() == text.text


async def test_pcm_is_streamed_24khz(edge_http: httpx.AsyncClient, api_key: str) -> None:
    async with edge_http.stream("POST", "/openai/v1/audio/speech", headers={
            "authorization": f"Bearer {api_key}"}, json={
            "model": SPEAK, "voice": "en-us", "input": SENTENCE, "response_format": "pcm"}) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"] == "audio/pcm"
        pcm = b"".join([chunk async for chunk in reply.aiter_bytes()])
    seconds = len(pcm) / 2 / 24_000
    assert len(pcm) % 2 == 0 and 1.0 < seconds < 10.0


@pytest.mark.parametrize(("kwargs", "status", "param"), [
    ({"voice": "no-such-voice"}, 400, "voice"),
    ({"response_format": "mp3"}, 400, "response_format"),
    ({"speed": 5.0}, 400, "speed"),
    ({"input": "x" * 4097}, 400, "input"),
    ({"model": "tts-1"}, 404, "model"),
])
async def test_bad_speech_requests(client: openai.AsyncOpenAI, kwargs: dict[str, object], status: int,
                                   param: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await _speech(client, **kwargs)
    assert caught.value.status_code == status
    assert json.loads(caught.value.response.text)["error"]["param"] == param


async def test_bad_uploads(edge_http: httpx.AsyncClient, api_key: str, client: openai.AsyncOpenAI) -> None:
    auth = {"authorization": f"Bearer {api_key}"}
    url = "/openai/v1/audio/transcriptions"
    no_file = await edge_http.post(url, headers=auth, data={"model": HEAR})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    not_multipart = await edge_http.post(url, headers=auth, json={"model": HEAR})
    assert not_multipart.status_code == 400 and not_multipart.json()["error"]["param"] == "file"
    mp3 = await edge_http.post(url, headers=auth, data={"model": HEAR},
                               files={"file": ("a.mp3", b"ID3\x04\x00" + b"\x00" * 100)})
    assert mp3.status_code == 400 and mp3.json()["error"]["code"] == "unsupported_format"
    noise = await edge_http.post(url, headers=auth, data={"model": HEAR},
                                 files={"file": ("a.wav", b"this is not audio at all")})
    assert noise.status_code == 400 and noise.json()["error"]["param"] == "file"
    granular = await edge_http.post(url, headers=auth, files={"file": ("a.wav", b"RIFF")},
                                    data={"model": HEAR, "timestamp_granularities[]": "word"})
    assert granular.status_code == 400 and granular.json()["error"]["param"] == "timestamp_granularities"
    too_big = await edge_http.post(url, headers=auth, data={"model": HEAR},
                                   files={"file": ("big.wav", b"RIFF" + b"\x00" * (25 * 1024 * 1024 + 10))})
    assert too_big.status_code == 413 and too_big.json()["error"]["param"] == "file"
    with pytest.raises(openai.NotFoundError):
        await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"RIFF"))
