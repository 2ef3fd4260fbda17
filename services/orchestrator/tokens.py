"""Token counting for budgets and metering.

No model tokenizer files can be fetched here, so every model counts with one deterministic
approximation of BPE tokenizers: a word is one token per 4 characters (rounded up), each
punctuation mark is one token, and each chat message adds 4 tokens of template overhead.
Providers that report their own usage (OpenAI, Anthropic) override it for metering.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aimesh.orchestrator.v1 import orchestrator_pb2 as pb

from services.common.errors import FieldViolations
from services.orchestrator.catalog import ModelEntry

ROLE_NAMES = {pb.ROLE_SYSTEM: "system", pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant",
              pb.ROLE_TOOL: "tool"}
MAX_MESSAGES = 1000

_PIECE = re.compile(r"\w+|[^\w\s]", re.UNICODE)
MESSAGE_OVERHEAD = 4


def count_text(text: str) -> int:
    return sum(
        (len(p) + 3) // 4 if p[0].isalnum() or p[0] == "_" else 1 for p in _PIECE.findall(text)
    )


def count_messages(messages: Iterable[tuple[str, str]]) -> int:
    """Prompt tokens of (role, content) messages, plus 3 for the assistant reply primer."""
    return sum(count_text(content) + MESSAGE_OVERHEAD for _, content in messages) + 3


@dataclass(frozen=True)
class PromptCount:
    prompt_tokens: int
    context_window_tokens: int
    available_output_tokens: int  # what the model may still write after this prompt


def count_prompt(model: ModelEntry, messages: Sequence[pb.ChatMessage]) -> PromptCount:
    """CountTokens: 1-1,000 messages with known roles, counted as Generate counts them."""
    v = FieldViolations()
    v.check(1 <= len(messages) <= MAX_MESSAGES, "messages", "1-1000 messages required")
    for i, m in enumerate(messages):
        v.check(
            m.role in ROLE_NAMES,
            f"messages[{i}].role",
            "must be ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL",
        )
    v.raise_if_any()
    prompt = count_messages((ROLE_NAMES[m.role], m.content) for m in messages)
    return PromptCount(
        prompt_tokens=prompt,
        context_window_tokens=model.context_window_tokens,
        available_output_tokens=min(model.max_output_tokens, model.context_window_tokens - prompt),
    )
