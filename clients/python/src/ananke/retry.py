"""When a failed call may be retried, and after how long."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from enum import Enum

import grpc

from ananke.errors import AnankeError, from_rpc_error

__all__ = ["NO_RETRY", "Attempts", "CallKind", "Deadline", "RetryPolicy"]

# UNAVAILABLE reasons that mean the server refused the call before generating.
_REFUSED_REASONS = frozenset({"", "NOT_READY", "SHUTTING_DOWN"})


class CallKind(Enum):
    """How safe a call is to repeat."""

    # ValidateConstraints, GetModelInfo, Health: no effects, repeat freely.
    IDEMPOTENT = "idempotent"
    # Generate: repeat only when the server never started generating.
    GENERATE = "generate"
    # GenerateStream before its first token (nothing reached the caller yet).
    STREAM_START = "stream_start"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for failures that are safe to retry.

    UNAVAILABLE is retried for idempotent calls, for a stream that has not
    produced a token yet, and for `generate` when the server never answered or
    refused it as NOT_READY / SHUTTING_DOWN. RESOURCE_EXHAUSTED (overload) is
    retried only when `honour_retry_info` is set and the server sent a
    `RetryInfo`, after the delay it asks for (capped at `max_retry_info_delay`).
    Every attempt shares the call's deadline.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    honour_retry_info: bool = False
    max_retry_info_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def backoff(self, attempt: int) -> float:
        """The pause after failed attempt number `attempt` (from 1), with jitter."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        spread = base * self.jitter
        return max(0.0, base + random.uniform(-spread, spread))

    def delay(self, error: AnankeError, kind: CallKind, attempt: int) -> float | None:
        """Seconds to wait before retrying after `attempt` failed, or None to give up."""
        if attempt >= self.max_attempts:
            return None
        if error.code is grpc.StatusCode.UNAVAILABLE:
            if kind is CallKind.GENERATE and error.reason not in _REFUSED_REASONS:
                return None
            return self.backoff(attempt)
        if (
            error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            and self.honour_retry_info
            and error.retry_delay is not None
        ):
            return min(max(error.retry_delay, 0.0), self.max_retry_info_delay)
        return None


NO_RETRY = RetryPolicy(max_attempts=1)


class Deadline:
    """The end of a call's time budget, shared by all its attempts."""

    def __init__(self, timeout: float | None) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left (None when unbounded); raises DEADLINE_EXCEEDED when none are."""
        if self._end is None:
            return None
        left = self._end - time.monotonic()
        if left <= 0:
            raise AnankeError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded (client)")
        return left

    def allows(self, delay: float) -> bool:
        """Whether pausing `delay` seconds still leaves time for another attempt."""
        return self._end is None or time.monotonic() + delay < self._end


class Attempts:
    """The attempts of one call, shared by the blocking and asyncio clients: the
    deadline they all share, how many were made, and whether to try again."""

    def __init__(self, policy: RetryPolicy, kind: CallKind, timeout: float | None) -> None:
        self._policy = policy
        self._kind = kind
        self._deadline = Deadline(timeout)
        self._count = 0

    def start(self) -> float | None:
        """Begins the next attempt; returns its timeout (the time left, None if unbounded)."""
        self._count += 1
        return self._deadline.remaining()

    def pause_after(self, exc: grpc.RpcError, *, retryable: bool = True) -> float:
        """Seconds to sleep before the next attempt after `exc`; raises it as an
        AnankeError when the call must not (or can no longer) be retried."""
        error = from_rpc_error(exc)
        delay = self._policy.delay(error, self._kind, self._count) if retryable else None
        if delay is None or not self._deadline.allows(delay):
            raise error from None
        return delay
