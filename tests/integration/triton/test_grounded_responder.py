from __future__ import annotations

import grpc
import numpy as np
import pytest

from services.common.errors import ServiceError
from services.common.triton import RESPONDER_MODEL, TritonClient

PASSAGES = [
    "Bananas are yellow when ripe. They grow in tropical climates.",
    (
        "The Eiffel Tower is in Paris. It was completed in 1889 for the World's Fair. "
        "It is about 330 metres tall."
    ),
    "Mount Everest is the highest mountain above sea level.",
]
IDS = ["docs/fruit#0", "docs/paris#3", "docs/everest#1"]


async def test_streams_tokens_with_citations(triton: TritonClient) -> None:
    tokens: list[str] = []
    indices: list[int] = []
    final = None
    async for r in triton.respond(
        "When was the Eiffel Tower completed?", PASSAGES, IDS, max_sentences=2
    ):
        token = r["TOKEN"].reshape(-1)[0].decode()
        if "CITATIONS" in r.outputs:
            final = r
        elif token:
            tokens.append(token)
            indices.append(int(r["PASSAGE_INDEX"].reshape(-1)[0]))
    answer = "".join(tokens)
    assert len(tokens) > 5  # streamed piece by piece
    assert "1889" in answer
    assert final is not None
    citations = [c.decode() for c in final["CITATIONS"]]
    assert citations and set(citations) <= set(IDS)
    assert citations[0] == "docs/paris#3"
    assert "[1]" in answer
    # Extractive: every cited sentence is copied from the passage it points at.
    for sentence in answer.split(" [1]")[0:1]:
        assert sentence.strip() in PASSAGES[1]
    assert set(indices) <= {0, 1, 2}
    assert float(final["CITATION_SCORES"][0]) > 0.3


async def test_unrelated_question_answers_honestly(triton: TritonClient) -> None:
    responses = [
        r async for r in triton.respond("How do I reset my router password?", PASSAGES[:1])
    ]
    answer = "".join(r["TOKEN"].reshape(-1)[0].decode() for r in responses)
    assert "do not contain an answer" in answer
    assert responses[-1]["CITATIONS"].size == 0


async def test_too_many_sentences_is_invalid_argument(triton: TritonClient) -> None:
    passages = ["Ok. " * 20] * 60  # 1200 sentences
    with pytest.raises(ServiceError) as err:
        async for _ in triton.respond("q?", passages):
            pass
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.violations[0][0] == "PASSAGES"


@pytest.mark.parametrize(
    "inputs, field",
    [
        (
            {
                "QUESTION": np.array([b""], dtype=object),
                "PASSAGES": np.array([b"x."], dtype=object),
            },
            "QUESTION",
        ),
        (
            {
                "QUESTION": np.array([b"q"], dtype=object),
                "PASSAGES": np.array([b"\xff"], dtype=object),
            },
            "PASSAGES[0]",
        ),
        (
            {"QUESTION": np.array([b"q"], dtype=object), "PASSAGES": np.zeros((0,), dtype=object)},
            "PASSAGES",
        ),
        (
            {
                "QUESTION": np.array([b"q"], dtype=object),
                "PASSAGES": np.array([b"a.", b"b."], dtype=object),
                "PASSAGE_IDS": np.array([b"only-one"], dtype=object),
            },
            "PASSAGE_IDS",
        ),
    ],
)
async def test_bad_input_is_invalid_argument(
    triton: TritonClient, inputs: dict, field: str
) -> None:
    with pytest.raises(ServiceError) as err:
        async for _ in triton.stream(RESPONDER_MODEL, inputs):
            pass
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert err.value.violations[0][0] == field
