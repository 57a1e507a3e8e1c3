"""The interceptor chain on a real grpc.aio server without an engine: every
method shape is observed (counted by code, in-flight gauge back to 0),
refused without an API key, exempt services pass, and a request that does not
parse is INVALID_ARGUMENT with REQUEST_FIELD_INVALID."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from ananke_server.auth import ApiKeys
from ananke_server.interceptors import interceptors
from ananke_server.metrics import Metrics
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from prometheus_client import generate_latest

REQ = health_pb2.HealthCheckRequest
RESP = health_pb2.HealthCheckResponse
SERVING = RESP.SERVING
Context = grpc.aio.ServicerContext[Any, Any]


async def _unary_unary(request: Any, context: Context) -> Any:
    return RESP(status=SERVING)


async def _unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
    for _ in range(2):
        yield RESP(status=SERVING)


async def _unary_stream_writer(request: Any, context: Context) -> None:
    await context.write(RESP(status=SERVING))


async def _stream_unary(requests: Any, context: Context) -> Any:
    count = 0
    async for _ in requests:
        count += 1
    return RESP(status=count)


async def _stream_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
    async for _ in requests:
        yield RESP(status=SERVING)


async def _endless(request: Any, context: Context) -> AsyncIterator[Any]:
    while True:
        yield RESP(status=SERVING)
        await asyncio.sleep(0.01)


def _handlers(service: str) -> grpc.GenericRpcHandler:
    codec: dict[str, Any] = {
        "request_deserializer": REQ.FromString,
        "response_serializer": RESP.SerializeToString,
    }
    return grpc.method_handlers_generic_handler(
        service,
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(_unary_unary, **codec),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(_unary_stream, **codec),
            "Writer": grpc.unary_stream_rpc_method_handler(_unary_stream_writer, **codec),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(_stream_unary, **codec),
            "StreamStream": grpc.stream_stream_rpc_method_handler(_stream_stream, **codec),
            "Endless": grpc.unary_stream_rpc_method_handler(_endless, **codec),
        },
    )


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, error
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    raise AssertionError(f"no ErrorInfo in {error}")


async def _call_every_shape(channel: grpc.aio.Channel, service: str, md: Any) -> list[Any]:
    def path(method: str) -> str:
        return f"/{service}/{method}"

    codec: dict[str, Any] = {
        "request_serializer": REQ.SerializeToString,
        "response_deserializer": RESP.FromString,
    }
    outcomes: list[Any] = []
    calls = [
        lambda: channel.unary_unary(path("UnaryUnary"), **codec)(REQ(), metadata=md),
        lambda: _collect(channel.unary_stream(path("UnaryStream"), **codec)(REQ(), metadata=md)),
        lambda: _collect(channel.unary_stream(path("Writer"), **codec)(REQ(), metadata=md)),
        lambda: channel.stream_unary(path("StreamUnary"), **codec)(
            iter([REQ(), REQ(), REQ()]), metadata=md
        ),
        lambda: _collect(
            channel.stream_stream(path("StreamStream"), **codec)(iter([REQ()]), metadata=md)
        ),
    ]
    for call in calls:
        try:
            outcomes.append(await call())
        except grpc.aio.AioRpcError as error:
            outcomes.append((error.code(), _reason(error)))
    return outcomes


async def _collect(call: Any) -> list[Any]:
    return [response async for response in call]


async def _exercise(metrics: Metrics) -> dict[str, Any]:
    server = grpc.aio.server(interceptors=interceptors(metrics, ApiKeys(["k1"]), ["test.Open"]))
    server.add_generic_rpc_handlers([_handlers("test.Guarded"), _handlers("test.Open")])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    key = (("authorization", "Bearer k1"),)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            results = {
                "no key": await _call_every_shape(channel, "test.Guarded", None),
                "key": await _call_every_shape(channel, "test.Guarded", key),
                "exempt": await _call_every_shape(channel, "test.Open", None),
            }
            garbled = b"\x0a\x02\xff\xfe"  # field 1 (string) with invalid UTF-8
            raw = channel.unary_unary("/test.Guarded/UnaryUnary")
            try:
                await raw(garbled, metadata=key)
            except grpc.aio.AioRpcError as error:
                results["garbled"] = (error.code(), _reason(error))
            endless = channel.unary_stream(
                "/test.Guarded/Endless", response_deserializer=RESP.FromString
            )(REQ().SerializeToString(), metadata=key)
            async for _ in endless:
                break
            endless.cancel()
            for _ in range(100):  # the server sees the cancel a little later
                if _sample(metrics, "/test.Guarded/Endless", "CANCELLED"):
                    break
                await asyncio.sleep(0.02)
    finally:
        await server.stop(0)
    return results


def _sample(metrics: Metrics, method: str, code: str) -> float:
    value = metrics.registry.get_sample_value(
        "ananke_requests_total", {"method": method, "code": code}
    )
    return value or 0.0


def test_every_shape_through_the_chain() -> None:
    metrics = Metrics()
    results = asyncio.run(_exercise(metrics))
    unauthenticated = (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
    assert results["no key"] == [unauthenticated] * 5
    served = [
        RESP(status=SERVING),
        [RESP(status=SERVING)] * 2,
        [RESP(status=SERVING)],
        RESP(status=3),
        [RESP(status=SERVING)],
    ]
    assert results["key"] == served
    assert results["exempt"] == served
    assert results["garbled"] == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_FIELD_INVALID")
    for method in ("UnaryUnary", "UnaryStream", "Writer", "StreamUnary", "StreamStream"):
        guarded = f"/test.Guarded/{method}"
        assert _sample(metrics, guarded, "UNAUTHENTICATED") == 1, method
        assert _sample(metrics, guarded, "OK") == 1, method
        assert _sample(metrics, f"/test.Open/{method}", "OK") == 1, method
    assert _sample(metrics, "/test.Guarded/UnaryUnary", "INVALID_ARGUMENT") == 1
    assert _sample(metrics, "/test.Guarded/Endless", "CANCELLED") == 1
    text = generate_latest(metrics.registry).decode()
    in_flight = [
        line for line in text.splitlines() if line.startswith("ananke_in_flight_requests{")
    ]
    assert in_flight
    assert all(line.endswith(" 0.0") for line in in_flight), in_flight


@pytest.mark.parametrize("keys", [None, ApiKeys(["k"])])
def test_chain_order(keys: ApiKeys | None) -> None:
    names = [type(i).__name__ for i in interceptors(Metrics(), keys, ())]
    expected = (
        ["CallObserver", "ApiKeyCheck", "DecodeCheck"] if keys else ["CallObserver", "DecodeCheck"]
    )
    assert names == expected
