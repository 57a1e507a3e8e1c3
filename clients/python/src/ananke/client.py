"""AnankeClient: the blocking client."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
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

    # grpc.CallIterator exists only in the type stubs.
    _StreamCall = grpc.CallIterator[inference_service_pb2.GenerateStreamResponse]

__all__ = ["AnankeClient", "GenerationStream"]

_T = TypeVar("_T")


class GenerationStream(StreamView, Iterator[StreamEvent]):
    """The events of one `GenerateStream` call, as they arrive.

    Iterate for `GenerationStarted`, then `TokenChunk`s, then one
    `GenerationFinished` per candidate (tell them apart with isinstance; with
    n > 1 the candidates' chunks interleave, tagged by `candidate_index`); `close()` (or
    leaving a `with` block) cancels the call, which aborts generation on the
    server. After the last event, `result` holds the whole generation.

    An UNAVAILABLE failure before the first token is retried under the
    client's retry policy; the started event is held back until the first
    token so that a retried stream still yields exactly one.
    """

    def __init__(self, start: Callable[[float | None], _StreamCall], attempts: Attempts) -> None:
        self._start = start
        self._attempts = attempts
        self._call: _StreamCall | None = None
        self._events_state = StreamEvents()
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
    def result(self) -> GenerationResult:
        """The finished generation; raises if the stream has not finished."""
        return self._events_state.result("iterate it or call collect()")

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
        state = self._events_state
        while True:
            self._call = self._start(self._attempts.start())
            state.restart()
            try:
                for response in self._call:
                    yield from state.feed(response)
            except grpc.RpcError as exc:
                time.sleep(self._attempts.pause_after(exc, retryable=not state.produced))
                continue
            finally:
                self._cancel()
            yield from state.end()
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

    def _call(
        self,
        method: Callable[..., _T],
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
                return method(request, timeout=attempts.start(), **options)
            except grpc.RpcError as exc:
                time.sleep(attempts.pause_after(exc))

    def generate_stream(
        self,
        prompt: str | None = None,
        *,
        timeout: float | None = None,
        call_metadata: CallMetadata = None,
        **args: Unpack[GenerationArgs],
    ) -> GenerationStream:
        """Start a streamed generation; iterate the returned stream for events.

        Give exactly one of `prompt` (raw, no chat template) and `messages`
        (`("user", "...")` pairs or `ChatMessage` protos); the other keyword
        arguments are those of `build_generation_request`. `metadata` labels
        are echoed in provenance; `call_metadata` is sent as gRPC metadata.
        """
        request = self._stream_request(prompt, args)
        options = self._call_options(call_metadata)

        def start(remaining: float | None) -> _StreamCall:
            return self._stub.GenerateStream(request, timeout=remaining, **options)

        return GenerationStream(start, self._attempts(CallKind.STREAM_START, timeout))

    def generate(
        self,
        prompt: str | None = None,
        *,
        timeout: float | None = None,
        call_metadata: CallMetadata = None,
        **args: Unpack[GenerationArgs],
    ) -> GenerationResult:
        """Generate and return the whole output (see `generate_stream` for arguments)."""
        request = self._generate_request(prompt, args)
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

    def tokenize(
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
        return self._call(self._stub.Tokenize, request, CallKind.IDEMPOTENT, timeout, call_metadata)

    def detokenize(
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
        response = self._call(
            self._stub.Detokenize, request, CallKind.IDEMPOTENT, timeout, call_metadata
        )
        return response.text

    def model_info(
        self, *, timeout: float | None = None, call_metadata: CallMetadata = None
    ) -> inference_service_pb2.GetModelInfoResponse:
        """The model, engine and limits of the server."""
        request = inference_service_pb2.GetModelInfoRequest()
        return self._call(
            self._stub.GetModelInfo, request, CallKind.IDEMPOTENT, timeout, call_metadata
        )

    def load_adapter(
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
        response = self._call(
            self._stub.LoadAdapter, request, CallKind.GENERATE, timeout, call_metadata
        )
        return response.adapter

    def unload_adapter(
        self, name: str, *, timeout: float | None = None, call_metadata: CallMetadata = None
    ) -> inference_service_pb2.AdapterInfo:
        """Unload a LoRA adapter (admin key needed when the server has API keys)."""
        request = inference_service_pb2.UnloadAdapterRequest(name=name)
        response = self._call(
            self._stub.UnloadAdapter, request, CallKind.GENERATE, timeout, call_metadata
        )
        return response.adapter

    def list_adapters(
        self, *, timeout: float | None = None, call_metadata: CallMetadata = None
    ) -> inference_service_pb2.ListAdaptersResponse:
        """The LoRA adapters loaded on the server, and its LoRA limits."""
        request = inference_service_pb2.ListAdaptersRequest()
        return self._call(
            self._stub.ListAdapters, request, CallKind.IDEMPOTENT, timeout, call_metadata
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
        response: Any = self._call(
            stub.Check, request, CallKind.IDEMPOTENT, timeout, call_metadata, probe=True
        )
        return health_status_name(response.status)
