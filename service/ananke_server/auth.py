"""API-key authentication: a server interceptor that wants `authorization:
Bearer <key>` metadata on every call except the exempt services, compares
keys in constant time and never logs them."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from .errors import ServiceError, to_rpc_status
from .settings import Settings

if TYPE_CHECKING:  # generic only in the type stubs
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor

_BEARER = "bearer "


def load_api_keys(settings: Settings) -> tuple[str, ...]:
    """Keys from `api_keys` plus `api_keys_file` (one per line, `#` comments)."""
    keys = list(settings.api_keys)
    if settings.api_keys_file:
        for line in Path(settings.api_keys_file).read_text().splitlines():
            key = line.strip()
            if key and not key.startswith("#"):
                keys.append(key)
    return tuple(dict.fromkeys(keys))


def _service_of(method: str) -> str:
    """`/pkg.Service/Method` -> `pkg.Service`."""
    return method.lstrip("/").split("/", 1)[0]


def _authorization(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


class ApiKeyInterceptor(_Interceptor):
    """Rejects calls without a valid key with UNAUTHENTICATED (API_KEY_MISSING
    or API_KEY_INVALID) and one ErrorInfo; exempt services pass untouched."""

    def __init__(self, keys: Iterable[str], exempt_services: Iterable[str]) -> None:
        self._keys = tuple(key.encode() for key in keys)
        if not self._keys:
            raise ValueError("ApiKeyInterceptor needs at least one key")
        self._exempt = frozenset(exempt_services)

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> ServiceError | None:
        """None when `metadata` carries a valid key, else the error to report."""
        header = _authorization(metadata)
        if header is None or not header.strip():
            return ServiceError(
                "API_KEY_MISSING",
                "this call needs an API key: send metadata 'authorization: Bearer <key>'",
            )
        if header[: len(_BEARER)].lower() != _BEARER:
            return ServiceError(
                "API_KEY_INVALID", "the authorization metadata must be 'Bearer <key>'"
            )
        offered = header[len(_BEARER) :].strip().encode()
        matched = False
        for key in self._keys:  # no early exit: time does not depend on which key matched
            matched |= hmac.compare_digest(offered, key)
        if not matched:
            return ServiceError("API_KEY_INVALID", "the API key is not valid")
        return None

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or _service_of(handler_call_details.method) in self._exempt:
            return handler
        error = self.check(handler_call_details.invocation_metadata)
        if error is None:
            return handler
        return _denying(handler, error)


def _denying(
    handler: grpc.RpcMethodHandler[Any, Any], error: ServiceError
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that ends the call with `error`'s
    rich status (an interceptor cannot abort by itself)."""
    status = to_rpc_status(error)

    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(status.code, status.details, status.trailing_metadata)

    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
