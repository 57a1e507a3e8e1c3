"""Overload against a real server admitting 2 running and 0 queued
generations (`guarded_server`): of 8 concurrent streams the excess get
RESOURCE_EXHAUSTED (OVERLOADED, RetryInfo) at once, the admitted ones finish."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from ananke.v1 import constraints_pb2, generation_pb2, inference_service_pb2
from conftest import GuardedServer
from google.rpc import error_details_pb2
from grpc_status import rpc_status

STREAMS = 8
# Long enough that the admitted streams still run while the others arrive.
LONG = inference_service_pb2.GenerateStreamRequest(
    request=generation_pb2.GenerationRequest(
        prompt="Write a long story about a lighthouse.",
        constraints=[
            constraints_pb2.ConstraintIR(
                regex=constraints_pb2.RegexConstraint(pattern="[a-z ,.]{2000}")
            )
        ],
        sampling=generation_pb2.SamplingParams(max_tokens=96),
    )
)


@dataclass
class Outcome:
    """How one stream ended and how long it took to learn it."""

    code: grpc.StatusCode
    seconds_to_answer: float  # to the first event, or to the error
    finished: bool = False
    reason: str = ""
    retry_delay_s: float | None = None


def _run(server: GuardedServer, barrier: threading.Barrier) -> Outcome:
    stub = server.stub()
    barrier.wait()
    started = time.monotonic()
    answered: float | None = None
    try:
        events = []
        for event in stub.GenerateStream(LONG, metadata=server.auth(), timeout=120):
            if answered is None:
                answered = time.monotonic() - started
            events.append(event)
        assert answered is not None
        return Outcome(
            grpc.StatusCode.OK, answered, finished=events[-1].WhichOneof("event") == "finished"
        )
    except grpc.RpcError as error:
        outcome = Outcome(error.code(), time.monotonic() - started)  # type: ignore[attr-defined]
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                outcome.reason = info.reason
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                outcome.retry_delay_s = retry.retry_delay.ToTimedelta().total_seconds()
        return outcome


def test_excess_streams_rejected_at_once_admitted_finish(guarded_server: GuardedServer) -> None:
    # Warm the compile cache so every call reaches admission quickly.
    list(guarded_server.stub().GenerateStream(LONG, metadata=guarded_server.auth(), timeout=120))
    barrier = threading.Barrier(STREAMS)
    with ThreadPoolExecutor(STREAMS) as pool:
        outcomes = list(pool.map(lambda _: _run(guarded_server, barrier), range(STREAMS)))
    admitted = [o for o in outcomes if o.code == grpc.StatusCode.OK]
    rejected = [o for o in outcomes if o.code != grpc.StatusCode.OK]
    assert len(admitted) == guarded_server.max_running, outcomes
    assert all(o.finished for o in admitted), outcomes
    assert len(rejected) == STREAMS - guarded_server.max_running
    for outcome in rejected:
        assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome
        assert outcome.reason == "OVERLOADED", outcome
        assert outcome.retry_delay_s is not None, outcome
        assert outcome.retry_delay_s > 0, outcome
        # "At once": no queueing behind the running generations (they take seconds).
        assert outcome.seconds_to_answer < 2.0, outcome
    stats = guarded_server.stub().GetServerStats(
        inference_service_pb2.GetServerStatsRequest(), metadata=guarded_server.auth(), timeout=10
    )
    assert stats.active_generations == 0
    assert stats.engine_unfinished_requests == 0
