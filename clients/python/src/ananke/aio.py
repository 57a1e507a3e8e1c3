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
    Sequence,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from ananke._base import CallMetadata, ClientBase, StreamEvents, StreamView, health_status_name
from ananke.constraints import ConstraintIR
from ananke.request import Message
from ananke.results import GenerationResult, StreamEvent, TokenChunk
from ananke.retry import Attempts, CallKind
from ananke.v1 import inference_service_pb2, inference_service_pb2_grpc

if TYPE_CHECKING:
    from typing import Self, Unpack  # Python 3.11+; the package supports 3.10

    from ananke.request import GenerationArgs

__all__ = ["AsyncAnankeClient", "AsyncGenerationStream"]

_T = TypeVar("_T")
_StreamCall = grpc.aio.UnaryStreamCall[
    inference_service_pb2.GenerateStreamRequest, inference_service_pb2.GenerateStreamResponse
]


class AsyncGenerationStream(StreamView, AsyncIterator[StreamEvent]):
    """The events of one `GenerateStream` call, as they arrive (asyncio).

    `async for` yields `GenerationStarted`, `TokenChunk`s, then one
    `GenerationFinished` per candidate; `await aclose()` (or leaving an `async with` block)
    cancels the call and so aborts generation on the server. After the last
    event, `result` holds the whole generation. Retries as `GenerationStream`.
    """

    def __init__(self, start: Callable[[float | None], _StreamCall], attempts: Attempts) -> None:
        self._start = start
        self._attempts = attempts
        self._call: _StreamCall | None = None
        self._events_state = StreamEvents()
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
    def result(self) -> GenerationResult:
        """The finished generation; raises if the stream has not finished."""
        return self._events_state.result("iterate it or await collect()")

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
        state = self._events_state
        while True:
            self._call = self._start(self._attempts.start())
            state.restart()
            try:
                async for response in self._call:
                    for event in state.feed(response):
                        yield event
            except grpc.RpcError as exc:
                await asyncio.sleep(self._attempts.pause_after(exc, retryable=not state.produced))
                continue
            finally:
                self._cancel()
            for event in state.end():
                yield event
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

    async def _call(
        self,
        method: Callable[..., Awaitable[_T]],
        request: object,
        kind: CallKind,
        timeout: float | None,
        call_metadata: CallMetadata,
        *,
        probe: bool = False,
    ) -> _T:
        """One unary call with this client's metadata, deadline and retries."""
        attempts = self._attempts(kind, timeout)
        options = self._call_options(call_metadata, probe=probe)
        while True:
            try:
                return await method(request, timeout=attempts.start(), **options)
            except grpc.RpcError as exc:
                await asyncio.sleep(attempts.pause_after(exc))

    def generate_stream(
        self,
        prompt: str | None = None,
        *,
        timeout: float | None = None,
        call_metadata: CallMetadata = None,
        **args: Unpack[GenerationArgs],
    ) -> AsyncGenerationStream:
        """Start a streamed generation; `async for` over the result for events.

        Arguments as `AnankeClient.generate_stream`. The call starts on the
        first iteration.
        """
        request = self._stream_request(prompt, args)
        options = self._call_options(call_metadata)

        def start(remaining: float | None) -> _StreamCall:
            return self._stub.GenerateStream(request, timeout=remaining, **options)

        return AsyncGenerationStream(start, self._attempts(CallKind.STREAM_START, timeout))

    async def generate(
        self,
        prompt: str | None = None,
        *,
        timeout: float | None = None,
        call_metadata: CallMetadata = None,
        **args: Unpack[GenerationArgs],
    ) -> GenerationResult:
        """Generate and return the whole output (arguments as `generate_stream`)."""
        request = self._generate_request(prompt, args)
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

    async def tokenize(
        self,
        text: str | None = None,
        *,
        messages: Sequence[Message] | None = None,
        return_tokens: bool = False,
        timeout: float | None = None,
        call_metadata: CallMetadata = None,
    ) -> inference_service_pb2.TokenizeResponse:
        """Token ids of `text` (as a raw prompt) or of chat `messages` (with
        the model's chat template), exactly as generate() would send them."""
        request = self._tokenize_request(text, messages, return_tokens)
        return await self._call(
            self._stub.Tokenize, request, CallKind.IDEMPOTENT, timeout, call_metadata
        )

    async def detokenize(
        self,
        token_ids: Iterable[int],
        *,
        skip_special_tokens: bool = False,
        timeout: float | None = None,
        call_metadata: CallMetadata = None,
    ) -> str:
        """The text of `token_ids`."""
        request = inference_service_pb2.DetokenizeRequest(
            token_ids=list(token_ids), skip_special_tokens=skip_special_tokens
        )
        response = await self._call(
            self._stub.Detokenize, request, CallKind.IDEMPOTENT, timeout, call_metadata
        )
        return response.text

    async def model_info(
        self, *, timeout: float | None = None, call_metadata: CallMetadata = None
    ) -> inference_service_pb2.GetModelInfoResponse:
        """The model, engine and limits of the server."""
        request = inference_service_pb2.GetModelInfoRequest()
        return await self._call(
            self._stub.GetModelInfo, request, CallKind.IDEMPOTENT, timeout, call_metadata
        )

    async def load_adapter(
        self,
        name: str,
        path: str,
        *,
        timeout: float | None = None,
        call_metadata: CallMetadata = None,
    ) -> inference_service_pb2.AdapterInfo:
        """Load the LoRA adapter in the server-side folder `path` (absolute) under
        `name`, for generate(adapter=name). Needs an admin key when the server
        has API keys."""
        request = inference_service_pb2.LoadAdapterRequest(name=name, path=path)
        response = await self._call(
            self._stub.LoadAdapter, request, CallKind.GENERATE, timeout, call_metadata
        )
        return response.adapter

    async def unload_adapter(
        self, name: str, *, timeout: float | None = None, call_metadata: CallMetadata = None
    ) -> inference_service_pb2.AdapterInfo:
        """Unload a LoRA adapter (admin key needed when the server has API keys)."""
        request = inference_service_pb2.UnloadAdapterRequest(name=name)
        response = await self._call(
            self._stub.UnloadAdapter, request, CallKind.GENERATE, timeout, call_metadata
        )
        return response.adapter

    async def list_adapters(
        self, *, timeout: float | None = None, call_metadata: CallMetadata = None
    ) -> inference_service_pb2.ListAdaptersResponse:
        """The LoRA adapters loaded on the server, and its LoRA limits."""
        request = inference_service_pb2.ListAdaptersRequest()
        return await self._call(
            self._stub.ListAdapters, request, CallKind.IDEMPOTENT, timeout, call_metadata
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
        response: Any = await self._call(
            stub.Check, request, CallKind.IDEMPOTENT, timeout, call_metadata, probe=True
        )
        return health_status_name(response.status)
