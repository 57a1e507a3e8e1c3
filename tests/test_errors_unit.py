"""errors.py: ServiceError -> google.rpc.Status with exactly one ErrorInfo,
BadRequest for field violations, RetryInfo for retryable overloads; and the
mapping of exceptions to ServiceErrors."""

from __future__ import annotations

import grpc
import pytest
from ananke.v1 import errors_pb2
from ananke_server.errors import (
    _CODES,
    ERROR_DOMAIN,
    EngineDeadError,
    EngineRejectedError,
    FieldViolation,
    ServiceError,
    code_for,
    error_from_exception,
    invalid,
    to_rpc_status,
)
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

STATUS_KEY = "grpc-status-details-bin"


def decode(status: grpc.Status) -> status_pb2.Status:
    """The google.rpc.Status carried in the trailing metadata."""
    blobs = [value for key, value in status.trailing_metadata if key == STATUS_KEY]
    assert len(blobs) == 1
    assert isinstance(blobs[0], bytes)
    return status_pb2.Status.FromString(blobs[0])


def unpack(details: list[any_pb2.Any]) -> dict[str, list[object]]:
    kinds: dict[str, list[object]] = {}
    for cls in (
        error_details_pb2.ErrorInfo,
        error_details_pb2.BadRequest,
        error_details_pb2.RetryInfo,
    ):
        for detail in details:
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                kinds.setdefault(cls.DESCRIPTOR.name, []).append(message)
    assert sum(len(v) for v in kinds.values()) == len(details), "unexpected detail types"
    return kinds


def test_plain_error_has_exactly_one_error_info() -> None:
    error = ServiceError("NOT_READY", "the model is loading", metadata={"phase": "load"})
    status = to_rpc_status(error)
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert status.details == "the model is loading"
    rich = decode(status)
    assert rich.code == code_pb2.UNAVAILABLE
    assert rich.message == "the model is loading"
    kinds = unpack(list(rich.details))
    assert set(kinds) == {"ErrorInfo"}
    (info,) = kinds["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "NOT_READY"
    assert info.domain == ERROR_DOMAIN == "ananke.dev"
    assert dict(info.metadata) == {"phase": "load"}


def test_violations_add_bad_request() -> None:
    error = invalid(
        "SAMPLING_PARAM_INVALID", "top_p must be in (0, 1]", "request.sampling.top_p", got="2"
    )
    rich = decode(to_rpc_status(error))
    assert rich.code == code_pb2.INVALID_ARGUMENT
    kinds = unpack(list(rich.details))
    assert set(kinds) == {"ErrorInfo", "BadRequest"}
    (info,) = kinds["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert dict(info.metadata) == {"field": "request.sampling.top_p", "got": "2"}
    (bad,) = kinds["BadRequest"]
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("request.sampling.top_p", "top_p must be in (0, 1]")
    ]


def test_several_violations() -> None:
    error = ServiceError(
        "PROMPT_INVALID",
        "two problems",
        (FieldViolation("a", "first"), FieldViolation("b", "second")),
    )
    (bad,) = unpack(list(decode(to_rpc_status(error)).details))["BadRequest"]
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["a", "b"]


@pytest.mark.parametrize(("seconds", "millis"), [(1.0, 1000), (0.25, 250), (0.0, 0), (5.5, 5500)])
def test_retry_after_adds_retry_info(seconds: float, millis: int) -> None:
    error = ServiceError("OVERLOADED", "busy", retry_after_s=seconds)
    rich = decode(to_rpc_status(error))
    assert rich.code == code_pb2.RESOURCE_EXHAUSTED
    kinds = unpack(list(rich.details))
    assert set(kinds) == {"ErrorInfo", "RetryInfo"}
    (retry,) = kinds["RetryInfo"]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == millis


def test_code_override() -> None:
    error = ServiceError(
        "CONSTRAINT_TOO_LARGE", "too complex", code_override=grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert to_rpc_status(error).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ServiceError("CONSTRAINT_TOO_LARGE", "big").code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("reason", sorted(_CODES))
def test_every_reason_builds_a_status(reason: str) -> None:
    status = to_rpc_status(ServiceError(reason, f"because {reason}"))
    assert status.code == code_for(reason)
    rich = decode(status)
    assert rich.code == code_for(reason).value[0]
    (info,) = unpack(list(rich.details))["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == reason
    assert errors_pb2.ErrorReason.Value(info.reason) != errors_pb2.ERROR_REASON_UNSPECIFIED


@pytest.mark.parametrize("reason", ["NOT_A_REASON", "overloaded", ""])
def test_unknown_reason_rejected(reason: str) -> None:
    with pytest.raises(ValueError, match="ErrorReason"):
        ServiceError(reason, "x")


def test_unspecified_reason_rejected() -> None:
    with pytest.raises(ValueError, match="ERROR_REASON_UNSPECIFIED"):
        ServiceError("ERROR_REASON_UNSPECIFIED", "x")


def test_service_error_is_an_exception_with_its_message() -> None:
    error = ServiceError("INTERNAL_ERROR", "boom")
    assert isinstance(error, Exception)
    assert str(error) == "boom"
    with pytest.raises(ServiceError, match="boom"):
        raise error


# -- error_from_exception ------------------------------------------------------------------


def test_service_error_passes_through() -> None:
    error = ServiceError("OVERLOADED", "busy")
    assert error_from_exception(error) is error


@pytest.mark.parametrize(
    ("exc", "reason", "code", "retry"),
    [
        (TimeoutError(), "GENERATION_DEADLINE_EXCEEDED", grpc.StatusCode.DEADLINE_EXCEEDED, None),
        (EngineDeadError("core died"), "ENGINE_UNAVAILABLE", grpc.StatusCode.UNAVAILABLE, 5.0),
        (EngineRejectedError("bad logit_bias"), "INTERNAL_ERROR", grpc.StatusCode.INTERNAL, None),
        (ValueError("secret detail"), "INTERNAL_ERROR", grpc.StatusCode.INTERNAL, None),
        (RuntimeError("x"), "INTERNAL_ERROR", grpc.StatusCode.INTERNAL, None),
        (KeyError("x"), "INTERNAL_ERROR", grpc.StatusCode.INTERNAL, None),
    ],
    ids=["timeout", "engine-dead", "engine-rejected", "value", "runtime", "key"],
)
def test_error_from_exception(
    exc: BaseException, reason: str, code: grpc.StatusCode, retry: float | None
) -> None:
    error = error_from_exception(exc)
    assert error.reason == reason
    assert error.code == code
    assert error.retry_after_s == retry
    status = to_rpc_status(error)
    assert status.code == code


def test_engine_rejection_message_is_kept() -> None:
    assert "bad logit_bias" in error_from_exception(EngineRejectedError("bad logit_bias")).message


def test_unexpected_errors_do_not_leak_details() -> None:
    error = error_from_exception(ValueError("password=hunter2"))
    assert "hunter2" not in error.message
    assert "request id" in error.message
