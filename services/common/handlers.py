"""Rebuilding a gRPC method handler around its behavior: what every server interceptor here
(errors, peer authorization) needs, for all four call kinds.

A method's handler is wrapped once, not per call (`MethodInterceptor`): a wrapper decides what
depends on the call when the call runs, from its context and `call_metadata()`."""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

Behavior = Callable[..., Any]
Around = Callable[[Behavior], Behavior]
Metadata = Sequence[tuple[str, str | bytes]]

# The invocation metadata of the call being served, set by the interceptor in the call's own task
# before its handler runs (grpc.aio runs both in one task per call): context.invocation_metadata()
# builds a new tuple on every read (~2 us), and each wrapper needs it.
_call_metadata: contextvars.ContextVar[Metadata] = contextvars.ContextVar(
    "aimesh_call_metadata", default=()
)


def call_metadata() -> Metadata:
    """The invocation metadata of the call being served (as grpc hands it to interceptors)."""
    return _call_metadata.get()


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


def iterate_stream(
    behavior: Behavior, request: Any, context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    """The responses of a streaming behavior: an async generator, a coroutine that writes with
    context.write(), or a plain iterator. An async generator is handed on as it is: every
    interceptor layer iterates one, and a layer in between would cost each message a step."""
    result = behavior(request, context)
    if inspect.isasyncgen(result):
        return result
    return _responses_of(result)


async def _responses_of(result: Any) -> AsyncIterator[Any]:
    if inspect.isawaitable(result):
        await result
    elif result is not None:
        for item in result:
            yield item


def before(
    handler: grpc.RpcMethodHandler, check: Callable[[grpc.aio.ServicerContext], Any]
) -> grpc.RpcMethodHandler:
    """The same handler with `check(context)` run (and awaited when it returns an awaitable)
    before its behavior, for all four kinds. A check with nothing to wait for returns None:
    no coroutine to build and step on every call."""

    def unary_response(behavior: Behavior) -> Behavior:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            pending = check(context)
            if pending is not None:
                await pending
            return await call_unary(behavior, request, context)

        return run

    def stream_response(behavior: Behavior) -> Behavior:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            pending = check(context)
            if pending is not None:
                await pending
            async for item in iterate_stream(behavior, request, context):
                yield item

        return run

    return rewrap(handler, unary_response, stream_response)


class MethodInterceptor(grpc.aio.ServerInterceptor):
    """A server interceptor that wraps the handler of each served method once: subclasses
    implement `wrap(handler, method)`, which must depend on the method only (it is shared by all
    its calls); what depends on the call (metadata, peer) is decided inside the wrapped behavior.
    Calls to methods nobody serves pass through untouched (UNIMPLEMENTED)."""

    # method -> (the handler it wrapped, the wrapped handler)
    _wrapped_by_method: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] | None = None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        _call_metadata.set(handler_call_details.invocation_metadata or ())
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self.wrapped(handler, handler_call_details.method)

    def wrapped(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """`wrap(handler, method)`, made on the method's first call (and again only when the
        handler inside changed): rebuilding it costs a handler and closures per layer."""
        cache = self._wrapped_by_method
        if cache is None:
            cache = self._wrapped_by_method = {}
        held = cache.get(method)
        if held is None or held[0] is not handler:
            held = cache[method] = (handler, self.wrap(handler, method))
        return held[1]

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class InterceptorChain(MethodInterceptor):
    """Several MethodInterceptors as one grpc interceptor, the first outermost (as in
    grpc.aio.server(interceptors=[...])): a call costs one cached lookup instead of a coroutine
    and a handler lookup per layer."""

    def __init__(self, layers: Sequence[MethodInterceptor]) -> None:
        self.layers = tuple(layers)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        for layer in reversed(self.layers):
            handler = layer.wrap(handler, method)
        return handler
