"""The serving state (loading, serving, draining, failed) on a real grpc.aio
server with the fake engine: health and the UNAVAILABLE errors follow it, an
engine death is handled once whoever sees it; ValidateConstraints,
GetModelInfo and GetServerStats go through the generation calls' failure
mapping; /metrics and GetServerStats count compile-cache lookups alike."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import inference_service_pb2 as s
from ananke_server import server as server_module
from ananke_server.errors import EngineDeadError
from ananke_server.server import SERVICE_NAME, _watch_engine
from ananke_server.serving_state import Phase
from ananke_server.settings import Settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_servicer_unit import HELLO_REGEX, FakeEngine, Served, gen_request, rich, serving

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


async def _health(served: Served) -> list[int]:
    stub = health_pb2_grpc.HealthStub(served.channel)
    return [
        (await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status
        for name in ("", SERVICE_NAME)
    ]


async def _refusal(served: Served) -> list[tuple[grpc.StatusCode, str]]:
    """The (code, reason) of a new Generate and ValidateConstraints."""
    outcomes = []
    for call in (
        served.stub.Generate(s.GenerateRequest(request=gen_request()), timeout=5),
        served.stub.ValidateConstraints(
            s.ValidateConstraintsRequest(constraints=[HELLO_REGEX]), timeout=5
        ),
    ):
        try:
            await call
            outcomes.append((grpc.StatusCode.OK, ""))
        except grpc.aio.AioRpcError as error:
            details = rich(error)
            outcomes.append((details.code, details.reason))
    return outcomes


def _dead_count(served: Served) -> float:
    value = served.running.metrics.registry.get_sample_value(
        "ananke_engine_errors_total", {"kind": "dead"}
    )
    return value or 0.0


NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


async def test_loading_then_serving_then_draining() -> None:
    async with serving(ready=False) as served:
        state = served.running.state
        assert state.phase is Phase.LOADING
        assert await _health(served) == [NOT_SERVING] * 2
        assert await _refusal(served) == [(UNAVAILABLE, "NOT_READY")] * 2
        served.running.servicer.engine_ready()
        await state.serve()
        assert state.phase is Phase.SERVING
        assert await _health(served) == [SERVING] * 2
        assert await _refusal(served) == [(grpc.StatusCode.OK, "")] * 2
        await state.drain()
        assert state.phase is Phase.DRAINING
        assert await _health(served) == [NOT_SERVING] * 2
        assert await _refusal(served) == [(UNAVAILABLE, "SHUTTING_DOWN")] * 2
        await state.serve()  # a late serve() does not undo draining
        assert state.phase is Phase.DRAINING
        assert state.exit_code == 0


async def test_engine_death_fails_the_state_once() -> None:
    async with serving() as served:
        state = served.running.state
        served.engine.fail_with = EngineDeadError("core died")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await served.stub.Generate(s.GenerateRequest(request=gen_request()), timeout=5)
        assert rich(raised.value).reason == "ENGINE_UNAVAILABLE"
        assert state.phase is Phase.FAILED
        assert state.failed.is_set()
        assert await _health(served) == [NOT_SERVING] * 2
        # New calls are refused at once, with the same error as the failed call.
        assert await _refusal(served) == [(UNAVAILABLE, "ENGINE_UNAVAILABLE")] * 2
        # The health watcher seeing the death too does not count it again.
        served.engine.check_health = _raise_dead  # type: ignore[method-assign]
        await _watch_engine(served.running, interval_s=0.01)
        assert _dead_count(served) == 1
        await state.drain()
        assert state.phase is Phase.FAILED
        assert state.exit_code == 1


async def _raise_dead() -> None:
    raise EngineDeadError("health check failed")


async def test_watcher_fails_the_state() -> None:
    async with serving() as served:
        served.engine.check_health = _raise_dead  # type: ignore[method-assign]
        await _watch_engine(served.running, interval_s=0.01)
        assert served.running.state.phase is Phase.FAILED
        assert _dead_count(served) == 1
        assert await _health(served) == [NOT_SERVING] * 2


class _Broken:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __call__(self, *args: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (RuntimeError("secret internals"), grpc.StatusCode.INTERNAL, "INTERNAL_ERROR"),
        (EngineDeadError("gone"), UNAVAILABLE, "ENGINE_UNAVAILABLE"),
    ],
)
async def test_info_rpcs_share_the_failure_mapping(
    error: BaseException, code: grpc.StatusCode, reason: str
) -> None:
    async with serving() as served:
        served.engine.unfinished_requests = _Broken(error)  # type: ignore[method-assign]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await served.stub.GetServerStats(s.GetServerStatsRequest(), timeout=5)
        details = rich(raised.value)
        assert (details.code, details.reason) == (code, reason)
        assert "secret" not in (raised.value.details() or "")
        if isinstance(error, EngineDeadError):
            assert served.running.state.phase is Phase.FAILED
        # No generation was counted for a failed stats call.
        assert served.counters.failed == 0


async def test_model_info_failure_is_mapped() -> None:
    async with serving() as served:
        served.running.servicer._engine = None  # type: ignore[assignment]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await served.stub.GetModelInfo(s.GetModelInfoRequest(), timeout=5)
        details = rich(raised.value)
        assert (details.code, details.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL_ERROR")


def _prometheus_lookups(served: Served) -> tuple[float, float]:
    registry = served.running.metrics.registry
    hits = registry.get_sample_value("ananke_constraint_cache_lookups_total", {"result": "hit"})
    misses = registry.get_sample_value("ananke_constraint_cache_lookups_total", {"result": "miss"})
    return hits or 0.0, misses or 0.0


async def test_cache_lookups_agree_between_stats_and_metrics() -> None:
    async with serving() as served:
        request = s.GenerateRequest(request=gen_request(constraints=[HELLO_REGEX]))
        await served.stub.Generate(request, timeout=5)  # miss
        await served.stub.Generate(request, timeout=5)  # hit
        await served.stub.ValidateConstraints(  # compiles through the cache too
            s.ValidateConstraintsRequest(constraints=[HELLO_REGEX]), timeout=5
        )
        bad = c.ConstraintIR(regex=c.RegexConstraint(pattern="(?=x)"))
        for _ in range(2):  # a compile error is cached like a result
            with pytest.raises(grpc.aio.AioRpcError):
                await served.stub.Generate(
                    s.GenerateRequest(request=gen_request(constraints=[bad])), timeout=5
                )
        stats = (
            await served.stub.GetServerStats(s.GetServerStatsRequest(), timeout=5)
        ).compile_cache
        assert (stats.hits, stats.misses) == (2, 3)
        assert _prometheus_lookups(served) == (stats.hits, stats.misses)


async def _serve_until(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, engine: FakeEngine, action: Any
) -> tuple[int, list[int]]:
    """Runs server.serve() with `engine`, does `action()` once it is SERVING (or
    gives up after 20 s) and returns its exit status and the health statuses seen."""
    monkeypatch.setattr(server_module, "build_engine", lambda settings: engine)
    port_file = tmp_path / "port"
    settings = Settings(host="127.0.0.1", port=0, port_file=str(port_file), shutdown_grace_s=1)
    task = asyncio.create_task(server_module.serve(settings))
    seen: list[int] = []
    deadline = time.monotonic() + 20
    while not task.done() and time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    seen.append(reply.status)
                except grpc.aio.AioRpcError:
                    pass
            if seen and seen[-1] == SERVING:
                action()
                break
        await asyncio.sleep(0.05)
    return await asyncio.wait_for(task, 30), seen


async def test_serve_drains_on_sigterm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, seen = await _serve_until(
        monkeypatch, tmp_path, FakeEngine(), lambda: os.kill(os.getpid(), signal.SIGTERM)
    )
    assert code == 0
    assert seen[-1] == SERVING


async def test_serve_exits_1_when_the_engine_dies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    engine = FakeEngine()
    engine.check_health = _raise_dead  # type: ignore[method-assign]
    code, _ = await _serve_until(monkeypatch, tmp_path, engine, lambda: None)
    assert code == 1
