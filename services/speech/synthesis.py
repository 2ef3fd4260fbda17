"""Speech synthesis on the Triton TTS model (Piper neural voice for en-US, the default; eSpeak NG
for the other languages): the voice catalog, sentence splitting for streaming and captions, and
output at any sample rate 8-48 kHz.

Plain Python: the servicer validates requests and encodes the chunks.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from services.common.errors import not_found
from services.common.names import resource
from services.common.triton import TTS_MODEL, TritonClient
from services.speech.audio import StreamResampler

# Piper's joe voice and eSpeak NG both render at 22,050 Hz; the model resamples to these rates.
NATURAL_SAMPLE_RATE = 22050
MODEL_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
VOICE = resource("speech.aimesh.dev/Voice")
DEFAULT_VOICE = VOICE.format("en-us-joe")  # Piper, neural
BASE_WPM = 175  # eSpeak's normal rate = speaking_rate 1.0
MIN_WPM, MAX_WPM = 80, 450  # what the model accepts; speaking_rate maps into this range
MODEL_MAX_CHARS = 5000  # per TTS request (model parameter max_text_chars)
MAX_CHUNK_BYTES = 65536
VOICE_CACHE_SECONDS = 300.0

_VOICE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Sentence ends: . ! ? ; : followed by whitespace, or a newline.
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")
# Piper renders a whole request before its first sample (~40 ms per second of speech on a quiet
# CPU, several times that under load), so a long first sentence delays the first audio byte by
# its whole length. The first audio comes from the sentence's first phrase instead: up to an
# early comma or dash, else up to the first function word after two words ("Your meeting | with
# the design team ..."), else its first QUICK_START_WORDS words.
QUICK_START_WORDS = 4
QUICK_START_MIN_REST = 3  # words that must follow for a split to be worth a phrase break
_WORD = re.compile(r"\S+")
_CLAUSE_END = re.compile(r"[,\u2013\u2014]$")
_PHRASE_START = frozenset(
    "a an the and but or so with at in on for to from of by about after before because "
    "if when while that which who than".split()
)


@dataclass(frozen=True)
class VoiceInfo:
    voice_id: str  # the resource id: `voices/{voice_id}`; an eSpeak language name, or Piper's
    display_name: str
    language_codes: tuple[str, ...]
    gender: str  # "male" | "female" | "unspecified"
    engine_voice: str  # what the model's VOICE input takes
    family: str = "espeak"  # "piper" (neural) or "espeak" (formant)

    @property
    def name(self) -> str:
        return VOICE.format(self.voice_id)


def bcp47(code: str) -> str:
    """eSpeak language names ("en-us", "en-gb-x-rp") -> BCP-47 casing ("en-US", "en-GB-x-rp")."""
    parts = code.split("-")
    out = [parts[0].lower()]
    for i, part in enumerate(parts[1:], start=1):
        if part.lower() == "x" or (i > 1 and out[-1].lower() == "x"):
            out.append(part.lower())
        elif len(part) == 2:
            out.append(part.upper())
        elif len(part) == 4:
            out.append(part.title())
        else:
            out.append(part.lower())
    return "-".join(out)


def wpm_for(speaking_rate: float) -> int:
    """speaking_rate (0.25-4.0, 0 = 1.0) -> eSpeak words per minute, clamped to what it can do."""
    rate = speaking_rate or 1.0
    return int(min(MAX_WPM, max(MIN_WPM, round(BASE_WPM * rate))))


def split_sentences(text: str, limit: int = MODEL_MAX_CHARS) -> list[tuple[int, int]]:
    """(start, end) code point spans covering `text`, one per sentence, each at most `limit`
    characters (over-long sentences are cut at the last space before the limit)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.end()))
        start = match.end()
    if start < len(text):
        spans.append((start, len(text)))
    out: list[tuple[int, int]] = []
    for lo, hi in spans:
        while hi - lo > limit:
            cut = text.rfind(" ", lo + 1, lo + limit)
            cut = cut + 1 if cut > lo else lo + limit
            out.append((lo, cut))
            lo = cut
        if text[lo:hi].strip():
            out.append((lo, hi))
    return out


