"""One generation, independent of the gRPC call that asked for it: validated
request -> compiled constraints -> engine -> stream events -> the independent
re-check -> provenance. The servicer supplies what the call carries (the
request-id header, the deadline); finish.py ends each attempt (the re-check,
validation, provenance) and generation_rules.py holds the pure rules."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from typing import Any

from ananke.v1 import generation_pb2, inference_service_pb2, provenance_pb2

from .adapters import Adapters
from .admission import Admission
from .candidates import logprobs_to_proto
from .constraints import CompiledConstraints, ConstraintCompiler
from .engine_api import Engine, PromptTokens
from .errors import ServiceError
from .finish import CandidateOutput, Finisher, now
from .generation_rules import (
    check_budget,
    deadline,
    engine_params,
    result_label,
    steer_config,
)
from .logging_setup import bind_request_id
from .metrics import Metrics
from .provenance import Clock
from .reasoning import ReasoningPlan, StreamSplitter, plan_for
from .schema_outcome import SchemaOutcome, not_satisfied, retry_sampling
from .settings import Settings
from .validation import (
    ValidatedRequest,
    check_prompt_length,
    check_sampling_with_constraints,
    validate_generation,
)

log = logging.getLogger("ananke.generation")

StreamEvent = inference_service_pb2.GenerateStreamResponse
TokenChunk = inference_service_pb2.TokenChunk


class Generations:
    """Runs generations on one engine with one constraint compiler."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        compiler: ConstraintCompiler,
        admission: Admission,
        metrics: Metrics,
        placement: provenance_pb2.Placement,
        adapters: Adapters | None = None,
    ) -> None:
        self._adapters = adapters or Adapters(settings, engine)
        self._settings = settings
        self._engine = engine
        self._compiler = compiler
        self._admission = admission
        self._metrics = metrics
        self._eos = frozenset(engine.info.eos_token_ids)
        # One thread tokenizes, in arrival order: chat templating holds the GIL
        # anyway, and vLLM's tokenizer deep-copies itself (tens of ms of CPU)
        # whenever more threads use it at once than it has copies.
        self._tokenize = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ananke-tokenize")
        self._steer = steer_config(settings)
        self._finisher = Finisher(settings, engine, compiler, metrics, placement, self._steer)

    def close(self) -> None:
        """Releases the tokenizing thread."""
        self._tokenize.shutdown(wait=False, cancel_futures=True)

    async def stream(
        self,
        request: generation_pb2.GenerationRequest,
        *,
        header_request_id: str | None,
        deadline_s: float | None,
    ) -> AsyncIterator[StreamEvent]:
        """The events of one generation: started, chunks, finished. Raises
        ServiceError (or engine errors) for the caller to map to a status."""
        clock = Clock(received=now())
        info = self._engine.info
        validated = validate_generation(
            request, self._settings, header_request_id=header_request_id, vocab_size=info.vocab_size
        )
        bind_request_id(validated.request_id)
        plan = plan_for(request, self._settings)
        adapter = self._adapters.resolve(request.adapter, "request.adapter")
        validated = dataclasses.replace(validated, adapter=adapter)
        self._admission.check_capacity()  # refuse before compiling when full
        compile_started = time.perf_counter()
        compiled, cache_hit = await self._compiler.compile(
            request.constraints, "request.constraints"
        )
        check_sampling_with_constraints(
            validated.sampling, compiled.has_grammar, "request.sampling"
        )
        clock.compiled_seconds = time.perf_counter() - compile_started
        self._metrics.record_compile(clock.compiled_seconds)
        if self._steer is not None and self._steer.budget:
            check_budget(compiled, validated.sampling.max_tokens)
        # Tokenizing (and chat templating) a long prompt must not stall other streams.
        context = contextvars.copy_context()
        prompt = await asyncio.get_running_loop().run_in_executor(
            self._tokenize, context.run, self._encode, validated, plan
        )
        check_prompt_length(
            len(prompt.token_ids),
            validated.sampling.max_tokens,
            info.context_length,
            "request.prompt" if validated.prompt is not None else "request.messages",
        )
        clock.waiting = now()
        async with self._admission.slot(), self._adapters.using(adapter):
            clock.admitted = now()
            yield StreamEvent(
                started=inference_service_pb2.GenerationStarted(
                    request_id=validated.request_id,
                    model_id=info.model_id,
                    constraint_digest=compiled.digest,
                    candidates=validated.sampling.n,
                )
            )
            # An output that may be generated again is held back until it validated.
            # Several candidates are never retried: each is reported with its verdict.
            single = validated.sampling.n == 1
            hold = single and compiled.retried and self._settings.schema_max_attempts > 1
            first_sampling = validated.sampling
            attempt, limit = 1, self._settings.schema_max_attempts
            async with deadline(deadline_s):
                while True:
                    outputs = {i: CandidateOutput(index=i) for i in range(validated.sampling.n)}
                    held: list[StreamEvent] = []
                    last: tuple[Any, SchemaOutcome | None] | None = None
                    run = self._run(validated, compiled, prompt, clock, outputs, plan)
                    # Closed at once on every exit (a failed check raises here while
                    # other candidates run): the engine request ends with it.
                    async with aclosing(run):
                        async for item in run:
                            if isinstance(item, int):  # candidate `item` finished
                                last = await self._finisher.finish(
                                    validated,
                                    compiled,
                                    cache_hit,
                                    clock,
                                    prompt,
                                    outputs[item],
                                    attempt,
                                    plan,
                                )
                                if not hold:
                                    rejected = last[1].rejected if last[1] is not None else None
                                    if single and rejected is not None:
                                        raise not_satisfied(*rejected, attempt)
                                    yield StreamEvent(finished=last[0])
                            elif hold:
                                held.append(item)
                            else:
                                yield item
                    if not hold or last is None:
                        return
                    finished, outcome = last
                    rejected = outcome.rejected if outcome is not None else None
                    if outcome is not None and outcome.complete:
                        self._metrics.record_schema_validation(
                            result_label(outcome, attempt, limit)
                        )
                    if rejected is None:
                        for chunk in held:
                            yield chunk
                        yield StreamEvent(finished=finished)
                        return
                    if attempt >= limit:
                        raise not_satisfied(*rejected, attempt)
                    log.info(
                        "output violates its schema; generating again",
                        extra={
                            "attempt": attempt,
                            "schema_pointer": rejected[1].schema_pointer,
                            "instance_pointer": rejected[1].instance_pointer,
                        },
                    )
                    attempt += 1
                    validated = dataclasses.replace(
                        validated,
                        sampling=retry_sampling(
                            first_sampling, attempt, self._settings.schema_retry_temperature
                        ),
                    )

    async def _run(
        self,
        validated: ValidatedRequest,
        compiled: CompiledConstraints,
        prompt: PromptTokens,
        clock: Clock,
        outputs: dict[int, CandidateOutput],
        plan: ReasoningPlan | None = None,
    ) -> AsyncGenerator[StreamEvent | int, None]:
        """One engine run: its chunks, recorded into `outputs` (by candidate)
        as they come, and each candidate's index once it finished. The tokens
        are counted into the metrics once, when the run ends."""
        hidden = self._eos | set(validated.sampling.stop_token_ids)
        tokenizer = self._engine.llg_tokenizer()
        produced = 0
        splitters: dict[int, StreamSplitter] = {}
        try:
            stream = self._engine.generate(
                f"{validated.request_id}-{time.monotonic_ns():x}",
                prompt,
                engine_params(validated, compiled, self._steer, plan),
            )
            async with aclosing(stream):
                async for delta in stream:
                    output = outputs[delta.index]
                    new = delta.token_ids
                    if new:
                        if clock.first_token is None:
                            clock.first_token = now()
                        produced += len(new)
                        output.token_ids.extend(new)
                    output.cached_tokens = max(output.cached_tokens, delta.cached_tokens)
                    if delta.prompt_logprobs:
                        output.prompt_logprobs = logprobs_to_proto(delta.prompt_logprobs, tokenizer)
                    shown = new if hidden.isdisjoint(new) else [t for t in new if t not in hidden]
                    thought, answer = "", delta.text
                    if plan is not None:
                        splitter = splitters.setdefault(delta.index, StreamSplitter(plan))
                        thought, answer = splitter.feed(delta.text)
                        thought += splitter.flush() if delta.finished else ""
                    if shown or delta.text or thought:
                        output.text.append(delta.text)
                        positions = [p for p in delta.logprobs if p.token.token_id not in hidden]
                        yield StreamEvent(
                            chunk=TokenChunk(
                                text=answer,
                                reasoning_text=thought,
                                token_ids=shown,
                                candidate_index=delta.index,
                                logprobs=logprobs_to_proto(positions, tokenizer)
                                if positions
                                else (),
                            )
                        )
                    if delta.finished:
                        if delta.finish_reason in ("abort", "error"):
                            raise ServiceError(
                                "ENGINE_UNAVAILABLE",
                                f"the engine ended the generation ({delta.finish_reason})",
                                retry_after_s=1.0,
                            )
                        output.engine_reason = delta.finish_reason or "stop"
                        output.stop_string = isinstance(delta.stop_reason, str)
                        output.forced_tokens = delta.forced_tokens
                        output.steering = delta.steering
                        self._metrics.record_forced(delta.forced_tokens)
                        output.stop_token = (
                            isinstance(delta.stop_reason, int)
                            and delta.stop_reason in validated.sampling.stop_token_ids
                        )
                        yield delta.index
        finally:
            self._metrics.record_tokens(produced)

    def _encode(self, validated: ValidatedRequest, plan: ReasoningPlan | None) -> PromptTokens:
        if validated.prompt is not None:
            return self._engine.encode_prompt(validated.prompt)
        opened = plan is not None and self._settings.reasoning_open_prompt
        suffix = plan.start if plan is not None and opened else ""
        return self._engine.encode_chat(validated.messages, suffix=suffix)


__all__ = ["Generations", "StreamEvent"]
