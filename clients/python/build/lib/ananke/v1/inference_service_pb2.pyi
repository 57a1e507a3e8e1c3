from ananke.v1 import constraints_pb2 as _constraints_pb2
from ananke.v1 import generation_pb2 as _generation_pb2
from ananke.v1 import provenance_pb2 as _provenance_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateStreamRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: _generation_pb2.GenerationRequest
    def __init__(self, request: _Optional[_Union[_generation_pb2.GenerationRequest, _Mapping]] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("started", "chunk", "finished")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    started: GenerationStarted
    chunk: TokenChunk
    finished: GenerationFinished
    def __init__(self, started: _Optional[_Union[GenerationStarted, _Mapping]] = ..., chunk: _Optional[_Union[TokenChunk, _Mapping]] = ..., finished: _Optional[_Union[GenerationFinished, _Mapping]] = ...) -> None: ...

class GenerationStarted(_message.Message):
    __slots__ = ("request_id", "model_id", "constraint_digest")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_id: str
    constraint_digest: str
    def __init__(self, request_id: _Optional[str] = ..., model_id: _Optional[str] = ..., constraint_digest: _Optional[str] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("text", "token_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerationFinished(_message.Message):
    __slots__ = ("finish_reason", "usage", "provenance")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    finish_reason: _generation_pb2.FinishReason
    usage: _generation_pb2.Usage
    provenance: _provenance_pb2.Provenance
    def __init__(self, finish_reason: _Optional[_Union[_generation_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_generation_pb2.Usage, _Mapping]] = ..., provenance: _Optional[_Union[_provenance_pb2.Provenance, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: _generation_pb2.GenerationRequest
    def __init__(self, request: _Optional[_Union[_generation_pb2.GenerationRequest, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "text", "token_ids", "finish_reason", "usage", "provenance")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: _generation_pb2.FinishReason
    usage: _generation_pb2.Usage
    provenance: _provenance_pb2.Provenance
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[_generation_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_generation_pb2.Usage, _Mapping]] = ..., provenance: _Optional[_Union[_provenance_pb2.Provenance, _Mapping]] = ...) -> None: ...

class ValidateConstraintsRequest(_message.Message):
    __slots__ = ("constraints",)
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    constraints: _containers.RepeatedCompositeFieldContainer[_constraints_pb2.ConstraintIR]
    def __init__(self, constraints: _Optional[_Iterable[_Union[_constraints_pb2.ConstraintIR, _Mapping]]] = ...) -> None: ...

class ValidateConstraintsResponse(_message.Message):
    __slots__ = ("ok", "verdicts", "digest")
    OK_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    verdicts: _containers.RepeatedCompositeFieldContainer[ConstraintVerdict]
    digest: str
    def __init__(self, ok: _Optional[bool] = ..., verdicts: _Optional[_Iterable[_Union[ConstraintVerdict, _Mapping]]] = ..., digest: _Optional[str] = ...) -> None: ...

class ConstraintVerdict(_message.Message):
    __slots__ = ("index", "name", "kind", "ok", "error", "warnings")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    kind: _constraints_pb2.ConstraintKind
    ok: bool
    error: ConstraintError
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., kind: _Optional[_Union[_constraints_pb2.ConstraintKind, str]] = ..., ok: _Optional[bool] = ..., error: _Optional[_Union[ConstraintError, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class ConstraintError(_message.Message):
    __slots__ = ("reason", "message", "field", "line", "column")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    field: str
    line: int
    column: int
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ..., field: _Optional[str] = ..., line: _Optional[int] = ..., column: _Optional[int] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model_id", "model_revision", "engine_name", "engine_version", "llguidance_version", "service_version", "context_length", "vocab_size", "eos_token_ids", "supported_constraint_kinds", "max_tokens_limit", "max_constraint_bytes", "compile_cache")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_REVISION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_NAME_FIELD_NUMBER: _ClassVar[int]
    ENGINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LLGUIDANCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVICE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_CONSTRAINT_KINDS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_CONSTRAINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPILE_CACHE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_revision: str
    engine_name: str
    engine_version: str
    llguidance_version: str
    service_version: str
    context_length: int
    vocab_size: int
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    supported_constraint_kinds: _containers.RepeatedScalarFieldContainer[_constraints_pb2.ConstraintKind]
    max_tokens_limit: int
    max_constraint_bytes: int
    compile_cache: CompileCacheStats
    def __init__(self, model_id: _Optional[str] = ..., model_revision: _Optional[str] = ..., engine_name: _Optional[str] = ..., engine_version: _Optional[str] = ..., llguidance_version: _Optional[str] = ..., service_version: _Optional[str] = ..., context_length: _Optional[int] = ..., vocab_size: _Optional[int] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., supported_constraint_kinds: _Optional[_Iterable[_Union[_constraints_pb2.ConstraintKind, str]]] = ..., max_tokens_limit: _Optional[int] = ..., max_constraint_bytes: _Optional[int] = ..., compile_cache: _Optional[_Union[CompileCacheStats, _Mapping]] = ...) -> None: ...

class CompileCacheStats(_message.Message):
    __slots__ = ("size", "capacity", "hits", "misses")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    size: int
    capacity: int
    hits: int
    misses: int
    def __init__(self, size: _Optional[int] = ..., capacity: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ...) -> None: ...
