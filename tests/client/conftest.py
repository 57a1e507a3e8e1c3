"""A fake InferenceService on port 0 for the client's unit tests.

The fake runs on a threaded (sync) grpc server so that both the blocking and
the asyncio client can call it from the test's thread and event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from ananke.v1 import (
    constraints_pb2,
    generation_pb2,
    inference_service_pb2,
    inference_service_pb2_grpc,
    provenance_pb2,
)
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

MODEL_ID = "fake/model"


def rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str = "",
    *,
    violations: tuple[tuple[str, str], ...] = (),
    retry_delay: float | None = None,
    info_metadata: dict[str, str] | None = None,
) -> status_pb2.Status:
    """A google.rpc.Status as the real server builds it (AIP-193)."""
    details: list[any_pb2.Any] = []
    if reason:
        info = error_details_pb2.ErrorInfo(
            reason=reason, domain="ananke.dev", metadata=info_metadata or {}
        )
        details.append(_pack(info))
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in violations
            ]
        )
        details.append(_pack(bad))
    if retry_delay is not None:
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(
                seconds=int(retry_delay), nanos=int((retry_delay % 1) * 1e9)
            )
        )
        details.append(_pack(retry))
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclass
class Call:
    """One call the fake received."""

    method: str
    request: Any
    metadata: dict[str, str]


@dataclass
class Fake:
    """Scriptable behaviour of the fake service; reset between tests."""

    calls: list[Call] = field(default_factory=list)
    # method name -> statuses to fail the next calls with, in order
    failures: dict[str, list[status_pb2.Status]] = field(default_factory=dict)
    chunks: tuple[str, ...] = ("Hel", "lo")
    # fail the next stream with this status after sending this many events
    stream_fail: tuple[int, status_pb2.Status] | None = None
    # block the stream after this many chunks until the client goes away
    stream_hang_after: int | None = None
    stream_skip_finished: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    health: health.HealthServicer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(
        self,
        method: str,
        code: grpc.StatusCode,
        reason: str = "",
        message: str = "fake failure",
        *,
        times: int = 1,
        violations: tuple[tuple[str, str], ...] = (),
        retry_delay: float | None = None,
    ) -> None:
        status = rich_status(code, message, reason, violations=violations, retry_delay=retry_delay)
        self.failures.setdefault(method, []).extend([status] * times)

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def set_health(self, serving: bool) -> None:
        assert self.health is not None
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set("", status)

    def reset(self) -> None:
        self.calls.clear()
        self.failures.clear()
        self.chunks = ("Hel", "lo")
        self.stream_fail = None
        self.stream_hang_after = None
        self.stream_skip_finished = False
        self.cancelled.clear()
        self.set_health(True)


def _provenance(request: generation_pb2.GenerationRequest, text: str) -> provenance_pb2.Provenance:
    return provenance_pb2.Provenance(
        request_id=request.request_id or "req-1",
        model_id=MODEL_ID,
        engine_name="fake",
        finish_reason=generation_pb2.FINISH_REASON_END_OF_SEQUENCE,
        prompt_tokens=3,
        completion_tokens=len(text),
        check=provenance_pb2.ConstraintCheck(verdict=provenance_pb2.CHECK_VERDICT_SATISFIED),
        client_metadata=dict(request.metadata),
    )


class FakeServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    """Answers from the script in `Fake`."""

    def __init__(self, fake: Fake) -> None:
        self.fake = fake

    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self.fake.lock:
            self.fake.calls.append(Call(method, request, md))
            queue = self.fake.failures.get(method)
            status = queue.pop(0) if queue else None
        if status is not None:
            context.abort_with_status(rpc_status.to_status(status))

    def GenerateStream(
        self, request: inference_service_pb2.GenerateStreamRequest, context: grpc.ServicerContext
    ) -> Iterator[inference_service_pb2.GenerateStreamResponse]:
        self._enter("GenerateStream", request, context)
        context.add_callback(self._on_done(context))
        req = request.request
        events = [
            inference_service_pb2.GenerateStreamResponse(
                started=inference_service_pb2.GenerationStarted(
                    request_id=req.request_id or "req-1", model_id=MODEL_ID
                )
            )
        ]
        for i, text in enumerate(self.fake.chunks):
            events.append(
                inference_service_pb2.GenerateStreamResponse(
                    chunk=inference_service_pb2.TokenChunk(text=text, token_ids=[10 + i])
                )
            )
        text = "".join(self.fake.chunks)
        if not self.fake.stream_skip_finished:
            events.append(
                inference_service_pb2.GenerateStreamResponse(
                    finished=inference_service_pb2.GenerationFinished(
                        finish_reason=generation_pb2.FINISH_REASON_END_OF_SEQUENCE,
                        usage=generation_pb2.Usage(prompt_tokens=3, completion_tokens=len(text)),
                        provenance=_provenance(req, text),
                    )
                )
            )
        for sent, event in enumerate(events):
            fail = self.fake.stream_fail
            if fail is not None and sent == fail[0]:
                self.fake.stream_fail = None  # one-shot
                context.abort_with_status(rpc_status.to_status(fail[1]))
            hang = self.fake.stream_hang_after
            if hang is not None and sent == hang + 1:
                self._hang(context)
                return
            yield event

    def _on_done(self, context: grpc.ServicerContext) -> Callable[[], None]:
        def done() -> None:
            if context.code() is None and not context.is_active():
                self.fake.cancelled.set()

        return done

    def _hang(self, context: grpc.ServicerContext) -> None:
        end = time.monotonic() + 10
        while context.is_active() and time.monotonic() < end:
            time.sleep(0.01)
        if not context.is_active():
            self.fake.cancelled.set()

    def Generate(
        self, request: inference_service_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> inference_service_pb2.GenerateResponse:
        self._enter("Generate", request, context)
        req = request.request
        text = "".join(self.fake.chunks)
        return inference_service_pb2.GenerateResponse(
            request_id=req.request_id or "req-1",
            text=text,
            token_ids=[10 + i for i in range(len(self.fake.chunks))],
            finish_reason=generation_pb2.FINISH_REASON_END_OF_SEQUENCE,
            usage=generation_pb2.Usage(prompt_tokens=3, completion_tokens=len(text)),
            provenance=_provenance(req, text),
        )

    def ValidateConstraints(
        self,
        request: inference_service_pb2.ValidateConstraintsRequest,
        context: grpc.ServicerContext,
    ) -> inference_service_pb2.ValidateConstraintsResponse:
        self._enter("ValidateConstraints", request, context)
        verdicts = []
        for i, ir in enumerate(request.constraints):
            bad = ir.WhichOneof("kind") == "json_schema" and not ir.json_schema.schema.startswith(
                "{"
            )
            verdict = inference_service_pb2.ConstraintVerdict(
                index=i, name=ir.name, kind=constraints_pb2.CONSTRAINT_KIND_JSON_SCHEMA, ok=not bad
            )
            if bad:
                verdict.error.CopyFrom(
                    inference_service_pb2.ConstraintError(
                        reason="JSON_SCHEMA_INVALID",
                        message="not JSON",
                        field=f"constraints[{i}].json_schema.schema",
                        line=1,
                        column=1,
                    )
                )
            verdicts.append(verdict)
        ok = all(v.ok for v in verdicts)
        return inference_service_pb2.ValidateConstraintsResponse(
            ok=ok, verdicts=verdicts, digest="ab" * 32 if ok else ""
        )

    def GetModelInfo(
        self, request: inference_service_pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> inference_service_pb2.GetModelInfoResponse:
        self._enter("GetModelInfo", request, context)
        return inference_service_pb2.GetModelInfoResponse(
            model_id=MODEL_ID,
            engine_name="fake",
            context_length=2048,
            vocab_size=100,
            supported_constraint_kinds=[constraints_pb2.CONSTRAINT_KIND_REGEX],
            engine_settings=inference_service_pb2.EngineSettings(
                tensor_parallel_size=2, dtype="bfloat16", quantization="fp8", max_num_seqs=10
            ),
        )

    def GetServerStats(
        self, request: inference_service_pb2.GetServerStatsRequest, context: grpc.ServicerContext
    ) -> inference_service_pb2.GetServerStatsResponse:
        self._enter("GetServerStats", request, context)
        return inference_service_pb2.GetServerStatsResponse(active_generations=1)


def start_fake_server(
    fake: Fake, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.Server, str]:
    """Start the fake on 127.0.0.1:0; returns the server and its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(FakeServicer(fake), server)
    fake.health = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(fake.health, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    fake.reset()
    return server, f"127.0.0.1:{port}"


@dataclass
class FakeServer:
    """The running fake: its address and script."""

    address: str
    fake: Fake


@pytest.fixture(scope="session")
def _fake_server_session() -> Iterator[FakeServer]:
    fake = Fake()
    server, address = start_fake_server(fake)
    yield FakeServer(address, fake)
    server.stop(None)


@pytest.fixture
def fake_server(_fake_server_session: FakeServer) -> FakeServer:
    """The shared fake server, its script reset for this test."""
    _fake_server_session.fake.reset()
    return _fake_server_session


@pytest.fixture
def status_factory() -> Callable[..., status_pb2.Status]:
    """`rich_status` for tests that build statuses directly."""
    return rich_status


@pytest.fixture
def dead_address() -> str:
    """An address nothing listens on (a port bound then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
def start_fake() -> Iterator[Callable[..., tuple[Fake, str]]]:
    """Start extra fakes (for example with TLS); they stop after the test."""
    servers: list[grpc.Server] = []

    def start(credentials: grpc.ServerCredentials | None = None) -> tuple[Fake, str]:
        fake = Fake()
        server, address = start_fake_server(fake, credentials)
        servers.append(server)
        return fake, address

    yield start
    for server in servers:
        server.stop(None)
