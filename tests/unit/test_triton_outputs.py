"""services.common.triton._outputs_of decodes a response's output tensors exactly as tritonclient's
InferResult.as_numpy does (same values, dtypes and shapes), in one pass and with a short cut for a
single BYTES element, for every kind of output the models here send."""

from __future__ import annotations

import struct

import numpy as np
from tritonclient.grpc import InferResult, service_pb2

from services.common.triton import StreamResponse, _outputs_of


def _bytes_tensor(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _response() -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name="m", id="r")
    tensors = [
        ("TOKEN", "BYTES", [1], _bytes_tensor(" lamp".encode())),
        ("EMPTY_TOKEN", "BYTES", [1], _bytes_tensor(b"")),
        ("CITATIONS", "BYTES", [3], _bytes_tensor(b"p1", b"", "p\u00e9".encode())),
        ("NONE", "BYTES", [0], b""),
        ("EMBEDDING", "FP32", [2, 3], np.arange(6, dtype=np.float32).tobytes()),
        ("AUDIO", "INT16", [1, 4], np.array([1, -2, 3, -4], dtype=np.int16).tobytes()),
        ("SAMPLE_RATE", "INT32", [1], np.array([16000], dtype=np.int32).tobytes()),
    ]
    for name, datatype, shape, content in tensors:
        tensor = response.outputs.add(name=name, datatype=datatype)
        tensor.shape.extend(shape)
        response.raw_output_contents.append(content)
    return response


def test_outputs_match_tritonclient() -> None:
    response = _response()
    ours = _outputs_of(response)
    reference = InferResult(response)
    assert list(ours) == [t.name for t in response.outputs]
    for name, array in ours.items():
        expected = reference.as_numpy(name)
        assert expected is not None
        assert array.dtype == expected.dtype and array.shape == expected.shape, name
        assert array.tolist() == expected.tolist(), name


def test_a_length_prefix_that_does_not_cover_the_content_is_not_one_element() -> None:
    # Two elements whose first length happens to be small: decoded as two, not one.
    response = service_pb2.ModelInferResponse(model_name="m", id="r")
    tensor = response.outputs.add(name="PASSAGES", datatype="BYTES")
    tensor.shape.extend([2])
    response.raw_output_contents.append(_bytes_tensor(b"ab", b"cde"))
    assert _outputs_of(response)["PASSAGES"].tolist() == [b"ab", b"cde"]


def test_stream_response_text_reads_the_first_element_as_text() -> None:
    """StreamResponse.text: what the Orchestrator's provider and bench.chat read from the grounded
    responder's TOKEN, without each decoding it themselves."""
    outputs = _outputs_of(_response())
    response = StreamResponse(request_id="r", outputs=outputs, final=False)
    assert response.text("TOKEN") == " lamp"
    assert response.text("CITATIONS") == "p1"  # the first element only
    assert response.text("EMPTY_TOKEN") == ""
    assert response.text("NONE") == ""  # no elements
    assert response.text("ABSENT") == ""
    assert response.text("SAMPLE_RATE") == "16000"
    broken = StreamResponse("r", {"TOKEN": np.array([b"\xffok"], dtype=object)}, final=False)
    assert broken.text("TOKEN") == "\ufffdok"  # replaced, never raised mid-answer
