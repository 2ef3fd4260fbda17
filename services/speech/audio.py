"""Audio plumbing for Speech: raw PCM, streaming resampling, and the
voice activity detector that ends utterances (endpointing).

Plain Python + numpy: no gRPC types. Samples are mono int16 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr
from pocketsphinx import Vad

# The recognizer's native rate (the pocketsphinx en-US model).
ASR_SAMPLE_RATE = 16000
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000


class AudioFormatError(ValueError):
    """The bytes are not the audio they claim to be; the message says what is wrong."""


def pcm_from_bytes(data: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM bytes -> int16 samples (length must be even)."""
    if len(data) % 2:
        raise AudioFormatError(f"{len(data)} bytes is not a whole number of 16-bit samples")
    return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)


class StreamResampler:
    """Chunk-by-chunk resampling that keeps filter state across chunks (no clicks at borders)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16")
        )

    def push(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return samples
        return np.asarray(self._stream.resample_chunk(samples, last=last), dtype=np.int16)

    def flush(self) -> np.ndarray:
        return self.push(np.zeros(0, dtype=np.int16), last=True)


def resample(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Whole-buffer resampling (unary paths)."""
    if in_rate == out_rate or samples.size == 0:
        return samples
    return np.asarray(soxr.resample(samples, in_rate, out_rate), dtype=np.int16)


@dataclass(frozen=True)
class VadDecision:
    """What one frame changed: speech began at `begin_sample`, or the utterance ended with
    its speech lasting until `speech_end_sample` (exclusive), in 16 kHz samples of the stream."""

    begin_sample: int | None = None
    end_speech_sample: int | None = None
    forced: bool = False  # ended by max utterance duration rather than silence


class SpeechDetector:
    """Endpointing on the WebRTC voice activity classifier that pocketsphinx ships (`Vad`,
    a GMM over spectral features, 30 ms frames): speech begins after `onset_frames` speech
    frames in a row (4: the classifier calls its first 3 frames speech while it adapts); an
    utterance ends after `silence_ms` of non-speech frames, or when it has lasted
    `max_utterance_ms`.

    It only decides where utterances begin and end; every sample still goes to the
    recognizer (a quiet word ending the classifier misses is not lost). The strictest mode:
    the looser ones call steady background noise speech, so an utterance would never end.

    The classifier (WebRTC's) goes on calling frames speech for a hangover after the voice
    stops: at least 60 ms in every mode and frame length, 90 ms after a long stretch of speech
    (measured on Piper sentences cut after the last word: its speech ends 86 ms late at the
    median). Those frames are silence, so the speech ends where the hangover begins and they
    count towards the silence: an utterance closes `silence_ms` after the voice stopped rather
    than ~85 ms later.
    """

    FRAME_SECONDS = 0.03
    HANGOVER_SECONDS = 0.06  # the least hangover the classifier adds after speech

    def __init__(
        self,
        silence_ms: int,
        max_utterance_ms: int,
        sample_rate: int = ASR_SAMPLE_RATE,
        onset_frames: int = 4,
        mode: int = Vad.STRICT,
    ) -> None:
        self._vad = Vad(mode, sample_rate, self.FRAME_SECONDS)
        self.frame = self._vad.frame_bytes // 2
        frame_ms = 1000.0 * self.frame / sample_rate
        self.silence_frames = max(1, round(silence_ms / frame_ms))
        # Never credit the whole silence: at least one frame the classifier calls silence.
        self.hangover_frames = min(
            round(self.HANGOVER_SECONDS * 1000 / frame_ms), self.silence_frames - 1
        )
        self.max_frames = max(1, round(max_utterance_ms / frame_ms))
        self.onset_frames = onset_frames
        self.in_speech = False
        self._speech_run = 0
        self._quiet_run = 0
        self._utt_frames = 0
        self._last_speech_end = 0
        self._utterance_begin = 0
        self._await_quiet = False  # after restart(): until a non-speech frame
        self._pending = np.zeros(0, dtype=np.int16)
        self.position = 0  # samples consumed so far (16 kHz)

    def restart(self) -> None:
        """Forget the utterance in progress and wait for speech again (position kept). Speech
        counts only after a non-speech frame: the classifier's hangover, or the rest of the
        dropped speech, must not begin a new utterance at once."""
        self.in_speech = False
        self._speech_run = self._quiet_run = self._utt_frames = 0
        self._await_quiet = True

    @property
    def pausing(self) -> bool:
        """In an utterance, and the latest frame was silence: it may end at any frame now."""
        return self.in_speech and self._quiet_run > 0

    @property
    def last_speech_end(self) -> int | None:
        """End (exclusive sample) of the last speech frame of the utterance in progress."""
        return self._last_speech_end if self.in_speech else None

    def _frame(self, speech: bool) -> VadDecision | None:
        """Advance the state machine by one classified frame (already counted in position)."""
        if self._await_quiet:
            self._await_quiet = speech
            return None
        if not self.in_speech:
            self._speech_run = self._speech_run + 1 if speech else 0
            if self._speech_run < self.onset_frames:
                return None
            self.in_speech = True
            self._utt_frames = self._speech_run
            self._quiet_run = 0
            self._utterance_begin = self.position - self._speech_run * self.frame
            self._last_speech_end = self.position
            begin = self.position - self._speech_run * self.frame
            self._speech_run = 0
            return VadDecision(begin_sample=begin)
        self._utt_frames += 1
        if speech:
            self._quiet_run = 0
            self._last_speech_end = self.position
        else:
            self._quiet_run += 1
        silent = self._quiet_run + self.hangover_frames >= self.silence_frames
        if not silent and self._utt_frames < self.max_frames:
            return None
        self.in_speech = False
        self._quiet_run = 0
        if not silent:
            return VadDecision(end_speech_sample=self.position, forced=True)
        # The hangover frames the classifier called speech were silence.
        voice_end = self._last_speech_end - self.hangover_frames * self.frame
        return VadDecision(end_speech_sample=max(voice_end, self._utterance_begin))

    def push(self, samples: np.ndarray) -> list[tuple[int, VadDecision]]:
        """Feed samples; returns (sample index just after the deciding frame, decision) pairs."""
        buf = np.concatenate([self._pending, samples]) if self._pending.size else samples
        decisions: list[tuple[int, VadDecision]] = []
        n = len(buf) // self.frame
        for i in range(n):
            frame = buf[i * self.frame : (i + 1) * self.frame]
            self.position += self.frame
            decision = self._frame(self._vad.is_speech(frame.astype("<i2", copy=False).tobytes()))
            if decision is not None:
                decisions.append((self.position, decision))
        self._pending = buf[n * self.frame :].copy()
        return decisions


def duration_of(samples: int, sample_rate: int) -> float:
    return samples / float(sample_rate)
