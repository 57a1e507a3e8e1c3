"""The rules of one generation as pure functions: engine parameters of a
validated request, the budget check, and how engine outcomes become a finish
reason and a verdict (generation.py runs them)."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, TypeAlias

from ananke.v1 import generation_pb2, provenance_pb2

from .constraints import CompiledConstraints
from .engine_api import EngineParams
from .errors import invalid
from .reasoning import ReasoningPlan, wrap_all
from .schema_outcome import SchemaOutcome
from .settings import Settings
from .steering import SteerConfig
from .validation import ValidatedRequest

Verdict: TypeAlias = provenance_pb2.CheckVerdict.ValueType
Reason: TypeAlias = generation_pb2.FinishReason.ValueType


def steer_config(settings: Settings) -> SteerConfig | None:
    """Budget-aware completion and dead-end search as configured; None when both are off."""
    if not settings.steer_budget and settings.steer_dead_end_retries <= 0:
        return None
    return SteerConfig(
        budget=settings.steer_budget,
        margin=settings.steer_margin_tokens,
        check_every=settings.steer_check_every_tokens,
        max_nodes=settings.steer_search_nodes,
        retries=settings.steer_dead_end_retries,
    )


def check_budget(compiled: CompiledConstraints, max_tokens: int) -> None:
    """INVALID_ARGUMENT when even the shortest complete output found needs more
    than max_tokens (known from compiling, before anything is generated)."""
    if compiled.min_tokens is not None and compiled.min_tokens > max_tokens:
        raise invalid(
            "MAX_TOKENS_BELOW_CONSTRAINT_MINIMUM",
            f"max_tokens is {max_tokens}, but the shortest output that satisfies the "
            f"constraints needs {compiled.min_tokens} tokens (end of sequence included)",
            "request.sampling.max_tokens",
            max_tokens=str(max_tokens),
            min_tokens=str(compiled.min_tokens),
        )


def engine_params(
    validated: ValidatedRequest,
    compiled: CompiledConstraints,
    steer: SteerConfig | None = None,
    plan: ReasoningPlan | None = None,
) -> EngineParams:
    """What the engine needs of a validated request and its compiled constraints
    (with a reasoning plan, every grammar after the reasoning region)."""
    sampling = validated.sampling
    return EngineParams(
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        seed=sampling.seed,
        stop=sampling.stop,
        grammar=wrap_all((compiled.grammar,), plan)[0] if compiled.grammar else None,
        intersection=wrap_all(compiled.intersection, plan),
        allowed_token_ids=compiled.allowed_token_ids,
        forbidden_token_ids=compiled.forbidden_token_ids,
        steer=steer if compiled.has_grammar else None,
        n=sampling.n,
        min_tokens=sampling.min_tokens,
        stop_token_ids=sampling.stop_token_ids,
        repetition_penalty=sampling.repetition_penalty,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        logit_bias=tuple(sorted(sampling.logit_bias.items())),
        ignore_eos=sampling.ignore_eos,
        logprobs=sampling.logprobs,
        prompt_logprobs=sampling.prompt_logprobs,
        adapter=validated.adapter.engine if validated.adapter is not None else None,
    )


def result_label(outcome: SchemaOutcome, attempt: int, limit: int) -> str:
    """The metrics label of one validated output."""
    if outcome.rejected is not None:
        return "retried" if attempt < limit else "failed"
    if any(violation is not None for _, violation in outcome.verdicts):
        return "flagged"
    return "valid"


def finish_reason(engine_reason: str, stopped: bool, has_grammar: bool, verdict: Verdict) -> Reason:
    """Why a generation ended, as the contract names it: the token budget, a stop
    sequence (or stop token), a grammar reaching its end, or the model's own
    end of sequence."""
    if engine_reason == "length":
        return generation_pb2.FINISH_REASON_MAX_TOKENS
    if stopped:
        return generation_pb2.FINISH_REASON_STOP_SEQUENCE
    if has_grammar and verdict == provenance_pb2.CHECK_VERDICT_SATISFIED:
        return generation_pb2.FINISH_REASON_CONSTRAINT_COMPLETE
    return generation_pb2.FINISH_REASON_END_OF_SEQUENCE


def verdict_after_stop(
    verdict: Verdict, detail: str, *, cut_inside_token: bool
) -> tuple[Verdict, str]:
    """A stop sequence that cut the text inside a token leaves an output whose
    last token is only partly returned: not a complete match."""
    if cut_inside_token and verdict == provenance_pb2.CHECK_VERDICT_SATISFIED:
        return (
            provenance_pb2.CHECK_VERDICT_INCOMPLETE,
            "a stop sequence cut the output inside a token",
        )
    return verdict, detail


def may_be_dead_end(
    compiled: CompiledConstraints, verdict: Verdict, engine_reason: str, stop_string: bool
) -> bool:
    """Whether an intersection's incomplete output ended by EOS, which the
    engine forces only at a dead end (to be proved before it is reported)."""
    return (
        bool(compiled.intersection)
        and verdict == provenance_pb2.CHECK_VERDICT_INCOMPLETE
        and engine_reason == "stop"
        and not stop_string
    )


def tokens_within_text(token_ids: list[int], text: str, tokenizer: Any) -> tuple[list[int], bool]:
    """The longest prefix of `token_ids` whose bytes lie within `text`, and
    whether the text ends inside the next token (not on a token boundary)."""
    target = text.encode()
    count = len(token_ids)
    while count and len(tokenizer.decode_bytes(token_ids[:count])) > len(target):
        count -= 1
    prefix = token_ids[:count]
    return prefix, tokenizer.decode_bytes(prefix) != target


def deadline(deadline_s: float | None) -> AbstractAsyncContextManager[object]:
    """Carries the call's deadline into generation: when it passes, the engine
    request is aborted (the timeout cancels the loop, closing the generator)."""
    if deadline_s is None:
        return nullcontext()
    return asyncio.timeout(max(deadline_s, 0.0))
