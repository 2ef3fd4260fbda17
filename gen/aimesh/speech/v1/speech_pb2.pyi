import datetime

from aimesh.orchestrator.v1 import orchestrator_pb2 as _orchestrator_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_LINEAR16: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_WAV: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_FLAC: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_MULAW: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_ALAW: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_OGG_OPUS: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_MP3: _ClassVar[AudioEncoding]

class SpeechEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPEECH_EVENT_TYPE_UNSPECIFIED: _ClassVar[SpeechEventType]
    SPEECH_EVENT_TYPE_SPEECH_BEGIN: _ClassVar[SpeechEventType]
    SPEECH_EVENT_TYPE_SPEECH_END: _ClassVar[SpeechEventType]
    SPEECH_EVENT_TYPE_END_OF_UTTERANCE: _ClassVar[SpeechEventType]
    SPEECH_EVENT_TYPE_SPEECH_START_TIMEOUT: _ClassVar[SpeechEventType]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
AUDIO_ENCODING_LINEAR16: AudioEncoding
AUDIO_ENCODING_WAV: AudioEncoding
AUDIO_ENCODING_FLAC: AudioEncoding
AUDIO_ENCODING_MULAW: AudioEncoding
AUDIO_ENCODING_ALAW: AudioEncoding
AUDIO_ENCODING_OGG_OPUS: AudioEncoding
AUDIO_ENCODING_MP3: AudioEncoding
SPEECH_EVENT_TYPE_UNSPECIFIED: SpeechEventType
SPEECH_EVENT_TYPE_SPEECH_BEGIN: SpeechEventType
SPEECH_EVENT_TYPE_SPEECH_END: SpeechEventType
SPEECH_EVENT_TYPE_END_OF_UTTERANCE: SpeechEventType
SPEECH_EVENT_TYPE_SPEECH_START_TIMEOUT: SpeechEventType

class RecognitionConfig(_message.Message):
    __slots__ = ("encoding", "sample_rate_hertz", "language_code", "max_alternatives", "enable_word_time_offsets")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HERTZ_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_CODE_FIELD_NUMBER: _ClassVar[int]
    MAX_ALTERNATIVES_FIELD_NUMBER: _ClassVar[int]
    ENABLE_WORD_TIME_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    encoding: AudioEncoding
    sample_rate_hertz: int
    language_code: str
    max_alternatives: int
    enable_word_time_offsets: bool
    def __init__(self, encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hertz: _Optional[int] = ..., language_code: _Optional[str] = ..., max_alternatives: _Optional[int] = ..., enable_word_time_offsets: bool = ...) -> None: ...

