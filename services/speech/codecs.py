"""Audio formats users have, through libsndfile (`soundfile`, whose wheels carry FLAC, Ogg
Opus, MP3 and the telephone codecs): decode any accepted input to mono int16 PCM, encode
synthesized PCM to any offered output. Nothing here is a hand-written codec.

Decoding checks the bytes against the label first: a container in the wrong encoding, a raw
label on a container, or bytes libsndfile cannot read raise AudioFormatError naming the problem
(the servicer turns it into INVALID_ARGUMENT before recognition starts).

Plain Python: no gRPC types; encodings are the names of speech.v1.AudioEncoding without the
AUDIO_ENCODING_ prefix.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile

from services.speech.audio import AudioFormatError, pcm_from_bytes

# Containers: the label, libsndfile's format name, and the subtypes that label means.
CONTAINERS = {
    "WAV": ("WAV", None),
    "FLAC": ("FLAC", None),
    "OGG_OPUS": ("OGG", "OPUS"),
    "MP3": ("MP3", None),
}
# Headerless 8-bit telephone codecs, at the sample rate the caller states.
TELEPHONY = {"MULAW": "ULAW", "ALAW": "ALAW"}
TELEPHONY_RATE = 8000
RAW_INPUTS = ("LINEAR16", *TELEPHONY)
INPUTS = (*RAW_INPUTS, "WAV", "FLAC", "OGG_OPUS", "MP3")
OUTPUTS = ("LINEAR16", "WAV", "FLAC", "MULAW", "OGG_OPUS", "MP3")
# Encodings a stream can carry chunk by chunk (every byte run decodes on its own).
STREAMABLE = RAW_INPUTS
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# Leading bytes of the containers, to catch a mislabelled upload.
_MAGIC = {b"RIFF": "WAV", b"fLaC": "FLAC", b"OggS": "OGG_OPUS", b"ID3": "MP3"}


def sniff(data: bytes) -> str | None:
    """The container the bytes start like, if any."""
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    return None  # (a bare MPEG frame sync is too common in raw PCM to count)


def _mono(samples: np.ndarray) -> np.ndarray:
    if samples.shape[1] == 1:
        return samples[:, 0].copy()
    # Several channels: the recognizer hears their mix.
    return np.rint(samples.astype(np.float64).mean(axis=1)).astype(np.int16)


def decode(data: bytes, encoding: str, sample_rate: int) -> tuple[np.ndarray, int]:
    """Bytes labelled `encoding` -> (mono int16 samples, their rate). `sample_rate` is required
    for raw encodings and, when given for a container, must agree with its header."""
    found = sniff(data)
    if encoding in RAW_INPUTS:
        if found is not None:
            raise AudioFormatError(f"content is a {found} file, not raw {encoding} audio")
        if encoding == "LINEAR16":
            return pcm_from_bytes(data), sample_rate
        if sample_rate != TELEPHONY_RATE:
            raise AudioFormatError(f"{encoding} audio must be {TELEPHONY_RATE} Hz")
        return _read(data, encoding, format="RAW", subtype=TELEPHONY[encoding], rate=sample_rate)
    if encoding not in CONTAINERS:
        raise AudioFormatError(f"{encoding} is not an input encoding")
    if found is not None and found != encoding:
        raise AudioFormatError(f"content is a {found} file, not {encoding}")
    samples, rate = _read(data, encoding)
    if sample_rate and sample_rate != rate:
        raise AudioFormatError(f"{sample_rate} Hz disagrees with the file's header ({rate} Hz)")
    return samples, rate


def _read(
    data: bytes,
    encoding: str,
    *,
    format: str | None = None,
    subtype: str | None = None,
    rate: int | None = None,
) -> tuple[np.ndarray, int]:
    try:
        with soundfile.SoundFile(
            io.BytesIO(data),
            format=format,
            subtype=subtype,
            samplerate=rate,
            channels=1 if format else None,
        ) as reader:
            expected_format, expected_subtype = CONTAINERS.get(encoding, (format, subtype))
            if reader.format != expected_format or (
                expected_subtype and reader.subtype != expected_subtype
            ):
                raise AudioFormatError(
                    f"content is {reader.format}/{reader.subtype}, not {encoding}"
                )
            samples = reader.read(dtype="int16", always_2d=True)
            return _mono(samples), int(reader.samplerate)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioFormatError(f"unreadable {encoding} audio: {exc}") from None


def check_output(encoding: str, sample_rate: int) -> str | None:
    """Why `encoding` at `sample_rate` cannot be produced, or None when it can."""
    if encoding not in OUTPUTS:
        return f"must be one of {', '.join(OUTPUTS)}"
    if encoding == "OGG_OPUS" and sample_rate not in OPUS_RATES:
        return f"OGG_OPUS needs a sample rate of {', '.join(map(str, OPUS_RATES))} Hz"
    if encoding == "MP3" and sample_rate not in MP3_RATES:
        return f"MP3 needs a sample rate of {', '.join(map(str, MP3_RATES))} Hz"
    return None


def default_rate(encoding: str, natural: int) -> int:
    """The output rate when the caller leaves it to us: the voice's own where the codec allows."""
    if encoding == "MULAW":
        return TELEPHONY_RATE
    if encoding == "OGG_OPUS":
        return 24000
    return natural


def encode(samples: np.ndarray, sample_rate: int, encoding: str) -> bytes:
    """Mono int16 samples -> bytes in `encoding` (a whole file for containers)."""
    pcm = samples.astype("<i2", copy=False)
    if encoding == "LINEAR16":
        return pcm.tobytes()
    out = io.BytesIO()
    if encoding == "MULAW":
        soundfile.write(out, pcm, sample_rate, format="RAW", subtype="ULAW")
    else:
        container, subtype = CONTAINERS[encoding]
        subtype = subtype or {"MP3": "MPEG_LAYER_III"}.get(encoding, "PCM_16")
        soundfile.write(out, pcm, sample_rate, format=container, subtype=subtype)
    return out.getvalue()
