"""Audio plumbing for Speech: PCM/WAV decoding and encoding, streaming resampling, and the
energy-based voice activity detector that ends utterances (endpointing).

Plain Python + numpy: no gRPC types. Samples are mono int16 throughout.
"""

from __future__ import annotations

import io
import struct
import wave
from dataclasses import dataclass

import numpy as np
import soxr

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


def is_wav(data: bytes) -> bool:
    return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """A RIFF/WAVE file holding mono 16-bit PCM -> (samples, sample rate)."""
    if not is_wav(data):
        raise AudioFormatError("not a RIFF/WAVE file (missing RIFF....WAVE header)")
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            channels = reader.getnchannels()
            width = reader.getsampwidth()
            rate = reader.getframerate()
            frames = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError, struct.error) as exc:
        raise AudioFormatError(f"unreadable WAV: {exc}") from None
    if channels != 1:
        raise AudioFormatError(f"WAV has {channels} channels; only mono is supported")
    if width != 2:
        raise AudioFormatError(f"WAV has {width * 8}-bit samples; only 16-bit PCM is supported")
    return pcm_from_bytes(frames[: len(frames) - len(frames) % 2]), rate


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono int16 samples -> a complete WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(samples.astype("<i2", copy=False).tobytes())
    return out.getvalue()


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


class EnergyVad:
    """Frame energy against an adaptive noise floor: cheap, deterministic, good enough to
    segment utterances for pocketsphinx (which has its own silence model inside an utterance).

    Speech begins after `onset_frames` consecutive loud frames; an utterance ends after
    `silence_ms` of quiet frames, or when it has lasted `max_utterance_ms`.
    """

    FRAME_MS = 20

    def __init__(
        self,
        silence_ms: int,
        max_utterance_ms: int,
        sample_rate: int = ASR_SAMPLE_RATE,
        onset_frames: int = 3,
    ) -> None:
        self.frame = sample_rate * self.FRAME_MS // 1000
        self.silence_frames = max(1, silence_ms // self.FRAME_MS)
        self.max_frames = max(1, max_utterance_ms // self.FRAME_MS)
        self.onset_frames = onset_frames
        self.noise_floor = 100.0  # RMS; adapts downwards/upwards on quiet frames
        self.in_speech = False
        self._loud_run = 0
        self._quiet_run = 0
        self._utt_frames = 0
        self._last_loud_end = 0
        self._pending = np.zeros(0, dtype=np.int16)
        self.position = 0  # samples consumed so far (16 kHz)

    def _loud(self, frame: np.ndarray) -> bool:
        rms = float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) if frame.size else 0.0
        loud = rms > max(300.0, 3.0 * self.noise_floor)
        if not loud:
            # Track the background slowly so steady noise does not count as speech.
            self.noise_floor = 0.95 * self.noise_floor + 0.05 * max(rms, 10.0)
        return loud

    @property
    def last_speech_end(self) -> int | None:
        """End (exclusive sample) of the last loud frame of the utterance in progress."""
        return self._last_loud_end if self.in_speech else None

    def push(self, samples: np.ndarray) -> list[tuple[int, VadDecision]]:
        """Feed samples; returns (sample index just after the deciding frame, decision) pairs."""
        buf = np.concatenate([self._pending, samples]) if self._pending.size else samples
        decisions: list[tuple[int, VadDecision]] = []
        n = len(buf) // self.frame
        for i in range(n):
            frame = buf[i * self.frame : (i + 1) * self.frame]
            start = self.position
            self.position += self.frame
            loud = self._loud(frame)
            if not self.in_speech:
                self._loud_run = self._loud_run + 1 if loud else 0
                if self._loud_run >= self.onset_frames:
                    self.in_speech = True
                    self._utt_frames = self._loud_run
                    self._quiet_run = 0
                    self._last_loud_end = self.position
                    begin = self.position - self._loud_run * self.frame
                    self._loud_run = 0
                    decisions.append((self.position, VadDecision(begin_sample=begin)))
                continue
            self._utt_frames += 1
            if loud:
                self._quiet_run = 0
                self._last_loud_end = start + self.frame
            else:
                self._quiet_run += 1
            if self._quiet_run >= self.silence_frames or self._utt_frames >= self.max_frames:
                forced = self._quiet_run < self.silence_frames
                self.in_speech = False
                self._quiet_run = 0
                end = self.position if forced else self._last_loud_end
                decisions.append((self.position, VadDecision(end_speech_sample=end, forced=forced)))
        self._pending = buf[n * self.frame :].copy()
        return decisions


def duration_of(samples: int, sample_rate: int) -> float:
    return samples / float(sample_rate)
