"""The InferenceService implementation: request -> validation -> constraint
compilation (cached) -> engine with per-token masks -> token stream ->
provenance."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import grpc
from ananke.v1 import (
    generation_pb2,
    inference_service_pb2,
    inference_service_pb2_grpc,
    provenance_pb2,
)
from google.protobuf import duration_pb2

from .adapter_rpcs import AdapterRpcs
from .adapters import Adapters
from .admission import Admission
from .candidates import gather_response, token_list
from .constraints import LLGUIDANCE_VERSION, SUPPORTED_KINDS, ConstraintCompiler
from .engine_api import Engine
from .errors import (
    EngineDeadError,
    EngineRejectedError,
    ServiceError,
    abort,
    error_from_exception,
    invalid,
)
from .generation import Generations, StreamEvent
from .metrics import Metrics
from .model_prep import default_compile_cache_dir
from .provenance import SERVICE_VERSION, logprobs_mode_proto, placement_from_environment
from .reasoning import prompt_suffix, reasoning_info
from .schema_outcome import keyword_protos
from .serving_state import Phase, ServingState, unavailable
from .settings import Settings
from .validation import validate_detokenize, validate_tokenize

log = logging.getLogger("ananke.servicer")

Context = grpc.aio.ServicerContext[object, object]


@dataclass
class Counters:
    """Finished generations by outcome."""

    completed: int = 0
    cancelled: int = 0
    deadline_exceeded: int = 0
    failed: int = 0


class InferenceServicer(AdapterRpcs, inference_service_pb2_grpc.InferenceServiceServicer):
    """Serves ananke.v1.InferenceService on one engine."""

    def __init__(
        self, settings: Settings, engine: Engine, state: ServingState, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._placement = provenance_pb2.Placement()
        self.state = state
        self._compiler: ConstraintCompiler | None = None
        self._generations: Generations | None = None
        self._admission = Admission(settings.max_concurrent_requests, settings.max_queued_requests)
        self.adapters = Adapters(settings, engine)
        self._started = time.monotonic()
        self.counters = Counters()
        self.metrics = metrics
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
            eos_ids=info.eos_token_ids,
            disk_cache_dir=Path(self._settings.compile_disk_cache_dir)
            if self._settings.compile_disk_cache_dir
            else default_compile_cache_dir(),
            disk_cache_bytes=self._settings.compile_disk_cache_bytes,
        )
        compiler = self._compiler
        self.metrics.track_compile_cache(lambda: _hits_and_misses(compiler))
        self._generations = Generations(
            self._settings,
            self._engine,
            self._compiler,
            self._admission,
            self.metrics,
            self._placement,
            self.adapters,
        )

    async def preload_adapters(self) -> None:
        """Loads the settings' lora_adapters (before the server is SERVING)."""
        await self.adapters.preload()

    def close(self) -> None:
        """Releases the compile and tokenizing threads."""
        if self._compiler is not None:
            self._compiler.close()
        if self._generations is not None:
            self._generations.close()

    @property
    def active_generations(self) -> int:
        """Generations running or waiting."""
        return self._admission.running + self._admission.waiting

    def _compiler_or_unavailable(self) -> ConstraintCompiler:
        self.state.check_accepting()
        if self._compiler is None:  # SERVING comes after engine_ready()
            raise unavailable(Phase.LOADING)
        return self._compiler

    def _check_ready(self) -> None:
        self._compiler_or_unavailable()

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
        """Runs one generation and returns all of it (every candidate)."""
        events: list[StreamEvent] = []
        async with self._outcome(context):
            async for event in self._generate(request.request, context):
                events.append(event)
        return gather_response(events)

    async def Tokenize(
        self, request: inference_service_pb2.TokenizeRequest, context: Context
    ) -> inference_service_pb2.TokenizeResponse:
        """Token ids of a text or of chat messages, as Generate would send them."""
        try:
            self._compiler_or_unavailable()
            given = validate_tokenize(request)
            # Templating and tokenizing a long text must not stall other calls.
            if given.text is not None:
                prompt = await asyncio.to_thread(self._engine.encode_prompt, given.text)
            else:
                suffix = prompt_suffix(self._settings)  # as Generate opens reasoning
                prompt = await asyncio.to_thread(self._engine.encode_chat, given.messages, suffix)
            response = inference_service_pb2.TokenizeResponse(
                token_ids=prompt.token_ids,
                count=len(prompt.token_ids),
                rendered_text=prompt.text if given.text is None else "",
                context_length=self._engine.info.context_length,
            )
            if given.return_tokens:
                response.tokens.extend(token_list(self._engine.llg_tokenizer(), prompt.token_ids))
            return response
        except ServiceError as error:
            await abort(context, error)
            raise AssertionError("unreachable") from error

    async def Detokenize(
        self, request: inference_service_pb2.DetokenizeRequest, context: Context
    ) -> inference_service_pb2.DetokenizeResponse:
        """The text of token ids."""
        try:
            self._compiler_or_unavailable()
            info = self._engine.info
            ids = validate_detokenize(request, info.vocab_size, info.context_length)
            text = await asyncio.to_thread(self._engine.decode, ids, request.skip_special_tokens)
            return inference_service_pb2.DetokenizeResponse(text=text)
        except ServiceError as error:
            await abort(context, error)
            raise AssertionError("unreachable") from error

    async def ValidateConstraints(
        self, request: inference_service_pb2.ValidateConstraintsRequest, context: Context
    ) -> inference_service_pb2.ValidateConstraintsResponse:
        """Compiles each constraint, then the list, without generating."""
        async with self._failures(context):
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
                        schema_keywords=[
                            keyword
                            for check in v.schema_checks
                            for keyword in keyword_protos(check)
                        ],
                        validated=any(check.validated for check in v.schema_checks),
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
        raise AssertionError("unreachable: a failure aborts the call")

    async def GetModelInfo(
        self, request: inference_service_pb2.GetModelInfoRequest, context: Context
    ) -> inference_service_pb2.GetModelInfoResponse:
        """The model, engine, versions and limits (answered while loading too)."""
        async with self._failures(context):
            return self._model_info()
        raise AssertionError("unreachable: a failure aborts the call")

    def _model_info(self) -> inference_service_pb2.GetModelInfoResponse:
        info = self._engine.info
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
            engine_settings=inference_service_pb2.EngineSettings(
                **dataclasses.asdict(info.engine_settings)
            ),
            max_candidates=self._settings.max_candidates,
            max_logprobs=self._settings.max_logprobs,
            logprobs_mode=logprobs_mode_proto(info.logprobs_mode),
            **reasoning_info(self._settings),
            lora_enabled=self.adapters.enabled,
            adapters=[a.to_proto() for a in self.adapters.listed()],
        )

    async def GetServerStats(
        self, request: inference_service_pb2.GetServerStatsRequest, context: Context
    ) -> inference_service_pb2.GetServerStatsResponse:
        """Load and cache counters."""
        async with self._failures(context):
            return self._server_stats()
        raise AssertionError("unreachable: a failure aborts the call")

    def _server_stats(self) -> inference_service_pb2.GetServerStatsResponse:
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
            disk = self._compiler.disk_stats()
            if disk is not None:
                cache = response.compile_cache
                cache.disk_hits, cache.disk_misses, cache.disk_writes = (
                    disk.hits,
                    disk.misses,
                    disk.writes,
                )
                cache.disk_entries, cache.disk_bytes = disk.entries, disk.bytes
                cache.disk_max_bytes, cache.disk_discarded = disk.max_bytes, disk.discarded
        return response

    # -- generation ---------------------------------------------------------------

    def _outcome(self, context: Context) -> AbstractAsyncContextManager[None]:
        """Failure mapping for a generation, which also counts how it ended."""
        return _Outcome(self, context, counted=True)

    def _failures(self, context: Context) -> AbstractAsyncContextManager[None]:
        """The same failure mapping for the other RPCs (not counted as generations)."""
        return _Outcome(self, context, counted=False)

    def _generate(
        self, request: generation_pb2.GenerationRequest, context: Context
    ) -> AsyncIterator[StreamEvent]:
        self._compiler_or_unavailable()
        assert self._generations is not None
        return self._generations.stream(
            request,
            header_request_id=_header(context, "x-request-id"),
            deadline_s=context.time_remaining(),
        )


