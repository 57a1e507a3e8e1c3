"""One generation, independent of the gRPC call that asked for it: validated
request -> compiled constraints -> engine -> stream events -> the independent
re-check -> provenance. The servicer supplies what the call carries (the
request-id header, the deadline); the rules that turn engine outcomes into a
finish reason and a verdict are pure functions at the bottom."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

from ananke.v1 import generation_pb2, inference_service_pb2, provenance_pb2

from .adapters import Adapters
from .admission import Admission
from .candidates import logprobs_to_proto
from .constraints import CompiledConstraints, ConstraintCompiler, unsatisfiable_during_generation
from .engine_api import Engine, PromptTokens
from .errors import ServiceError
from .generation_rules import (
    check_budget,
    deadline,
    engine_params,
    finish_reason,
    may_be_dead_end,
    result_label,
    steer_config,
    tokens_within_text,
    verdict_after_stop,
)
from .logging_setup import bind_request_id, prompt_fields
from .metrics import Metrics
from .provenance import Clock, build_provenance
from .reasoning import ReasoningPlan, StreamSplitter, plan_for, split_text, split_tokens, wrap_all
from .schema_outcome import SchemaOutcome, not_satisfied, retry_sampling, validate_output
from .settings import Settings
from .steering import may_have_steered, replay_steering
from .validation import (
    ValidatedRequest,
    check_prompt_length,
    check_sampling_with_constraints,
    validate_generation,
)

log = logging.getLogger("ananke.generation")

StreamEvent = inference_service_pb2.GenerateStreamResponse
TokenChunk = inference_service_pb2.TokenChunk
Verdict: TypeAlias = provenance_pb2.CheckVerdict.ValueType
Reason: TypeAlias = generation_pb2.FinishReason.ValueType


@dataclass
class _Output:
    """What the engine produced so far for one candidate."""

    index: int = 0
    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    engine_reason: str = "length"  # vLLM's finish reason: "stop" | "length"
    stop_string: bool = False  # ended by one of the request's stop sequences
    forced_tokens: int = 0  # fast-forwarded (no model step of their own)
    stop_token: bool = False  # ended by one of the request's stop_token_ids
    cached_tokens: int = 0  # prompt tokens the prefix cache served
    prompt_logprobs: list[generation_pb2.PositionLogprobs] = field(default_factory=list)


def now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


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
        self._placement = placement
        self._eos = frozenset(engine.info.eos_token_ids)
        # One thread tokenizes, in arrival order: chat templating holds the GIL
        # anyway, and vLLM's tokenizer deep-copies itself (tens of ms of CPU)
        # whenever more threads use it at once than it has copies.
        self._tokenize = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ananke-tokenize")
        self._steer = steer_config(settings)

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
                    outputs = {i: _Output(index=i) for i in range(validated.sampling.n)}
                    held: list[StreamEvent] = []
                    last: tuple[Any, SchemaOutcome | None] | None = None
                    run = self._run(validated, compiled, prompt, clock, outputs, plan)
                    # Closed at once on every exit (a failed check raises here while
                    # other candidates run): the engine request ends with it.
                    async with aclosing(run):
                        async for item in run:
                            if isinstance(item, int):  # candidate `item` finished
                                last = await self._finish(
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
        outputs: dict[int, _Output],
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
                        self._metrics.record_forced(delta.forced_tokens)
                        output.stop_token = (
                            isinstance(delta.stop_reason, int)
                            and delta.stop_reason in validated.sampling.stop_token_ids
                        )
                        yield delta.index
        finally:
            self._metrics.record_tokens(produced)

    async def _finish(
        self,
        validated: ValidatedRequest,
        compiled: CompiledConstraints,
        cache_hit: bool,
        clock: Clock,
        prompt: PromptTokens,
        output: _Output,
        attempt: int,
        plan: ReasoningPlan | None = None,
    ) -> tuple[inference_service_pb2.GenerationFinished, SchemaOutcome | None]:
        """The finished event of one attempt and, for a validated schema, the
        validator's verdicts on it (a rejection the caller may retry)."""
        started = time.perf_counter()
        checked = output.token_ids
        cut_inside_token = False
        if output.stop_token and checked:
            checked = checked[:-1]  # the stop token is not part of the output
        elif output.stop_string:
            # vLLM cuts the text at a stop sequence but not the token ids: check
            # only the tokens that lie within the returned text.
            checked, cut_inside_token = tokens_within_text(
                output.token_ids, "".join(output.text), self._engine.llg_tokenizer()
            )
        text = "".join(output.text)
        split = None
        if plan is not None:
            # The constraints apply to the answer alone, after the reasoning.
            split = split_tokens(checked, self._engine.llg_tokenizer(), plan, self._eos)
            checked, text = split.answer_ids, split_text(text, plan)[1] or ""
        verdict, detail = await asyncio.to_thread(
            self._compiler.check_output, compiled, checked, self._engine.info.eos_token_ids
        )
        verdict, detail = verdict_after_stop(verdict, detail, cut_inside_token=cut_inside_token)
        if split is not None and not split.ended and compiled.has_grammar:
            verdict, detail = provenance_pb2.CHECK_VERDICT_INCOMPLETE, "the reasoning did not end"
        outcome: SchemaOutcome | None = None
        if compiled.validated:
            # Only a complete sentence of the grammar is a whole document.
            outcome = await asyncio.to_thread(
                validate_output,
                compiled,
                text,
                complete=verdict == provenance_pb2.CHECK_VERDICT_SATISFIED,
                attempts=attempt,
            )
        clock.check_seconds = time.perf_counter() - started
        stopped = output.stop_string or output.stop_token
        if may_be_dead_end(compiled, verdict, output.engine_reason, stopped):
            # The engine's product grammar forces EOS only at a dead end: prove it
            # with fresh matchers before reporting the request unsatisfiable.
            # With the dead-end search on, the engine also ends a row when the
            # search gives up; fresh matchers say which it was.
            produced = output.token_ids if split is None else checked
            tokens = [t for t in produced if t not in self._eos]
            cause = await asyncio.to_thread(self._dead_end_cause, compiled, tokens)
            if cause is not None:
                raise unsatisfiable_during_generation(
                    "request.constraints", len(tokens), cause=cause
                )
        clock.finished = now()
        self._record_finish(validated, clock, len(output.token_ids), output.engine_reason)
        if verdict == provenance_pb2.CHECK_VERDICT_VIOLATED:
            log.error(
                "request %s: output violates its constraints: %s", validated.request_id, detail
            )
        reason = finish_reason(output.engine_reason, stopped, compiled.has_grammar, verdict)
        usage = generation_pb2.Usage(
            prompt_tokens=len(prompt.token_ids),
            completion_tokens=len(output.token_ids),
            cached_prompt_tokens=min(output.cached_tokens, len(prompt.token_ids)),
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
            schema=outcome,
            forced_tokens=output.forced_tokens,
            candidate_index=output.index,
            cached_prompt_tokens=usage.cached_prompt_tokens,
            logprobs_mode=self._engine.info.logprobs_mode,
        )
        if split is not None and plan is not None:
            provenance.reasoning.CopyFrom(split.provenance(plan, compiled.has_grammar))
        steered = None
        if verdict == provenance_pb2.CHECK_VERDICT_SATISFIED:
            # Steering ends in a complete output; replaying an incomplete one
            # (cut by max_tokens) would only repeat the engine's failed searches.
            steered = await asyncio.to_thread(self._steered, validated, compiled, output, plan)
        if steered is not None:
            provenance.steering.from_token, provenance.steering.tokens_left = steered
        finished = inference_service_pb2.GenerationFinished(
            finish_reason=reason,
            usage=usage,
            provenance=provenance,
            candidate_index=output.index,
            prompt_logprobs=output.prompt_logprobs if output.index == 0 else (),
        )
        return finished, outcome

    def _dead_end_cause(self, compiled: CompiledConstraints, tokens: list[int]) -> str | None:
        """Why an intersection's output ended incomplete: "proved" when the
        constraints allow no common token after it (the engine ends a row only
        then); None when it is not a dead end."""
        return "proved" if self._compiler.dead_end(compiled, tokens) else None

    def _steered(
        self,
        validated: ValidatedRequest,
        compiled: CompiledConstraints,
        output: _Output,
        plan: ReasoningPlan | None = None,
    ) -> tuple[int, int] | None:
        """Where budget steering began, replayed over the output (see steering.guide)."""
        grammars = compiled.intersection or (
            (compiled.grammar,) if compiled.grammar is not None else ()
        )
        if self._steer is None or not self._steer.budget or not grammars:
            return None
        tokens = [t for t in output.token_ids if t not in self._eos]
        wrapped = wrap_all(grammars, plan)
        max_tokens = validated.sampling.max_tokens
        produced = len(tokens) + 1  # EOS included
        if not may_have_steered(wrapped, produced, max_tokens=max_tokens, config=self._steer):
            return None
        return replay_steering(
            self._engine.llg_tokenizer(),
            wrapped,
            tokens,
            max_tokens=validated.sampling.max_tokens,
            config=self._steer,
            allowed=compiled.allowed_token_ids,
            forbidden=compiled.forbidden_token_ids,
        )

    def _record_finish(
        self, validated: ValidatedRequest, clock: Clock, tokens: int, engine_reason: str
    ) -> None:
        """Latency metrics and one log line per finished generation (no prompt
        text unless log_prompts)."""
        first = clock.first_token
        ttft = (first - clock.received).total_seconds() if first else None
        decode = (clock.finished - first).total_seconds() if first and clock.finished else 0.0
        self._metrics.record_latency(ttft, decode, tokens)
        log.info(
            "generation finished",
            extra={
                "completion_tokens": tokens,
                "engine_finish_reason": engine_reason,
                "ttft_s": ttft,
                **prompt_fields(self._settings, validated.prompt, validated.messages),
            },
        )

    def _encode(self, validated: ValidatedRequest, plan: ReasoningPlan | None) -> PromptTokens:
        if validated.prompt is not None:
            return self._engine.encode_prompt(validated.prompt)
        opened = plan is not None and self._settings.reasoning_open_prompt
        suffix = plan.start if plan is not None and opened else ""
        return self._engine.encode_chat(validated.messages, suffix=suffix)


__all__ = [
    "Generations",
    "engine_params",
    "finish_reason",
    "now",
    "tokens_within_text",
]
