"""Admission control: a bounded number of running and waiting generations;
past that, RESOURCE_EXHAUSTED with RetryInfo at once instead of unbounded
latency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .errors import ServiceError

RETRY_AFTER_S = 1.0


class Admission:
    """At most `running` generations at once and `queued` more waiting."""

    def __init__(self, running: int, queued: int) -> None:
        self._slots = asyncio.Semaphore(running)
        self._max_queued = queued
        self._running = 0
        self._waiting = 0

    @property
    def running(self) -> int:
        """Generations holding a slot."""
        return self._running

    @property
    def waiting(self) -> int:
        """Generations waiting for a slot."""
        return self._waiting

    def check_capacity(self) -> None:
        """Raises OVERLOADED now when a new generation could neither run nor wait,
        so callers refuse before doing expensive work (compiling, tokenizing)."""
        if self._slots.locked() and self._waiting >= self._max_queued:
            raise ServiceError(
                "OVERLOADED",
                f"the server is at capacity ({self._running} running, {self._waiting} waiting); "
                "retry later",
                metadata={"running": str(self._running), "waiting": str(self._waiting)},
                retry_after_s=RETRY_AFTER_S,
            )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Holds a slot for the body; raises OVERLOADED when the queue is full."""
        self.check_capacity()
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            self._slots.release()
