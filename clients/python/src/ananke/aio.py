"""AsyncAnankeClient: the asyncio client (grpc.aio)."""

# `timeout` is sent to the server as the gRPC deadline (generation is aborted
# there when it passes), which asyncio.timeout() cannot do.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from ananke._base import ClientBase, health_status_name, incomplete_stream_error
from ananke.constraints import ConstraintIR
from ananke.errors import from_rpc_error
from ananke.request import Message, build_generation_request
from ananke.results import (
    GenerationFinished,
    GenerationResult,
    GenerationStarted,
    StreamEvent,
    TokenChunk,
)
from ananke.retry import CallKind, Deadline, RetryPolicy
from ananke.v1 import generation_pb2, inference_service_pb2, inference_service_pb2_grpc

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; the package supports 3.10

__all__ = ["AsyncAnankeClient", "AsyncGenerationStream"]

_T = TypeVar("_T")
CallMetadata = Mapping[str, str] | Iterable[tuple[str, str]] | None
_StreamCall = grpc.aio.UnaryStreamCall[
    inference_service_pb2.GenerateStreamRequest, inference_service_pb2.GenerateStreamResponse
]


class AsyncGenerationStream(AsyncIterator[StreamEvent]):
    """The events of one `GenerateStream` call, as they arrive (asyncio).

    `async for` yields `GenerationStarted`, `TokenChunk`s, then one
    `GenerationFinished`; `await aclose()` (or leaving an `async with` block)
    cancels the call and so aborts generation on the server. After the last
    event, `result` holds the whole generation. Retries as `GenerationStream`.
    """

    def __init__(
        self,
        start: Callable[[float | None], _StreamCall],
        retry: RetryPolicy,
        deadline: Deadline,
    ) -> None:
        self._start = start
        self._retry = retry
        self._deadline = deadline
        self._call: _StreamCall | None = None
        self.started: GenerationStarted | None = None
        self.chunks: list[TokenChunk] = []
        self.finished: GenerationFinished | None = None
        self._events = self._run()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamEvent:
        return await self._events.__anext__()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading and cancel the call (no-op when it already ended)."""
        await self._events.aclose()
        self._cancel()

    def _cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(c.text for c in self.chunks)

    @property
    def result(self) -> GenerationResult:
        """The finished generation; raises if the stream has not finished."""
        if self.finished is None:
            raise RuntimeError("the stream has not finished; iterate it or await collect()")
        return GenerationResult.from_stream(self.started, self.chunks, self.finished)

    async def collect(self) -> GenerationResult:
        """Read the remaining events and return the finished generation."""
        async for _ in self:
            pass
        return self.result

    async def texts(self) -> AsyncIterator[str]:
        """Only the text of each chunk, as it arrives."""
        async for event in self:
            if isinstance(event, TokenChunk) and event.text:
                yield event.text

    async def _run(self) -> AsyncGenerator[StreamEvent, None]:
        attempt = 0
        while True:
            attempt += 1
            self._call = self._start(self._deadline.remaining())
            held: GenerationStarted | None = None
            produced = False
            try:
                async for response in self._call:
                    kind = response.WhichOneof("event")
                    if kind == "started":
                        held = response.started
                        continue
                    if held is not None:
                        self.started, held = held, None
                        yield self.started
                    produced = True
                    if kind == "chunk":
                        self.chunks.append(response.chunk)
                        yield response.chunk
                    elif kind == "finished":
                        self.finished = response.finished
                        yield response.finished
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                delay = (
                    None if produced else self._retry.delay(error, CallKind.STREAM_START, attempt)
                )
                if delay is None or not self._deadline.allows(delay):
                    raise error from None
                await asyncio.sleep(delay)
                continue
            finally:
                self._cancel()
            if held is not None:
                self.started = held
                yield held
            if self.finished is None:
                raise incomplete_stream_error()
            return


class AsyncAnankeClient(ClientBase):
    """asyncio client of `ananke.v1.InferenceService`; same calls as `AnankeClient`.

    The channel opens on first use, in the running event loop; use
    `async with AsyncAnankeClient(...) as client:` or `await client.close()`.
    """

    def _open(self) -> None:
        self._channel: grpc.aio.Channel | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying grpc.aio channel (opened on first use)."""
        if self._channel is None:
            self._channel = self.config.aio_channel()
        return self._channel

    @property
    def _stub(self) -> inference_service_pb2_grpc.InferenceServiceAsyncStub:
        return inference_service_pb2_grpc.InferenceServiceStub(self.channel)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _unary(
        self,
        method: Callable[[float | None], Awaitable[_T]],
        kind: CallKind,
        timeout: float | None,
    ) -> _T:
        deadline = Deadline(self._timeout(timeout))
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(deadline.remaining())
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                delay = self.retry.delay(error, kind, attempt)
                if delay is None or not deadline.allows(delay):
                    raise error from None
                await asyncio.sleep(delay)

    async def _call(
        self,
        method: Callable[..., Awaitable[_T]],
        request: object,
        kind: CallKind,
        timeout: float | None,
        call_metadata: CallMetadata,
    ) -> _T:
        """One unary InferenceService call with this client's metadata, deadline and retries."""
        md = self._call_metadata(call_metadata)
        return await self._unary(
            lambda t: method(request, timeout=t, metadata=md, wait_for_ready=self._wait_for_ready),
            kind,
            timeout,
        )

    def generate_stream(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Message] | None = None,
        constraints: ConstraintIR | Iterable[ConstraintIR] = (),
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: Iterable[str] = (),
        request_id: str | None = None,
        context: generation_pb2.GenerationContext | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
        call_metadata: CallMetadata = None,
    ) -> AsyncGenerationStream:
        """Start a streamed generation; `async for` over the result for events.

        Arguments as `AnankeClient.generate_stream`. The call starts on the
        first iteration.
        """
        request = inference_service_pb2.GenerateStreamRequest(
            request=build_generation_request(
                prompt,
                messages=messages,
                constraints=constraints,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=seed,
                stop=stop,
                request_id=request_id,
                context=context,
                metadata=metadata,
            )
        )
        md = self._call_metadata(call_metadata)

        def start(remaining: float | None) -> _StreamCall:
            return self._stub.GenerateStream(
                request, timeout=remaining, metadata=md, wait_for_ready=self._wait_for_ready
            )

        return AsyncGenerationStream(start, self.retry, Deadline(self._timeout(timeout)))

    async def generate(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Message] | None = None,
        constraints: ConstraintIR | Iterable[ConstraintIR] = (),
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: Iterable[str] = (),
        request_id: str | None = None,
        context: generation_pb2.GenerationContext | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
        call_metadata: CallMetadata = None,
    ) -> GenerationResult:
        """Generate and return the whole output (arguments as `generate_stream`)."""
        request = inference_service_pb2.GenerateRequest(
            request=build_generation_request(
                prompt,
                messages=messages,
                constraints=constraints,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=seed,
                stop=stop,
                request_id=request_id,
                context=context,
                metadata=metadata,
            )
        )
        response = await self._call(
            self._stub.Generate, request, CallKind.GENERATE, timeout, call_metadata
        )
        return GenerationResult.from_response(response)

    async def validate_constraints(
        self,
        constraints: ConstraintIR | Iterable[ConstraintIR],
        *,
        timeout: float | None = None,
        call_metadata: CallMetadata = None,
    ) -> inference_service_pb2.ValidateConstraintsResponse:
        """Compile constraints without generating; one verdict per constraint."""
        request = self._validate_request(constraints)
        return await self._call(
            self._stub.ValidateConstraints, request, CallKind.IDEMPOTENT, timeout, call_metadata
        )

    async def model_info(
        self, *, timeout: float | None = None, call_metadata: CallMetadata = None
    ) -> inference_service_pb2.GetModelInfoResponse:
        """The model, engine and limits of the server."""
        request = inference_service_pb2.GetModelInfoRequest()
        return await self._call(
            self._stub.GetModelInfo, request, CallKind.IDEMPOTENT, timeout, call_metadata
        )

    async def server_stats(
        self, *, timeout: float | None = None, call_metadata: CallMetadata = None
    ) -> inference_service_pb2.GetServerStatsResponse:
        """The server process's load and compile cache counters."""
        request = inference_service_pb2.GetServerStatsRequest()
        return await self._call(
            self._stub.GetServerStats, request, CallKind.IDEMPOTENT, timeout, call_metadata
        )

    async def health(
        self,
        service: str = "",
        *,
        timeout: float | None = None,
        call_metadata: CallMetadata = None,
    ) -> str:
        """The `grpc.health.v1` status of `service` ("" is the whole server)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        request = health_pb2.HealthCheckRequest(service=service)
        md = self._call_metadata(call_metadata)
        response: Any = await self._unary(
            lambda t: stub.Check(request, timeout=t, metadata=md),
            CallKind.IDEMPOTENT,
            timeout,
        )
        return health_status_name(response.status)
