"""Failed calls raise AnankeError with the status's rich details."""

from __future__ import annotations

import pickle

import grpc
import pytest
from ananke import NO_RETRY, AnankeClient, AnankeError, AsyncAnankeClient
from ananke import constraints as c
from ananke.v1 import errors_pb2


@pytest.mark.parametrize(
    ("code", "reason", "violations"),
    [
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "JSON_SCHEMA_INVALID",
            (("request.constraints[0].json_schema.schema", "expected value at line 1"),),
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, "PROMPT_EMPTY", (("request.prompt", "empty"),)),
        (grpc.StatusCode.UNIMPLEMENTED, "CONSTRAINT_UNSUPPORTED", ()),
        (grpc.StatusCode.FAILED_PRECONDITION, "CONSTRAINT_UNSATISFIABLE", ()),
        (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID", ()),
        (grpc.StatusCode.INTERNAL, "INTERNAL_ERROR", ()),
    ],
)
def test_error_details_are_parsed(
    fake_server, code: grpc.StatusCode, reason: str, violations: tuple[tuple[str, str], ...]
) -> None:
    fake_server.fake.fail_next("Generate", code, reason, "it failed", violations=violations)
    with (
        AnankeClient(fake_server.address, retry=NO_RETRY) as client,
        pytest.raises(AnankeError) as info,
    ):
        client.generate("x", constraints=c.json_schema("{"))
    error = info.value
    assert error.code is code
    assert error.code_name == code.name
    assert error.message == "it failed"
    assert error.reason == reason
    assert error.error_reason == errors_pb2.ErrorReason.Value(reason)
    assert error.domain == "ananke.dev"
    assert [(v.field, v.description) for v in error.field_violations] == list(violations)
    assert error.retry_delay is None
    assert error.status is not None
    assert reason in str(error)


def test_error_info_metadata_and_retry_info(fake_server, status_factory) -> None:
    status = status_factory(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "busy",
        "OVERLOADED",
        retry_delay=1.5,
        info_metadata={"queued": "12"},
    )
    fake_server.fake.failures["GetModelInfo"] = [status]
    with AnankeClient(fake_server.address) as client, pytest.raises(AnankeError) as info:
        client.model_info()
    assert info.value.reason == "OVERLOADED"
    assert info.value.metadata == {"queued": "12"}
    assert info.value.retry_delay == pytest.approx(1.5)
    # honour_retry_info is off by default: one call only
    assert len(fake_server.fake.calls_to("GetModelInfo")) == 1


async def test_async_client_raises_the_same_error(fake_server) -> None:
    fake_server.fake.fail_next(
        "ValidateConstraints",
        grpc.StatusCode.INVALID_ARGUMENT,
        "REGEX_INVALID",
        violations=(("constraints[0].regex.pattern", "unclosed group"),),
    )
    async with AsyncAnankeClient(fake_server.address) as client:
        with pytest.raises(AnankeError) as info:
            await client.validate_constraints(c.regex("("))
    assert info.value.reason == "REGEX_INVALID"
    assert info.value.field_violations[0].field == "constraints[0].regex.pattern"


def test_connection_failure_is_unavailable_without_reason(dead_address: str) -> None:
    with (
        AnankeClient(dead_address, retry=NO_RETRY, timeout=5) as client,
        pytest.raises(AnankeError) as info,
    ):
        client.model_info()
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert info.value.reason == ""
    assert info.value.error_reason is None
    assert info.value.field_violations == ()
    unknown = AnankeError(grpc.StatusCode.INTERNAL, "x", reason="FROM_A_NEWER_SERVER")
    assert unknown.error_reason is None


def test_error_pickles() -> None:
    error = AnankeError(
        grpc.StatusCode.INVALID_ARGUMENT, "bad", reason="PROMPT_EMPTY", metadata={"a": "b"}
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.message, copy.reason, copy.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad",
        "PROMPT_EMPTY",
        {"a": "b"},
    )
