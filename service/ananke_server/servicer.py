"""The InferenceService implementation: request -> validation -> constraint
compilation (cached) -> engine with per-token masks -> token stream ->
provenance."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from ananke.v1 import (
    generation_pb2,
    inference_service_pb2,
    inference_service_pb2_grpc,
    provenance_pb2,
)
from google.protobuf import duration_pb2

from .admission import Admission
from .constraints import (
    SUPPORTED_KINDS,
    CompiledConstraints,
    ConstraintCompiler,
    unsatisfiable_during_generation,
)
from .engine import Engine, EngineDeadError, EngineParams, EngineRejectedError, PromptTokens
from .errors import ServiceError, abort, error_from_exception, invalid
from .logging_setup import bind_request_id, prompt_fields
from .metrics import Metrics
from .provenance import Clock, build_provenance, placement_from_environment
from .settings import Settings
from .validation import ValidatedRequest, check_prompt_length, validate_generation

log = logging.getLogger("ananke.servicer")

Context = grpc.aio.ServicerContext[object, object]
StreamEvent = inference_service_pb2.GenerateStreamResponse


@dataclass
class Counters:
    """Finished generations by outcome."""

    completed: int = 0
    cancelled: int = 0
    deadline_exceeded: int = 0
    failed: int = 0


@dataclass
class _Generation:
    """What one finished generation produced (for the last event / response)."""

    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    """Serves ananke.v1.InferenceService on one engine."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        on_engine_dead: Callable[[BaseException], None],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._placement = provenance_pb2.Placement()
        self._on_engine_dead = on_engine_dead
        self._compiler: ConstraintCompiler | None = None
        self._admission = Admission(settings.max_concurrent_requests, settings.max_queued_requests)
        self._accepting = True
        self._engine_failed = False
        self._started = time.monotonic()
        self.counters = Counters()
        self.metrics = metrics or Metrics()
        self.metrics.track_admission(
            lambda: self._admission.running, lambda: self._admission.waiting
        )

    # -- lifecycle ------------------------------------------------------------

    def engine_ready(self) -> None:
        """Called once the engine is loaded: builds the constraint compiler."""
        info = self._engine.info
        self._placement = placement_from_environment(info.accelerator)
        self._compiler = ConstraintCompiler(
            self._engine.llg_tokenizer(),
            vocab_size=info.vocab_size,
            tokenizer_id=f"{info.model_id}@{info.model_revision}",
            max_constraint_bytes=self._settings.max_constraint_bytes,
            cache_size=self._settings.compile_cache_size,
            timeout_s=self._settings.compile_timeout_s,
            workers=self._settings.compile_workers,
        )

    def close(self) -> None:
        """Releases the compile threads."""
        if self._compiler is not None:
            self._compiler.close()

    def stop_accepting(self, engine_failed: bool = False) -> None:
        """New calls get UNAVAILABLE (SHUTTING_DOWN, or ENGINE_UNAVAILABLE when the
        engine died); running ones go on."""
        self._accepting = False
        self._engine_failed = engine_failed

    @property
    def active_generations(self) -> int:
        """Generations running or waiting."""
        return self._admission.running + self._admission.waiting

    def _compiler_or_unavailable(self) -> ConstraintCompiler:
        if not self._accepting:
            if self._engine_failed:
                raise ServiceError(
                    "ENGINE_UNAVAILABLE",
                    "the engine failed; the server is restarting; retry elsewhere",
                    retry_after_s=5.0,
                )
            raise ServiceError("SHUTTING_DOWN", "the server is shutting down; retry elsewhere")
        if self._compiler is None:
            raise ServiceError(
                "NOT_READY", "the model is still loading; retry shortly", retry_after_s=1.0
            )
        return self._compiler

    # -- RPCs -------------------------------------------------------------------

    async def GenerateStream(
        self, request: inference_service_pb2.GenerateStreamRequest, context: Context
    ) -> AsyncIterator[StreamEvent]:
        """Streams one generation."""
        async with self._outcome(context):
            async for event in self._generate(request.request, context):
                yield event

    async def Generate(
        self, request: inference_service_pb2.GenerateRequest, context: Context
    ) -> inference_service_pb2.GenerateResponse:
        """Runs one generation and returns all of it."""
        response = inference_service_pb2.GenerateResponse()
        texts: list[str] = []
        async with self._outcome(context):
            async for event in self._generate(request.request, context):
                kind = event.WhichOneof("event")
                if kind == "started":
                    response.request_id = event.started.request_id
                elif kind == "chunk":
                    texts.append(event.chunk.text)
                    response.token_ids.extend(event.chunk.token_ids)
                elif kind == "finished":
                    response.finish_reason = event.finished.finish_reason
                    response.usage.CopyFrom(event.finished.usage)
                    response.provenance.CopyFrom(event.finished.provenance)
        response.text = "".join(texts)
        return response

    async def ValidateConstraints(
        self, request: inference_service_pb2.ValidateConstraintsRequest, context: Context
    ) -> inference_service_pb2.ValidateConstraintsResponse:
        """Compiles each constraint, then the list, without generating."""
        try:
            compiler = self._compiler_or_unavailable()
            if not request.constraints:
                raise invalid(
                    "CONSTRAINT_EMPTY", "give at least one constraint to validate", "constraints"
                )
            verdicts = await compiler.validate(request.constraints)
            response = inference_service_pb2.ValidateConstraintsResponse(
                verdicts=[
                    inference_service_pb2.ConstraintVerdict(
                        index=v.index,
                        name=v.name,
                        kind=v.kind,
                        ok=v.error is None,
                        error=_constraint_error(v.error) if v.error else None,
                        warnings=v.warnings,
                    )
                    for v in verdicts
                ]
            )
            if all(v.error is None for v in verdicts):
                try:
                    compiled, _ = await compiler.compile(request.constraints, "constraints")
                    response.ok = True
                    response.digest = compiled.digest
                except ServiceError as error:
                    response.combined_error.CopyFrom(_constraint_error(error))
            return response
        except ServiceError as error:
            await abort(context, error)
            raise AssertionError("unreachable") from error

    async def GetModelInfo(
        self, request: inference_service_pb2.GetModelInfoRequest, context: Context
    ) -> inference_service_pb2.GetModelInfoResponse:
        """The model, engine, versions and limits."""
        info = self._engine.info
        from .constraints import LLGUIDANCE_VERSION
        from .provenance import SERVICE_VERSION

        return inference_service_pb2.GetModelInfoResponse(
            model_id=info.model_id,
            model_revision=info.model_revision,
            engine_name=info.engine_name,
            engine_version=info.engine_version,
            llguidance_version=LLGUIDANCE_VERSION,
            service_version=SERVICE_VERSION,
            context_length=info.context_length,
            vocab_size=info.vocab_size,
            eos_token_ids=info.eos_token_ids,
            supported_constraint_kinds=SUPPORTED_KINDS,
            max_tokens_limit=self._settings.max_tokens_cap,
            max_constraint_bytes=self._settings.max_constraint_bytes,
        )

    async def GetServerStats(
        self, request: inference_service_pb2.GetServerStatsRequest, context: Context
    ) -> inference_service_pb2.GetServerStatsResponse:
        """Load and cache counters."""
        uptime = duration_pb2.Duration()
        uptime.FromNanoseconds(int((time.monotonic() - self._started) * 1e9))
        response = inference_service_pb2.GetServerStatsResponse(
            active_generations=self._admission.running,
            queued_generations=self._admission.waiting,
            engine_unfinished_requests=self._engine.unfinished_requests(),
            uptime=uptime,
            generations=inference_service_pb2.GenerationCounters(
                completed=self.counters.completed,
                cancelled=self.counters.cancelled,
                deadline_exceeded=self.counters.deadline_exceeded,
                failed=self.counters.failed,
            ),
        )
        if self._compiler is not None:
            stats = self._compiler.stats()
            response.compile_cache.CopyFrom(
                inference_service_pb2.CompileCacheStats(
                    size=stats.size, capacity=stats.capacity, hits=stats.hits, misses=stats.misses
                )
            )
        return response

    # -- generation ---------------------------------------------------------------

    def _outcome(self, context: Context) -> AbstractAsyncContextManager[None]:
        return _Outcome(self, context)

    async def _generate(
        self, request: generation_pb2.GenerationRequest, context: Context
    ) -> AsyncIterator[StreamEvent]:
        clock = Clock(received=_now())
        compiler = self._compiler_or_unavailable()
        validated = validate_generation(
            request,
            self._settings,
            header_request_id=_header(context, "x-request-id"),
            vocab_size=self._engine.info.vocab_size,
        )
        bind_request_id(validated.request_id)
        self._admission.check_capacity()  # refuse before compiling when full
        compile_started = time.perf_counter()
        compiled, cache_hit = await compiler.compile(request.constraints, "request.constraints")
        clock.compiled_seconds = time.perf_counter() - compile_started
        self.metrics.record_compile(clock.compiled_seconds, cache_hit)
        # Tokenizing (and chat templating) a long prompt must not stall other streams.
        prompt = await asyncio.to_thread(self._encode, validated)
        check_prompt_length(
            len(prompt.token_ids),
            validated.sampling.max_tokens,
            self._engine.info.context_length,
            "request.prompt" if validated.prompt is not None else "request.messages",
        )
        clock.waiting = _now()
        async with self._admission.slot():
            clock.admitted = _now()
            yield StreamEvent(
                started=inference_service_pb2.GenerationStarted(
                    request_id=validated.request_id,
                    model_id=self._engine.info.model_id,
                    constraint_digest=compiled.digest,
                )
            )
            generation = _Generation()
            finish_reason, stop_string = "length", False
            async with _deadline(context):
                async for delta in self._engine.generate(
                    f"{validated.request_id}-{time.monotonic_ns():x}",
                    prompt,
                    _engine_params(validated, compiled),
                ):
                    ids = [t for t in delta.token_ids if t not in self._engine.info.eos_token_ids]
                    generation.token_ids.extend(delta.token_ids)
                    self.metrics.record_tokens(len(delta.token_ids))
                    if delta.token_ids and clock.first_token is None:
                        clock.first_token = _now()
                    if ids or delta.text:
                        generation.text.append(delta.text)
                        yield StreamEvent(
                            chunk=inference_service_pb2.TokenChunk(text=delta.text, token_ids=ids)
                        )
                    if delta.finished:
                        if delta.finish_reason in ("abort", "error"):
                            raise ServiceError(
                                "ENGINE_UNAVAILABLE",
                                f"the engine ended the generation ({delta.finish_reason})",
                                retry_after_s=1.0,
                            )
                        finish_reason = delta.finish_reason or "stop"
                        stop_string = isinstance(delta.stop_reason, str)
            yield StreamEvent(
                finished=await self._finish(
                    validated,
                    compiled,
                    cache_hit,
                    clock,
                    prompt,
                    generation,
                    finish_reason,
                    stop_string,
                )
            )

    async def _finish(
        self,
        validated: ValidatedRequest,
        compiled: CompiledConstraints,
        cache_hit: bool,
        clock: Clock,
        prompt: PromptTokens,
        generation: _Generation,
        engine_reason: str,
        stop_string: bool,
    ) -> inference_service_pb2.GenerationFinished:
        assert self._compiler is not None
        started = time.perf_counter()
        checked = generation.token_ids
        cut_inside_token = False
        if stop_string:
            # vLLM cuts the text at a stop sequence but not the token ids: check
            # only the tokens that lie within the returned text.
            checked, cut_inside_token = _tokens_within_text(
                generation.token_ids, "".join(generation.text), self._engine.llg_tokenizer()
            )
        verdict, detail = await asyncio.to_thread(
            self._compiler.check_output, compiled, checked, self._engine.info.eos_token_ids
        )
        if cut_inside_token and verdict == provenance_pb2.CHECK_VERDICT_SATISFIED:
            verdict = provenance_pb2.CHECK_VERDICT_INCOMPLETE
            detail = "a stop sequence cut the output inside a token"
        clock.check_seconds = time.perf_counter() - started
        if (
            compiled.intersection
            and verdict == provenance_pb2.CHECK_VERDICT_INCOMPLETE
            and engine_reason == "stop"
            and not stop_string
        ):
            # The intersection processor forces EOS only at a dead end: prove it
            # with fresh matchers before reporting the request unsatisfiable.
            tokens = [t for t in generation.token_ids if t not in self._engine.info.eos_token_ids]
            if await asyncio.to_thread(self._compiler.dead_end, compiled, tokens):
                raise unsatisfiable_during_generation("request.constraints", len(tokens))
        clock.finished = _now()
        self._record_finish(validated, clock, len(generation.token_ids), engine_reason)
        if verdict == provenance_pb2.CHECK_VERDICT_VIOLATED:
            log.error(
                "request %s: output violates its constraints: %s", validated.request_id, detail
            )
        if engine_reason == "length":
            reason = generation_pb2.FINISH_REASON_MAX_TOKENS
        elif stop_string:
            reason = generation_pb2.FINISH_REASON_STOP_SEQUENCE
        elif compiled.has_grammar and verdict == provenance_pb2.CHECK_VERDICT_SATISFIED:
            reason = generation_pb2.FINISH_REASON_CONSTRAINT_COMPLETE
        else:
            reason = generation_pb2.FINISH_REASON_END_OF_SEQUENCE
        usage = generation_pb2.Usage(
            prompt_tokens=len(prompt.token_ids), completion_tokens=len(generation.token_ids)
        )
        provenance = build_provenance(
            request=validated,
            engine=self._engine.info,
            compiled=compiled,
            cache_hit=cache_hit,
            clock=clock,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            finish_reason=reason,
            check=provenance_pb2.ConstraintCheck(verdict=verdict, detail=detail),
            placement=self._placement,
        )
        return inference_service_pb2.GenerationFinished(
            finish_reason=reason, usage=usage, provenance=provenance
        )

    def _record_finish(
        self, validated: ValidatedRequest, clock: Clock, tokens: int, engine_reason: str
    ) -> None:
        """Latency metrics and one log line per finished generation (no prompt
        text unless log_prompts)."""
        first = clock.first_token
        ttft = (first - clock.received).total_seconds() if first else None
        decode = (clock.finished - first).total_seconds() if first and clock.finished else 0.0
        self.metrics.record_latency(ttft, decode, tokens)
        log.info(
            "generation finished",
            extra={
                "completion_tokens": tokens,
                "engine_finish_reason": engine_reason,
                "ttft_s": ttft,
                **prompt_fields(self._settings, validated.prompt, validated.messages),
            },
        )

    def _encode(self, validated: ValidatedRequest) -> PromptTokens:
        if validated.prompt is not None:
            return self._engine.encode_prompt(validated.prompt)
        return self._engine.encode_chat(validated.messages)


