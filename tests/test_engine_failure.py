"""The engine dying under a real server (its EngineCore child killed with
SIGKILL): calls in flight and new calls get UNAVAILABLE, health stops
reporting SERVING or the process exits non-zero, all within a bound; it never
hangs (a supervisor restarts it)."""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from ananke.v1 import constraints_pb2, generation_pb2, inference_service_pb2
from conftest import LiveServer, start_server, stop_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

BOUND_S = 60.0
LONG = inference_service_pb2.GenerateStreamRequest(
    request=generation_pb2.GenerationRequest(
        prompt="Write forever.",
        constraints=[
            constraints_pb2.ConstraintIR(
                regex=constraints_pb2.RegexConstraint(pattern="[a-z ,.]{2000}")
            )
        ],
        sampling=generation_pb2.SamplingParams(max_tokens=500),
    )
)


@pytest.fixture(scope="module")
def doomed_server() -> Iterator[LiveServer]:
    """A server of its own: the test kills its engine."""
    server = start_server(
        ["--max-tokens-cap", "512"], Path(tempfile.mkdtemp(prefix="ananke-enginekill-"))
    )
    try:
        yield server
    finally:
        stop_server(server)


def _engine_core(pid: int) -> psutil.Process:
    children = psutil.Process(pid).children(recursive=True)
    for child in children:
        try:
            label = child.name() + " " + " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "EngineCore" in label:
            return child
    raise AssertionError(f"no EngineCore among {[(c.pid, c.name()) for c in children]}")


def _health(server: LiveServer) -> int | grpc.StatusCode:
    try:
        with server.channel() as channel:
            return int(
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
                .status
            )
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined, no-any-return]


def test_engine_death_is_unavailable_then_exit(doomed_server: LiveServer) -> None:
    server = doomed_server
    outcome: dict[str, object] = {}
    chunk = threading.Event()

    def stream() -> None:
        try:
            for event in server.stub().GenerateStream(LONG, timeout=BOUND_S * 2):
                if event.WhichOneof("event") == "chunk":
                    chunk.set()
            outcome["result"] = "finished"
        except grpc.RpcError as error:
            outcome["result"] = error.code()  # type: ignore[attr-defined]
        finally:
            outcome["at"] = time.monotonic()
            chunk.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert chunk.wait(60)
    core = _engine_core(server.process.pid)
    core.send_signal(signal.SIGKILL)
    killed = time.monotonic()

    thread.join(BOUND_S)
    assert not thread.is_alive(), "the in-flight stream hung"
    assert outcome["result"] == grpc.StatusCode.UNAVAILABLE, outcome

    # New calls are refused; health stops saying SERVING; the process exits non-zero.
    with pytest.raises(grpc.RpcError) as refused:
        list(server.stub().GenerateStream(LONG, timeout=10))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert _health(server) != health_pb2.HealthCheckResponse.SERVING
    code = server.process.wait(BOUND_S)
    exited_s = time.monotonic() - killed
    assert code != 0
    print(
        f"\nengine killed: stream answered UNAVAILABLE after {float(outcome['at']) - killed:.1f}s "  # type: ignore[arg-type]
        f"(stream), server exited {code} after {exited_s:.1f}s"
    )
