"""Prometheus metrics: calls by method and code, in-flight calls, queue depth,
time to first token, time per output token, tokens generated, constraint
compile time and cache hits, engine errors, schema validations; served over HTTP on metrics_port.
Calls are counted by interceptors.CallObserver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

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
        self.tokens_forced = Counter(
            "ananke_forced_tokens",
            "Output tokens fast-forwarded: forced by the grammar, no model step of their own.",
            registry=r,
        )  # fmt: skip
        self.compile_seconds = Histogram(
            "ananke_constraint_compile_seconds",
            "Time to get a request's compiled constraints (cache hits included).",
            buckets=_COMPILE_BUCKETS, registry=r,
        )  # fmt: skip
        # Read from the compile cache's own counters at scrape time, so /metrics
        # and GetServerStats report the same hits and misses.
        self._cache_counts: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)
        r.register(_CacheLookups(lambda: self._cache_counts()))
        self.engine_errors = Counter(
            "ananke_engine_errors", "Engine failures: dead (process gone) or rejected (raised).",
            ["kind"], registry=r,
        )  # fmt: skip
        self.schema_validations = Counter(
            "ananke_schema_validations",
            "Outputs validated against an over-approximated JSON schema, by result: valid, "
            "retried (generated again), failed (after the last attempt), flagged (lenient).",
            ["result"], registry=r,
        )  # fmt: skip

    def track_admission(self, running: Callable[[], int], queued: Callable[[], int]) -> None:
        """Reads the running and queued gauges from these callables at scrape time."""
        self.running.set_function(lambda: float(running()))
        self.queued.set_function(lambda: float(queued()))

    def track_compile_cache(self, counts: Callable[[], tuple[int, int, int]]) -> None:
        """Reads the compile cache's (hits, compiles, disk loads) from `counts` at scrape time."""
        self._cache_counts = counts

    def record_compile(self, seconds: float) -> None:
        """The time one request took to get its compiled constraints."""
        self.compile_seconds.observe(seconds)

    def record_tokens(self, count: int) -> None:
        """Tokens that came out of the engine."""
        if count:
            self.tokens_generated.inc(count)

    def record_forced(self, count: int) -> None:
        """Tokens of a finished generation that were fast-forwarded."""
        if count:
            self.tokens_forced.inc(count)

    def record_latency(self, ttft_s: float | None, decode_s: float, tokens: int) -> None:
        """A finished generation: time to first token, then time per later token."""
        if ttft_s is not None:
            self.time_to_first_token.observe(ttft_s)
            if tokens > 1:
                self.time_per_output_token.observe(decode_s / (tokens - 1))

    def record_schema_validation(self, result: str) -> None:
        """One validated output: `valid`, `retried`, `failed` or `flagged`."""
        self.schema_validations.labels(result).inc()

    def record_engine_error(self, kind: str) -> None:
        """An engine failure: `dead` or `rejected`."""
        self.engine_errors.labels(kind).inc()


class _CacheLookups(Collector):
    """ananke_constraint_cache_lookups_total{result="hit"|"miss"|"disk"}."""

    def __init__(self, counts: Callable[[], tuple[int, int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        hits, misses, disk = self._counts()
        family = CounterMetricFamily(
            "ananke_constraint_cache_lookups",
            "Compile cache lookups by result: hit (memory), disk (loaded from the disk "
            "cache) or miss (a compile started), as GetServerStats reports them.",
            labels=["result"],
        )
        family.add_metric(["hit"], hits)
        family.add_metric(["miss"], misses)
        family.add_metric(["disk"], disk)
        yield family


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
