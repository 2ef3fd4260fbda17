"""Conversation's gRPC surface: thin — decode, authorize, call the domain logic, encode."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
from aimesh.conversation.v1 import conversation_pb2 as cpb
from aimesh.conversation.v1 import conversation_pb2_grpc
from aimesh.orchestrator.v1 import orchestrator_pb2 as opb
from google.rpc import status_pb2

from services.common.channels import Channels
from services.common.identity import require_identity
from services.common.pagination import Paginator
from services.common.server import Binding, Runtime, ServiceSpec, spec_for
from services.common.timestamps import to_timestamp
from services.conversation import conversations
from services.conversation.chat import Chat
from services.conversation.conversations import CONVERSATION, MESSAGE, Conversations
from services.conversation.store import PURGE_AFTER_DAYS, Row, Store

log = logging.getLogger("aimesh.conversation")





def conversation_message(row: Row) -> cpb.Conversation:
    conv = cpb.Conversation(
        name=CONVERSATION.format(row["id"]), title=row["title"], metadata=row["metadata"],
        default_model=row["default_model"], system_prompt=row["system_prompt"],
        message_count=row["message_count"], create_time=to_timestamp(row["create_time"]),
        update_time=to_timestamp(row["update_time"]), etag=row["etag"])
    if row["delete_time"] is not None:
        conv.delete_time.CopyFrom(to_timestamp(row["delete_time"]))
        conv.expire_time.CopyFrom(
            to_timestamp(row["delete_time"] + timedelta(days=PURGE_AFTER_DAYS))
        )
    return conv


def message_message(row: Row) -> cpb.Message:
    msg = cpb.Message(
        name=MESSAGE.format(row["conversation_id"], row["id"]),
        role=row["role"],
        content=row["content"],
        state=row["state"],
        model=row["model"],
        finish_reason=row["finish_reason"],
        create_time=to_timestamp(row["create_time"]),
    )
    if row["prompt_tokens"] is not None:
        msg.usage.CopyFrom(
            opb.TokenUsage(
                prompt_tokens=row["prompt_tokens"],
                completion_tokens=row["completion_tokens"],
                total_tokens=row["prompt_tokens"] + row["completion_tokens"],
            )
        )
    if row["citations"]:
        msg.citations.extend(cpb.Message.FromString(row["citations"]).citations)
    if row["error"]:
        msg.error.CopyFrom(status_pb2.Status.FromString(row["error"]))
    return msg


class ConversationServicer(conversation_pb2_grpc.ConversationServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        assert runtime.db is not None
        self.runtime = runtime
        self.store = Store(runtime.db)
        self.channels = Channels(runtime.settings)
        self.chat = Chat(self.store, runtime.cache, self.channels)
        self.conversations = Conversations(self.store, self.chat.model)
        self.pages = Paginator(runtime.settings)
        runtime.on_shutdown(self.channels.close)
        runtime.spawn(self._purge_loop(), "conversation-purge")

    async def _purge_loop(self) -> None:
        while True:
            try:
                purged = await self.store.purge_expired()
                if purged:
                    log.info("purged expired conversations", extra={"count": purged})
            except Exception as exc:  # noqa: BLE001 - keep purging on later rounds
                log.warning("purge failed", extra={"error": str(exc)})
            await asyncio.sleep(3600)

    async def CreateConversation(
        self, request: cpb.CreateConversationRequest, context: grpc.aio.ServicerContext
    ) -> cpb.Conversation:
        identity = require_identity(context.invocation_metadata())
        return conversation_message(await self.conversations.create(identity, request))

    async def GetConversation(
        self, request: cpb.GetConversationRequest, context: grpc.aio.ServicerContext
    ) -> cpb.Conversation:
        identity = require_identity(context.invocation_metadata())
        return conversation_message(
            await self.conversations.get(identity.org, CONVERSATION.id(request.name, "name"))
        )

    async def ListConversations(
        self, request: cpb.ListConversationsRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListConversationsResponse:
        identity = require_identity(context.invocation_metadata())
        page = self.pages.start(request, identity.org)
        rows, token = page.split(
            await self.store.list_conversations(
                identity.org, request.show_deleted, page.offset, page.size + 1
            )
        )
        return cpb.ListConversationsResponse(
            conversations=[conversation_message(r) for r in rows], next_page_token=token
        )

    async def UpdateConversation(
        self, request: cpb.UpdateConversationRequest, context: grpc.aio.ServicerContext
    ) -> cpb.Conversation:
        identity = require_identity(context.invocation_metadata())
        return conversation_message(await self.conversations.update(identity, request))

    async def DeleteConversation(
        self, request: cpb.DeleteConversationRequest, context: grpc.aio.ServicerContext
    ) -> cpb.Conversation:
        return await self._set_deleted(request.name, True, context)

    async def UndeleteConversation(
        self, request: cpb.UndeleteConversationRequest, context: grpc.aio.ServicerContext
    ) -> cpb.Conversation:
        return await self._set_deleted(request.name, False, context)

    async def _set_deleted(
        self, name: str, deleted: bool, context: grpc.aio.ServicerContext
    ) -> cpb.Conversation:
        identity = require_identity(context.invocation_metadata())
        row = await self.conversations.set_deleted(identity.org, name, deleted)
        return conversation_message(row)

    async def ListMessages(
        self, request: cpb.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListMessagesResponse:
        identity = require_identity(context.invocation_metadata())
        conv_id = CONVERSATION.id(request.parent, "parent")
        page = self.pages.start(request, identity.org)
        await self.conversations.get(identity.org, conv_id)
        after = int(page.cursor[0]) if page.cursor else 0
        rows, total = await self.store.list_messages(identity.org, conv_id, after, page.size + 1)
        rows, token = page.split(rows, lambda r: (r["seq"],))
        return cpb.ListMessagesResponse(
            messages=[message_message(r) for r in rows], total_size=total, next_page_token=token
        )

    async def GetMessage(
        self, request: cpb.GetMessageRequest, context: grpc.aio.ServicerContext
    ) -> cpb.Message:
        identity = require_identity(context.invocation_metadata())
        return message_message(await self.conversations.get_message(identity.org, request.name))

    async def TruncateMessage(
        self, request: cpb.TruncateMessageRequest, context: grpc.aio.ServicerContext
    ) -> cpb.Message:
        identity = require_identity(context.invocation_metadata())
        row = await self.conversations.truncate_message(identity.org, request)
        await self.chat.forget_history(
            identity.org, row["conversation_id"], row["conversation_message_count"]
        )
        return message_message(row)

    async def SendMessage(
        self, request: cpb.SendMessageRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.SendMessageResponse]:
        identity = require_identity(context.invocation_metadata())
        conv_id = CONVERSATION.id(request.conversation, "conversation")
        conversations.check_send(request)
        stream = self.chat.send(
            identity,
            conv_id,
            request,
            self.runtime.settings.default_model,
            context.time_remaining(),
            message_message,
        )
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()  # runs the turn's cleanup (final write, unlock) now, not at GC


def build_spec() -> ServiceSpec:
    return spec_for(
        "conversation",
        Path(__file__).parent,
        [
            Binding(
                conversation_pb2_grpc.add_ConversationServiceServicer_to_server,
                ConversationServicer,
                cpb.DESCRIPTOR.services_by_name["ConversationService"],
            )
        ],
    )
