"""Clients for the aimesh gateway: `Client` (blocking) and `AsyncClient` (asyncio).

    from aimesh_sdk import Client
    from aimesh.knowledge.v1 import knowledge_pb2

    with Client("127.0.0.1:8080", api_key="amk_...") as client:
        doc = client.upload_file("handbook.md", progress=lambda sent, total: ...)
        client.wait_until_processed(doc.name)
        for hit in client.search("vacation policy").results:
            print(hit.document_display_name, hit.text[:80])
        reply = client.chat("How many vacation days?", documents=[doc.name])
        print(reply.text, [c.document_display_name for c in reply.citations])

Every service of the contract is an attribute (`client.auth`, `client.knowledge`, ...) whose
methods are the generated stub's, called with the client's credentials as metadata, the
method's deadline, and failures raised as typed exceptions (aimesh_sdk.errors). Idempotent
methods are retried on UNAVAILABLE by gRPC's retry policy (aimesh_sdk.contract).
"""

from __future__ import annotations

import mimetypes
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import grpc
from aimesh.auth.v1 import auth_pb2
from aimesh.conversation.v1 import conversation_pb2
from aimesh.knowledge.v1 import knowledge_pb2
from aimesh.orchestrator.v1 import orchestrator_pb2
from aimesh.speech.v1 import speech_pb2
from google.protobuf import message as message_mod

from aimesh_sdk import audio, contract
from aimesh_sdk.errors import AimeshError, from_rpc_error, from_status

DEFAULT_ADDRESS = "127.0.0.1:8080"
UPLOAD_CHUNK_BYTES = 256 * 1024  # well under the 1 MiB per-message limit of UploadDocument
# Default deadlines (seconds): unary calls answer within the gateway's 15 s route timeout;
# streams run as long as their work (a chat answer, an upload, a recording).
DEFAULT_UNARY_DEADLINE = 30.0
DEFAULT_STREAM_DEADLINE = 600.0
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class TlsOptions:
    """TLS to the gateway. Paths or PEM bytes; without root_certificates the system roots are
    used. certificate_chain + private_key present a client certificate (mutual TLS);
    server_name overrides the name checked in the server's certificate."""

    root_certificates: bytes | str | Path | None = None
    certificate_chain: bytes | str | Path | None = None
    private_key: bytes | str | Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            _pem(self.root_certificates), _pem(self.private_key), _pem(self.certificate_chain)
        )


