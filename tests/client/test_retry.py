"""Retries happen only where they are safe."""

from __future__ import annotations

import grpc
import pytest
from ananke import AnankeClient, AnankeError, AsyncAnankeClient, GenerationStarted, RetryPolicy
from ananke.retry import CallKind, Deadline

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.002)
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _error(
    code: grpc.StatusCode, reason: str = "", retry_delay: float | None = None
) -> AnankeError:
    return AnankeError(code, "x", reason=reason, retry_delay=retry_delay)


@pytest.mark.parametrize(
    ("kind", "code", "reason", "retried"),
    [
        (CallKind.IDEMPOTENT, UNAVAILABLE, "", True),
        (CallKind.IDEMPOTENT, UNAVAILABLE, "ENGINE_UNAVAILABLE", True),
        (CallKind.STREAM_START, UNAVAILABLE, "ENGINE_UNAVAILABLE", True),
        (CallKind.GENERATE, UNAVAILABLE, "", True),
        (CallKind.GENERATE, UNAVAILABLE, "NOT_READY", True),
        (CallKind.GENERATE, UNAVAILABLE, "SHUTTING_DOWN", True),
        (CallKind.GENERATE, UNAVAILABLE, "ENGINE_UNAVAILABLE", False),
        (CallKind.IDEMPOTENT, grpc.StatusCode.INVALID_ARGUMENT, "PROMPT_EMPTY", False),
        (CallKind.IDEMPOTENT, grpc.StatusCode.DEADLINE_EXCEEDED, "", False),
        (CallKind.IDEMPOTENT, grpc.StatusCode.INTERNAL, "INTERNAL_ERROR", False),
        (CallKind.IDEMPOTENT, grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", False),
    ],
)
def test_policy_decisions(
    kind: CallKind, code: grpc.StatusCode, reason: str, retried: bool
) -> None:
    delay = FAST.delay(_error(code, reason, retry_delay=0.5), kind, attempt=1)
    assert (delay is not None) is retried


def test_retry_info_only_when_opted_in() -> None:
    overloaded = _error(grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", retry_delay=0.5)
    assert FAST.delay(overloaded, CallKind.GENERATE, 1) is None
    opted = RetryPolicy(honour_retry_info=True, max_retry_info_delay=0.25)
    assert opted.delay(overloaded, CallKind.GENERATE, 1) == 0.25
    no_info = _error(grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
    assert opted.delay(no_info, CallKind.GENERATE, 1) is None


def test_attempts_are_bounded_and_backoff_grows() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=1, multiplier=2, jitter=0, max_backoff=3)
    error = _error(UNAVAILABLE)
    assert policy.delay(error, CallKind.IDEMPOTENT, 1) == 1
    assert policy.delay(error, CallKind.IDEMPOTENT, 2) == 2
    assert policy.delay(error, CallKind.IDEMPOTENT, 3) is None
    assert policy.backoff(5) == 3


def test_deadline_stops_retries() -> None:
    deadline = Deadline(0.5)
    assert not deadline.allows(10.0)
    assert deadline.allows(0.0)
    assert Deadline(None).allows(1e9)


def test_unary_idempotent_retried_until_success(fake_server) -> None:
    fake_server.fake.fail_next("ValidateConstraints", UNAVAILABLE, "NOT_READY", times=2)
    with AnankeClient(fake_server.address, retry=FAST) as client:
        response = client.validate_constraints([])
    assert response.ok
    assert len(fake_server.fake.calls_to("ValidateConstraints")) == 3


def test_unary_gives_up_after_max_attempts(fake_server) -> None:
    fake_server.fake.fail_next("GetModelInfo", UNAVAILABLE, "NOT_READY", times=5)
    with AnankeClient(fake_server.address, retry=FAST) as client, pytest.raises(AnankeError):
        client.model_info()
    assert len(fake_server.fake.calls_to("GetModelInfo")) == 3


def test_backoff_beyond_deadline_gives_up_at_once(fake_server) -> None:
    slow = RetryPolicy(initial_backoff=60, max_backoff=60)
    fake_server.fake.fail_next("GetModelInfo", UNAVAILABLE, "NOT_READY")
    with AnankeClient(fake_server.address, retry=slow) as client, pytest.raises(AnankeError):
        client.model_info(timeout=5)
    assert len(fake_server.fake.calls_to("GetModelInfo")) == 1


def test_generate_not_retried_after_engine_failure(fake_server) -> None:
    fake_server.fake.fail_next("Generate", UNAVAILABLE, "ENGINE_UNAVAILABLE")
    with AnankeClient(fake_server.address, retry=FAST) as client, pytest.raises(AnankeError):
        client.generate("x")
    assert len(fake_server.fake.calls_to("Generate")) == 1


def test_generate_retried_when_refused(fake_server) -> None:
    fake_server.fake.fail_next("Generate", UNAVAILABLE, "SHUTTING_DOWN")
    with AnankeClient(fake_server.address, retry=FAST) as client:
        assert client.generate("x").text == "Hello"
    assert len(fake_server.fake.calls_to("Generate")) == 2


def test_invalid_argument_never_retried(fake_server) -> None:
    fake_server.fake.fail_next("ValidateConstraints", grpc.StatusCode.INVALID_ARGUMENT, "X")
    with AnankeClient(fake_server.address, retry=FAST) as client, pytest.raises(AnankeError):
        client.validate_constraints([])
    assert len(fake_server.fake.calls_to("ValidateConstraints")) == 1


def test_overload_retried_only_when_opted_in(fake_server) -> None:
    fake = fake_server.fake
    fake.fail_next("Generate", grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", retry_delay=0.01)
    with AnankeClient(fake_server.address, retry=FAST) as client, pytest.raises(AnankeError):
        client.generate("x")
    assert len(fake.calls_to("Generate")) == 1
    fake.reset()
    fake.fail_next("Generate", grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", retry_delay=0.01)
    policy = RetryPolicy(honour_retry_info=True)
    with AnankeClient(fake_server.address, retry=policy) as client:
        assert client.generate("x").text == "Hello"
    assert len(fake.calls_to("Generate")) == 2


def test_stream_retried_before_first_token(fake_server, status_factory) -> None:
    fake = fake_server.fake
    # the first attempt sends GenerationStarted, then fails before any token;
    # the retry succeeds
    fake.stream_fail = (1, status_factory(UNAVAILABLE, "engine died", "ENGINE_UNAVAILABLE"))
    with AnankeClient(fake_server.address, retry=FAST) as client:
        stream = client.generate_stream("x")
        events = list(stream)
    assert len(fake.calls_to("GenerateStream")) == 2
    assert sum(isinstance(e, GenerationStarted) for e in events) == 1
    assert stream.result.text == "Hello"


def test_stream_failing_before_start_is_retried(fake_server) -> None:
    fake_server.fake.fail_next("GenerateStream", UNAVAILABLE, "NOT_READY")
    with AnankeClient(fake_server.address, retry=FAST) as client:
        assert client.generate_stream("x").collect().text == "Hello"
    assert len(fake_server.fake.calls_to("GenerateStream")) == 2


def test_stream_not_retried_after_a_token(fake_server, status_factory) -> None:
    fake = fake_server.fake
    fake.stream_fail = (2, status_factory(UNAVAILABLE, "engine died", "ENGINE_UNAVAILABLE"))
    with AnankeClient(fake_server.address, retry=FAST) as client:
        stream = client.generate_stream("x")
        with pytest.raises(AnankeError) as info:
            stream.collect()
    assert info.value.reason == "ENGINE_UNAVAILABLE"
    assert stream.text == "Hel"
    assert len(fake.calls_to("GenerateStream")) == 1


async def test_async_stream_retried_before_first_token(fake_server, status_factory) -> None:
    fake = fake_server.fake
    fake.stream_fail = (1, status_factory(UNAVAILABLE, "engine died", "ENGINE_UNAVAILABLE"))
    async with AsyncAnankeClient(fake_server.address, retry=FAST) as client:
        stream = client.generate_stream("x")
        started = 0
        async for event in stream:
            started += isinstance(event, GenerationStarted)
    assert started == 1
    assert stream.result.text == "Hello"
    assert len(fake.calls_to("GenerateStream")) == 2


async def test_async_unary_retry(fake_server) -> None:
    fake_server.fake.fail_next("GetModelInfo", UNAVAILABLE, times=2)
    async with AsyncAnankeClient(fake_server.address, retry=FAST) as client:
        info = await client.model_info()
    assert info.model_id == "fake/model"
    assert len(fake_server.fake.calls_to("GetModelInfo")) == 3
