"""Prometheus metrics: calls by method and code, in-flight calls, queue depth,
time to first token, time per output token, tokens generated, constraint
compile time and cache hits, engine errors; served over HTTP on metrics_port.
`CallObserver` (a server interceptor) counts every call and logs one access
line per call with its request id."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .logging_setup import bind_request_id

if TYPE_CHECKING:  # generic only in the type stubs
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor

log = logging.getLogger("ananke.access")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
_COMPILE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    """Every metric the service exports, in its own registry (one per server)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ananke_requests", "Finished gRPC calls by method and status code.",
            ["method", "code"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "ananke_in_flight_requests", "gRPC calls being served, by method.",
            ["method"], registry=r,
        )  # fmt: skip
        self.running = Gauge(
            "ananke_running_generations", "Generations holding an admission slot.", registry=r
        )
        self.queued = Gauge(
            "ananke_queued_generations", "Generations waiting for an admission slot.", registry=r
        )
        self.time_to_first_token = Histogram(
            "ananke_time_to_first_token_seconds",
            "From the call's arrival to its first generated token.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.time_per_output_token = Histogram(
            "ananke_time_per_output_token_seconds",
            "Mean time between output tokens after the first, one observation per generation.",
            buckets=_TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens_generated = Counter(
            "ananke_generated_tokens", "Tokens the engine generated (cancelled calls too).",
            registry=r,
        )  # fmt: skip
        self.compile_seconds = Histogram(
            "ananke_constraint_compile_seconds",
            "Time to get a request's compiled constraints (cache hits included).",
            buckets=_COMPILE_BUCKETS, registry=r,
        )  # fmt: skip
        self.compile_cache = Counter(
            "ananke_constraint_cache_lookups", "Compiled-constraint cache lookups by result.",
            ["result"], registry=r,
        )  # fmt: skip
        self.engine_errors = Counter(
            "ananke_engine_errors", "Engine failures: dead (process gone) or rejected (raised).",
            ["kind"], registry=r,
        )  # fmt: skip

    def track_admission(self, running: Callable[[], int], queued: Callable[[], int]) -> None:
        """Reads the running and queued gauges from these callables at scrape time."""
        self.running.set_function(lambda: float(running()))
        self.queued.set_function(lambda: float(queued()))

    def record_compile(self, seconds: float, cache_hit: bool) -> None:
        """One constraint compile (or cache hit)."""
        self.compile_seconds.observe(seconds)
        self.compile_cache.labels("hit" if cache_hit else "miss").inc()

    def record_tokens(self, count: int) -> None:
        """Tokens that came out of the engine."""
        if count:
            self.tokens_generated.inc(count)

    def record_latency(self, ttft_s: float | None, decode_s: float, tokens: int) -> None:
        """A finished generation: time to first token, then time per later token."""
        if ttft_s is not None:
            self.time_to_first_token.observe(ttft_s)
            if tokens > 1:
                self.time_per_output_token.observe(decode_s / (tokens - 1))

    def record_engine_error(self, kind: str) -> None:
        """An engine failure: `dead` or `rejected`."""
        self.engine_errors.labels(kind).inc()


class MetricsHttpServer:
    """The /metrics endpoint (prometheus_client's threaded HTTP server)."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
        self._server: WSGIServer = server
        self._thread = thread
        self.port = int(server.server_port)

    def close(self) -> None:
        """Stops serving /metrics."""
        self._server.shutdown()
        self._server.server_close()


def _code_name(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    try:  # grpc.aio may report the raw integer
        return grpc.StatusCode(code).name
    except ValueError:
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return str(code)


def _header(metadata: Any, name: str) -> str:
    for key, value in metadata or ():
        if key == name:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


Behavior = Callable[..., Any]


class CallObserver(_Interceptor):
    """Counts every call by method and code, tracks in-flight calls, binds the
    x-request-id header for logging, and logs one access line per call."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler  # the service has no client-streaming methods
        method = handler_call_details.method
        request_id = _header(handler_call_details.invocation_metadata, "x-request-id")[:128]
        if handler.response_streaming:
            assert handler.unary_stream is not None
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        assert handler.unary_unary is not None
        return grpc.unary_unary_rpc_method_handler(
            self._wrap_unary(handler.unary_unary, method, request_id),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap_unary(self, behavior: Behavior, method: str, request_id: str) -> Behavior:
        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = self._begin(method, request_id)
            code = "UNKNOWN"
            try:
                result = await behavior(request, context)
                code = _code_name(context)
                return result
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                code = _code_name(context)
                raise
            finally:
                self._end(method, code, started)

        return observed

    def _wrap_stream(self, behavior: Behavior, method: str, request_id: str) -> Behavior:
        if not inspect.isasyncgenfunction(behavior):
            return self._wrap_unary(behavior, method, request_id)  # writes with context.write

        async def observed(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = self._begin(method, request_id)
            code = "UNKNOWN"
            try:
                async for response in behavior(request, context):
                    yield response
                code = _code_name(context)
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"
                raise  # never swallow: grpc#43360
            except grpc.aio.AbortError:
                code = _code_name(context)
                raise
            finally:
                self._end(method, code, started)

        return observed

    def _begin(self, method: str, request_id: str) -> float:
        if request_id:
            bind_request_id(request_id)
        self._metrics.in_flight.labels(method).inc()
        return time.perf_counter()

    def _end(self, method: str, code: str, started: float) -> None:
        self._metrics.in_flight.labels(method).dec()
        self._metrics.requests.labels(method, code).inc()
        log.info(
            "call %s %s",
            method,
            code,
            extra={"method": method, "code": code, "duration_s": time.perf_counter() - started},
        )
