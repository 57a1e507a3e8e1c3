"""Building and running the gRPC server: InferenceService, grpc.health.v1 and
reflection; NOT_SERVING until the engine is warm; graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from ananke.v1 import inference_service_pb2, inference_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from .adapter_rpcs import ADMIN_METHODS
from .auth import ApiKeys, load_api_keys
from .engine_api import Engine
from .interceptors import interceptors
from .metrics import Metrics, MetricsHttpServer
from .model_prep import DEFAULT_MODEL_NAME, default_model_dir, prepare_default_model
from .reflection import enable_reflection
from .servicer import InferenceServicer
from .serving_state import ServingState
from .settings import DEFAULT_MODEL, Settings
from .tls import server_credentials

log = logging.getLogger("ananke.server")

SERVICE_NAME = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Health is reported for the whole server ("") and for the service by name.
HEALTH_NAMES = ("", SERVICE_NAME)


@dataclass
class RunningServer:
    """A built server and the pieces its lifecycle drives."""

    server: grpc.aio.Server
    port: int
    servicer: InferenceServicer
    health: HealthServicer
    engine: Engine
    state: ServingState
    metrics: Metrics


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel options: message size limits, and keepalive suited to long streams
    (server pings idle connections; clients may ping every 10 s, even between calls)."""
    return [
        # Larger messages are refused by grpc itself with RESOURCE_EXHAUSTED,
        # before any handler runs, so they carry no ErrorInfo.
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
    ]


def build_server(
    settings: Settings, engine: Engine, metrics: Metrics | None = None
) -> RunningServer:
    """A bound, not yet started server in the LOADING phase (await
    `state.publish()` before starting it, so health says NOT_SERVING). Port 0
    picks a free port. Calls pass the observer (metrics, access log), the
    API-key check if keys are set, then the decode check."""
    metrics = metrics or Metrics()
    keys = load_api_keys(settings)
    admin = settings.admin_api_keys
    chain = interceptors(
        metrics,
        ApiKeys(keys) if keys else None,
        settings.auth_exempt_services,
        ApiKeys(admin) if admin else None,
        ADMIN_METHODS,
    )
    server = grpc.aio.server(options=server_options(settings), interceptors=chain)
    health = HealthServicer()
    state = ServingState(health, HEALTH_NAMES, metrics)
    servicer = InferenceServicer(settings, engine, state, metrics)
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    enable_reflection(server, [SERVICE_NAME, HEALTH_SERVICE_NAME])
    credentials = server_credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.address)
        else:
            port = server.add_secure_port(settings.address, credentials)
    except RuntimeError as error:  # grpcio reports bind failures this way
        raise OSError(f"cannot bind {settings.address}: is the port in use?") from error
    return RunningServer(server, port, servicer, health, engine, state, metrics)


def resolve_model(settings: Settings) -> tuple[str, str]:
    """(path or hub id to load, model id to report) for the configured model."""
    if settings.model == DEFAULT_MODEL:
        cache = Path(settings.model_cache_dir) if settings.model_cache_dir else None
        target = default_model_dir(cache) if cache else None
        return str(prepare_default_model(target)), DEFAULT_MODEL_NAME
    path = Path(settings.model).expanduser()
    if path.is_dir():
        return str(path), path.name
    return settings.model, settings.model


def build_engine(settings: Settings) -> Engine:
    """The vLLM engine for the configured model (prepares the default one if needed).
    vllm_engine is imported here, not at the top, so that building a server
    around another engine (tests) does not import vllm."""
    from .engine_config import EngineConfig
    from .vllm_engine import VllmEngine

    model_path, model_id = resolve_model(settings)
    return VllmEngine(EngineConfig.from_settings(settings, model_path, model_id))


async def _watch_engine(running: RunningServer, interval_s: float = 5.0) -> None:
    """Fails the serving state (NOT_SERVING, then exit 1) when the engine dies
    between generations."""
    state = running.state
    while not state.failed.is_set():
        try:
            await running.engine.check_health()
        except Exception as error:
            await state.engine_failed(error)
            break
        try:
            await asyncio.wait_for(state.failed.wait(), interval_s)
        except TimeoutError:
            continue


async def serve(settings: Settings) -> int:
    """Runs until SIGTERM/SIGINT (exit 0) or engine failure (exit 1)."""
    engine = build_engine(settings)
    running = build_server(settings, engine)
    state = running.state
    await state.publish()
    await running.server.start()
    log.info(
        "listening on %s:%d (NOT_SERVING until the model is loaded)", settings.host, running.port
    )
    metrics_http = (
        MetricsHttpServer(running.metrics, settings.host, settings.metrics_port)
        if settings.metrics_port > 0
        else None
    )
    if metrics_http is not None:
        log.info("metrics on http://%s:%d/metrics", settings.host, metrics_http.port)
    if settings.port_file:
        await asyncio.to_thread(Path(settings.port_file).write_text, str(running.port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        loading = asyncio.create_task(engine.start())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({loading, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            loading.cancel()
            log.info("stopped before the model was loaded")
            return 0
        loading.result()
        running.servicer.engine_ready()
        await running.servicer.preload_adapters()
        await state.serve()
        log.info("SERVING %s on %s:%d", engine.info.model_id, settings.host, running.port)
        watcher = asyncio.create_task(_watch_engine(running))
        failed = asyncio.create_task(state.failed.wait())
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        watcher.cancel()
        log.info("shutting down: draining in-flight calls for up to %gs", settings.shutdown_grace_s)
        await state.drain()
        await running.server.stop(settings.shutdown_grace_s)
        log.info("stopped")
        return state.exit_code
    finally:
        running.servicer.close()
        engine.shutdown()
        if metrics_http is not None:
            metrics_http.close()
