"""The server's serving state, in one place: loading -> serving -> draining
(SIGTERM) or failed (the engine died). It publishes grpc.health.v1 statuses
and is the one source of the UNAVAILABLE errors new calls get when not
serving."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from .errors import EngineDeadError, ServiceError, error_from_exception
from .metrics import Metrics

log = logging.getLogger("ananke.server")


class Phase(enum.Enum):
    """Where the server is in its life."""

    LOADING = "loading"  # the model is loading; health NOT_SERVING
    SERVING = "serving"  # health SERVING
    DRAINING = "draining"  # shutting down: in-flight calls finish, new ones are refused
    FAILED = "failed"  # the engine died: new calls are refused, the server exits 1


class ServingState:
    """The phase, the health statuses it implies, and the errors for calls that
    arrive when the server is not serving."""

    def __init__(self, health: HealthServicer, names: Sequence[str], metrics: Metrics) -> None:
        self.phase = Phase.LOADING
        self.failed = asyncio.Event()  # set once the engine has died
        self._health = health
        self._names = tuple(names)
        self._metrics = metrics

    async def publish(self) -> None:
        """Reports the current phase on every health name (SERVING or NOT_SERVING)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.phase is Phase.SERVING
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._names:
            await self._health.set(name, status)

    async def serve(self) -> None:
        """The model is loaded: SERVING (unless the server already stopped or failed)."""
        if self.phase is Phase.LOADING:
            self.phase = Phase.SERVING
        await self.publish()

    async def drain(self) -> None:
        """Shutting down: NOT_SERVING for good; new calls get SHUTTING_DOWN (or
        ENGINE_UNAVAILABLE after a failure)."""
        if self.phase is not Phase.FAILED:
            self.phase = Phase.DRAINING
        await self._health.enter_graceful_shutdown()

    async def engine_failed(self, error: BaseException) -> None:
        """The engine died (seen by a generation or by the health watcher):
        counted and logged once, NOT_SERVING, and `failed` is set."""
        if self.phase is Phase.FAILED:
            return
        self.phase = Phase.FAILED
        self._metrics.record_engine_error("dead")
        log.error("engine failed: %s", error)
        self.failed.set()
        await self.publish()

    def check_accepting(self) -> None:
        """Raises the UNAVAILABLE error for a new call when the server is not serving."""
        if self.phase is Phase.SERVING:
            return
        raise unavailable(self.phase)

    @property
    def exit_code(self) -> int:
        """The process's exit status: 1 after an engine failure, else 0."""
        return 1 if self.phase is Phase.FAILED else 0


def unavailable(phase: Phase) -> ServiceError:
    """The error a call gets in `phase` (not SERVING)."""
    if phase is Phase.FAILED:
        return error_from_exception(EngineDeadError("the engine failed"))  # as in-flight calls
    if phase is Phase.DRAINING:
        return ServiceError("SHUTTING_DOWN", "the server is shutting down; retry elsewhere")
    return ServiceError("NOT_READY", "the model is still loading; retry shortly", retry_after_s=1.0)
