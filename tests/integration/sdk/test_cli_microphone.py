"""`aimesh transcribe --mic` as a user runs it: the wheel with its `mic` extra in a fresh
virtualenv, capturing through the real PortAudio → ALSA path from a microphone that "hears" a
Piper-synthesized sentence (fake_microphone.py: ALSA's file plugin fed in real time), streaming to
StreamingRecognize through the gateway. Checks the transcript, interim results (JSON lines, and
the overwritten line on a terminal), --seconds, Ctrl-C, and the error for a missing device."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.sdk.conftest import Venv
from tests.integration.sdk.fake_microphone import RATE, FakeMicrophone, no_sound_card
from tests.support.speech import SENTENCES, word_error_rate

SENTENCE = SENTENCES[1]  # "the weather today is sunny with a high of seventy degrees"


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def signed_in(venv: Venv, platform: str) -> str:
    email = f"mic-{time.time_ns()}@example.com"
    _ok(venv.cli(platform, "signup", "--email", email, "--organization", "Mic Org",
                 env={"AIMESH_PASSWORD": "correct horse battery staple"}))
    return platform


@pytest.fixture(scope="module")
def sentence_wav(venv: Venv, signed_in: str) -> Path:
    """The sentence as the platform's Piper voice says it, 16 kHz mono."""
    wav = venv.root / "sentence.wav"
    _ok(venv.cli(signed_in, "speak", SENTENCE, "-o", str(wav), "--sample-rate", str(RATE)))
    return wav


@pytest.fixture(scope="module")
def spoken(sentence_wav: Path) -> bytes:
    with wave.open(str(sentence_wav), "rb") as reader:
        assert reader.getframerate() == RATE and reader.getnchannels() == 1
        return reader.readframes(reader.getnframes())


@pytest.fixture(scope="module")
def from_file(venv: Venv, signed_in: str, sentence_wav: Path) -> str:
    """What the recognizer makes of the same audio sent as a file (no microphone involved)."""
    heard = _ok(venv.cli(signed_in, "--json", "transcribe", str(sentence_wav)))
    return str(json.loads(heard.stdout)["transcript"])


def _words(text: str) -> str:
    return " ".join(text.lower().replace(",", " ").replace(".", " ").split())


def _assert_heard(text: str, from_file: str) -> None:
    """The microphone path hears the sentence about as well as the file path does."""
    heard, baseline = _words(text), _words(from_file)
    print(f"microphone: {heard!r}; file: {baseline!r}")
    error = word_error_rate(SENTENCE, heard)
    assert error <= word_error_rate(SENTENCE, baseline) + 0.2 and error < 0.5, (heard, baseline)
    assert all(error < word_error_rate(other, heard) for other in SENTENCES if other != SENTENCE)


def test_mic_json_results_for_a_fixed_time(venv: Venv, signed_in: str, spoken: bytes,
                                           from_file: str, tmp_path: Path) -> None:
    seconds = 0.5 + len(spoken) / 2 / RATE + 1.5  # lead-in, the sentence, a pause that ends it
    with FakeMicrophone(tmp_path / "mic", spoken) as mic:
        started = time.monotonic()
        result = _ok(venv.cli(signed_in, "--json", "transcribe", "--mic", "--seconds",
                              f"{seconds:.2f}", "--silence-ms", "400", env=mic.env(),
                              timeout=120))
        elapsed = time.monotonic() - started
    assert mic.readers >= 1
    # The device delivers audio in real time, so capturing N seconds takes about N seconds.
    assert elapsed >= seconds - 1.0, elapsed
    results = [json.loads(line) for line in result.stdout.splitlines()]
    finals = [r["transcript"] for r in results if r["isFinal"]]
    interims = [r for r in results if not r["isFinal"]]
    assert interims, f"no interim results: {results}"
    assert finals, f"no final result: {results}"
    assert all(r["alternatives"][0]["transcript"] == r["transcript"] for r in results)
    _assert_heard(" ".join(finals), from_file)


def _read_until_exit(process: subprocess.Popen[bytes], master: int,
                     interrupt_when: Callable[[], bool], timeout: float) -> bytes:
    output = b""
    deadline = time.monotonic() + timeout
    interrupted = False
    while time.monotonic() < deadline:
        if not interrupted and interrupt_when():
            process.send_signal(signal.SIGINT)
            interrupted = True
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                data = b""
            if not data and process.poll() is not None:
                break
            output += data
        elif process.poll() is not None:
            break
    else:
        process.kill()
        raise AssertionError(f"still running after {timeout} s: {output!r}")
    return output


def test_mic_on_a_terminal_until_ctrl_c(venv: Venv, signed_in: str, spoken: bytes,
                                        from_file: str, tmp_path: Path) -> None:
    master, terminal = pty.openpty()
    with FakeMicrophone(tmp_path / "mic", spoken) as mic:
        process = subprocess.Popen(
            [str(venv.aimesh), "transcribe", "--mic"], cwd=venv.root, stdin=terminal,
            stdout=terminal, stderr=subprocess.PIPE, env={**venv.env(signed_in), **mic.env()})
        os.close(terminal)
        try:
            # Ctrl-C once the capture has heard the sentence and 2 s of silence after it (timed
            # by the audio fed, not the clock: the CLI may be slow to start on a busy machine).
            output = _read_until_exit(
                process, master, lambda: mic.fed_seconds >= mic.audio_seconds + 2.0, timeout=90)
        finally:
            os.close(master)
        stderr = process.stderr.read().decode() if process.stderr else ""
        code = process.wait(timeout=10)
    text = output.decode()
    assert code == 0, f"exit {code}\n{text}\n{stderr}"
    assert "listening until Ctrl-C" in stderr and "stopping" in stderr, stderr
    # Interim results rewrite the current line (carriage return + erase line) ...
    assert "\r\x1b[K" in text, repr(text)
    # ... and the final transcript is what is left on screen.
    screen = [line.rsplit("\x1b[K", 1)[-1].strip() for line in text.replace("\r\n", "\n")
              .split("\n")]
    _assert_heard(" ".join(line for line in screen if line), from_file)


def test_mic_without_an_input_device(venv: Venv, signed_in: str, tmp_path: Path) -> None:
    # ALSA's default device pointed at a sound card that does not exist (and this machine, like
    # CI's, has no sound card): no capture device at all.
    result = venv.cli(signed_in, "transcribe", "--mic", "--seconds", "2",
                      env=no_sound_card(tmp_path), timeout=60)
    assert result.returncode == 9, f"{result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "error: no audio input device found" in result.stderr, result.stderr
    assert "fix:" in result.stderr and "--device" in result.stderr, result.stderr
    # A device name that does not exist, with a working default device present.
    with FakeMicrophone(tmp_path / "mic", b"") as mic:
        missing = venv.cli(signed_in, "transcribe", "--mic", "--device", "no-such-mic",
                           env=mic.env(), timeout=60)
    assert missing.returncode == 9, missing.stderr
    assert "no-such-mic" in missing.stderr, missing.stderr
    both = venv.cli(signed_in, "transcribe", "x.wav", "--mic")
    assert both.returncode == 2 and "one of them" in both.stderr, both.stderr