class EndpointingConfig(_message.Message):
    __slots__ = ("silence_duration", "max_utterance_duration", "speech_start_timeout")
    SILENCE_DURATION_FIELD_NUMBER: _ClassVar[int]
    MAX_UTTERANCE_DURATION_FIELD_NUMBER: _ClassVar[int]
    SPEECH_START_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    silence_duration: _duration_pb2.Duration
    max_utterance_duration: _duration_pb2.Duration
    speech_start_timeout: _duration_pb2.Duration
    def __init__(self, silence_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_utterance_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., speech_start_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StreamingRecognitionConfig(_message.Message):
    __slots__ = ("config", "interim_results", "single_utterance", "endpointing", "audio_offset")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    INTERIM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    SINGLE_UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTING_FIELD_NUMBER: _ClassVar[int]
    AUDIO_OFFSET_FIELD_NUMBER: _ClassVar[int]
    config: RecognitionConfig
    interim_results: bool
    single_utterance: bool
    endpointing: EndpointingConfig
    audio_offset: _duration_pb2.Duration
    def __init__(self, config: _Optional[_Union[RecognitionConfig, _Mapping]] = ..., interim_results: bool = ..., single_utterance: bool = ..., endpointing: _Optional[_Union[EndpointingConfig, _Mapping]] = ..., audio_offset: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StreamingRecognizeRequest(_message.Message):
    __slots__ = ("streaming_config", "audio_content")
    STREAMING_CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CONTENT_FIELD_NUMBER: _ClassVar[int]
    streaming_config: StreamingRecognitionConfig
    audio_content: bytes
    def __init__(self, streaming_config: _Optional[_Union[StreamingRecognitionConfig, _Mapping]] = ..., audio_content: _Optional[bytes] = ...) -> None: ...

class WordInfo(_message.Message):
    __slots__ = ("start_offset", "end_offset", "word", "confidence")
    START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    END_OFFSET_FIELD_NUMBER: _ClassVar[int]
    WORD_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    start_offset: _duration_pb2.Duration
    end_offset: _duration_pb2.Duration
    word: str
    confidence: float
    def __init__(self, start_offset: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., end_offset: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., word: _Optional[str] = ..., confidence: _Optional[float] = ...) -> None: ...

class SpeechRecognitionAlternative(_message.Message):
    __slots__ = ("transcript", "confidence", "words")
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    transcript: str
    confidence: float
    words: _containers.RepeatedCompositeFieldContainer[WordInfo]
    def __init__(self, transcript: _Optional[str] = ..., confidence: _Optional[float] = ..., words: _Optional[_Iterable[_Union[WordInfo, _Mapping]]] = ...) -> None: ...

class StreamingRecognitionResult(_message.Message):
    __slots__ = ("alternatives", "is_final", "stability", "result_end_offset", "utterance_index", "language_code")
    ALTERNATIVES_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    STABILITY_FIELD_NUMBER: _ClassVar[int]
    RESULT_END_OFFSET_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_CODE_FIELD_NUMBER: _ClassVar[int]
    alternatives: _containers.RepeatedCompositeFieldContainer[SpeechRecognitionAlternative]
    is_final: bool
    stability: float
    result_end_offset: _duration_pb2.Duration
    utterance_index: int
    language_code: str
    def __init__(self, alternatives: _Optional[_Iterable[_Union[SpeechRecognitionAlternative, _Mapping]]] = ..., is_final: bool = ..., stability: _Optional[float] = ..., result_end_offset: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., utterance_index: _Optional[int] = ..., language_code: _Optional[str] = ...) -> None: ...

class StreamingRecognizeResponse(_message.Message):
    __slots__ = ("results", "speech_event_type", "speech_event_offset", "total_audio_processed", "error", "utterance_index")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SPEECH_EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SPEECH_EVENT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_AUDIO_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[StreamingRecognitionResult]
    speech_event_type: SpeechEventType
    speech_event_offset: _duration_pb2.Duration
    total_audio_processed: _duration_pb2.Duration
    error: _status_pb2.Status
    utterance_index: int
    def __init__(self, results: _Optional[_Iterable[_Union[StreamingRecognitionResult, _Mapping]]] = ..., speech_event_type: _Optional[_Union[SpeechEventType, str]] = ..., speech_event_offset: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., total_audio_processed: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., utterance_index: _Optional[int] = ...) -> None: ...

class RecognizeRequest(_message.Message):
    __slots__ = ("config", "content", "request_id")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    config: RecognitionConfig
    content: bytes
    request_id: str
    def __init__(self, config: _Optional[_Union[RecognitionConfig, _Mapping]] = ..., content: _Optional[bytes] = ..., request_id: _Optional[str] = ...) -> None: ...

class SpeechRecognitionResult(_message.Message):
    __slots__ = ("alternatives", "result_end_offset", "language_code")
    ALTERNATIVES_FIELD_NUMBER: _ClassVar[int]
    RESULT_END_OFFSET_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_CODE_FIELD_NUMBER: _ClassVar[int]
    alternatives: _containers.RepeatedCompositeFieldContainer[SpeechRecognitionAlternative]
    result_end_offset: _duration_pb2.Duration
    language_code: str
    def __init__(self, alternatives: _Optional[_Iterable[_Union[SpeechRecognitionAlternative, _Mapping]]] = ..., result_end_offset: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., language_code: _Optional[str] = ...) -> None: ...

class RecognizeResponse(_message.Message):
    __slots__ = ("results", "total_audio_processed")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_AUDIO_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SpeechRecognitionResult]
    total_audio_processed: _duration_pb2.Duration
    def __init__(self, results: _Optional[_Iterable[_Union[SpeechRecognitionResult, _Mapping]]] = ..., total_audio_processed: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Voice(_message.Message):
    __slots__ = ("name", "display_name", "language_codes", "gender", "natural_sample_rate_hertz", "family")
    class Gender(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        GENDER_UNSPECIFIED: _ClassVar[Voice.Gender]
        GENDER_MALE: _ClassVar[Voice.Gender]
        GENDER_FEMALE: _ClassVar[Voice.Gender]
        GENDER_NEUTRAL: _ClassVar[Voice.Gender]
    GENDER_UNSPECIFIED: Voice.Gender
    GENDER_MALE: Voice.Gender
    GENDER_FEMALE: Voice.Gender
    GENDER_NEUTRAL: Voice.Gender
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_CODES_FIELD_NUMBER: _ClassVar[int]
    GENDER_FIELD_NUMBER: _ClassVar[int]
    NATURAL_SAMPLE_RATE_HERTZ_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    language_codes: _containers.RepeatedScalarFieldContainer[str]
    gender: Voice.Gender
    natural_sample_rate_hertz: int
    family: str
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., language_codes: _Optional[_Iterable[str]] = ..., gender: _Optional[_Union[Voice.Gender, str]] = ..., natural_sample_rate_hertz: _Optional[int] = ..., family: _Optional[str] = ...) -> None: ...

class AudioOutputConfig(_message.Message):
    __slots__ = ("encoding", "sample_rate_hertz")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HERTZ_FIELD_NUMBER: _ClassVar[int]
    encoding: AudioEncoding
    sample_rate_hertz: int
    def __init__(self, encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hertz: _Optional[int] = ...) -> None: ...

class SynthesizeRequest(_message.Message):
    __slots__ = ("text", "voice", "speaking_rate", "audio_config", "request_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    SPEAKING_RATE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CONFIG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    voice: str
    speaking_rate: float
    audio_config: AudioOutputConfig
    request_id: str
    def __init__(self, text: _Optional[str] = ..., voice: _Optional[str] = ..., speaking_rate: _Optional[float] = ..., audio_config: _Optional[_Union[AudioOutputConfig, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SynthesizeResponse(_message.Message):
    __slots__ = ("audio_content", "encoding", "sample_rate_hertz", "audio_duration", "billed_characters")
    AUDIO_CONTENT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HERTZ_FIELD_NUMBER: _ClassVar[int]
    AUDIO_DURATION_FIELD_NUMBER: _ClassVar[int]
    BILLED_CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    audio_content: bytes
    encoding: AudioEncoding
    sample_rate_hertz: int
    audio_duration: _duration_pb2.Duration
    billed_characters: int
    def __init__(self, audio_content: _Optional[bytes] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hertz: _Optional[int] = ..., audio_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., billed_characters: _Optional[int] = ...) -> None: ...

class StreamingSynthesizeRequest(_message.Message):
    __slots__ = ("text", "voice", "speaking_rate", "audio_config", "request_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    SPEAKING_RATE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CONFIG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    voice: str
    speaking_rate: float
    audio_config: AudioOutputConfig
    request_id: str
    def __init__(self, text: _Optional[str] = ..., voice: _Optional[str] = ..., speaking_rate: _Optional[float] = ..., audio_config: _Optional[_Union[AudioOutputConfig, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class StreamingSynthesizeResponse(_message.Message):
    __slots__ = ("audio_content", "chunk_index", "sample_rate_hertz", "audio_offset", "text_start_offset", "text_end_offset")
    AUDIO_CONTENT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HERTZ_FIELD_NUMBER: _ClassVar[int]
    AUDIO_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TEXT_START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TEXT_END_OFFSET_FIELD_NUMBER: _ClassVar[int]
    audio_content: bytes
    chunk_index: int
    sample_rate_hertz: int
    audio_offset: _duration_pb2.Duration
    text_start_offset: int
    text_end_offset: int
    def __init__(self, audio_content: _Optional[bytes] = ..., chunk_index: _Optional[int] = ..., sample_rate_hertz: _Optional[int] = ..., audio_offset: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., text_start_offset: _Optional[int] = ..., text_end_offset: _Optional[int] = ...) -> None: ...

class ListVoicesRequest(_message.Message):
    __slots__ = ("language_code", "page_size", "page_token")
    LANGUAGE_CODE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    language_code: str
    page_size: int
    page_token: str
    def __init__(self, language_code: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVoicesResponse(_message.Message):
    __slots__ = ("voices", "next_page_token")
    VOICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    voices: _containers.RepeatedCompositeFieldContainer[Voice]
    next_page_token: str
    def __init__(self, voices: _Optional[_Iterable[_Union[Voice, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ConverseConfig(_message.Message):
    __slots__ = ("conversation", "recognition_config", "interim_results", "endpointing", "voice", "speaking_rate", "output_audio_config", "model", "retrieval", "disable_barge_in", "disable_reply_audio")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    RECOGNITION_CONFIG_FIELD_NUMBER: _ClassVar[int]
    INTERIM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTING_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    SPEAKING_RATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_AUDIO_CONFIG_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    DISABLE_BARGE_IN_FIELD_NUMBER: _ClassVar[int]
    DISABLE_REPLY_AUDIO_FIELD_NUMBER: _ClassVar[int]
    conversation: str
    recognition_config: RecognitionConfig
    interim_results: bool
    endpointing: EndpointingConfig
    voice: str
    speaking_rate: float
    output_audio_config: AudioOutputConfig
    model: str
    retrieval: _orchestrator_pb2.RetrievalOptions
    disable_barge_in: bool
    disable_reply_audio: bool
    def __init__(self, conversation: _Optional[str] = ..., recognition_config: _Optional[_Union[RecognitionConfig, _Mapping]] = ..., interim_results: bool = ..., endpointing: _Optional[_Union[EndpointingConfig, _Mapping]] = ..., voice: _Optional[str] = ..., speaking_rate: _Optional[float] = ..., output_audio_config: _Optional[_Union[AudioOutputConfig, _Mapping]] = ..., model: _Optional[str] = ..., retrieval: _Optional[_Union[_orchestrator_pb2.RetrievalOptions, _Mapping]] = ..., disable_barge_in: bool = ..., disable_reply_audio: bool = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ("turn_id",)
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    def __init__(self, turn_id: _Optional[str] = ...) -> None: ...

class ClearInput(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConverseRequest(_message.Message):
    __slots__ = ("config", "audio_content", "cancel_reply", "clear_input")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CONTENT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REPLY_FIELD_NUMBER: _ClassVar[int]
    CLEAR_INPUT_FIELD_NUMBER: _ClassVar[int]
    config: ConverseConfig
    audio_content: bytes
    cancel_reply: CancelReply
    clear_input: ClearInput
    def __init__(self, config: _Optional[_Union[ConverseConfig, _Mapping]] = ..., audio_content: _Optional[bytes] = ..., cancel_reply: _Optional[_Union[CancelReply, _Mapping]] = ..., clear_input: _Optional[_Union[ClearInput, _Mapping]] = ...) -> None: ...

class ConversationReady(_message.Message):
    __slots__ = ("conversation", "created")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    conversation: str
    created: bool
    def __init__(self, conversation: _Optional[str] = ..., created: bool = ...) -> None: ...

class SpeechEvent(_message.Message):
    __slots__ = ("type", "offset")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    type: SpeechEventType
    offset: _duration_pb2.Duration
    def __init__(self, type: _Optional[_Union[SpeechEventType, str]] = ..., offset: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AssistantTextDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class SynthesizedAudio(_message.Message):
    __slots__ = ("audio_content", "chunk_index", "audio_offset", "text_start_offset", "text_end_offset")
    AUDIO_CONTENT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    AUDIO_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TEXT_START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TEXT_END_OFFSET_FIELD_NUMBER: _ClassVar[int]
    audio_content: bytes
    chunk_index: int
    audio_offset: _duration_pb2.Duration
    text_start_offset: int
    text_end_offset: int
    def __init__(self, audio_content: _Optional[bytes] = ..., chunk_index: _Optional[int] = ..., audio_offset: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., text_start_offset: _Optional[int] = ..., text_end_offset: _Optional[int] = ...) -> None: ...

class BargeIn(_message.Message):
    __slots__ = ("interrupted_turn_id", "speech_offset", "audio_sent")
    INTERRUPTED_TURN_ID_FIELD_NUMBER: _ClassVar[int]
    SPEECH_OFFSET_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SENT_FIELD_NUMBER: _ClassVar[int]
    interrupted_turn_id: str
    speech_offset: _duration_pb2.Duration
    audio_sent: _duration_pb2.Duration
    def __init__(self, interrupted_turn_id: _Optional[str] = ..., speech_offset: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., audio_sent: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TurnComplete(_message.Message):
    __slots__ = ("user_message", "assistant_message", "interrupted", "finish_reason", "usage", "citations", "reply_audio_duration", "input_cleared")
    USER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ASSISTANT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    REPLY_AUDIO_DURATION_FIELD_NUMBER: _ClassVar[int]
    INPUT_CLEARED_FIELD_NUMBER: _ClassVar[int]
    user_message: str
    assistant_message: str
    interrupted: bool
    finish_reason: _orchestrator_pb2.FinishReason
    usage: _orchestrator_pb2.TokenUsage
    citations: _containers.RepeatedCompositeFieldContainer[_orchestrator_pb2.Citation]
    reply_audio_duration: _duration_pb2.Duration
    input_cleared: bool
    def __init__(self, user_message: _Optional[str] = ..., assistant_message: _Optional[str] = ..., interrupted: bool = ..., finish_reason: _Optional[_Union[_orchestrator_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_orchestrator_pb2.TokenUsage, _Mapping]] = ..., citations: _Optional[_Iterable[_Union[_orchestrator_pb2.Citation, _Mapping]]] = ..., reply_audio_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., input_cleared: bool = ...) -> None: ...

class ConverseResponse(_message.Message):
    __slots__ = ("turn_id", "conversation", "transcript", "speech_event", "text_delta", "audio", "barge_in", "turn_complete", "error")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    SPEECH_EVENT_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    BARGE_IN_FIELD_NUMBER: _ClassVar[int]
    TURN_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    conversation: ConversationReady
    transcript: StreamingRecognitionResult
    speech_event: SpeechEvent
    text_delta: AssistantTextDelta
    audio: SynthesizedAudio
    barge_in: BargeIn
    turn_complete: TurnComplete
    error: _status_pb2.Status
    def __init__(self, turn_id: _Optional[str] = ..., conversation: _Optional[_Union[ConversationReady, _Mapping]] = ..., transcript: _Optional[_Union[StreamingRecognitionResult, _Mapping]] = ..., speech_event: _Optional[_Union[SpeechEvent, _Mapping]] = ..., text_delta: _Optional[_Union[AssistantTextDelta, _Mapping]] = ..., audio: _Optional[_Union[SynthesizedAudio, _Mapping]] = ..., barge_in: _Optional[_Union[BargeIn, _Mapping]] = ..., turn_complete: _Optional[_Union[TurnComplete, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...