class _Outcome:
    """Counts how a generation call ended and turns failures into statuses:
    the one place exceptions become gRPC errors. CancelledError propagates."""

    def __init__(self, servicer: InferenceServicer, context: Context) -> None:
        self._servicer = servicer
        self._context = context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        counters = self._servicer.counters
        if exc is None:
            counters.completed += 1
            return False
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            # The client went away (a closed stream arrives as GeneratorExit at a yield).
            counters.cancelled += 1
            return False  # let it propagate: swallowing it leaks per cancelled stream
        if isinstance(exc, grpc.aio.AbortError):
            counters.failed += 1
            return False
        error = error_from_exception(exc)
        if error.reason == "GENERATION_DEADLINE_EXCEEDED":
            counters.deadline_exceeded += 1
        else:
            counters.failed += 1
        if isinstance(exc, EngineDeadError):
            self._servicer._on_engine_dead(exc)
        elif isinstance(exc, EngineRejectedError):
            self._servicer.metrics.record_engine_error("rejected")
        if error.reason == "INTERNAL_ERROR":
            log.exception("unexpected failure", exc_info=exc)
        await abort(self._context, error)
        return False


def _tokens_within_text(token_ids: list[int], text: str, tokenizer: Any) -> tuple[list[int], bool]:
    """The longest prefix of `token_ids` whose bytes lie within `text`, and
    whether the text ends inside the next token (not on a token boundary)."""
    target = text.encode()
    count = len(token_ids)
    while count and len(tokenizer.decode_bytes(token_ids[:count])) > len(target):
        count -= 1
    prefix = token_ids[:count]
    return prefix, tokenizer.decode_bytes(prefix) != target


def _deadline(context: Context) -> AbstractAsyncContextManager[object]:
    """Carries the call's deadline into generation: when it passes, the engine
    request is aborted (the timeout cancels the loop, closing the generator)."""
    remaining = context.time_remaining()
    if remaining is None:
        return nullcontext()
    return asyncio.timeout(max(remaining, 0.0))


def _header(context: Context, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def _engine_params(validated: ValidatedRequest, compiled: CompiledConstraints) -> EngineParams:
    sampling = validated.sampling
    return EngineParams(
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        seed=sampling.seed,
        stop=sampling.stop,
        grammar=compiled.grammar,
        intersection=compiled.intersection,
        allowed_token_ids=compiled.allowed_token_ids,
        forbidden_token_ids=compiled.forbidden_token_ids,
    )


def _constraint_error(error: ServiceError) -> inference_service_pb2.ConstraintError:
    return inference_service_pb2.ConstraintError(
        reason=error.reason,
        message=error.message,
        field=error.metadata.get("field", ""),
        line=int(error.metadata.get("line", "0")),
        column=int(error.metadata.get("column", "0")),
    )


__all__ = ["InferenceServicer"]
