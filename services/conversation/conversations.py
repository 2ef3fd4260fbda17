"""Conversation resources' rules (plain Python): their names, which fields a client may set and
the limits on them. The servicer decodes and encodes; chat.py runs a turn."""

from __future__ import annotations

import re

from aimesh.conversation.v1 import conversation_pb2 as cpb

from services.common.errors import FieldViolations, ServiceError, failed_precondition, not_found
from services.common.names import resource

CONVERSATION = resource("conversation.aimesh.dev/Conversation")
MESSAGE = resource("conversation.aimesh.dev/Message")
MODEL = resource("orchestrator.aimesh.dev/Model")

CONVERSATION_ID = re.compile(r"^[a-z][a-z0-9-]{3,62}$")
META_KEY = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MAX_CONTENT = 32_000
MAX_REQUEST_ID = 64
UPDATABLE = frozenset({"title", "metadata", "default_model", "system_prompt"})


def conversation_not_found(conv_id: str) -> ServiceError:
    name = CONVERSATION.format(conv_id)
    return not_found(
        f"{name} not found", reason="CONVERSATION_NOT_FOUND", metadata={"conversation": name}
    )


def conversation_deleted(conv_id: str, remedy: str) -> ServiceError:
    return failed_precondition(
        f"{CONVERSATION.format(conv_id)} is deleted; {remedy}", reason="CONVERSATION_DELETED"
    )


def check_fields(conv: cpb.Conversation, paths: set[str] | frozenset[str], v: FieldViolations,
                 prefix: str = "conversation") -> None:
    """The limits on the client-set fields named in `paths`."""
    if "title" in paths:
        v.check(len(conv.title) <= 256, f"{prefix}.title", "at most 256 characters")
    if "system_prompt" in paths:
        v.check(
            len(conv.system_prompt) <= 32_000,
            f"{prefix}.system_prompt",
            "at most 32,000 characters",
        )
    if "default_model" in paths and conv.default_model:
        MODEL.parse(conv.default_model, f"{prefix}.default_model", v)
    if "metadata" in paths:
        v.check(len(conv.metadata) <= 32, f"{prefix}.metadata", "at most 32 entries")
        for key, value in conv.metadata.items():
            v.check(
                bool(META_KEY.match(key)),
                f"{prefix}.metadata[{key}]",
                "keys match [a-z][a-z0-9_]{0,62}",
            )
            v.check(
                len(value) <= 256, f"{prefix}.metadata[{key}]", "values are at most 256 characters"
            )


def check_new(request: cpb.CreateConversationRequest) -> None:
    """CreateConversation's fields: every problem at once."""
    v = FieldViolations()
    check_fields(request.conversation, UPDATABLE, v)
    if request.conversation_id:
        v.check(
            bool(CONVERSATION_ID.match(request.conversation_id)),
            "conversation_id",
            "4-63 characters of [a-z0-9-] starting with a letter",
        )
    v.check(
        len(request.request_id) <= MAX_REQUEST_ID,
        "request_id",
        f"at most {MAX_REQUEST_ID} characters",
    )
    v.raise_if_any()


def update_paths(request: cpb.UpdateConversationRequest) -> set[str]:
    """The fields an update changes (`*` = all updatable), after checking the mask and values."""
    paths = set(request.update_mask.paths)
    v = FieldViolations()
    v.check(
        bool(paths),
        "update_mask",
        "required: any of title, metadata, default_model, system_prompt or *",
    )
    if "*" in paths:
        paths = set(UPDATABLE)
    for p in paths - UPDATABLE:
        v.add("update_mask", f"unknown path {p!r}; allowed: {', '.join(sorted(UPDATABLE))}")
    check_fields(request.conversation, paths, v)
    v.raise_if_any()
    return paths


def check_send(request: cpb.SendMessageRequest) -> None:
    """SendMessage's fields: every problem at once."""
    v = FieldViolations()
    v.check(
        1 <= len(request.content) <= MAX_CONTENT,
        "content",
        f"{len(request.content)} characters; must be 1-{MAX_CONTENT}",
    )
    if request.model:
        MODEL.parse(request.model, "model", v)
    if request.HasField("temperature"):
        v.check(0.0 <= request.temperature <= 2.0, "temperature", "must be 0.0-2.0")
    if request.HasField("max_output_tokens"):
        v.check(request.max_output_tokens >= 1, "max_output_tokens", "must be at least 1")
    if request.retrieval.enabled:
        v.check(
            request.retrieval.top_k == 0 or 1 <= request.retrieval.top_k <= 20,
            "retrieval.top_k",
            "must be 1-20",
        )
    v.check(
        len(request.request_id) <= MAX_REQUEST_ID,
        "request_id",
        f"at most {MAX_REQUEST_ID} characters",
    )
    v.raise_if_any()