def quick_start_spans(text: str, lo: int, hi: int) -> list[tuple[int, int]]:
    """The sentence `text[lo:hi]` as (first phrase, rest) when it is long enough to split,
    else as itself: the first phrase renders in a fraction of the sentence's time."""
    words = list(_WORD.finditer(text, lo, hi))
    if len(words) < QUICK_START_WORDS + QUICK_START_MIN_REST:
        return [(lo, hi)]
    split = QUICK_START_WORDS - 1  # index of the first word of the rest
    for i, word in enumerate(words[:QUICK_START_WORDS]):
        if _CLAUSE_END.search(word.group()):
            split = i + 1
            break
    else:
        for i in range(2, QUICK_START_WORDS):
            if words[i].group().lower() in _PHRASE_START:
                split = i
                break
    if len(words) - split < QUICK_START_MIN_REST:
        return [(lo, hi)]
    rest = words[split].start()
    return [(lo, rest), (rest, hi)]


@dataclass(frozen=True)
class AudioChunk:
    pcm: np.ndarray  # int16 at the output rate
    text_start: int
    text_end: int


class Synthesizer:
    """Voices from the model (cached), and streaming synthesis."""

    def __init__(self, triton: TritonClient) -> None:
        self.triton = triton
        self._voices: list[VoiceInfo] = []
        self._loaded_at = 0.0

    async def voices(self) -> list[VoiceInfo]:
        if not self._voices or time.monotonic() - self._loaded_at > VOICE_CACHE_SECONDS:
            raw: list[dict[str, object]] = []
            async for response in self.triton.stream(
                TTS_MODEL, {"LIST_VOICES": np.array([True])}, ["VOICES"], timeout=10.0
            ):
                voices = response.get("VOICES")
                if voices is not None:
                    raw.extend(json.loads(v) for v in np.asarray(voices).reshape(-1))
            by_id: dict[str, VoiceInfo] = {}
            for entry in raw:
                listed = entry.get("languages")
                languages = [str(lang) for lang in listed] if isinstance(listed, list) else []
                if not languages:
                    continue
                family = str(entry.get("family", "espeak"))
                voice_id = str(entry.get("voice_id") or languages[0]).lower()
                if not _VOICE_ID.match(voice_id) or voice_id in by_id:
                    continue
                by_id[voice_id] = VoiceInfo(
                    voice_id=voice_id,
                    display_name=str(entry.get("name", voice_id)),
                    language_codes=tuple(bcp47(lang) for lang in languages),
                    gender=str(entry.get("gender", "unspecified")),
                    engine_voice=str(entry["identifier"]) if family == "piper" else voice_id,
                    family=family,
                )
            self._voices = sorted(by_id.values(), key=lambda v: v.name)
            self._loaded_at = time.monotonic()
        return self._voices

    async def voice(self, name: str) -> VoiceInfo:
        """The voice named `voices/{id}` (empty = default); NOT_FOUND otherwise."""
        wanted = name or DEFAULT_VOICE
        for voice in await self.voices():
            if voice.name == wanted.lower():
                return voice
        raise not_found(
            f"voice {wanted!r} does not exist; ListVoices lists the voices",
            reason="VOICE_NOT_FOUND",
            metadata={"voice": wanted},
        )

    async def stream(
        self,
        text: str,
        voice: VoiceInfo,
        speaking_rate: float,
        sample_rate: int,
        *,
        quick_start: bool = True,
    ) -> AsyncIterator[AudioChunk]:
        """Audio chunks as the engine produces them, sentence by sentence, at `sample_rate`.
        `quick_start`: a Piper voice speaks the first sentence's first phrase on its own, so
        the first audio does not wait for the whole sentence (eSpeak streams within one)."""
        model_rate = sample_rate if sample_rate in MODEL_RATES else NATURAL_SAMPLE_RATE
        max_samples = MAX_CHUNK_BYTES // 2
        spans = split_sentences(text)
        if quick_start and voice.family == "piper" and spans:
            spans[:1] = quick_start_spans(text, *spans[0])
        for lo, hi in spans:
            resampler = StreamResampler(model_rate, sample_rate)
            async for pcm in self.triton.synthesize(
                text[lo:hi],
                voice=voice.engine_voice,
                rate_wpm=wpm_for(speaking_rate),
                sample_rate=model_rate,
                timeout=60.0,
            ):
                out = resampler.push(pcm)
                for i in range(0, len(out), max_samples):
                    yield AudioChunk(out[i : i + max_samples], lo, hi)
            tail = resampler.flush() if model_rate != sample_rate else np.zeros(0, dtype=np.int16)
            if tail.size:
                yield AudioChunk(tail, lo, hi)

    async def warm_up(self) -> bool:
        """Synthesize one word with the default voice: True when audio came back."""
        voices = await self.voices()
        if not voices:
            return False
        voice = next((v for v in voices if v.name == DEFAULT_VOICE), voices[0])
        audio = [c async for c in self.stream("Ready.", voice, 1.0, 16000)]
        return bool(audio)
