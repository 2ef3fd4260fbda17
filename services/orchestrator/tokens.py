"""Token counting for budgets and metering.

No model tokenizer files can be fetched here, so every model counts with one deterministic
approximation of BPE tokenizers: a word is one token per 4 characters (rounded up), each
punctuation mark is one token, and each chat message adds 4 tokens of template overhead.
Providers that report their own usage (OpenAI, Anthropic) override it for metering.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_PIECE = re.compile(r"\w+|[^\w\s]", re.UNICODE)
MESSAGE_OVERHEAD = 4


def count_text(text: str) -> int:
    return sum(
        (len(p) + 3) // 4 if p[0].isalnum() or p[0] == "_" else 1 for p in _PIECE.findall(text)
    )


def count_messages(messages: Iterable[tuple[str, str]]) -> int:
    """Prompt tokens of (role, content) messages, plus 3 for the assistant reply primer."""
    return sum(count_text(content) + MESSAGE_OVERHEAD for _, content in messages) + 3
