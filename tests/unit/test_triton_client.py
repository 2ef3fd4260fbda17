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
