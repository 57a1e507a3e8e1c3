"""The server's interceptors, one pattern for all (the grpc examples'
`_wrap_rpc_behavior`): a grpc.aio ServerInterceptor gets the method's handler
and rebuilds it with `wrap_handler`, which runs the behaviour inside a scope
(an async context manager) whatever the method's shape; `metadata_value` reads
one invocation metadata value.

The interceptors, outermost first: `CallObserver` (metrics, access log,
request id), `ApiKeyCheck` (UNAUTHENTICATED without a valid key),
`DecodeCheck` (INVALID_ARGUMENT for a request that does not parse)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from .auth import ApiKeys
from .errors import ServiceError, abort, invalid
from .logging_setup import bind_request_id
from .metrics import Metrics

if TYPE_CHECKING:  # generic only in the type stubs
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    # What a call runs inside: entered before the behaviour, left after its last response.
    Scope = Callable[[Any, Context], AbstractAsyncContextManager[None]]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
else:
    _Interceptor = grpc.aio.ServerInterceptor

Behavior = Callable[..., Any]
Metadata = Iterable[tuple[str, str | bytes]] | None

access_log = logging.getLogger("ananke.access")


def metadata_value(metadata: Metadata, key: str) -> str | None:
    """The first value of `key` in invocation metadata, as text; None when absent."""
    for name, value in metadata or ():
        if name == key:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def service_of(method: str) -> str:
    """`/pkg.Service/Method` -> `pkg.Service`."""
    return method.lstrip("/").split("/", 1)[0]


_FACTORIES = {
    (False, False): (grpc.unary_unary_rpc_method_handler, "unary_unary"),
    (False, True): (grpc.unary_stream_rpc_method_handler, "unary_stream"),
    (True, False): (grpc.stream_unary_rpc_method_handler, "stream_unary"),
    (True, True): (grpc.stream_stream_rpc_method_handler, "stream_stream"),
}


def wrap_handler(
    handler: Handler,
    scope: Scope,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """`handler` with its behaviour run inside `scope(request, context)` (and
    `request_deserializer` in place of its own, when given)."""
    shape = (handler.request_streaming, handler.response_streaming)
    factory, attribute = _FACTORIES[shape]
    behavior: Behavior = getattr(handler, attribute)
    if inspect.isasyncgenfunction(behavior):
        wrapped = _scoped_stream(behavior, scope)
    else:  # a coroutine (a streaming one writes with context.write)
        wrapped = _scoped_unary(behavior, scope)
    return factory(
        wrapped,
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _scoped_unary(behavior: Behavior, scope: Scope) -> Behavior:
    async def scoped(request: Any, context: Context) -> Any:
        async with scope(request, context):
            return await behavior(request, context)

    return scoped


def _scoped_stream(behavior: Behavior, scope: Scope) -> Behavior:
    async def scoped(request: Any, context: Context) -> AsyncIterator[Any]:
        async with scope(request, context):
            async for response in behavior(request, context):
                yield response

    return scoped


class _HandlerInterceptor(_Interceptor):
    """Calls `intercept` with each method's handler (None: no such method)."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self.intercept(handler, handler_call_details)

    def intercept(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        """The handler to serve the call with."""
        raise NotImplementedError


class CallObserver(_HandlerInterceptor):
    """Counts every call by method and code, tracks in-flight calls, binds the
    x-request-id header for logging, and logs one access line per call."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def intercept(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        method = details.method
        request_id = (metadata_value(details.invocation_metadata, "x-request-id") or "")[:128]
        metrics = self._metrics

        @asynccontextmanager
        async def observed(request: Any, context: Context) -> AsyncIterator[None]:
            if request_id:
                bind_request_id(request_id)
            metrics.in_flight.labels(method).inc()
            started = time.perf_counter()
            code = "UNKNOWN"
            try:
                yield
                code = code_name(context)
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"
                raise  # never swallow: grpc#43360
            except grpc.aio.AbortError:
                code = code_name(context)
                raise
            finally:
                metrics.in_flight.labels(method).dec()
                metrics.requests.labels(method, code).inc()
                access_log.info(
                    "call %s %s",
                    method,
                    code,
                    extra={
                        "method": method,
                        "code": code,
                        "duration_s": time.perf_counter() - started,
                    },
                )

        return wrap_handler(handler, observed)


class ApiKeyCheck(_HandlerInterceptor):
    """Rejects calls without a valid key with UNAUTHENTICATED (API_KEY_MISSING
    or API_KEY_INVALID) and one ErrorInfo; exempt services pass untouched.
    `admin_methods` also need one of `admin_keys` (PERMISSION_DENIED
    ADMIN_KEY_REQUIRED otherwise, and always when there are no admin keys)."""

    def __init__(
        self,
        keys: ApiKeys,
        exempt_services: Iterable[str],
        admin_keys: ApiKeys | None = None,
        admin_methods: Iterable[str] = (),
    ) -> None:
        self._keys = keys
        self._exempt = frozenset(exempt_services)
        self._admin_keys = admin_keys
        self._admin_methods = frozenset(admin_methods)

    def _admin(self, authorization: str | None) -> bool:
        return self._admin_keys is not None and self._admin_keys.check(authorization) is None

    def intercept(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        if service_of(details.method) in self._exempt:
            return handler
        authorization = metadata_value(details.invocation_metadata, "authorization")
        error = self._keys.check(authorization)
        if (
            error is None
            and details.method in self._admin_methods
            and not self._admin(authorization)
        ):
            error = ServiceError(
                "ADMIN_KEY_REQUIRED",
                f"{details.method} needs an admin API key (the admin_api_keys setting)",
            )
        if error is None:
            return handler
        return wrap_handler(handler, _refusing(error))


def _refusing(error: ServiceError) -> Scope:
    """A scope that ends the call with `error` before the behaviour runs (an
    interceptor cannot abort by itself)."""

    @asynccontextmanager
    async def refuse(request: Any, context: Context) -> AsyncIterator[None]:
        await abort(context, error)
        yield  # never reached: abort raises

    return refuse


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request that did not parse."""

    error: ServiceError


class DecodeCheck(_HandlerInterceptor):
    """Request messages that do not parse (invalid UTF-8 in a string field,
    truncated or garbled bytes) get INVALID_ARGUMENT with an ErrorInfo
    (REQUEST_FIELD_INVALID, field `request`) instead of grpc's bare UNKNOWN."""

    def intercept(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        if handler.request_streaming:  # the service has no client-streaming methods
            return handler
        return wrap_handler(handler, _decoded, _safe(handler.request_deserializer, details.method))


@asynccontextmanager
async def _decoded(request: Any, context: Context) -> AsyncIterator[None]:
    if isinstance(request, _Undecodable):
        await abort(context, request.error)
    yield


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


def code_name(context: Context) -> str:
    """The status code the call ended with, by name ("OK" when none was set)."""
    code = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    try:  # grpc.aio may report the raw integer
        return grpc.StatusCode(code).name
    except ValueError:
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return str(code)


def interceptors(
    metrics: Metrics,
    keys: ApiKeys | None,
    exempt: Iterable[str],
    admin_keys: ApiKeys | None = None,
    admin_methods: Iterable[str] = (),
) -> list[_Interceptor]:
    """The server's interceptors in order: observer, API-key check (when keys are
    set; `admin_methods` need one of `admin_keys`), decode check."""
    chain: list[_Interceptor] = [CallObserver(metrics)]
    if keys is not None:
        chain.append(ApiKeyCheck(keys, exempt, admin_keys, admin_methods))
    chain.append(DecodeCheck())
    return chain
