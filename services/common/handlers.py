"""Rebuilding a gRPC method handler around its behavior: what every server interceptor here
(errors, peer authorization) needs, for all four call kinds."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

Behavior = Callable[..., Any]
Around = Callable[[Behavior], Behavior]


def rewrap(
    handler: grpc.RpcMethodHandler,
    around_unary: Around,
    around_stream: Around,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """The same handler (kind and serializers) with its behavior wrapped: single-response kinds
    by `around_unary`, streaming-response kinds by `around_stream`; optionally another request
    deserializer."""
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler, around_unary),
        ("unary_stream", grpc.unary_stream_rpc_method_handler, around_stream),
        ("stream_unary", grpc.stream_unary_rpc_method_handler, around_unary),
        ("stream_stream", grpc.stream_stream_rpc_method_handler, around_stream),
    )
    for attribute, build, around in kinds:
        behavior = getattr(handler, attribute)
        if behavior:
            return build(
                around(behavior),
                request_deserializer=request_deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


async def call_unary(behavior: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """Run a single-response behavior, sync or async (the generated base classes are sync)."""
    result = behavior(request, context)
    return await result if inspect.isawaitable(result) else result


async def iterate_stream(
    behavior: Behavior, request: Any, context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    """The responses of a streaming behavior: an async generator, a coroutine that writes with
    context.write(), or a plain iterator."""
    result = behavior(request, context)
    if inspect.isasyncgen(result):
        async for item in result:
            yield item
    elif inspect.isawaitable(result):
        await result
    elif result is not None:
        for item in result:
            yield item


def before(
    handler: grpc.RpcMethodHandler, check: Callable[[grpc.aio.ServicerContext], Any]
) -> grpc.RpcMethodHandler:
    """The same handler with `await check(context)` run before its behavior, for all four kinds."""

    def unary_response(behavior: Behavior) -> Behavior:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)
            return await call_unary(behavior, request, context)

        return run

    def stream_response(behavior: Behavior) -> Behavior:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await check(context)
            async for item in iterate_stream(behavior, request, context):
                yield item

        return run

    return rewrap(handler, unary_response, stream_response)


class MethodInterceptor(grpc.aio.ServerInterceptor):
    """A server interceptor that rebuilds the handler of each served method: subclasses
    implement `wrap`; calls to methods nobody serves pass through untouched (UNIMPLEMENTED)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self.wrap(handler, handler_call_details)

    def wrap(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        raise NotImplementedError