def _pem(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass
class ChatReply:
    """A finished chat answer: the streamed text, the citations and the stored messages."""

    conversation: str
    text: str
    citations: list[orchestrator_pb2.Citation] = field(default_factory=list)
    user_message: conversation_pb2.Message | None = None
    assistant_message: conversation_pb2.Message | None = None
    model: str = ""

    @property
    def state(self) -> str:
        if self.assistant_message is None:
            return "STATE_UNSPECIFIED"
        return conversation_pb2.Message.State.Name(self.assistant_message.state)

    @property
    def error(self) -> AimeshError | None:
        """Why the answer failed or stopped early (in-band: the RPC itself succeeded)."""
        message = self.assistant_message
        if message is None or not message.HasField("error") or message.error.code == 0:
            return None
        return from_status(message.error)


class _Settings:
    """What Client and AsyncClient share: address, credentials, TLS, deadlines."""

    def __init__(
        self,
        base: str,
        api_key: str | None,
        token: str | None,
        tls: bool | TlsOptions | None,
        timeout: float,
        deadlines: dict[str, float] | None,
        metadata: Sequence[tuple[str, str]],
    ) -> None:
        target, scheme_tls = _split_base(base)
        self.target = target
        self.tls: TlsOptions | None = (
            tls if isinstance(tls, TlsOptions) else TlsOptions() if (tls or scheme_tls) else None
        )
        self.api_key = api_key
        self.token = token
        self.timeout = timeout
        self.deadlines = dict(deadlines or {})
        self.extra_metadata = list(metadata)
        self.methods = contract.methods()
        self.options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", contract.service_config()),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.primary_user_agent", "aimesh-python-sdk"),
        ]
        if self.tls is not None and self.tls.server_name:
            self.options.append(("grpc.ssl_target_name_override", self.tls.server_name))

    def metadata(self, extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        """Credentials as call metadata: an API key as x-api-key, a JWT as a bearer token."""
        out = list(self.extra_metadata)
        if self.api_key:
            out.append(("x-api-key", self.api_key))
        elif self.token:
            out.append(("authorization", f"Bearer {self.token}"))
        out.extend(extra)
        return out

    def deadline(self, method: contract.Method, explicit: float | None) -> float | None:
        """The call's timeout: explicit, else per method ("Method" or "service.Method" keys of
        `deadlines`), else the default for its kind."""
        if explicit is not None:
            return explicit
        for key in (method.path, f"{method.service}.{method.name}", method.name):
            if key in self.deadlines:
                return self.deadlines[key]
        return self.timeout if method.unary else DEFAULT_STREAM_DEADLINE


def _split_base(base: str) -> tuple[str, bool]:
    """'https://host' -> ('host:443', True); 'http://host:8080' and 'host:8080' -> plaintext."""
    for scheme, tls, port in (("https://", True, 443), ("http://", False, 80)):
        if base.startswith(scheme):
            rest = base[len(scheme):].rstrip("/")
            return (rest if ":" in rest else f"{rest}:{port}"), tls
    return base, False


def _method(settings: _Settings, service: str, stub_service: str, name: str) -> contract.Method:
    path = f"/{stub_service}/{name}"
    try:
        return settings.methods[path]
    except KeyError:
        raise AttributeError(f"{service} has no RPC {name!r}") from None


def _stub(service: str, channel: Any) -> tuple[str, Any]:
    grpc_module = contract.pb2_grpc(service)
    full = next(iter(contract.pb2(service).DESCRIPTOR.services_by_name.values())).full_name
    stub_class = getattr(grpc_module, full.rsplit(".", 1)[1] + "Stub")
    return full, stub_class(channel)


def _request_id() -> str:
    return str(uuid.uuid4())


def _guess_mime(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown"):
        return "text/markdown"
    guessed = mimetypes.guess_type(path.name)[0]
    return guessed or "text/plain"


def _upload_messages(
    content: bytes, display_name: str, mime_type: str, metadata: dict[str, str] | None,
    document_id: str, request_id: str, progress: ProgressCallback | None, chunk_bytes: int,
) -> Iterator[knowledge_pb2.UploadDocumentRequest]:
    total = len(content)
    yield knowledge_pb2.UploadDocumentRequest(metadata=knowledge_pb2.UploadDocumentMetadata(
        document=knowledge_pb2.Document(display_name=display_name, mime_type=mime_type,
                                        metadata=metadata or {}),
        document_id=document_id, size_bytes=total, request_id=request_id,
    ))
    sent = 0
    for start in range(0, total, chunk_bytes):
        piece = content[start:start + chunk_bytes]
        yield knowledge_pb2.UploadDocumentRequest(content_chunk=piece)
        sent += len(piece)
        if progress is not None:
            progress(sent, total)


def _send_request(
    conversation: str, content: str, model: str, documents: Sequence[str] | None,
    grounded: bool, request_id: str,
) -> conversation_pb2.SendMessageRequest:
    request = conversation_pb2.SendMessageRequest(
        conversation=conversation, content=content, model=model, request_id=request_id)
    if grounded or documents:
        request.retrieval.enabled = True
        request.retrieval.documents.extend(documents or [])
    return request


def _fold_chat(reply: ChatReply, event: conversation_pb2.SendMessageResponse,
               on_delta: Callable[[str], None] | None) -> None:
    kind = event.WhichOneof("event")
    if kind == "user_message":
        reply.user_message = event.user_message
    elif kind == "generation":
        reply.model = event.generation.model
    elif kind == "delta":
        reply.text += event.delta.text
        if on_delta is not None:
            on_delta(event.delta.text)
    elif kind == "citation":
        reply.citations.append(event.citation)
    elif kind == "assistant_message":
        reply.assistant_message = event.assistant_message
        # The stored message is the truth (a replayed request_id streams no deltas).
        reply.text = event.assistant_message.content
        if event.assistant_message.citations:
            reply.citations = list(event.assistant_message.citations)


def _checked(reply: ChatReply, check: bool) -> ChatReply:
    failed = conversation_pb2.Message.STATE_FAILED
    error = reply.error
    if check and error is not None and reply.assistant_message is not None and (
            reply.assistant_message.state == failed):
        error.reply = reply  # type: ignore[attr-defined]
        raise error
    return reply


def _list_field(response: message_mod.Message) -> str:
    """The repeated message field a List response carries its items in."""
    for f in response.DESCRIPTOR.fields:
        if f.label == f.LABEL_REPEATED and f.message_type is not None and not (
            f.message_type.GetOptions().map_entry
        ):
            return f.name
    raise TypeError(f"{response.DESCRIPTOR.full_name} is not a list response")


class _BaseClient:
    """What Client and AsyncClient share: settings, credentials, one object per service."""

    auth: Any
    billing: Any
    conversation: Any
    knowledge: Any
    orchestrator: Any
    speech: Any
    usage: Any

    def __init__(self, settings: _Settings, service_class: type, channel: Any) -> None:
        self.settings = settings
        self.channel = channel
        for service in contract.SERVICES:
            setattr(self, service, service_class(settings, service, channel))

    def use_token(self, token: str) -> None:
        self.settings.token, self.settings.api_key = token, None

    def use_api_key(self, api_key: str) -> None:
        self.settings.api_key, self.settings.token = api_key, None


def _sign_up_request(email: str, password: str, organization_display_name: str,
                     display_name: str) -> auth_pb2.SignUpRequest:
    return auth_pb2.SignUpRequest(
        email=email, password=password, display_name=display_name,
        organization_display_name=organization_display_name, request_id=_request_id())


def _synthesis_request(text: str, voice: str, sample_rate: int,
                       speaking_rate: float) -> speech_pb2.StreamingSynthesizeRequest:
    return speech_pb2.StreamingSynthesizeRequest(
        text=text, voice=voice, speaking_rate=speaking_rate,
        audio_config=speech_pb2.AudioOutputConfig(
            encoding=speech_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=sample_rate),
        request_id=_request_id())


def _new_conversation(content: str) -> conversation_pb2.CreateConversationRequest:
    return conversation_pb2.CreateConversationRequest(
        conversation=conversation_pb2.Conversation(title=content[:60]), request_id=_request_id())


# --- blocking client --------------------------------------------------------------------------

class _SyncStream:
    """A server stream whose failures surface as typed exceptions while iterating."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def cancel(self) -> None:
        self._call.cancel()


class SyncService:
    """The methods of one service, bound to a Client's credentials and deadlines."""

    def __init__(self, settings: _Settings, service: str, channel: grpc.Channel) -> None:
        self._settings = settings
        self._service = service
        self._full, self._stub = _stub(service, channel)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = _method(self._settings, self._service, self._full, name)
        rpc = getattr(self._stub, name)
        settings = self._settings

        def call(request: Any, *, timeout: float | None = None,
                 metadata: Sequence[tuple[str, str]] = (), **kw: Any) -> Any:
            try:
                result = rpc(request, timeout=settings.deadline(method, timeout),
                             metadata=settings.metadata(metadata), **kw)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
            return _SyncStream(result) if method.server_streaming else result

        call.__name__ = name
        call.__doc__ = f"{method.path} (see the .proto comments)"
        return call


class Client(_BaseClient):
    """Blocking client. `base` is "host:port" (plaintext), "http://host:port" or
    "https://host" (TLS with system roots unless `tls` says otherwise). Pass `api_key` or
    `token` (a JWT from sign_up/login, which also set it)."""

    def __init__(
        self,
        base: str = DEFAULT_ADDRESS,
        *,
        api_key: str | None = None,
        token: str | None = None,
        tls: bool | TlsOptions | None = None,
        timeout: float = DEFAULT_UNARY_DEADLINE,
        deadlines: dict[str, float] | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        s = _Settings(base, api_key, token, tls, timeout, deadlines, metadata)
        if s.tls is not None:
            channel = grpc.secure_channel(s.target, s.tls.credentials(), options=s.options)
        else:
            channel = grpc.insecure_channel(s.target, options=s.options)
        super().__init__(s, SyncService, channel)

    # credentials --------------------------------------------------------------------------
    def sign_up(self, email: str, password: str, organization_display_name: str,
                display_name: str = "") -> auth_pb2.TokenPair:
        """Creates a user and its organization; the client then calls with the new token."""
        pair = self.auth.SignUp(_sign_up_request(email, password, organization_display_name,
                                                 display_name))
        self.use_token(pair.access_token)
        return pair  # type: ignore[no-any-return]

    def login(self, email: str, password: str, organization: str = "") -> auth_pb2.TokenPair:
        pair = self.auth.Login(auth_pb2.LoginRequest(
            email=email, password=password, organization=organization,
            request_id=_request_id()))
        self.use_token(pair.access_token)
        return pair  # type: ignore[no-any-return]

    # lists --------------------------------------------------------------------------------
    def paginate(self, method: Callable[..., Any], request: message_mod.Message,
                 page_size: int = 100) -> Iterator[Any]:
        """Every item of a List method across pages: `client.paginate(
        client.knowledge.ListDocuments, ListDocumentsRequest())`."""
        if hasattr(request, "page_size") and not request.page_size:
            request.page_size = page_size
        while True:
            response = method(request)
            yield from getattr(response, _list_field(response))
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    # documents ----------------------------------------------------------------------------
    def upload_file(
        self, path: str | Path, *, display_name: str | None = None,
        mime_type: str | None = None, metadata: dict[str, str] | None = None,
        document_id: str = "", progress: ProgressCallback | None = None,
        chunk_bytes: int = UPLOAD_CHUNK_BYTES,
    ) -> knowledge_pb2.Document:
        """Uploads a file in chunks (UploadDocument client stream); `progress(sent, total)`
        is called as chunks go out. Returns the Document in STATE_PROCESSING."""
        path = Path(path)
        return self.upload_bytes(  # type: ignore[no-any-return]
            path.read_bytes(), display_name=display_name or path.name,
            mime_type=mime_type or _guess_mime(path), metadata=metadata,
            document_id=document_id, progress=progress, chunk_bytes=chunk_bytes)

    def upload_bytes(
        self, content: bytes, *, display_name: str, mime_type: str = "text/plain",
        metadata: dict[str, str] | None = None, document_id: str = "",
        progress: ProgressCallback | None = None, chunk_bytes: int = UPLOAD_CHUNK_BYTES,
    ) -> knowledge_pb2.Document:
        messages = _upload_messages(content, display_name, mime_type, metadata, document_id,
                                    _request_id(), progress, chunk_bytes)
        return self.knowledge.UploadDocument(messages)  # type: ignore[no-any-return]

    def wait_until_processed(self, name: str, timeout: float = 120.0,
                             interval: float = 0.5) -> knowledge_pb2.Document:
        """Polls GetDocument until the document is READY or FAILED (returned either way)."""
        deadline = time.monotonic() + timeout
        while True:
            doc = self.knowledge.GetDocument(knowledge_pb2.GetDocumentRequest(name=name))
            if doc.state != knowledge_pb2.Document.STATE_PROCESSING:
                return doc  # type: ignore[no-any-return]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} still processing after {timeout:.0f} s")
            time.sleep(interval)

    def search(self, query: str, *, top_k: int = 10,
               documents: Sequence[str] = ()) -> knowledge_pb2.SearchDocumentsResponse:
        return self.knowledge.SearchDocuments(  # type: ignore[no-any-return]
            knowledge_pb2.SearchDocumentsRequest(query=query, top_k=top_k, documents=documents))

    # chat ---------------------------------------------------------------------------------
    def create_conversation(self, title: str = "") -> conversation_pb2.Conversation:
        return self.conversation.CreateConversation(_new_conversation(title))  # type: ignore[no-any-return]

    def chat_stream(
        self, content: str, *, conversation: str = "", model: str = "",
        documents: Sequence[str] | None = None, grounded: bool = False,
        timeout: float | None = None,
    ) -> Iterator[conversation_pb2.SendMessageResponse]:
        """The raw SendMessage event stream (creates a conversation when none is given)."""
        conversation = conversation or self.create_conversation(title=content[:60]).name
        request = _send_request(conversation, content, model, documents, grounded, _request_id())
        yield from self.conversation.SendMessage(request, timeout=timeout)

    def chat(
        self, content: str, *, conversation: str = "", model: str = "",
        documents: Sequence[str] | None = None, grounded: bool = False,
        on_delta: Callable[[str], None] | None = None, timeout: float | None = None,
        check: bool = True,
    ) -> ChatReply:
        """Sends a message and collects the streamed answer; `on_delta(text)` sees each piece
        as it arrives. With `documents` (or grounded=True) the answer is grounded in them and
        carries citations. An answer that failed after the message was stored (the contract
        reports those in-band, e.g. a used-up budget) raises its typed error unless
        check=False; the partial reply is on the exception's `reply`."""
        conversation = conversation or self.create_conversation(title=content[:60]).name
        reply = ChatReply(conversation=conversation, text="")
        request = _send_request(conversation, content, model, documents, grounded, _request_id())
        for event in self.conversation.SendMessage(request, timeout=timeout):
            _fold_chat(reply, event, on_delta)
        return _checked(reply, check)

    # speech -------------------------------------------------------------------------------
    def synthesize_to_wav(self, text: str, path: str | Path, *, voice: str = "",
                          sample_rate: int = 22050, speaking_rate: float = 1.0) -> float:
        """Streams synthesized speech into a WAV file as it arrives; returns its seconds."""
        request = _synthesis_request(text, voice, sample_rate, speaking_rate)
        samples = 0
        with audio.WavWriter(path, sample_rate) as wav:
            for chunk in self.speech.StreamingSynthesize(request):
                wav.write(chunk.audio_content)
                samples += len(chunk.audio_content) // 2
        return samples / sample_rate

    def transcribe_stream(
        self, path: str | Path, *, interim_results: bool = False, realtime: float = 0.0,
        language_code: str = "en-US", timeout: float | None = None,
    ) -> Iterator[speech_pb2.StreamingRecognizeResponse]:
        """Streams a mono 16-bit WAV file to StreamingRecognize (paced like a microphone when
        realtime > 0) and yields the responses: interim and final results."""
        pcm, rate = audio.read_wav(path)
        pcm += audio.silence(1.0, rate)  # a pause ends the last utterance naturally
        chunks = audio.paced_blocking(audio.pcm_chunks(pcm, rate), rate, realtime)
        return self.transcribe_chunks(chunks, rate, interim_results=interim_results,
                                      language_code=language_code, timeout=timeout)

    def transcribe_chunks(
        self, chunks: Iterable[bytes], sample_rate: int, *, timeout: float | None = None,
        **config: Any,
    ) -> Iterator[speech_pb2.StreamingRecognizeResponse]:
        """Streams live PCM16 mono chunks (e.g. audio.Microphone.chunks()) to
        StreamingRecognize and yields the responses as they come; the stream half-closes when
        `chunks` ends. Keywords as audio.recognition_config (interim_results, language_code,
        single_utterance, silence_ms, max_utterance_seconds, speech_start_timeout_seconds)."""
        requests = audio.stream_requests(chunks, sample_rate, **config)
        for response in self.speech.StreamingRecognize(requests, timeout=timeout):
            if response.HasField("error") and response.error.code:
                raise from_status(response.error)
            yield response

    def transcribe_microphone(
        self, microphone: audio.Microphone, *, timeout: float | None = None, **config: Any,
    ) -> Iterator[speech_pb2.StreamingRecognizeResponse]:
        """Streams an opened audio.Microphone until microphone.stop() (or its `seconds`), then
        yields the remaining results. Keywords as transcribe_chunks."""
        return self.transcribe_chunks(microphone.chunks(), microphone.sample_rate,
                                      timeout=timeout, **config)

    def transcribe(self, path: str | Path, **kw: Any) -> str:
        """The final transcript of a WAV file (StreamingRecognize), utterances joined."""
        finals = [r.alternatives[0].transcript
                  for response in self.transcribe_stream(path, **kw)
                  for r in response.results if r.is_final and r.alternatives]
        return " ".join(t for t in finals if t)

    def recognize(self, path: str | Path, language_code: str = "en-US") -> speech_pb2.RecognizeResponse:
        """One-shot recognition of a whole WAV file (Recognize)."""
        pcm, rate = audio.read_wav(path)
        return self.speech.Recognize(speech_pb2.RecognizeRequest(  # type: ignore[no-any-return]
            config=speech_pb2.RecognitionConfig(
                encoding=speech_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=rate,
                language_code=language_code, enable_word_time_offsets=True),
            content=pcm, request_id=_request_id()))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- asyncio client ---------------------------------------------------------------------------

class _AsyncStream:
    """A grpc.aio server stream with typed exceptions while iterating."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        try:
            async for item in self._call:
                yield item
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def cancel(self) -> None:
        self._call.cancel()


class AsyncService:
    """The methods of one service for AsyncClient: unary and client-streaming calls are
    awaited; server and bidi streams are async-iterated."""

    def __init__(self, settings: _Settings, service: str, channel: grpc.aio.Channel) -> None:
        self._settings = settings
        self._service = service
        self._full, self._stub = _stub(service, channel)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = _method(self._settings, self._service, self._full, name)
        rpc = getattr(self._stub, name)
        settings = self._settings

        def start(request: Any, timeout: float | None, metadata: Sequence[tuple[str, str]],
                  kw: dict[str, Any]) -> Any:
            return rpc(request, timeout=settings.deadline(method, timeout),
                       metadata=settings.metadata(metadata), **kw)

        if method.server_streaming:
            def stream(request: Any, *, timeout: float | None = None,
                       metadata: Sequence[tuple[str, str]] = (), **kw: Any) -> _AsyncStream:
                return _AsyncStream(start(request, timeout, metadata, kw))

            stream.__name__ = name
            return stream

        async def call(request: Any, *, timeout: float | None = None,
                       metadata: Sequence[tuple[str, str]] = (), **kw: Any) -> Any:
            try:
                return await start(request, timeout, metadata, kw)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None

        call.__name__ = name
        return call


async def _aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


class AsyncClient(_BaseClient):
    """The asyncio twin of Client (same arguments); use `async with AsyncClient(...)`."""

    def __init__(
        self,
        base: str = DEFAULT_ADDRESS,
        *,
        api_key: str | None = None,
        token: str | None = None,
        tls: bool | TlsOptions | None = None,
        timeout: float = DEFAULT_UNARY_DEADLINE,
        deadlines: dict[str, float] | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        s = _Settings(base, api_key, token, tls, timeout, deadlines, metadata)
        if s.tls is not None:
            channel = grpc.aio.secure_channel(s.target, s.tls.credentials(), options=s.options)
        else:
            channel = grpc.aio.insecure_channel(s.target, options=s.options)
        super().__init__(s, AsyncService, channel)

    async def sign_up(self, email: str, password: str, organization_display_name: str,
                      display_name: str = "") -> auth_pb2.TokenPair:
        pair = await self.auth.SignUp(_sign_up_request(email, password,
                                                       organization_display_name, display_name))
        self.use_token(pair.access_token)
        return pair  # type: ignore[no-any-return]

    async def paginate(self, method: Callable[..., Any], request: message_mod.Message,
                       page_size: int = 100) -> AsyncIterator[Any]:
        if hasattr(request, "page_size") and not request.page_size:
            request.page_size = page_size
        while True:
            response = await method(request)
            for item in getattr(response, _list_field(response)):
                yield item
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def upload_bytes(
        self, content: bytes, *, display_name: str, mime_type: str = "text/plain",
        metadata: dict[str, str] | None = None, document_id: str = "",
        progress: ProgressCallback | None = None, chunk_bytes: int = UPLOAD_CHUNK_BYTES,
    ) -> knowledge_pb2.Document:
        messages = _upload_messages(content, display_name, mime_type, metadata, document_id,
                                    _request_id(), progress, chunk_bytes)
        return await self.knowledge.UploadDocument(_aiter(messages))  # type: ignore[no-any-return]

    async def upload_file(self, path: str | Path, *, display_name: str | None = None,
                          mime_type: str | None = None, **kw: Any) -> knowledge_pb2.Document:
        path = Path(path)
        return await self.upload_bytes(path.read_bytes(), display_name=display_name or path.name,
                                       mime_type=mime_type or _guess_mime(path), **kw)

    async def wait_until_processed(self, name: str, timeout: float = 120.0,
                                   interval: float = 0.5) -> knowledge_pb2.Document:
        import asyncio

        deadline = time.monotonic() + timeout
        while True:
            doc = await self.knowledge.GetDocument(knowledge_pb2.GetDocumentRequest(name=name))
            if doc.state != knowledge_pb2.Document.STATE_PROCESSING:
                return doc  # type: ignore[no-any-return]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} still processing after {timeout:.0f} s")
            await asyncio.sleep(interval)

    async def chat(
        self, content: str, *, conversation: str = "", model: str = "",
        documents: Sequence[str] | None = None, grounded: bool = False,
        on_delta: Callable[[str], None] | None = None, timeout: float | None = None,
        check: bool = True,
    ) -> ChatReply:
        """As Client.chat."""
        if not conversation:
            conversation = (await self.conversation.CreateConversation(
                _new_conversation(content))).name
        reply = ChatReply(conversation=conversation, text="")
        request = _send_request(conversation, content, model, documents, grounded, _request_id())
        async for event in self.conversation.SendMessage(request, timeout=timeout):
            _fold_chat(reply, event, on_delta)
        return _checked(reply, check)

    async def synthesize_to_wav(self, text: str, path: str | Path, *, voice: str = "",
                                sample_rate: int = 22050, speaking_rate: float = 1.0) -> float:
        request = _synthesis_request(text, voice, sample_rate, speaking_rate)
        samples = 0
        with audio.WavWriter(path, sample_rate) as wav:
            async for chunk in self.speech.StreamingSynthesize(request):
                wav.write(chunk.audio_content)
                samples += len(chunk.audio_content) // 2
        return samples / sample_rate

    async def transcribe_stream(
        self, path: str | Path, *, interim_results: bool = False, realtime: float = 0.0,
        language_code: str = "en-US", timeout: float | None = None,
    ) -> AsyncIterator[speech_pb2.StreamingRecognizeResponse]:
        pcm, rate = audio.read_wav(path)
        pcm += audio.silence(1.0, rate)
        requests = audio.recognize_requests(pcm, rate, interim_results=interim_results,
                                            realtime=realtime, language_code=language_code)
        async for response in self.speech.StreamingRecognize(requests, timeout=timeout):
            if response.HasField("error") and response.error.code:
                raise from_status(response.error)
            yield response

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
