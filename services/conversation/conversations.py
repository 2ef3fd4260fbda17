"""Conversation resources' rules (plain Python): their names, which fields a client may set and
the limits on them. The servicer decodes and encodes; chat.py runs a turn."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

from aimesh.conversation.v1 import conversation_pb2 as cpb

from services.common.errors import (
    FieldViolations,
    ServiceError,
    already_exists,
    etag_mismatch,
    failed_precondition,
    not_found,
)
from services.common.identity import Identity
from services.common.names import resource
from services.conversation.store import Row, Store

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


# Checks that a model exists for the caller (NOT_FOUND lists the valid ones): Chat.model.
ModelCheck = Callable[[str, Identity], Awaitable[object]]


class Conversations:
    """The conversation resources of an organization: create, read, update, (un)delete."""

    def __init__(self, store: Store, check_model: ModelCheck) -> None:
        self.store = store
        self.check_model = check_model

    async def get(self, org: str, conv_id: str) -> Row:
        row = await self.store.get_conversation(org, conv_id)
        if row is None:
            raise conversation_not_found(conv_id)
        return row

    async def create(self, identity: Identity, request: cpb.CreateConversationRequest) -> Row:
        check_new(request)
        conv = request.conversation
        if conv.default_model:
            await self.check_model(conv.default_model, identity)
        conv_id = request.conversation_id or str(uuid.uuid4())
        row = await self.store.create_conversation(
            identity.org,
            conv_id,
            {
                "title": conv.title,
                "metadata": dict(conv.metadata),
                "default_model": conv.default_model,
                "system_prompt": conv.system_prompt,
            },
            request.request_id or None,
        )
        if row is None:
            name = CONVERSATION.format(conv_id)
            raise already_exists(f"{name} already exists", metadata={"conversation": name})
        return row

    async def update(self, identity: Identity, request: cpb.UpdateConversationRequest) -> Row:
        """The fields of the mask, on a conversation not deleted, guarded by its etag."""
        conv = request.conversation
        conv_id = CONVERSATION.id(conv.name, "conversation.name")
        paths = update_paths(request)
        row = await self.get(identity.org, conv_id)
        if row["delete_time"] is not None:
            raise conversation_deleted(conv_id, "undelete it first")
        if conv.etag and conv.etag != row["etag"]:
            raise etag_mismatch(conv.name)
        if "default_model" in paths and conv.default_model:
            await self.check_model(conv.default_model, identity)
        changes = {p: dict(conv.metadata) if p == "metadata" else getattr(conv, p) for p in paths}
        updated = await self.store.update_conversation(identity.org, conv_id, changes)
        if updated is None:
            raise not_found(f"{conv.name} not found", reason="CONVERSATION_NOT_FOUND")
        return updated

    async def set_deleted(self, org: str, name: str, deleted: bool) -> Row:
        """Delete (soft: purged after PURGE_AFTER_DAYS) or undelete."""
        conv_id = CONVERSATION.id(name, "name")
        await self.get(org, conv_id)
        row = await self.store.set_deleted(org, conv_id, deleted)
        if row is None:
            raise not_found(f"{name} not found", reason="CONVERSATION_NOT_FOUND")
        return row

    async def truncate_message(self, org: str, request: cpb.TruncateMessageRequest) -> Row:
        """An assistant message cut to its first content_length code points (what a voice
        caller heard); the conversation must exist and not be deleted. The row carries the
        conversation's message count as `conversation_message_count`."""
        row = await self.get_message(org, request.name)
        conv_id, message_id = MESSAGE.parse(request.name, "name")
        conv = await self.get(org, conv_id)
        if conv["delete_time"] is not None:
            raise conversation_deleted(conv_id, "undelete it first")
        if row["role"] != cpb.Message.ROLE_ASSISTANT:
            raise failed_precondition(
                f"{request.name} is a user message; only assistant messages are truncated",
                reason="MESSAGE_NOT_ASSISTANT",
            )
        length = len(row["content"])
        v = FieldViolations()
        v.check(
            0 <= request.content_length <= length,
            "content_length",
            f"must be 0-{length} (the content's length in code points)",
        )
        v.raise_if_any()
        if request.content_length < length:
            cut = await self.store.truncate_message(
                org, conv_id, message_id, request.content_length, cpb.Message.STATE_INCOMPLETE
            )
            if cut is None:
                raise not_found(f"{request.name} not found", reason="MESSAGE_NOT_FOUND")
            row = cut
        return {**row, "conversation_message_count": conv["message_count"]}

    async def get_message(self, org: str, name: str) -> Row:
        """A message of a conversation that still exists (deleted ones included)."""
        conv_id, message_id = MESSAGE.parse(name, "name")
        row = await self.store.get_message(org, conv_id, message_id)
        if row is None or await self.store.get_conversation(org, conv_id) is None:
            raise not_found(f"{name} not found", reason="MESSAGE_NOT_FOUND")
        return row
