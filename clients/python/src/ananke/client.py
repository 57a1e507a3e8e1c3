"""AnankeClient: the blocking client."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

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
from ananke.v1 import (
    generation_pb2,
    inference_service_pb2,
    inference_service_pb2_grpc,
)

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; the package supports 3.10

__all__ = ["AnankeClient", "GenerationStream"]

_T = TypeVar("_T")
CallMetadata = Mapping[str, str] | Iterable[tuple[str, str]] | None


class GenerationStream(Iterator[StreamEvent]):
    """The events of one `GenerateStream` call, as they arrive.

    Iterate for `GenerationStarted`, then `TokenChunk`s, then one
    `GenerationFinished` (tell them apart with isinstance); `close()` (or
    leaving a `with` block) cancels the call, which aborts generation on the
    server. After the last event, `result` holds the whole generation.

    An UNAVAILABLE failure before the first token is retried under the
    client's retry policy; the started event is held back until the first
    token so that a retried stream still yields exactly one.
    """

    def __init__(
        self,
        start: Callable[
            [float | None], grpc.CallIterator[inference_service_pb2.GenerateStreamResponse]
        ],
        retry: RetryPolicy,
        deadline: Deadline,
    ) -> None:
        self._start = start
        self._retry = retry
        self._deadline = deadline
        self._call: grpc.CallIterator[inference_service_pb2.GenerateStreamResponse] | None = None
        self.started: GenerationStarted | None = None
        self.chunks: list[TokenChunk] = []
        self.finished: GenerationFinished | None = None
        self._events = self._run()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> StreamEvent:
        return next(self._events)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading and cancel the call (no-op when it already ended)."""
        self._events.close()
        self._cancel()

    def _cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()  # type: ignore[no-untyped-call]

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(c.text for c in self.chunks)

    @property
    def result(self) -> GenerationResult:
        """The finished generation; raises if the stream has not finished."""
        if self.finished is None:
            raise RuntimeError("the stream has not finished; iterate it or call collect()")
        return GenerationResult.from_stream(self.started, self.chunks, self.finished)

    def collect(self) -> GenerationResult:
        """Read the remaining events and return the finished generation."""
        for _ in self:
            pass
        return self.result

    def texts(self) -> Iterator[str]:
        """Only the text of each chunk, as it arrives."""
        for event in self:
            if isinstance(event, TokenChunk) and event.text:
                yield event.text

    def _run(self) -> Generator[StreamEvent, None, None]:
        attempt = 0
        while True:
            attempt += 1
            self._call = self._start(self._deadline.remaining())
            held: GenerationStarted | None = None
            produced = False
            try:
                for response in self._call:
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
                time.sleep(delay)
                continue
            finally:
                self._cancel()
            if held is not None:
                self.started = held
                yield held
            if self.finished is None:
                raise incomplete_stream_error()
            return


class AnankeClient(ClientBase):
    """Blocking client of `ananke.v1.InferenceService`.

    >>> from ananke import AnankeClient, constraints as c
    >>> with AnankeClient("localhost:50051") as client:  # doctest: +SKIP
    ...     result = client.generate("A user: ", constraints=[c.json_schema({"type": "object"})])
    ...     print(result.json(), result.provenance.check.verdict)

    Every failed call raises `AnankeError`. `timeout` (seconds) is the
    default deadline of each call, retries included; each method takes its own.
    """

    def _open(self) -> None:
        self._channel = self.config.sync_channel()
        self._stub = inference_service_pb2_grpc.InferenceServiceStub(self._channel)

    @property
    def channel(self) -> grpc.Channel:
        """The underlying gRPC channel."""
        return self._channel

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _unary(
        self,
        method: Callable[[float | None], _T],
        kind: CallKind,
        timeout: float | None,
    ) -> _T:
        deadline = Deadline(self._timeout(timeout))
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(deadline.remaining())
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                delay = self.retry.delay(error, kind, attempt)
                if delay is None or not deadline.allows(delay):
                    raise error from None
                time.sleep(delay)

    def _call(
        self,
        method: Callable[..., _T],
        request: object,
        kind: CallKind,
        timeout: float | None,
        call_metadata: CallMetadata,
    ) -> _T:
        """One unary InferenceService call with this client's metadata, deadline and retries."""
        md = self._call_metadata(call_metadata)
        return self._unary(
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
    ) -> GenerationStream:
        """Start a streamed generation; iterate the returned stream for events.

        Give exactly one of `prompt` (raw, no chat template) and `messages`
        (`("user", "...")` pairs or `ChatMessage` protos). `metadata` labels
        are echoed in provenance; `call_metadata` is sent as gRPC metadata.
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

        def start(
            remaining: float | None,
        ) -> grpc.CallIterator[inference_service_pb2.GenerateStreamResponse]:
            return self._stub.GenerateStream(
                request, timeout=remaining, metadata=md, wait_for_ready=self._wait_for_ready
            )

        return GenerationStream(start, self.retry, Deadline(self._timeout(timeout)))

    def generate(
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
        """Generate and return the whole output (see `generate_stream` for arguments)."""
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
        response = self._call(
            self._stub.Generate, request, CallKind.GENERATE, timeout, call_metadata
        )
        return GenerationResult.from_response(response)

    def validate_constraints(
        self,
        constraints: ConstraintIR | Iterable[ConstraintIR],
        *,
        timeout: float | None = None,
        call_metadata: CallMetadata = None,
    ) -> inference_service_pb2.ValidateConstraintsResponse:
        """Compile constraints without generating; one verdict per constraint.

        Constraints that do not compile are reported in the verdicts, not raised.
        """
        request = self._validate_request(constraints)
        return self._call(
            self._stub.ValidateConstraints, request, CallKind.IDEMPOTENT, timeout, call_metadata
        )

    def model_info(
        self, *, timeout: float | None = None, call_metadata: CallMetadata = None
    ) -> inference_service_pb2.GetModelInfoResponse:
        """The model, engine and limits of the server."""
        request = inference_service_pb2.GetModelInfoRequest()
        return self._call(
            self._stub.GetModelInfo, request, CallKind.IDEMPOTENT, timeout, call_metadata
        )

    def server_stats(
        self, *, timeout: float | None = None, call_metadata: CallMetadata = None
    ) -> inference_service_pb2.GetServerStatsResponse:
        """The server process's load and compile cache counters."""
        request = inference_service_pb2.GetServerStatsRequest()
        return self._call(
            self._stub.GetServerStats, request, CallKind.IDEMPOTENT, timeout, call_metadata
        )

    def health(
        self,
        service: str = "",
        *,
        timeout: float | None = None,
        call_metadata: CallMetadata = None,
    ) -> str:
        """The `grpc.health.v1` status of `service` ("" is the whole server).

        Returns "SERVING", "NOT_SERVING" or "UNKNOWN"; an unknown service
        raises AnankeError with code NOT_FOUND.
        """
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=service)
        md = self._call_metadata(call_metadata)
        response = self._unary(
            lambda t: stub.Check(request, timeout=t, metadata=md),
            CallKind.IDEMPOTENT,
            timeout,
        )
        return health_status_name(response.status)
