"""Unit tests of services/common/triton.py that need no server: error mapping and encoding."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from services.common.errors import ServiceError
from services.common.triton import build_inputs, map_error


@pytest.mark.parametrize(
    "message, code, expected, reason",
    [
        (
            "Request for unknown model: 'x' is not found",
            None,
            grpc.StatusCode.FAILED_PRECONDITION,
            "TRITON_MODEL_NOT_FOUND",
        ),
        (
            "Request for unknown model: 'x' is not found",
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION,
            "TRITON_MODEL_NOT_FOUND",
        ),
        (
            "Request for model 'x' is not ready",
            None,
            grpc.StatusCode.UNAVAILABLE,
            "TRITON_MODEL_NOT_READY",
        ),
        (
            "failed to connect to all addresses",
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.UNAVAILABLE,
            "TRITON_UNAVAILABLE",
        ),
        (
            "Deadline Exceeded",
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "TRITON_DEADLINE_EXCEEDED",
        ),
        (
            "[request id: 7-0] SAMPLE_RATE must be 16000 Hz mono PCM16, got 8000 Hz",
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "TRITON_INVALID_INPUT",
        ),
        (
            "[request id: <id_unknown>] inference request batch-size must be <= 32 for 'm'",
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.INVALID_ARGUMENT,
            "TRITON_INVALID_INPUT",
        ),
        (
            "sequence 5 is not open: it was never started",
            None,
            grpc.StatusCode.FAILED_PRECONDITION,
            "TRITON_SEQUENCE_NOT_OPEN",
        ),
        ("recognition failed: boom", None, grpc.StatusCode.INTERNAL, "TRITON_INTERNAL"),
    ],
)
def test_map_error(
    message: str, code: grpc.StatusCode | None, expected: grpc.StatusCode, reason: str
) -> None:
    err = map_error("m", message, code)
    assert isinstance(err, ServiceError)
    assert err.code == expected
    assert err.reason == reason
    assert err.metadata == {"model": "m"}


def test_invalid_input_names_the_tensor_with_index() -> None:
    err = map_error("m", "PASSAGES[3] is not valid UTF-8 (byte 0)")
    assert err.violations == (("PASSAGES[3]", "PASSAGES[3] is not valid UTF-8 (byte 0)"),)
    status = err.to_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_build_inputs_encodes_strings_as_bytes() -> None:
    (tensor,) = build_inputs("m", {"TEXT": [["héllo"], ["x"]]})
    assert tensor.datatype() == "BYTES"
    assert tensor.shape() == [2, 1]
    (audio,) = build_inputs("m", {"AUDIO": np.zeros((1, 5), dtype=np.int16)})
    assert audio.datatype() == "INT16"


def test_build_inputs_rejects_unencodable_values() -> None:
    with pytest.raises(ServiceError) as err:
        build_inputs("m", {"X": np.array([1 + 2j])})
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.violations[0][0] == "X"


async def test_sequence_marks_start_once_and_end_of_utterance_on_request() -> None:
    from services.common.triton import ASR_END_OF_UTTERANCE, TritonClient

    client = TritonClient("127.0.0.1:1")  # never dialled: the requests are inspected directly
    stream = client.recognize()
    stream._call = object()  # keep send() from opening a gRPC call
    try:
        chunk = {"AUDIO": np.zeros((1, 160), dtype=np.int16)}
        await stream.send(chunk)
        await stream.send(chunk, end_of_utterance=True)
        await stream.send(chunk)
        await stream.end(chunk)
        requests = stream._requests()
        sent = [await anext(requests) for _ in range(4)]
    finally:
        stream._call = None
        await stream.aclose()
        await client.close()
    params = [r.parameters for r in sent]
    assert {p["sequence_id"].int64_param for p in params} == {stream.sequence_id}
    assert [p["sequence_start"].bool_param for p in params] == [True, False, False, False]
    assert [p["sequence_end"].bool_param for p in params] == [False, False, False, True]
    names = [[i.name for i in r.inputs] for r in sent]
    assert [ASR_END_OF_UTTERANCE in n for n in names] == [False, True, False, False]
    eou = sent[1].inputs[[i.name for i in sent[1].inputs].index(ASR_END_OF_UTTERANCE)]
    assert eou.datatype == "BOOL" and list(eou.shape) == [1, 1]


class _RecordedCall:
    """A ModelStreamInfer call as TritonClient.stream drives it (write, read until the final
    response, then half-close, or reset when abandoned), recording what it was asked to do."""

    def __init__(self, responses: list[object]) -> None:
        self.responses = responses
        self.written: list[object] = []
        self.half_closed = self.cancelled = False

    async def write(self, request: object) -> None:
        self.written.append(request)

    async def read(self) -> object:
        return self.responses.pop(0) if self.responses else grpc.aio.EOF

    async def done_writing(self) -> None:
        self.half_closed = True

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def done(self) -> bool:
        return False


def _token_responses(words: list[str]) -> list[object]:
    from tritonclient.grpc import service_pb2

    out: list[object] = []
    for word in words:
        message = service_pb2.ModelStreamInferResponse()
        response = message.infer_response
        tensor = response.outputs.add(name="TOKEN", datatype="BYTES")
        tensor.shape.append(1)
        raw = word.encode()
        response.raw_output_contents.append(len(raw).to_bytes(4, "little") + raw)
        out.append(message)
    final = service_pb2.ModelStreamInferResponse()
    final.infer_response.parameters["triton_final_response"].bool_param = True
    out.append(final)
    return out


@pytest.mark.parametrize("abandon", [False, True])
async def test_stream_half_closes_when_finished_and_resets_when_abandoned(abandon: bool) -> None:
    """The one request is written (no request iterator); a stream read to its final response
    half-closes (Triton ends it, no reset), one the caller leaves early is reset (Triton
    cancels the request)."""
    from services.common.triton import RESPONDER_MODEL, TritonClient

    call = _RecordedCall(_token_responses(["The ", "lamp ", "is ", "on."]))
    client = TritonClient("127.0.0.1:1")  # never dialled: the stub below answers
    client._stub = type("Stub", (), {"ModelStreamInfer": lambda self, timeout: call})()
    tokens = []
    try:
        stream = client.stream(RESPONDER_MODEL, {"QUESTION": np.array([b"q"], dtype=object)})
        async for response in stream:
            tokens.append(response["TOKEN"].reshape(-1)[0].decode())
            if abandon:
                break
        await stream.aclose()
    finally:
        await client.close()
    assert len(call.written) == 1
    assert tokens == (["The "] if abandon else ["The ", "lamp ", "is ", "on."])
    assert (call.half_closed, call.cancelled) == ((False, True) if abandon else (True, False))


async def test_stream_reports_the_request_sent_before_reading_any_response() -> None:
    """`on_sent` (the Orchestrator announces the answer from it) comes once the request is
    written and before the first response is read."""
    from services.common.triton import RESPONDER_MODEL, TritonClient

    call = _RecordedCall(_token_responses(["The ", "lamp."]))
    client = TritonClient("127.0.0.1:1")  # never dialled: the stub below answers
    client._stub = type("Stub", (), {"ModelStreamInfer": lambda self, timeout: call})()
    seen: list[tuple[int, int]] = []  # (requests written, responses left) when called
    try:
        async for _ in client.stream(RESPONDER_MODEL, {"QUESTION": np.array([b"q"], dtype=object)},
                                     on_sent=lambda: seen.append((len(call.written), len(call.responses)))):
            pass
    finally:
        await client.close()
    assert seen == [(1, 3)]
