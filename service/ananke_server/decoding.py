"""Request messages that do not parse (invalid UTF-8 in a string field,
truncated or garbled bytes) get INVALID_ARGUMENT with an ErrorInfo
(REQUEST_FIELD_INVALID, field `request`) instead of grpc's bare UNKNOWN."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from .errors import ServiceError, abort, invalid

if TYPE_CHECKING:  # generic only in the type stubs
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request that did not parse."""

    error: ServiceError


def _safe(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except DecodeError as error:
            return _Undecodable(
                invalid(
                    "REQUEST_FIELD_INVALID",
                    f"the request is not a valid message for {method}: {error}",
                    "request",
                )
            )

    return decode


class DecodeErrors(_Interceptor):
    """Turns undecodable unary requests into INVALID_ARGUMENT with ErrorInfo."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        decode = _safe(handler.request_deserializer, handler_call_details.method)
        if handler.response_streaming:
            assert handler.unary_stream is not None
            return grpc.unary_stream_rpc_method_handler(
                _checked_stream(handler.unary_stream),
                request_deserializer=decode,
                response_serializer=handler.response_serializer,
            )
        assert handler.unary_unary is not None
        return grpc.unary_unary_rpc_method_handler(
            _checked_unary(handler.unary_unary),
            request_deserializer=decode,
            response_serializer=handler.response_serializer,
        )


def _checked_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def checked(request: Any, context: Context) -> Any:
        if isinstance(request, _Undecodable):
            await abort(context, request.error)
        return await behavior(request, context)

    return checked


def _checked_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behavior):
        return _checked_unary(behavior)  # a coroutine that writes with context.write

    async def checked(request: Any, context: Context) -> AsyncIterator[Any]:
        if isinstance(request, _Undecodable):
            await abort(context, request.error)
        async for response in behavior(request, context):
            yield response

    return checked
