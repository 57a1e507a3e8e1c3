"""The core shared by the sync and asyncio clients: connection settings, call
options, request building, and the event logic of a generation stream. The
two clients add only the blocking or awaiting loop around it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc

from ananke.constraints import ConstraintIR
from ananke.errors import AnankeError
from ananke.request import GenerationArgs, Message, build_generation_request, chat_message
from ananke.results import (
    GenerationFinished,
    GenerationResult,
    GenerationStarted,
    StreamEvent,
    TokenChunk,
)
from ananke.retry import Attempts, CallKind, RetryPolicy
from ananke.transport import DEFAULT_ADDRESS, ConnectionConfig, PemSource
from ananke.v1 import inference_service_pb2

__all__ = ["CallMetadata", "ClientBase", "StreamEvents", "StreamView", "health_status_name"]

# Extra gRPC metadata for one call: a mapping or (key, value) pairs.
CallMetadata = Mapping[str, str] | Iterable[tuple[str, str]] | None


class ClientBase:
    """Connection config, default deadline, retry policy and call metadata."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: PemSource | None = None,
        client_certificate: PemSource | None = None,
        client_key: PemSource | None = None,
        server_name: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        call_metadata: Iterable[tuple[str, str]] = (),
        options: Iterable[tuple[str, int | str]] = (),
        wait_for_ready: bool | None = None,
    ) -> None:
        self.config = ConnectionConfig(
            address=address,
            tls=tls,
            root_certificates=root_certificates,
            client_certificate=client_certificate,
            client_key=client_key,
            server_name=server_name,
            api_key=api_key,
            credentials=credentials,
            options=tuple(options),
        )
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self._metadata = self.config.call_metadata(tuple(call_metadata))
        self._wait_for_ready = wait_for_ready
        self._open()

    def _open(self) -> None:
        """Open the channel and stubs (each client does its own)."""
        raise NotImplementedError

    def _attempts(self, kind: CallKind, timeout: float | None) -> Attempts:
        """The attempts of one call under this client's retry policy and deadline."""
        return Attempts(self.retry, kind, self.timeout if timeout is None else timeout)

    def _call_options(self, call_metadata: CallMetadata, *, probe: bool = False) -> dict[str, Any]:
        """The stub keyword arguments every call gets, bar its timeout. A health
        `probe` reports what it finds at once, so it never waits for ready."""
        metadata = self._metadata
        if call_metadata:
            items = call_metadata.items() if isinstance(call_metadata, Mapping) else call_metadata
            metadata = metadata + tuple(items)
        return {"metadata": metadata, "wait_for_ready": None if probe else self._wait_for_ready}

    @staticmethod
    def _generate_request(
        prompt: str | None, args: GenerationArgs
    ) -> inference_service_pb2.GenerateRequest:
        return inference_service_pb2.GenerateRequest(
            request=build_generation_request(prompt, **args)
        )

    @staticmethod
    def _stream_request(
        prompt: str | None, args: GenerationArgs
    ) -> inference_service_pb2.GenerateStreamRequest:
        return inference_service_pb2.GenerateStreamRequest(
            request=build_generation_request(prompt, **args)
        )

    @staticmethod
    def _validate_request(
        constraints: ConstraintIR | Iterable[ConstraintIR],
    ) -> inference_service_pb2.ValidateConstraintsRequest:
        if isinstance(constraints, ConstraintIR):
            constraints = [constraints]
        return inference_service_pb2.ValidateConstraintsRequest(constraints=list(constraints))

    @staticmethod
    def _tokenize_request(
        text: str | None, messages: Sequence[Message] | None, return_tokens: bool
    ) -> inference_service_pb2.TokenizeRequest:
        if (text is None) == (messages is None):
            raise ValueError("give exactly one of text and messages")
        request = inference_service_pb2.TokenizeRequest(return_tokens=return_tokens)
        if text is not None:
            request.text = text
        else:
            assert messages is not None
            request.messages.extend(chat_message(m) for m in messages)
        return request


class StreamEvents:
    """What a generation stream has received, and the events to hand on.

    The started event is held back until the first token, so a stream retried
    before its first token still yields exactly one; `produced` says whether a
    token has reached the caller (after which the call is never retried). With
    several candidates (n) each sends its own finished event: `finals` holds
    them in arrival order, `finished` the last.
    """

    def __init__(self) -> None:
        self.started: GenerationStarted | None = None
        self.chunks: list[TokenChunk] = []
        self.finished: GenerationFinished | None = None
        self.finals: list[GenerationFinished] = []
        self.produced = False
        self._held: GenerationStarted | None = None

    def restart(self) -> None:
        """A new attempt begins: drop a started event that was never handed on."""
        self._held = None

    def feed(self, response: inference_service_pb2.GenerateStreamResponse) -> list[StreamEvent]:
        """The events to yield for one response of the stream."""
        kind = response.WhichOneof("event")
        if kind == "started":
            self._held = response.started
            return []
        events: list[StreamEvent] = []
        if self._held is not None:
            self.started, self._held = self._held, None
            events.append(self.started)
        self.produced = True
        if kind == "chunk":
            self.chunks.append(response.chunk)
            events.append(response.chunk)
        elif kind == "finished":
            self.finished = response.finished
            self.finals.append(response.finished)
            events.append(response.finished)
        return events

    def end(self) -> list[StreamEvent]:
        """The events left when the stream ends; raises if it never finished."""
        events: list[StreamEvent] = []
        if self._held is not None:
            self.started, self._held = self._held, None
            events.append(self.started)
        expected = self.started.candidates if self.started is not None else 0
        if self.finished is None or len(self.finals) < expected:
            raise AnankeError(
                grpc.StatusCode.UNKNOWN,
                "the stream ended without a GenerationFinished event for every candidate",
            )
        return events

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(c.text for c in self.chunks)

    @property
    def reasoning_text(self) -> str:
        """The reasoning text received so far (with reasoning on)."""
        return "".join(c.reasoning_text for c in self.chunks)

    def result(self, hint: str) -> GenerationResult:
        """The finished generation; raises (with `hint`) if the stream has not finished."""
        if self.finished is None:
            raise RuntimeError(f"the stream has not finished; {hint}")
        return GenerationResult.from_stream(self.started, self.chunks, self.finals)


class StreamView:
    """The received parts of a stream, read from its `StreamEvents` (both clients)."""

    _events_state: StreamEvents

    @property
    def started(self) -> GenerationStarted | None:
        """The started event, once the first token arrived (or the stream ended)."""
        return self._events_state.started

    @property
    def chunks(self) -> list[TokenChunk]:
        """The chunks received so far."""
        return self._events_state.chunks

    @property
    def finished(self) -> GenerationFinished | None:
        """The last finished event, once received."""
        return self._events_state.finished

    @property
    def finals(self) -> list[GenerationFinished]:
        """One finished event per candidate received so far, in arrival order."""
        return self._events_state.finals

    @property
    def text(self) -> str:
        """The text received so far."""
        return self._events_state.text

    @property
    def reasoning_text(self) -> str:
        """The reasoning text received so far (with reasoning on; `text` is the answer)."""
        return self._events_state.reasoning_text


def health_status_name(status: int) -> str:
    """A `grpc.health.v1` serving status as its name, for example "SERVING"."""
    from grpc_health.v1 import health_pb2

    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
