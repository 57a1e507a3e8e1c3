"""Provenance records: who generated what, under which constraints, when,
how fast and where."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ananke.v1 import generation_pb2, provenance_pb2
from google.protobuf import duration_pb2, timestamp_pb2

from . import __version__
from .constraints import LLGUIDANCE_VERSION, CompiledConstraints
from .engine_api import EngineInfo
from .schema_outcome import SchemaOutcome, summaries
from .validation import ValidatedRequest

SERVICE_VERSION = __version__  # the server's version, not the client package's


def placement_from_environment(
    accelerator: str, environ: Mapping[str, str] | None = None
) -> provenance_pb2.Placement:
    """Where this process runs; the Modal fields come from Modal's container environment."""
    env = os.environ if environ is None else environ
    return provenance_pb2.Placement(
        host=socket.gethostname(),
        modal_task_id=env.get("MODAL_TASK_ID", ""),
        modal_region=env.get("MODAL_REGION", ""),
        accelerator=accelerator,
    )


@dataclass
class Clock:
    """Wall-clock moments of one generation, filled as it proceeds."""

    received: datetime
    waiting: datetime | None = None  # started waiting for an admission slot
    admitted: datetime | None = None
    compiled_seconds: float = 0.0
    first_token: datetime | None = None
    finished: datetime | None = None
    check_seconds: float = 0.0


def _timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(max(seconds, 0.0) * 1e9))
    return duration


def _between(start: datetime | None, end: datetime | None) -> duration_pb2.Duration | None:
    if start is None or end is None:
        return None
    return _duration((end - start).total_seconds())


def build_provenance(
    *,
    request: ValidatedRequest,
    engine: EngineInfo,
    compiled: CompiledConstraints,
    cache_hit: bool,
    clock: Clock,
    prompt_tokens: int,
    completion_tokens: int,
    finish_reason: generation_pb2.FinishReason.ValueType,
    check: provenance_pb2.ConstraintCheck,
    placement: provenance_pb2.Placement,
    schema: SchemaOutcome | None = None,
    forced_tokens: int = 0,
    candidate_index: int = 0,
    cached_prompt_tokens: int = 0,
    logprobs_mode: str = "processed",
) -> provenance_pb2.Provenance:
    """The full record of one finished generation, one candidate of it
    (`schema`: the validator's verdicts on it, when a JSON schema's grammar
    over-approximates)."""
    cache = provenance_pb2.CACHE_OUTCOME_UNSPECIFIED
    if compiled.constrained:
        cache = provenance_pb2.CACHE_OUTCOME_HIT if cache_hit else provenance_pb2.CACHE_OUTCOME_MISS
        if not cache_hit and compiled.from_disk:
            cache = provenance_pb2.CACHE_OUTCOME_DISK_HIT
    sampling = request.sampling
    return provenance_pb2.Provenance(
        request_id=request.request_id,
        adapter=request.adapter.engine.name if request.adapter else "",
        adapter_revision=request.adapter.revision if request.adapter else "",
        model_id=engine.model_id,
        model_revision=engine.model_revision,
        engine_name=engine.engine_name,
        engine_version=engine.engine_version,
        llguidance_version=LLGUIDANCE_VERSION,
        service_version=SERVICE_VERSION,
        constraints=provenance_pb2.ConstraintProvenance(
            digest=compiled.digest,
            items=summaries(compiled, schema),
            cache=cache,
            enforcement=compiled.enforcement,
            enforcement_mode=compiled.enforcement_mode,
            intersected_grammars=len(compiled.intersection),
            token_mask=compiled.has_token_mask,
        ),
        sampling=provenance_pb2.AppliedSampling(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            seed=sampling.seed,
            stop=sampling.stop,
            n=sampling.n,
            min_tokens=sampling.min_tokens,
            stop_token_ids=sampling.stop_token_ids,
            repetition_penalty=sampling.repetition_penalty,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            logit_bias=dict(sampling.logit_bias),
            ignore_eos=sampling.ignore_eos,
            logprobs=sampling.logprobs,
            prompt_logprobs=sampling.prompt_logprobs,
            logprobs_mode=logprobs_mode_proto(logprobs_mode)
            if sampling.logprobs is not None or sampling.prompt_logprobs is not None
            else generation_pb2.LOGPROBS_MODE_UNSPECIFIED,
        ),
        timestamps=provenance_pb2.GenerationTimestamps(
            received_at=_timestamp(clock.received),
            first_token_at=_timestamp(clock.first_token),
            finished_at=_timestamp(clock.finished),
        ),
        timings=provenance_pb2.GenerationTimings(
            queue=_between(clock.waiting, clock.admitted),
            compile=_duration(clock.compiled_seconds),
            time_to_first_token=_between(clock.received, clock.first_token),
            total=_between(clock.received, clock.finished),
            check=_duration(clock.check_seconds),
        ),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=finish_reason,
        check=check,
        placement=placement,
        client_metadata=dict(request.metadata),
        context=request.context,
        forced_tokens=forced_tokens,
        fast_forward=fast_forward_mode(engine.fast_forward, compiled.has_grammar),
        candidate_index=candidate_index,
        cached_prompt_tokens=cached_prompt_tokens,
    )


_FAST_FORWARD = {
    "on": provenance_pb2.FAST_FORWARD_ON,
    "off": provenance_pb2.FAST_FORWARD_OFF,
    "unavailable": provenance_pb2.FAST_FORWARD_UNAVAILABLE,
}


def fast_forward_mode(engine_mode: str, has_grammar: bool) -> provenance_pb2.FastForward.ValueType:
    """The provenance value: nothing to force without a grammar, else the engine's mode."""
    if not has_grammar:
        return provenance_pb2.FAST_FORWARD_NOT_APPLICABLE
    return _FAST_FORWARD.get(engine_mode, provenance_pb2.FAST_FORWARD_UNSPECIFIED)


def logprobs_mode_proto(mode: str) -> generation_pb2.LogprobsMode.ValueType:
    """The LogprobsMode value for the `logprobs_mode` setting."""
    if mode == "raw":
        return generation_pb2.LOGPROBS_MODE_RAW
    return generation_pb2.LOGPROBS_MODE_PROCESSED
