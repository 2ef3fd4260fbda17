"""Triton python-backend model: streaming speech recognition with pocketsphinx 5.

One Triton sequence (correlation id) is one client audio stream. Each request carries one PCM16
chunk; START allocates a decoder from a pool, END flushes the final hypothesis with word timings
and returns the decoder. A chunk with END_OF_UTTERANCE=true flushes the final hypothesis of the
current utterance and starts the next one on the same decoder, so one stream of many utterances
is one sequence; word timings are always relative to the sequence start. Responses go out
through each request's own response sender (decoupled), so interim hypotheses (unless START
says INTERIM=false) reach the client while the stream is still open.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

SAMPLE_RATE = 16000


@dataclass
class _Stream:
    decoder: Any
    samples: int = 0
    utterance_start: int = 0  # sequence sample where the current utterance began
    last_hyp: str = ""
    last_seen: float = field(default_factory=time.monotonic)
    interim: bool = True  # send interim hypotheses (INTERIM on START)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        from pocketsphinx import Decoder

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_chunk_samples = int(float(params.get("max_chunk_seconds", "10")) * SAMPLE_RATE)
        self.idle_timeout = float(params.get("idle_timeout_seconds", "120"))
        options = json.loads(params.get("decoder_options", "{}"))
        self._new_decoder = lambda: Decoder(samprate=SAMPLE_RATE, **options)
        # The pocketsphinx en-US model ships inside its wheel; Decoder() finds it by default.
        self.pool: list[Any] = [
            self._new_decoder() for _ in range(int(params.get("warm_decoders", "2")))
        ]
        for decoder in self.pool:
            self._warm(decoder)
        self.frame_ms = 1000.0 / float(self.pool[0].config["frate"]) if self.pool else 10.0
        self.streams: dict[int, _Stream] = {}
        self.lock = threading.Lock()

    # --- helpers -------------------------------------------------------------------------

    def _warm(self, decoder: Any) -> None:
        """Run one utterance of silence so first-use allocations happen before readiness."""
        decoder.start_utt()
        decoder.process_raw(np.zeros(SAMPLE_RATE // 2, dtype="<i2").tobytes(), False, False)
        decoder.end_utt()
        decoder.reinit_feat()

    def _acquire(self) -> Any:
        with self.lock:
            decoder = self.pool.pop() if self.pool else None
        if decoder is None:
            return self._new_decoder()
        # The feature front end adapts to the audio it hears (live cepstral mean normalization,
        # noise estimate). A pooled decoder would carry the previous stream's estimates into the
        # next stream, so results would depend on history: a freshly started model decoded
        # worse than a warm one. Every stream starts from the engine's initial state instead:
        # same audio, same words, cold or warm.
        decoder.reinit_feat()
        return decoder

    def _release(self, decoder: Any) -> None:
        with self.lock:
            self.pool.append(decoder)

    def _reap_idle(self) -> None:
        # Triton drops a sequence that stays idle; free its decoder here as well.
        now = time.monotonic()
        for corrid, stream in list(self.streams.items()):
            if now - stream.last_seen > self.idle_timeout:
                self._close(corrid, stream)

    @staticmethod
    def _control(request: Any, name: str) -> int:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return int(tensor.as_numpy().reshape(-1)[0]) if tensor is not None else 0

    @staticmethod
    def _send_error(sender: Any, message: str, code: Any = None) -> None:
        code = pb_utils.TritonError.INVALID_ARG if code is None else code
        sender.send(
            pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )

    def _response(
        self, stream: _Stream, text: str, final: bool, words: list[tuple[str, int, int, float]]
    ) -> Any:
        # Batched model (max_batch_size > 0): every output carries a leading batch dim of 1.
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("TRANSCRIPT", np.array([[text.encode()]], dtype=np.object_)),
                pb_utils.Tensor("IS_FINAL", np.array([[final]], dtype=bool)),
                pb_utils.Tensor(
                    "WORDS",
                    np.array([[w[0].encode() for w in words]], dtype=np.object_).reshape(1, -1),
                ),
                pb_utils.Tensor(
                    "WORD_START_MS",
                    np.array([[w[1] for w in words]], dtype=np.int32).reshape(1, -1),
                ),
                pb_utils.Tensor(
                    "WORD_END_MS", np.array([[w[2] for w in words]], dtype=np.int32).reshape(1, -1)
                ),
                pb_utils.Tensor(
                    "WORD_CONFIDENCE",
                    np.array([[w[3] for w in words]], dtype=np.float32).reshape(1, -1),
                ),
                pb_utils.Tensor(
                    "AUDIO_MS", np.array([[stream.samples * 1000 // SAMPLE_RATE]], dtype=np.int32)
                ),
            ]
        )

    def _words(self, decoder: Any, base_ms: int) -> list[tuple[str, int, int, float]]:
        # pocketsphinx counts frames from start_utt(); base_ms shifts them to the sequence start.
        words: list[tuple[str, int, int, float]] = []
        for seg in decoder.seg():
            word = seg.word
            if word.startswith(("<", "[", "++")):
                continue  # <s>, </s>, <sil>, [NOISE]: not words
            if word.endswith(")") and "(" in word:
                word = word[: word.index("(")]  # alternate pronunciation marker, e.g. "the(2)"
            words.append(
                (
                    word,
                    base_ms + int(seg.start_frame * self.frame_ms),
                    base_ms + int((seg.end_frame + 1) * self.frame_ms),
                    float(max(0.0, min(1.0, seg.prob))),
                )
            )
        return words

    def _flush(self, stream: _Stream) -> Any:
        """End the decoder's utterance and build its final response."""
        stream.decoder.end_utt()
        hyp = stream.decoder.hyp()
        text = hyp.hypstr if hyp is not None else ""
        words = self._words(stream.decoder, stream.utterance_start * 1000 // SAMPLE_RATE)
        return self._response(stream, text, True, words)

    # --- request handling ---------------------------------------------------------------

    def _close(self, corrid: int, stream: _Stream, *, in_utterance: bool = True) -> None:
        """Forget the sequence and return its decoder to the pool."""
        if self.streams.get(corrid) is stream:
            del self.streams[corrid]
        if in_utterance:
            with contextlib.suppress(Exception):
                stream.decoder.end_utt()
        self._release(stream.decoder)

    def _open(self, request: Any, corrid: int) -> _Stream:
        """START: a decoder for a new sequence (a restarted id drops its stale state first)."""
        stale = self.streams.pop(corrid, None)
        if stale is not None:
            self._close(corrid, stale)
        rate_tensor = pb_utils.get_input_tensor_by_name(request, "SAMPLE_RATE")
        if rate_tensor is None:
            raise ValueError("SAMPLE_RATE is required on the first chunk (START)")
        interim = pb_utils.get_input_tensor_by_name(request, "INTERIM")
        decoder = self._acquire()
        decoder.start_utt()
        stream = _Stream(decoder)
        if interim is not None:
            stream.interim = bool(interim.as_numpy().reshape(-1)[0])
        self.streams[corrid] = stream
        return stream

    def _audio(self, request: Any, flush: bool) -> np.ndarray:
        """The chunk's samples, checked (rate, size); ValueError names what is wrong."""
        rate_tensor = pb_utils.get_input_tensor_by_name(request, "SAMPLE_RATE")
        if rate_tensor is not None:
            rate = int(rate_tensor.as_numpy().reshape(-1)[0])
            if rate != SAMPLE_RATE:
                raise ValueError(f"SAMPLE_RATE must be {SAMPLE_RATE} Hz mono PCM16, got {rate} Hz")
        audio = pb_utils.get_input_tensor_by_name(request, "AUDIO").as_numpy().reshape(-1)
        if audio.size > self.max_chunk_samples:
            raise ValueError(
                f"AUDIO chunk has {audio.size} samples; at most {self.max_chunk_samples} "
                f"({self.max_chunk_samples / SAMPLE_RATE:.0f}s) per chunk"
            )
        if audio.size == 0 and not flush:
            raise ValueError("AUDIO chunk is empty")
        return audio

    def _end(self, corrid: int, stream: _Stream, sender: Any) -> None:
        """END: the final result of the last utterance (none if it was already flushed)."""
        if stream.samples == 0:
            self._close(corrid, stream)
            self._send_error(sender, "AUDIO is empty: the stream ended without any audio")
        elif stream.samples == stream.utterance_start:
            self._close(corrid, stream)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        else:
            response = self._flush(stream)
            self._close(corrid, stream, in_utterance=False)
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _handle(self, request: Any, sender: Any) -> None:
        corrid = self._control(request, "CORRID")
        end = self._control(request, "END") == 1
        eou_tensor = pb_utils.get_input_tensor_by_name(request, "END_OF_UTTERANCE")
        end_of_utterance = eou_tensor is not None and bool(eou_tensor.as_numpy().reshape(-1)[0])
        stream = self.streams.get(corrid)
        try:
            if self._control(request, "START") == 1:
                stream = self._open(request, corrid)
            elif stream is None:
                self._send_error(
                    sender,
                    f"sequence {corrid} is not open: it was never started, already ended, "
                    "failed, or was closed by the sequence idle timeout",
                    pb_utils.TritonError.UNAVAILABLE,
                )
                return
            stream.last_seen = time.monotonic()
            audio = self._audio(request, end or end_of_utterance)
        except ValueError as exc:
            # Bad chunk: the sequence is unusable, close it so the decoder returns to the pool.
            if stream is not None:
                self._close(corrid, stream)
            self._send_error(sender, str(exc))
            return
        if audio.size:
            stream.decoder.process_raw(audio.astype("<i2", copy=False).tobytes(), False, False)
            stream.samples += int(audio.size)
        if end:
            self._end(corrid, stream, sender)
        elif end_of_utterance:
            # Final of this utterance (possibly empty), then a fresh utterance, same sequence.
            response = self._flush(stream)
            stream.utterance_start = stream.samples
            stream.last_hyp = ""
            stream.decoder.start_utt()
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        else:
            hyp = stream.decoder.hyp() if stream.interim else None
            text = hyp.hypstr if hyp is not None else ""
            if text and text != stream.last_hyp:
                stream.last_hyp = text
                sender.send(self._response(stream, text, False, []))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def execute(self, requests: list[Any]) -> None:
        self._reap_idle()
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._handle(request, sender)
            except Exception as exc:  # noqa: BLE001  never let one stream take the instance down
                with contextlib.suppress(Exception):  # the sender may already be closed
                    self._send_error(
                        sender, f"recognition failed: {exc}", pb_utils.TritonError.INTERNAL
                    )

    def finalize(self) -> None:
        self.streams.clear()
        self.pool.clear()
