"""A microphone for machines without one: an ALSA capture device that "hears" given audio in
real time, for the real PortAudio/sounddevice capture path of `aimesh transcribe --mic`.

ALSA's `file` PCM plugin replaces what its slave captures with the bytes of its `infile`; the
slave is ALSA's `null` device (no hardware). The infile is a FIFO that a feeder thread fills at
real-time pace (the audio, then silence), so the capture blocks like a sound card would. The
`plug` in front converts to whatever rate the client asks for. PortAudio opens every device once
while it enumerates them (and closes it again): the feeder starts over whenever its reader goes
away, so the stream that stays open hears the audio from its beginning.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path

RATE = 16000
CHUNK_SECONDS = 0.1


def alsa_config(infile: Path) -> str:
    return f"""
pcm.!default {{
  type plug
  slave {{ pcm "fakemic"; format S16_LE; rate {RATE}; channels 1 }}
}}
pcm.fakemic {{
  type file
  slave.pcm "null"
  file "/dev/null"
  infile "{infile}"
  format "raw"
}}
"""


class FakeMicrophone:
    """`pcm` (16 kHz mono PCM16) spoken into the default ALSA capture device of the
    processes started with env(), after `lead_seconds` of silence, then silence for ever."""

    def __init__(self, folder: Path, pcm: bytes, lead_seconds: float = 0.5) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.fifo = folder / "mic.fifo"
        self.config = folder / "asound.conf"
        if not self.fifo.exists():
            os.mkfifo(self.fifo)
        self.config.write_text(alsa_config(self.fifo))
        self.audio = b"\0\0" * int(lead_seconds * RATE) + pcm
        self.audio_seconds = len(self.audio) / 2 / RATE
        self.readers = 0  # how many times a reader opened the device
        self.fed_seconds = 0.0  # audio given to the current reader (lead-in, audio, silence)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)

    def env(self) -> dict[str, str]:
        """ALSA_CONFIG_PATH: the system's alsa.conf (plugin definitions), then ours."""
        return {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{self.config}"}

    def __enter__(self) -> FakeMicrophone:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _open_writer(self) -> int | None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                time.sleep(0.01)
                continue
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
            self.readers += 1
            return fd
        return None

    def _feed(self) -> None:
        step = int(CHUNK_SECONDS * RATE) * 2
        quiet = b"\0" * step
        while (fd := self._open_writer()) is not None:
            try:
                start, sent = time.monotonic(), 0
                while not self._stop.is_set():
                    chunk = self.audio[sent : sent + step] or quiet
                    os.write(fd, chunk)
                    sent += len(chunk)
                    self.fed_seconds = sent / 2 / RATE
                    delay = start + sent / 2 / RATE - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            except BrokenPipeError:
                pass  # the reader closed the device: wait for the next one
            finally:
                os.close(fd)


def no_sound_card(folder: Path) -> dict[str, str]:
    """Environment for a process that sees no audio input: ALSA's default device is a sound
    card that does not exist (the machines the tests run on have none)."""
    config = folder / "no-sound-card.conf"
    config.write_text("pcm.!default { type hw; card 99 }\nctl.!default { type hw; card 99 }\n")
    return {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{config}"}
