"""The compile cache: an LRU bounded by entry count and by an estimate of its
size in bytes, with in-flight dedupe (identical concurrent compiles share one)
and compiles run on a thread pool, off the event loop. Behind it, optionally,
the disk cache (disk_cache.py): a memory miss looks there before compiling,
and a compile is written there."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeAlias

from ..errors import ServiceError
from .core import CacheStats, CompiledConstraints
from .disk_cache import DiskCache

Result: TypeAlias = CompiledConstraints | ServiceError


def entry_bytes(entry: Result) -> int:
    """An estimate of a cache entry's size: its grammar strings (an error: its message)."""
    if isinstance(entry, ServiceError):
        return len(entry.message)
    return (
        len(entry.grammar or "")
        + sum(len(grammar) for _, grammar in entry.check_grammars)
        + sum(len(grammar) for grammar in entry.intersection)
        # A validator holds the original schema (and a little more).
        + sum(2 * check.schema_bytes for check in entry.schema_checks)
    )


class CompileCache:
    """Thread-safe LRU of compile results, computed on the given pool.

    A compile that outlives its callers' timeout still finishes and is cached."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        *,
        capacity: int,
        max_bytes: int,
        timeout_s: float,
        disk: DiskCache | None = None,
    ) -> None:
        self._capacity = capacity
        self._max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._cache: OrderedDict[str, Result] = OrderedDict()
        self._bytes = 0
        # Compiles under way, by cache key: later callers await the same one.
        self._in_flight: dict[str, concurrent.futures.Future[Result]] = {}
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._pool = pool
        self.disk = disk

    def stats(self) -> CacheStats:
        """A snapshot of the cache counters."""
        with self._lock:
            return CacheStats(
                len(self._cache), self._capacity, self._hits, self._misses, self._bytes
            )

    async def get_or_compile(
        self, key: str, compile_now: Callable[[], Result]
    ) -> tuple[CompiledConstraints, bool]:
        """The cached result for `key`, or `compile_now()` run on the pool (shared
        with identical calls under way). Returns the result and whether it was a
        cache hit; raises the cached/compiled ServiceError (a fresh copy)."""
        started: concurrent.futures.Future[Result] | None = None
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self._hits += 1
                shared = None
            else:
                shared = self._in_flight.get(key)
                if shared is None:
                    self._misses += 1
                    shared = started = self._pool.submit(self._load_or_compile, key, compile_now)
                    self._in_flight[key] = started
        if started is not None:
            # Outside the lock: a future already done runs the callback at once.
            started.add_done_callback(partial(self._compiled, key))
        if shared is not None:
            try:
                # shield: a caller that times out must not cancel the shared compile.
                cached = await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(shared)), self.timeout_s
                )
            except TimeoutError:
                raise timeout_error("compiling", self.timeout_s) from None
        assert cached is not None
        if isinstance(cached, ServiceError):
            # A fresh copy per caller: re-raising one object grows its traceback.
            raise dataclasses.replace(cached)
        return cached, shared is None

    def _load_or_compile(self, key: str, compile_now: Callable[[], Result]) -> Result:
        """On a compile thread: the disk cache's entry, else a compile (then stored)."""
        if self.disk is None:
            return compile_now()
        loaded = self.disk.load(key)
        if loaded is not None:
            return loaded
        result = compile_now()
        self.disk.store(key, result)
        return result

    def _compiled(self, key: str, future: concurrent.futures.Future[Result]) -> None:
        """Done callback of a compile: caches its result, even when every caller
        has already timed out (a cancelled or crashed compile is not cached)."""
        with self._lock:
            if self._in_flight.get(key) is future:
                del self._in_flight[key]
            if future.cancelled() or future.exception() is not None:
                return
            self._store(key, future.result())

    def _store(self, key: str, result: Result) -> None:
        """Adds an entry, then evicts the least recently used ones while the
        cache holds too many entries or bytes. Call with the lock held."""
        size = entry_bytes(result)
        if self._capacity <= 0 or size > self._max_bytes:
            return
        previous = self._cache.pop(key, None)
        if previous is not None:
            self._bytes -= entry_bytes(previous)
        self._cache[key] = result
        self._bytes += size
        while len(self._cache) > self._capacity or self._bytes > self._max_bytes:
            _, evicted = self._cache.popitem(last=False)
            self._bytes -= entry_bytes(evicted)


def timeout_error(what: str, timeout_s: float) -> ServiceError:
    """CONSTRAINT_COMPILE_TIMEOUT for `what` ('compiling', 'validating')."""
    return ServiceError(
        "CONSTRAINT_COMPILE_TIMEOUT",
        f"{what} the constraints took longer than {timeout_s:g} s",
        metadata={"timeout_s": f"{timeout_s:g}"},
    )
