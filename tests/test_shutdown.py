"""SIGTERM during streams on a real server: the in-flight streams complete
within the grace period, new calls are refused with UNAVAILABLE, health stops
reporting SERVING and the process exits 0. It ends `guarded_server` (this
module sorts after its other users; a later user would get a fresh one)."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest
from ananke.v1 import generation_pb2, inference_service_pb2
from conftest import GuardedServer, LiveServer
from grpc_health.v1 import health_pb2, health_pb2_grpc

GRACE_S = 10.0  # conftest.start_server's --shutdown-grace-s
# Streams that stay in flight for a known length: ignore_eos runs each to
# max_tokens. (A regex no output of max_tokens can finish, the earlier choice,
# spends most of its time in budget-steering searches that cannot succeed; the
# drain is the same for constrained and free streams.)
LONG = inference_service_pb2.GenerateStreamRequest(
    request=generation_pb2.GenerationRequest(
        prompt="Tell a story about a ship.",
        sampling=generation_pb2.SamplingParams(max_tokens=40, ignore_eos=True),
    )
)


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


def test_sigterm_drains_streams_and_exits_0(guarded_server: GuardedServer) -> None:
    server = guarded_server.server
    auth = guarded_server.auth()
    streams = guarded_server.max_running
    results: list[list[str] | grpc.RpcError] = [[] for _ in range(streams)]
    first_chunk = [threading.Event() for _ in range(streams)]

    def stream(index: int) -> None:
        kinds: list[str] = []
        try:
            for event in server.stub().GenerateStream(LONG, metadata=auth, timeout=GRACE_S + 30):
                kinds.append(event.WhichOneof("event"))
                if kinds[-1] == "chunk":
                    first_chunk[index].set()
            results[index] = kinds
        except grpc.RpcError as error:
            results[index] = error
        finally:
            first_chunk[index].set()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
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
        list(server.stub().GenerateStream(LONG, metadata=auth, timeout=10))
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
    print(f"\nSIGTERM: {streams} in-flight streams finished {drained_s:.1f}s after the signal")
