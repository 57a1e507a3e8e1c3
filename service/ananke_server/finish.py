"""The end of one attempt of a generation: the independent re-check of the
output against its constraints, schema validation, the proof of a dead end,
latency metrics and the provenance of the finished event."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ananke.v1 import generation_pb2, inference_service_pb2, provenance_pb2

from .constraints import CompiledConstraints, ConstraintCompiler, unsatisfiable_during_generation
from .engine_api import Engine, PromptTokens, SteeringReport
from .generation_rules import finish_reason, may_be_dead_end, tokens_within_text, verdict_after_stop
from .logging_setup import prompt_fields
from .metrics import Metrics
from .provenance import Clock, build_provenance
from .reasoning import ReasoningPlan, split_text, split_tokens, wrap_all
from .schema_outcome import SchemaOutcome, validate_output
from .settings import Settings
from .steering import SteerConfig, may_have_steered, replay_steering
from .validation import ValidatedRequest

log = logging.getLogger("ananke.generation")


@dataclass
class CandidateOutput:
    """What the engine produced so far for one candidate."""

    index: int = 0
    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    engine_reason: str = "length"  # vLLM's finish reason: "stop" | "length"
    stop_string: bool = False  # ended by one of the request's stop sequences
    forced_tokens: int = 0  # fast-forwarded (no model step of their own)
    stop_token: bool = False  # ended by one of the request's stop_token_ids
    cached_tokens: int = 0  # prompt tokens the prefix cache served
    steering: SteeringReport | None = None  # the engine's report, when it sent one
    prompt_logprobs: list[generation_pb2.PositionLogprobs] = field(default_factory=list)


def now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


class Finisher:
    """Turns one candidate's finished output into its GenerationFinished event."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        compiler: ConstraintCompiler,
        metrics: Metrics,
        placement: provenance_pb2.Placement,
        steer: SteerConfig | None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._compiler = compiler
        self._metrics = metrics
        self._placement = placement
        self._eos = frozenset(engine.info.eos_token_ids)
        self._steer = steer

    async def finish(
        self,
        validated: ValidatedRequest,
        compiled: CompiledConstraints,
        cache_hit: bool,
        clock: Clock,
        prompt: PromptTokens,
        output: CandidateOutput,
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
        output: CandidateOutput,
        plan: ReasoningPlan | None = None,
    ) -> tuple[int, int] | None:
        """Where budget steering began: as the engine reported it, or else
        replayed over the output (see steering.guide)."""
        grammars = compiled.intersection or (
            (compiled.grammar,) if compiled.grammar is not None else ()
        )
        if self._steer is None or not self._steer.budget or not grammars:
            return None
        max_tokens = validated.sampling.max_tokens
        if output.steering is not None:  # the engine's own guide said where (vllm_plugin)
            began = output.steering.from_token
            return None if began is None else (began, max_tokens - began)
        tokens = [t for t in output.token_ids if t not in self._eos]
        wrapped = wrap_all(grammars, plan)
        produced = len(tokens) + 1  # EOS included
        if not may_have_steered(wrapped, produced, max_tokens=max_tokens, config=self._steer):
            return None
        return replay_steering(
            self._engine.llg_tokenizer(),
            wrapped,
            tokens,
            max_tokens=max_tokens,
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


__all__ = ["CandidateOutput", "Finisher", "now"]
