"""The one place failures become gRPC statuses: ServiceError carries an
ErrorReason, and `to_rpc_status` turns it into a google.rpc.Status with one
ErrorInfo, plus BadRequest field violations and RetryInfo where they fit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from ananke.v1 import errors_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "ananke.dev"


class EngineDeadError(RuntimeError):
    """The engine process died or failed; no request can proceed."""


class EngineRejectedError(ValueError):
    """The engine refused a request as invalid."""


_CODES: dict[str, grpc.StatusCode] = {
    "PROMPT_EMPTY": grpc.StatusCode.INVALID_ARGUMENT,
    "PROMPT_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "PROMPT_TOO_LONG": grpc.StatusCode.INVALID_ARGUMENT,
    "MAX_TOKENS_OUT_OF_RANGE": grpc.StatusCode.INVALID_ARGUMENT,
    "SAMPLING_PARAM_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "REQUEST_FIELD_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "CONSTRAINT_EMPTY": grpc.StatusCode.INVALID_ARGUMENT,
    "JSON_SCHEMA_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "REGEX_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "GRAMMAR_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "CHOICE_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "TOKEN_MASK_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "COMPOSITE_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "STRUCTURAL_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "REASONING_UNAVAILABLE": grpc.StatusCode.INVALID_ARGUMENT,
    "REASONING_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "CONSTRAINT_UNSUPPORTED": grpc.StatusCode.UNIMPLEMENTED,
    "CONSTRAINT_TOO_LARGE": grpc.StatusCode.INVALID_ARGUMENT,
    "CONSTRAINT_COMPILE_TIMEOUT": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "CONSTRAINT_UNSATISFIABLE": grpc.StatusCode.FAILED_PRECONDITION,
    "OVERLOADED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "NOT_READY": grpc.StatusCode.UNAVAILABLE,
    "SHUTTING_DOWN": grpc.StatusCode.UNAVAILABLE,
    "ENGINE_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "GENERATION_DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "MESSAGE_TOO_LARGE": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "API_KEY_MISSING": grpc.StatusCode.UNAUTHENTICATED,
    "API_KEY_INVALID": grpc.StatusCode.UNAUTHENTICATED,
    "MAX_TOKENS_BELOW_CONSTRAINT_MINIMUM": grpc.StatusCode.INVALID_ARGUMENT,
    "TOKEN_ID_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "LOGPROBS_OUT_OF_RANGE": grpc.StatusCode.INVALID_ARGUMENT,
    "CANDIDATES_OUT_OF_RANGE": grpc.StatusCode.INVALID_ARGUMENT,
    "INTERNAL_ERROR": grpc.StatusCode.INTERNAL,
    "CONSTRAINT_NOT_SATISFIED_AFTER_RETRIES": grpc.StatusCode.ABORTED,
    "ADAPTER_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ADAPTER_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "ADAPTER_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "ADAPTER_LIMIT_REACHED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "ADAPTER_IN_USE": grpc.StatusCode.FAILED_PRECONDITION,
    "LORA_DISABLED": grpc.StatusCode.FAILED_PRECONDITION,
    "ADMIN_KEY_REQUIRED": grpc.StatusCode.PERMISSION_DENIED,
}


@dataclass(frozen=True)
class FieldViolation:
    """A request field at fault: its path (e.g. `request.sampling.top_p`) and why."""

    field: str
    description: str


@dataclass
class ServiceError(Exception):
    """Every failure the service reports. `reason` is an ErrorReason value name."""

    reason: str
    message: str
    violations: Sequence[FieldViolation] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None
    code_override: grpc.StatusCode | None = None

    def __post_init__(self) -> None:
        # A typo in a reason must fail loudly in tests, not reach clients.
        if self.reason not in _CODES:
            errors_pb2.ErrorReason.Value(self.reason)  # names the typo
            raise ValueError(f"{self.reason} is not a reason the service sends")
        super().__init__(self.message)

    @property
    def code(self) -> grpc.StatusCode:
        """The gRPC status code for this reason."""
        return self.code_override or _CODES[self.reason]


def invalid(reason: str, message: str, field_path: str, **metadata: str) -> ServiceError:
    """An INVALID_ARGUMENT-style error naming one field at fault."""
    meta = {"field": field_path, **metadata}
    return ServiceError(reason, message, (FieldViolation(field_path, message),), meta)


def code_for(reason: str) -> grpc.StatusCode:
    """The gRPC status code a reason maps to."""
    return _CODES[reason]


def to_rpc_status(error: ServiceError) -> grpc.Status:
    """A grpc.Status (code, message, google.rpc.Status details) for `error`."""
    details: list[any_pb2.Any] = []
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=dict(error.metadata)
    )
    details.append(_pack(info))
    if error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        details.append(_pack(bad))
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_s * 1000))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(
        code=_code_number(error.code), message=error.message, details=details
    )
    return rpc_status.to_status(status)


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _code_number(code: grpc.StatusCode) -> int:
    number = code.value[0]
    assert isinstance(number, int)
    assert code_pb2.Code.Name(number)  # the two enums agree
    return number


async def abort(context: grpc.aio.ServicerContext[object, object], error: ServiceError) -> None:
    """Ends the call with `error`'s rich status (raises AbortError, as grpc.aio's abort does)."""
    status = to_rpc_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


def error_from_exception(exc: BaseException) -> ServiceError:
    """Maps any failure of a call to the ServiceError it is reported as."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, TimeoutError):
        return ServiceError(
            "GENERATION_DEADLINE_EXCEEDED", "the call's deadline passed; generation was aborted"
        )
    if isinstance(exc, EngineDeadError):
        return ServiceError(
            "ENGINE_UNAVAILABLE", "the engine failed; the server is restarting", retry_after_s=5.0
        )
    if isinstance(exc, EngineRejectedError):
        return ServiceError("INTERNAL_ERROR", f"the engine refused the request: {exc}")
    return ServiceError("INTERNAL_ERROR", "internal error; see the server log for the request id")
