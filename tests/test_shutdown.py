"""SIGTERM during streams, on a dedicated real server: the in-flight streams
complete within the grace period, new calls are refused with UNAVAILABLE,
health stops reporting SERVING and the process exits 0."""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from ananke.v1 import constraints_pb2, generation_pb2, inference_service_pb2
from conftest import LiveServer, start_server, stop_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

GRACE_S = 30.0
STREAMS = 3
LONG = inference_service_pb2.GenerateStreamRequest(
    request=generation_pb2.GenerationRequest(
        prompt="Tell a story about a ship.",
        constraints=[
            constraints_pb2.ConstraintIR(
                regex=constraints_pb2.RegexConstraint(pattern="[a-z ,.]{2000}")
            )
        ],
        sampling=generation_pb2.SamplingParams(max_tokens=64),
    )
)


@pytest.fixture(scope="module")
def draining_server() -> Iterator[LiveServer]:
    """A server of its own: the test stops it."""
    server = start_server(
        ["--shutdown-grace-s", str(GRACE_S), "--max-tokens-cap", "512"],
        Path(tempfile.mkdtemp(prefix="ananke-sigterm-")),
    )
    try:
        yield server
    finally:
        stop_server(server)


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


def test_sigterm_drains_streams_and_exits_0(draining_server: LiveServer) -> None:
    server = draining_server
    results: list[list[str] | grpc.RpcError] = [[] for _ in range(STREAMS)]
    first_chunk = [threading.Event() for _ in range(STREAMS)]

    def stream(index: int) -> None:
        kinds: list[str] = []
        try:
            for event in server.stub().GenerateStream(LONG, timeout=GRACE_S + 30):
                kinds.append(event.WhichOneof("event"))
                if kinds[-1] == "chunk":
                    first_chunk[index].set()
            results[index] = kinds
        except grpc.RpcError as error:
            results[index] = error
        finally:
            first_chunk[index].set()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
    for thread in threads:
        thread.start()
    for event in first_chunk:
        assert event.wait(60)
    assert not any(isinstance(r, grpc.RpcError) for r in results), results

    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    time.sleep(0.5)

    # New calls are refused while the old ones drain.
    with pytest.raises(grpc.RpcError) as refused:
        list(server.stub().GenerateStream(LONG, timeout=10))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert _health(server) in {
        health_pb2.HealthCheckResponse.NOT_SERVING,
        health_pb2.HealthCheckResponse.SERVICE_UNKNOWN,
        grpc.StatusCode.UNAVAILABLE,
    }

    for thread in threads:
        thread.join(GRACE_S + 30)
    drained_s = time.monotonic() - signalled
    for result in results:
        assert isinstance(result, list), result
        assert result[0] == "started"
        assert result[-1] == "finished", result
    assert drained_s < GRACE_S

    assert server.process.wait(GRACE_S + 60) == 0
    print(f"\nSIGTERM: {STREAMS} in-flight streams finished {drained_s:.1f}s after the signal")
