"""AnankeError: the one exception the client raises for a failed call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ananke.v1 import errors_pb2

__all__ = ["AnankeError", "FieldViolation", "from_rpc_error"]

_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class FieldViolation:
    """One `google.rpc.BadRequest.FieldViolation`: a request field at fault."""

    field: str
    description: str
    reason: str = ""


class AnankeError(Exception):
    """A call failed: its gRPC status plus the service's rich error details.

    `reason` is the `google.rpc.ErrorInfo` reason (an `ananke.v1.ErrorReason`
    value name such as "JSON_SCHEMA_INVALID"), empty when the failure did not
    come from the service (for example a connection failure). `metadata` is
    the ErrorInfo metadata; `field_violations` come from `BadRequest`;
    `retry_delay` (seconds) from `RetryInfo`.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[FieldViolation] = (),
        retry_delay: float | None = None,
        trailing_metadata: Iterable[tuple[str, str | bytes]] = (),
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        self.retry_delay = retry_delay
        self.trailing_metadata: tuple[tuple[str, str | bytes], ...] = tuple(trailing_metadata)
        self.status = status

    @property
    def error_reason(self) -> errors_pb2.ErrorReason.ValueType | None:
        """`reason` as the generated `ErrorReason` enum value; None when there is
        no reason or this client version does not know it (Rust's
        `Error::error_reason`)."""
        if not self.reason:
            return None
        try:
            return errors_pb2.ErrorReason.Value(self.reason)
        except ValueError:
            return None

    @property
    def code_name(self) -> str:
        """The status code's name, for example "INVALID_ARGUMENT"."""
        return str(self.code.name)

    def __str__(self) -> str:
        head = self.code_name + (f" {self.reason}" if self.reason else "")
        text = f"{head}: {self.message}" if self.message else head
        if self.field_violations:
            fields = "; ".join(f"{v.field}: {v.description}" for v in self.field_violations)
            text += f" [{fields}]"
        return text

    def __repr__(self) -> str:
        return f"AnankeError({self.code_name}, {self.message!r}, reason={self.reason!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions with keyword-only state need help to pickle.
        return (_rebuild, (self.code.name, self.message, self._state()))

    def _state(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "domain": self.domain,
            "metadata": self.metadata,
            "field_violations": self.field_violations,
            "retry_delay": self.retry_delay,
            "trailing_metadata": self.trailing_metadata,
        }


def _rebuild(code_name: str, message: str, state: dict[str, Any]) -> AnankeError:
    return AnankeError(grpc.StatusCode[code_name], message, **state)


def _code_of(value: object) -> grpc.StatusCode:
    if isinstance(value, grpc.StatusCode):
        return value
    return grpc.StatusCode.UNKNOWN


def from_rpc_error(error: grpc.RpcError) -> AnankeError:
    """Convert a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code = _code_of(error.code()) if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else None
    message = str(details) if details else ""
    trailing: list[tuple[str, str | bytes]] = []
    if hasattr(error, "trailing_metadata"):
        raw: Iterable[Any] = error.trailing_metadata() or ()
        trailing = [(str(item[0]), item[1]) for item in raw]
    status: status_pb2.Status | None
    try:
        status = rpc_status.from_call(cast(grpc.Call, error))
    except (ValueError, TypeError, AttributeError):
        # A status proto that disagrees with the call's code or message (a
        # proxy rewrote one of them): keep the call's, read the details anyway.
        status = _status_from_trailing(trailing)
    return from_status(code, message, status, trailing)


def _status_from_trailing(
    trailing: Iterable[tuple[str, str | bytes]],
) -> status_pb2.Status | None:
    for key, value in trailing:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a corrupt details blob is no reason to lose the error
                return None
    return None


def from_status(
    code: grpc.StatusCode,
    message: str,
    status: status_pb2.Status | None,
    trailing: Iterable[tuple[str, str | bytes]] = (),
) -> AnankeError:
    """Build an AnankeError from a status code, message and rich status."""
    reason = ""
    domain = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_delay: float | None = None
    if status is not None:
        if status.code and code is grpc.StatusCode.UNKNOWN:
            code = _CODES_BY_NUMBER.get(status.code, code)
        message = message or status.message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and not reason:
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(
                    FieldViolation(v.field, v.description, v.reason) for v in bad.field_violations
                )
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    return AnankeError(
        code,
        message,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=violations,
        retry_delay=retry_delay,
        trailing_metadata=trailing,
        status=status,
    )
