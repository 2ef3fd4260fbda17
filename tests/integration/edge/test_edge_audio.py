"""Audio through the gateway with the official `openai` client: speech in every format OpenAI
offers that Speech encodes (mp3, opus, flac, wav, streamed pcm) decodes with libsndfile and is
transcribed back by Speech's recognizer from that very file (the upload's format detected by its
bytes); transcriptions in every response format; unsupported formats (aac out; webm, m4a and
unknown bytes in) and bad uploads answered with OpenAI-shaped 4xx errors."""

from __future__ import annotations

import io
import json
import wave

import httpx
import numpy as np
import openai
import pytest
import soundfile

from tests.support.speech import SENTENCES, word_error_rate

SPEAK = "aimesh-tts"
HEAR = "pocketsphinx-en-us"
SENTENCE = SENTENCES[2]  # "i would like to order a large pizza with cheese"
# Speech's neural voice: the recognizer hears it well (WER ~0.1, where eSpeak's formant voices
# score 0.3-0.8), so a lost or garbled encoding shows.
NEURAL_VOICE = "en-us-joe"


async def _speech(client: openai.AsyncOpenAI, **kwargs: object) -> bytes:
    args = {"model": SPEAK, "voice": NEURAL_VOICE, "input": SENTENCE, **kwargs}
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
    assert _heard_the_sentence(text.text), text.text

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


# response_format -> (Content-Type, what libsndfile reads the file as).
FORMATS = {
    "mp3": ("audio/mpeg", "MP3"),
    "opus": ("audio/ogg", "OGG"),
    "flac": ("audio/flac", "FLAC"),
    "wav": ("audio/wav", "WAV"),
    "pcm": ("audio/pcm", "RAW"),
}


def _heard_the_sentence(heard: str) -> bool:
    others = [s for s in SENTENCES if s != SENTENCE]
    wer = word_error_rate(SENTENCE, heard.lower())
    return wer < 0.35 and all(wer < word_error_rate(o, heard.lower()) for o in others)


@pytest.mark.parametrize("response_format", list(FORMATS))
async def test_every_speech_format_decodes_and_round_trips(
    client: openai.AsyncOpenAI, response_format: str
) -> None:
    media_type, container = FORMATS[response_format]
    args = {"model": SPEAK, "voice": NEURAL_VOICE, "input": SENTENCE,
            "response_format": response_format}
    reply = await client.audio.speech.create(**args)  # type: ignore[arg-type]
    assert reply.response.headers["content-type"] == media_type
    audio = reply.content
    if response_format == "pcm":  # OpenAI's pcm: 24 kHz 16-bit little-endian mono, no header
        samples, rate = soundfile.read(io.BytesIO(audio), dtype="int16", format="RAW",
                                       subtype="PCM_16", samplerate=24_000, channels=1,
                                       endian="LITTLE")
        upload = io.BytesIO()
        soundfile.write(upload, samples, rate, format="WAV", subtype="PCM_16")
        audio = upload.getvalue()
    else:
        with soundfile.SoundFile(io.BytesIO(audio)) as f:
            assert f.format == container, (f.format, f.subtype)
            samples, rate = f.read(dtype="int16"), f.samplerate
    seconds = len(samples) / rate
    assert 1.0 < seconds < 10.0 and np.abs(samples).max() > 1000, (seconds, rate)
    # The file as it came (a name that says nothing: the edge must detect the format itself).
    text = await client.audio.transcriptions.create(model=HEAR, file=("upload.bin", audio))
    assert _heard_the_sentence(text.text), (response_format, text.text)


async def test_speech_defaults_to_mp3_like_openai(edge_http: httpx.AsyncClient, api_key: str) -> None:
    reply = await edge_http.post("/openai/v1/audio/speech", headers={
        "authorization": f"Bearer {api_key}"}, json={"model": SPEAK, "voice": "en-us", "input": "hello"})
    assert reply.status_code == 200 and reply.headers["content-type"] == "audio/mpeg"
    with soundfile.SoundFile(io.BytesIO(reply.content)) as f:
        assert f.format == "MP3" and f.frames > 0


async def test_unsupported_formats_are_bad_requests(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as aac:
        await _speech(client, response_format="aac")
    error = json.loads(aac.value.response.text)["error"]
    assert error["param"] == "response_format" and error["code"] == "unsupported_value"
    assert all(f in error["message"] for f in FORMATS), error["message"]
    uploads = {
        "webm": b"\x1a\x45\xdf\xa3" + b"\x00" * 200,
        "m4a": b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 200,
        "unknown": b"this is not audio at all" * 10,
    }
    for name, data in uploads.items():
        with pytest.raises(openai.BadRequestError) as caught:
            await client.audio.transcriptions.create(model=HEAR, file=(f"a.{name}", data))
        error = json.loads(caught.value.response.text)["error"]
        assert error["param"] == "file" and error["code"] == "unsupported_format", (name, error)
        assert "wav, flac, ogg, mp3" in error["message"], error["message"]
    # A known container whose bytes do not decode: Speech's INVALID_ARGUMENT, still a 400 on file.
    with pytest.raises(openai.BadRequestError) as broken:
        await client.audio.transcriptions.create(
            model=HEAR, file=("a.mp3", b"ID3\x04\x00" + b"\x00" * 100))
    assert json.loads(broken.value.response.text)["error"]["param"] == "file"


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
    ({"response_format": "aac"}, 400, "response_format"),
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
    webm = await edge_http.post(url, headers=auth, data={"model": HEAR},
                                files={"file": ("a.webm", b"\x1a\x45\xdf\xa3" + b"\x00" * 100)})
    assert webm.status_code == 400 and webm.json()["error"]["code"] == "unsupported_format"
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
