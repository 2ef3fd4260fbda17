"""Speech's gRPC surface: thin — decode, authorize, call the domain logic, encode.

Domain: recognition.py (utterances on the Triton ASR model), synthesis.py (Triton TTS),
converse.py (the full-duplex voice loop over Conversation). Checks and limits: requests.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import grpc
import numpy as np
from aimesh.speech.v1 import speech_pb2, speech_pb2_grpc

from services.common.channels import Channels
from services.common.errors import ServiceError, unavailable
from services.common.identity import Identity, require_identity
from services.common.pagination import Paginator
from services.common.server import Binding, Runtime, ServiceSpec, spec_for
from services.common.triton import ASR_MODEL, TTS_MODEL, TritonClient
from services.common.usage_client import ResourceType, UsageClient
from services.speech import codecs
from services.speech import metrics as speech_metrics
from services.speech.converse import ConverseSession
from services.speech.encode import LANGUAGE, alternative, speech_event_of, streaming_result
from services.speech.recognition import (
    Heard,
    Hypothesis,
    Recognition,
    UtteranceFailed,
    streaming_options,
)
from services.speech.requests import (
    STREAM_IDLE_SECONDS,
    STREAM_MAX_SECONDS,
    STREAMING_SYNTHESIZE_MAX_CHARS,
    SYNTHESIZE_MAX_CHARS,
    audio_intake,
    check_first_message,
    check_language_filter,
    check_synthesis,
    duration,
    encoding_name,
    next_request,
    output_rate,
    recognize_audio,
    seconds,
)
from services.speech.synthesis import NATURAL_SAMPLE_RATE, Synthesizer

STREAMED_OUTPUTS = ("LINEAR16", "MULAW")  # encodings whose chunks play on their own


_GENDERS = {
    "male": speech_pb2.Voice.GENDER_MALE,
    "female": speech_pb2.Voice.GENDER_FEMALE,
}


# --- encoding -------------------------------------------------------------------------------


def recognize_response(heard: Heard, with_words: bool) -> speech_pb2.StreamingRecognizeResponse:
    event = heard.event
    out = speech_pb2.StreamingRecognizeResponse(
        total_audio_processed=duration(heard.received_seconds), utterance_index=event.utterance
    )
    if isinstance(event, Hypothesis):
        out.results.append(streaming_result(event, with_words))
    elif isinstance(event, UtteranceFailed):
        out.error.CopyFrom(event.error.to_status())
    else:
        kind, offset = speech_event_of(event)  # type: ignore[misc]
        out.speech_event_type = kind  # type: ignore[assignment]
        out.speech_event_offset.CopyFrom(duration(offset))
    return out


def _request_hash(request: speech_pb2.RecognizeRequest) -> str:
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


class SpeechServicer(speech_pb2_grpc.SpeechServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.triton = TritonClient.from_settings(runtime.settings)
        self.channels = Channels(runtime.settings)
        # Audio seconds and characters go through the durable usage outbox (in this schema).
        self.usage = UsageClient(runtime)
        self.pages = Paginator(runtime.settings)
        self.synthesizer = Synthesizer(self.triton)
        self.recognition = Recognition(self.triton, self.usage, runtime.cache)

        self._answered = False  # both models answered a real request (warm-up) once

        async def models_ready() -> bool:
            ready = await self.triton.readiness((ASR_MODEL, TTS_MODEL))
            if not all(ready.values()):
                return False
            if not self._answered:
                self._answered = await self._warm_up()
            return self._answered

        runtime.add_health_check("triton", models_ready)
        runtime.on_shutdown(self.triton.close)
        runtime.on_shutdown(self.channels.close)

    async def _warm_up(self) -> bool:
        """Readiness means "answers": one short recognition stream and one synthesis go through
        Triton before Speech reports SERVING, so the first caller's stream is not the one that
        pays for first-use setup anywhere on the path."""
        try:
            async with asyncio.timeout(60.0):
                return await self.recognition.warm_up() and await self.synthesizer.warm_up()
        except (ServiceError, TimeoutError):
            return False

    def _identity(self, context: grpc.aio.ServicerContext) -> Identity:
        return require_identity(context.invocation_metadata())

    # --- recognition ----------------------------------------------------------------------

    async def StreamingRecognize(
        self,
        request_iterator: AsyncIterator[speech_pb2.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[speech_pb2.StreamingRecognizeResponse]:
        identity = self._identity(context)
        requests = request_iterator.__aiter__()
        first = await next_request(requests, STREAM_IDLE_SECONDS)
        cfg, audio, v = check_first_message(first, "streaming_config", "config")
        options = streaming_options(
            v,
            audio,
            interim_results=cfg.interim_results,
            single_utterance=cfg.single_utterance,
            audio_offset=seconds(cfg.audio_offset),
        )
        chunks = audio_intake(
            requests,
            config_field="streaming_config",
            sample_rate=audio.sample_rate,
            encoding=audio.encoding,
            max_seconds=STREAM_MAX_SECONDS,
            idle_seconds=STREAM_IDLE_SECONDS,
        )
        with_words = cfg.config.enable_word_time_offsets
        async with aclosing(self.recognition.stream(identity, options, chunks)) as heard:
            async for item in heard:
                yield recognize_response(item, with_words)

    async def Recognize(
        self, request: speech_pb2.RecognizeRequest, context: grpc.aio.ServicerContext
    ) -> speech_pb2.RecognizeResponse:
        identity = self._identity(context)
        samples, rate = recognize_audio(request)
        result = await self.recognition.recognize(
            identity, samples, rate, request.request_id, _request_hash(request)
        )
        with_words = request.config.enable_word_time_offsets
        return speech_pb2.RecognizeResponse(
            total_audio_processed=duration(result.audio_seconds),
            results=[
                speech_pb2.SpeechRecognitionResult(
                    alternatives=[alternative(h, with_words)],
                    result_end_offset=duration(h.end_offset),
                    language_code=LANGUAGE,
                )
                for h in result.finals
            ],
        )

    # --- synthesis ------------------------------------------------------------------------

    async def Synthesize(
        self, request: speech_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> speech_pb2.SynthesizeResponse:
        identity = self._identity(context)
        check_synthesis(request, SYNTHESIZE_MAX_CHARS, codecs.OUTPUTS)
        voice = await self.synthesizer.voice(request.voice)
        rate = output_rate(request.audio_config, NATURAL_SAMPLE_RATE)
        parts = [
            chunk.pcm
            async for chunk in speech_metrics.first_audio(
                self.synthesizer.stream(
                    request.text, voice, request.speaking_rate, rate, quick_start=False
                ),
                voice.name,
            )
        ]
        pcm = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
        await self.usage.meter(
            identity,
            ResourceType.RESOURCE_TYPE_CHARACTERS_SYNTHESIZED,
            len(request.text),
            request.request_id,
            model=voice.name,
        )
        return speech_pb2.SynthesizeResponse(
            audio_content=codecs.encode(pcm, rate, encoding_name(request.audio_config.encoding)),
            encoding=request.audio_config.encoding,
            sample_rate_hertz=rate,
            audio_duration=duration(pcm.size / rate),
            billed_characters=len(request.text),
        )

    async def StreamingSynthesize(
        self, request: speech_pb2.StreamingSynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[speech_pb2.StreamingSynthesizeResponse]:
        identity = self._identity(context)
        check_synthesis(request, STREAMING_SYNTHESIZE_MAX_CHARS, STREAMED_OUTPUTS)
        voice = await self.synthesizer.voice(request.voice)
        rate = output_rate(request.audio_config, NATURAL_SAMPLE_RATE)
        encoding = encoding_name(request.audio_config.encoding)
        index = 0
        played = 0
        spoken = 0  # characters whose synthesis started: what is metered if the caller leaves
        try:
            async for chunk in speech_metrics.first_audio(
                self.synthesizer.stream(request.text, voice, request.speaking_rate, rate),
                voice.name,
            ):
                spoken = max(spoken, chunk.text_end)
                yield speech_pb2.StreamingSynthesizeResponse(
                    audio_content=codecs.encode(chunk.pcm, rate, encoding),
                    chunk_index=index,
                    sample_rate_hertz=rate,
                    audio_offset=duration(played / rate),
                    text_start_offset=chunk.text_start,
                    text_end_offset=chunk.text_end,
                )
                index += 1
                played += chunk.pcm.size
        except ServiceError as exc:
            if index == 0:
                raise
            raise unavailable(
                f"synthesis failed after {index} chunks: {exc.message}", reason="SYNTHESIS_FAILED"
            ) from None
        finally:
            await self.usage.meter(
                identity,
                ResourceType.RESOURCE_TYPE_CHARACTERS_SYNTHESIZED,
                spoken,
                request.request_id,
                model=voice.name,
            )

    async def ListVoices(
        self, request: speech_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> speech_pb2.ListVoicesResponse:
        identity = self._identity(context)
        check_language_filter(request.language_code)
        pager = self.pages.start(request, identity.org)
        wanted = request.language_code.lower()
        voices = [
            v
            for v in await self.synthesizer.voices()
            if not wanted
            or any(
                c.lower() == wanted or c.lower().startswith(wanted + "-") for c in v.language_codes
            )
        ]
        page, token = pager.slice(voices)
        response = speech_pb2.ListVoicesResponse(next_page_token=token)
        for v in page:
            response.voices.add(
                name=v.name,
                display_name=v.display_name,
                language_codes=list(v.language_codes),
                gender=_GENDERS.get(v.gender, speech_pb2.Voice.GENDER_UNSPECIFIED),
                natural_sample_rate_hertz=NATURAL_SAMPLE_RATE,
                family=v.family,
            )
        return response

    # --- Converse -------------------------------------------------------------------------

    async def Converse(
        self,
        request_iterator: AsyncIterator[speech_pb2.ConverseRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[speech_pb2.ConverseResponse]:
        identity = self._identity(context)
        session = ConverseSession(self, identity)
        async for response in session.run(request_iterator.__aiter__()):
            yield response


def build_spec() -> ServiceSpec:
    return spec_for(
        "speech",
        Path(__file__).parent,
        [
            Binding(
                speech_pb2_grpc.add_SpeechServiceServicer_to_server,
                SpeechServicer,
                speech_pb2.DESCRIPTOR.services_by_name["SpeechService"],
            )
        ],
    )
