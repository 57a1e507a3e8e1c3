import datetime

from ananke.v1 import constraints_pb2 as _constraints_pb2
from ananke.v1 import generation_pb2 as _generation_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CacheOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_OUTCOME_UNSPECIFIED: _ClassVar[CacheOutcome]
    CACHE_OUTCOME_HIT: _ClassVar[CacheOutcome]
    CACHE_OUTCOME_MISS: _ClassVar[CacheOutcome]

class CheckVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECK_VERDICT_UNSPECIFIED: _ClassVar[CheckVerdict]
    CHECK_VERDICT_UNCONSTRAINED: _ClassVar[CheckVerdict]
    CHECK_VERDICT_SATISFIED: _ClassVar[CheckVerdict]
    CHECK_VERDICT_INCOMPLETE: _ClassVar[CheckVerdict]
    CHECK_VERDICT_VIOLATED: _ClassVar[CheckVerdict]
CACHE_OUTCOME_UNSPECIFIED: CacheOutcome
CACHE_OUTCOME_HIT: CacheOutcome
CACHE_OUTCOME_MISS: CacheOutcome
CHECK_VERDICT_UNSPECIFIED: CheckVerdict
CHECK_VERDICT_UNCONSTRAINED: CheckVerdict
CHECK_VERDICT_SATISFIED: CheckVerdict
CHECK_VERDICT_INCOMPLETE: CheckVerdict
CHECK_VERDICT_VIOLATED: CheckVerdict

class Provenance(_message.Message):
    __slots__ = ("request_id", "model_id", "model_revision", "engine_name", "engine_version", "llguidance_version", "service_version", "constraints", "sampling", "timestamps", "timings", "prompt_tokens", "completion_tokens", "finish_reason", "check", "placement", "client_metadata", "context")
    class ClientMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_REVISION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_NAME_FIELD_NUMBER: _ClassVar[int]
    ENGINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LLGUIDANCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVICE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_METADATA_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_id: str
    model_revision: str
    engine_name: str
    engine_version: str
    llguidance_version: str
    service_version: str
    constraints: ConstraintProvenance
    sampling: AppliedSampling
    timestamps: GenerationTimestamps
    timings: GenerationTimings
    prompt_tokens: int
    completion_tokens: int
    finish_reason: _generation_pb2.FinishReason
    check: ConstraintCheck
    placement: Placement
    client_metadata: _containers.ScalarMap[str, str]
    context: _generation_pb2.GenerationContext
    def __init__(self, request_id: _Optional[str] = ..., model_id: _Optional[str] = ..., model_revision: _Optional[str] = ..., engine_name: _Optional[str] = ..., engine_version: _Optional[str] = ..., llguidance_version: _Optional[str] = ..., service_version: _Optional[str] = ..., constraints: _Optional[_Union[ConstraintProvenance, _Mapping]] = ..., sampling: _Optional[_Union[AppliedSampling, _Mapping]] = ..., timestamps: _Optional[_Union[GenerationTimestamps, _Mapping]] = ..., timings: _Optional[_Union[GenerationTimings, _Mapping]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., finish_reason: _Optional[_Union[_generation_pb2.FinishReason, str]] = ..., check: _Optional[_Union[ConstraintCheck, _Mapping]] = ..., placement: _Optional[_Union[Placement, _Mapping]] = ..., client_metadata: _Optional[_Mapping[str, str]] = ..., context: _Optional[_Union[_generation_pb2.GenerationContext, _Mapping]] = ...) -> None: ...

class ConstraintProvenance(_message.Message):
    __slots__ = ("digest", "items", "cache", "enforcement")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    digest: str
    items: _containers.RepeatedCompositeFieldContainer[ConstraintSummary]
    cache: CacheOutcome
    enforcement: str
    def __init__(self, digest: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ConstraintSummary, _Mapping]]] = ..., cache: _Optional[_Union[CacheOutcome, str]] = ..., enforcement: _Optional[str] = ...) -> None: ...

class ConstraintSummary(_message.Message):
    __slots__ = ("name", "kind", "priority")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: _constraints_pb2.ConstraintKind
    priority: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[_constraints_pb2.ConstraintKind, str]] = ..., priority: _Optional[int] = ...) -> None: ...

class AppliedSampling(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerationTimestamps(_message.Message):
    __slots__ = ("received_at", "first_token_at", "finished_at")
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    received_at: _timestamp_pb2.Timestamp
    first_token_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., first_token_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GenerationTimings(_message.Message):
    __slots__ = ("queue", "compile", "time_to_first_token", "total", "check")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    COMPILE_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    queue: _duration_pb2.Duration
    compile: _duration_pb2.Duration
    time_to_first_token: _duration_pb2.Duration
    total: _duration_pb2.Duration
    check: _duration_pb2.Duration
    def __init__(self, queue: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., compile: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., time_to_first_token: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., total: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., check: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ConstraintCheck(_message.Message):
    __slots__ = ("verdict", "detail")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    verdict: CheckVerdict
    detail: str
    def __init__(self, verdict: _Optional[_Union[CheckVerdict, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("host", "modal_task_id", "modal_region", "accelerator")
    HOST_FIELD_NUMBER: _ClassVar[int]
    MODAL_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    MODAL_REGION_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    host: str
    modal_task_id: str
    modal_region: str
    accelerator: str
    def __init__(self, host: _Optional[str] = ..., modal_task_id: _Optional[str] = ..., modal_region: _Optional[str] = ..., accelerator: _Optional[str] = ...) -> None: ...
