"""Triton python-backend model: grounded *extractive* responder.

Honest by construction: every sentence of the answer is copied from a supplied passage and cited.
The selection uses the text_embedding model (called through Triton's BLS, so the same weights
serve both) to score each passage sentence against the question, keeps the best ones that are
not near-duplicates of each other, and streams them token by token, most relevant first.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n(?=\s*[-*\u2022])")
_TOKEN = re.compile(r"\S+\s*")
EMBED_BATCH = 32
# The embedding model refuses > 256 word pieces; only the scoring copy is shortened.
EMBED_CHARS = 600
NO_ANSWER = "The provided passages do not contain an answer to this question."


def _text(value: Any, name: str) -> str:
    data = value if isinstance(value, bytes) else str(value).encode()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name} is not valid UTF-8 (byte {exc.start})") from exc


def split_sentences(passage: str) -> list[str]:
    parts = [p.strip() for p in _SENTENCE_END.split(passage)]
    return [" ".join(p.split()) for p in parts if len(p.strip()) > 1]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.embedding_model = params.get("embedding_model", "text_embedding")
        self.max_question = int(params.get("max_question_chars", "2000"))
        self.max_passages = int(params.get("max_passages", "64"))
        self.max_passage_chars = int(params.get("max_passage_chars", "20000"))
        self.min_similarity = float(params.get("min_similarity", "0.2"))
        self.duplicate_similarity = float(params.get("duplicate_similarity", "0.92"))
        self.max_total_sentences = int(params.get("max_total_sentences", "1024"))

    def _embed(self, texts: list[str]) -> np.ndarray:
        out: list[np.ndarray] = []
        for i in range(0, len(texts), EMBED_BATCH):
            batch = [t[:EMBED_CHARS].encode() for t in texts[i : i + EMBED_BATCH]]
            request = pb_utils.InferenceRequest(
                model_name=self.embedding_model,
                requested_output_names=["EMBEDDING"],
                inputs=[pb_utils.Tensor("TEXT", np.array(batch, dtype=np.object_).reshape(-1, 1))],
            )
            response = request.exec()
            if response.has_error():
                raise RuntimeError(f"{self.embedding_model}: {response.error().message()}")
            out.append(pb_utils.get_output_tensor_by_name(response, "EMBEDDING").as_numpy())
        return np.concatenate(out, axis=0)

    def _parse(self, request: Any) -> tuple[str, list[str], list[str], int]:
        raw_q = pb_utils.get_input_tensor_by_name(request, "QUESTION").as_numpy().reshape(-1)
        if raw_q.size != 1:
            raise ValueError("QUESTION must hold exactly one string")
        question = _text(raw_q[0], "QUESTION").strip()
        if not question:
            raise ValueError("QUESTION is empty")
        if len(question) > self.max_question:
            raise ValueError(
                f"QUESTION has {len(question)} characters; at most {self.max_question}"
            )
        raw_p = pb_utils.get_input_tensor_by_name(request, "PASSAGES").as_numpy().reshape(-1)
        if raw_p.size == 0:
            raise ValueError("PASSAGES is empty: a grounded answer needs context passages")
        if raw_p.size > self.max_passages:
            raise ValueError(f"PASSAGES has {raw_p.size} entries; at most {self.max_passages}")
        passages = [_text(p, f"PASSAGES[{i}]") for i, p in enumerate(raw_p)]
        for i, p in enumerate(passages):
            if len(p) > self.max_passage_chars:
                raise ValueError(
                    f"PASSAGES[{i}] has {len(p)} characters; at most {self.max_passage_chars}"
                )
        ids_tensor = pb_utils.get_input_tensor_by_name(request, "PASSAGE_IDS")
        if ids_tensor is None:
            ids = [str(i) for i in range(len(passages))]
        else:
            raw_ids = ids_tensor.as_numpy().reshape(-1)
            if raw_ids.size != len(passages):
                raise ValueError(
                    f"PASSAGE_IDS has {raw_ids.size} entries but PASSAGES has {len(passages)}"
                )
            ids = [_text(v, f"PASSAGE_IDS[{i}]") for i, v in enumerate(raw_ids)]
        max_tensor = pb_utils.get_input_tensor_by_name(request, "MAX_SENTENCES")
        max_sentences = 3 if max_tensor is None else int(max_tensor.as_numpy().reshape(-1)[0])
        if not 1 <= max_sentences <= 10:
            raise ValueError(f"MAX_SENTENCES must be 1..10, got {max_sentences}")
        return question, passages, ids, max_sentences

    def select(
        self, question: str, passages: list[str], max_sentences: int
    ) -> list[tuple[str, int, float]]:
        """Return (sentence, passage index, similarity), most relevant first."""
        sentences: list[tuple[str, int]] = [
            (s, i) for i, p in enumerate(passages) for s in split_sentences(p)
        ]
        if not sentences:
            return []
        if len(sentences) > self.max_total_sentences:
            # Bounded work per request: one instance serves everyone.
            raise ValueError(
                f"PASSAGES split into {len(sentences)} sentences; at most "
                f"{self.max_total_sentences} per request (send the best-ranked passages only)"
            )
        vectors = self._embed([question] + [s for s, _ in sentences])
        q, sv = vectors[0], vectors[1:]
        scores = sv @ q
        chosen: list[int] = []
        for idx in np.argsort(-scores, kind="stable"):
            if scores[idx] < self.min_similarity or len(chosen) >= max_sentences:
                break
            if any(float(sv[idx] @ sv[c]) >= self.duplicate_similarity for c in chosen):
                continue
            chosen.append(int(idx))
        return [(sentences[i][0], sentences[i][1], float(scores[i])) for i in chosen]

    def _stream(self, sender: Any, request: Any) -> bool:
        """Stream the answer; False if the client cancelled (then nothing final was sent)."""
        question, passages, ids, max_sentences = self._parse(request)
        picked = self.select(question, passages, max_sentences)
        cited: dict[int, float] = {}
        pieces: list[tuple[str, int]] = []
        if not picked:
            pieces = [(t, -1) for t in _TOKEN.findall(NO_ANSWER)]
        for n, (sentence, passage, score) in enumerate(picked):
            if passage not in cited:
                cited[passage] = score
            number = list(cited).index(passage) + 1
            words = _TOKEN.findall(sentence)
            words[-1] = words[-1].rstrip()
            pieces.extend((w, passage) for w in words)
            sep = " " if n + 1 < len(picked) else ""
            pieces.append((f" [{number}]{sep}", passage))
        for token, passage in pieces:
            if sender.is_cancelled():
                return False
            sender.send(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("TOKEN", np.array([token.encode()], dtype=np.object_)),
                        pb_utils.Tensor("PASSAGE_INDEX", np.array([passage], dtype=np.int32)),
                    ]
                )
            )
        sender.send(
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("TOKEN", np.array([b""], dtype=np.object_)),
                    pb_utils.Tensor("PASSAGE_INDEX", np.array([-1], dtype=np.int32)),
                    pb_utils.Tensor(
                        "CITATIONS", np.array([ids[p].encode() for p in cited], dtype=np.object_)
                    ),
                    pb_utils.Tensor(
                        "CITATION_SCORES", np.array(list(cited.values()), dtype=np.float32)
                    ),
                ]
            ),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )
        return True

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                completed = self._stream(sender, request)
            except ValueError as exc:
                code = pb_utils.TritonError.INVALID_ARG
                message = str(exc)
            except Exception as exc:  # noqa: BLE001  keep the instance alive; fail only this request
                code = pb_utils.TritonError.INTERNAL
                message = f"responder failed: {exc}"
            else:
                if completed:
                    continue  # final already sent: the sender must not be touched again
                code, message = pb_utils.TritonError.CANCELLED, "cancelled by the client"
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