class _Outcome:
    """Turns any RPC's failures into statuses, the one place exceptions become
    gRPC errors (an engine death also fails the serving state), and counts how
    a generation ended when `counted`. CancelledError propagates."""

    def __init__(self, servicer: InferenceServicer, context: Context, *, counted: bool) -> None:
        self._servicer = servicer
        self._context = context
        self._counters = servicer.counters if counted else Counters()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        counters = self._counters
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
            await self._servicer.state.engine_failed(exc)
        elif isinstance(exc, EngineRejectedError):
            self._servicer.metrics.record_engine_error("rejected")
        if error.reason == "INTERNAL_ERROR":
            log.exception("unexpected failure", exc_info=exc)
        await abort(self._context, error)
        return False


def _hits_and_misses(compiler: ConstraintCompiler) -> tuple[int, int, int]:
    """(memory hits, compiles, disk loads): misses answered from disk are not compiles."""
    stats, disk = compiler.stats(), compiler.disk_stats()
    disk_hits = disk.hits if disk is not None else 0
    return stats.hits, stats.misses - disk_hits, disk_hits


def _header(context: Context, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def _constraint_error(error: ServiceError) -> inference_service_pb2.ConstraintError:
    return inference_service_pb2.ConstraintError(
        reason=error.reason,
        message=error.message,
        field=error.metadata.get("field", ""),
        line=int(error.metadata.get("line", "0")),
        column=int(error.metadata.get("column", "0")),
    )


__all__ = ["InferenceServicer"]
