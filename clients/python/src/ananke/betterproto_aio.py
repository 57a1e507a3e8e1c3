"""An asyncio stub speaking the betterproto2 dataclasses over a grpc.aio channel.

betterproto2 0.10 generates `ananke_betterproto.ananke.v1.InferenceServiceStub`
for a blocking `grpc.Channel` only, without deadlines or metadata. This stub
offers the same calls for asyncio callers who prefer the dataclasses. Needs
the `betterproto` extra: `pip install 'ananke-client[betterproto]'`.
"""

# `timeout` is the gRPC deadline, sent to the server; asyncio.timeout() is not.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

try:
    from ananke_betterproto.ananke import v1 as bp
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "ananke.betterproto_aio needs betterproto2: pip install 'ananke-client[betterproto]'"
    ) from exc

__all__ = ["AsyncInferenceServiceStub"]

_SERVICE = "/ananke.v1.InferenceService/"
Metadata = Sequence[tuple[str, str]] | None


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


class AsyncInferenceServiceStub:
    """`ananke.v1.InferenceService` over `grpc.aio`, with betterproto2 messages.

    Errors are `grpc.aio.AioRpcError`; pass one to `ananke.errors.from_rpc_error`
    for the ErrorInfo reason and field violations.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def _unary(self, method: str, response_type: Any) -> Callable[..., Any]:
        return self._channel.unary_unary(
            _SERVICE + method,
            request_serializer=_serialize,
            response_deserializer=response_type.FromString,
        )

    async def generate_stream(
        self, message: Any, *, timeout: float | None = None, metadata: Metadata = None
    ) -> AsyncIterator[Any]:
        """Yield the `bp.GenerateStreamResponse` events of a `bp.GenerateStreamRequest`.

        Closing the iterator (`aclose()`, or leaving the `async for` early and
        letting it be collected) cancels the call.
        """
        call = self._channel.unary_stream(
            _SERVICE + "GenerateStream",
            request_serializer=_serialize,
            response_deserializer=bp.GenerateStreamResponse.FromString,
        )(message, timeout=timeout, metadata=metadata)
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()

    async def generate(
        self, message: Any, *, timeout: float | None = None, metadata: Metadata = None
    ) -> Any:
        """`bp.GenerateRequest` -> `bp.GenerateResponse`."""
        return await self._unary("Generate", bp.GenerateResponse)(
            message, timeout=timeout, metadata=metadata
        )

    async def validate_constraints(
        self, message: Any, *, timeout: float | None = None, metadata: Metadata = None
    ) -> Any:
        """`bp.ValidateConstraintsRequest` -> `bp.ValidateConstraintsResponse`."""
        return await self._unary("ValidateConstraints", bp.ValidateConstraintsResponse)(
            message, timeout=timeout, metadata=metadata
        )

    async def get_model_info(
        self, message: Any = None, *, timeout: float | None = None, metadata: Metadata = None
    ) -> Any:
        """`bp.GetModelInfoRequest` (optional) -> `bp.GetModelInfoResponse`."""
        return await self._unary("GetModelInfo", bp.GetModelInfoResponse)(
            message if message is not None else bp.GetModelInfoRequest(),
            timeout=timeout,
            metadata=metadata,
        )
