from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    PROMPT_EMPTY: _ClassVar[ErrorReason]
    PROMPT_INVALID: _ClassVar[ErrorReason]
    PROMPT_TOO_LONG: _ClassVar[ErrorReason]
    MAX_TOKENS_OUT_OF_RANGE: _ClassVar[ErrorReason]
    SAMPLING_PARAM_INVALID: _ClassVar[ErrorReason]
    REQUEST_FIELD_INVALID: _ClassVar[ErrorReason]
    CONSTRAINT_EMPTY: _ClassVar[ErrorReason]
    JSON_SCHEMA_INVALID: _ClassVar[ErrorReason]
    REGEX_INVALID: _ClassVar[ErrorReason]
    GRAMMAR_INVALID: _ClassVar[ErrorReason]
    CHOICE_INVALID: _ClassVar[ErrorReason]
    TOKEN_MASK_INVALID: _ClassVar[ErrorReason]
    COMPOSITE_INVALID: _ClassVar[ErrorReason]
    CONSTRAINT_UNSUPPORTED: _ClassVar[ErrorReason]
    CONSTRAINT_TOO_LARGE: _ClassVar[ErrorReason]
    CONSTRAINT_COMPILE_TIMEOUT: _ClassVar[ErrorReason]
    CONSTRAINT_UNSATISFIABLE: _ClassVar[ErrorReason]
    OVERLOADED: _ClassVar[ErrorReason]
    NOT_READY: _ClassVar[ErrorReason]
    SHUTTING_DOWN: _ClassVar[ErrorReason]
    ENGINE_UNAVAILABLE: _ClassVar[ErrorReason]
    GENERATION_DEADLINE_EXCEEDED: _ClassVar[ErrorReason]
    MESSAGE_TOO_LARGE: _ClassVar[ErrorReason]
    API_KEY_MISSING: _ClassVar[ErrorReason]
    API_KEY_INVALID: _ClassVar[ErrorReason]
    INTERNAL_ERROR: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
PROMPT_EMPTY: ErrorReason
PROMPT_INVALID: ErrorReason
PROMPT_TOO_LONG: ErrorReason
MAX_TOKENS_OUT_OF_RANGE: ErrorReason
SAMPLING_PARAM_INVALID: ErrorReason
REQUEST_FIELD_INVALID: ErrorReason
CONSTRAINT_EMPTY: ErrorReason
JSON_SCHEMA_INVALID: ErrorReason
REGEX_INVALID: ErrorReason
GRAMMAR_INVALID: ErrorReason
CHOICE_INVALID: ErrorReason
TOKEN_MASK_INVALID: ErrorReason
COMPOSITE_INVALID: ErrorReason
CONSTRAINT_UNSUPPORTED: ErrorReason
CONSTRAINT_TOO_LARGE: ErrorReason
CONSTRAINT_COMPILE_TIMEOUT: ErrorReason
CONSTRAINT_UNSATISFIABLE: ErrorReason
OVERLOADED: ErrorReason
NOT_READY: ErrorReason
SHUTTING_DOWN: ErrorReason
ENGINE_UNAVAILABLE: ErrorReason
GENERATION_DEADLINE_EXCEEDED: ErrorReason
MESSAGE_TOO_LARGE: ErrorReason
API_KEY_MISSING: ErrorReason
API_KEY_INVALID: ErrorReason
INTERNAL_ERROR: ErrorReason
