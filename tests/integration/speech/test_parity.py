"""Parity with the engine, from the first stream: StreamingRecognize's finals are, word for word,
what the pocketsphinx engine itself makes of the whole clip — on a Speech + Triton started
seconds ago (the first streams after SERVING), and again once warm.

No ground truth is needed: the reference is the engine's own output (tests/support/speech.py
`engine_transcript`: a fresh decoder, the wheel's en-US model, the clip as one utterance). The
clips are Piper speech (the packaged en_US-joe-medium voice) at several speaking rates and gains,
after silence with background noise mixed in, cut right after the last word so the client
half-closes the moment the voice stops. A mismatch means the mesh lost, damaged or added words:
audio held back by the VAD, a pooled decoder carrying state from an earlier stream, or a final
taken before the last chunk was decoded.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from aimesh.speech.v1 import speech_pb2_grpc

from scripts import triton_server
from tests.integration.speech.conftest import Speech, finals, identity, stream_recognize
from tests.support.mesh import TestMesh, free_port
from tests.support.speech import PARITY_SENTENCES, engine_transcript, parity_clip

MODELS = Path(__file__).resolve().parents[3] / "triton" / "models"
SPEECH_MODELS = ("speech_recognition", "speech_synthesis")
# (length_scale, gain, lead seconds, noise RMS): slow and fast speech, quiet and loud callers.
VARIANTS = ((1.0, 1.0, 0.4, 20.0), (0.8, 0.35, 0.8, 40.0), (1.25, 1.8, 0.25, 10.0))


@pytest.fixture(scope="module")
def clips() -> list[tuple[str, np.ndarray, str]]:
    """(label, 16 kHz clip, the engine's transcript) for every sentence and variant."""
    out = []
    for i, text in enumerate(PARITY_SENTENCES):
        for j, (length_scale, gain, lead, noise) in enumerate(VARIANTS):
            if (i + j) % 2:  # half of the grid keeps the suite short; each variant still runs
                continue
            pcm = parity_clip(
                text, length_scale=length_scale, gain=gain, lead=lead, noise=noise, seed=i * 7 + j
            )
            label = f"{text[:24]!r} rate×{1 / length_scale:.2f} gain×{gain}"
            out.append((label, pcm, engine_transcript(pcm)))
    return out


@pytest.fixture(scope="module")
async def fresh_speech() -> AsyncIterator[Speech]:
    """A Speech service on its own Triton (the speech models only), both started now."""
    saved = os.environ.get("AIMESH_TRITON_URL")
    os.environ["AIMESH_TRITON_URL"] = f"127.0.0.1:{free_port()}"
    try:
        mesh = TestMesh()
    finally:
        if saved is None:
            os.environ.pop("AIMESH_TRITON_URL")
        else:
            os.environ["AIMESH_TRITON_URL"] = saved
    try:
        repository = mesh.var_dir / "models"
        repository.mkdir()
        for model in SPEECH_MODELS:
            (repository / model).symlink_to(MODELS / model)
        host, ports = mesh.stack.triton_ports()
        argv, env = triton_server.server_command(
            repository, ports, work_dir=mesh.var_dir / "triton", base_env=mesh.env
        )
        mesh.stack.spawn(
            "triton", argv, lambda: triton_server.is_ready(ports, host), env=env, cwd=mesh.var_dir
        )
        mesh.stack.wait_ready(["triton"], timeout=600)
        mesh.ensure("speech", timeout=180)  # SERVING only once both models have answered
        yield Speech(speech_pb2_grpc.SpeechServiceStub(mesh.channel("speech")), identity())
    finally:
        await mesh.aclose()
        mesh.close()


async def mesh_transcript(speech: Speech, pcm: np.ndarray) -> str:
    responses = await stream_recognize(speech, pcm)
    return " ".join(r.alternatives[0].transcript for r in finals(responses) if r.alternatives)


async def check_round(speech: Speech, clips: list[tuple[str, np.ndarray, str]]) -> list[str]:
    mismatches = []
    for label, pcm, expected in clips:
        got = await mesh_transcript(speech, pcm)
        if got.split() != expected.split():
            mismatches.append(f"{label}: engine {expected!r} vs mesh {got!r}")
    return mismatches


async def test_first_streams_after_start_match_the_engine_and_so_do_warm_ones(
    fresh_speech: Speech, clips: list[tuple[str, np.ndarray, str]]
) -> None:
    assert sum(bool(expected) for _, _, expected in clips) == len(clips)  # real speech
    cold = await check_round(fresh_speech, clips)
    warm = await check_round(fresh_speech, clips)
    assert not cold, "cold streams differ from the engine:\n" + "\n".join(cold)
    assert not warm, "warm streams differ from the engine:\n" + "\n".join(warm)
