"""What a generation returns: stream events and the final result."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from ananke.v1 import generation_pb2, inference_service_pb2, provenance_pb2

__all__ = [
    "Candidate",
    "GenerationFinished",
    "GenerationResult",
    "GenerationStarted",
    "StreamEvent",
    "TokenChunk",
]

GenerationStarted = inference_service_pb2.GenerationStarted
TokenChunk = inference_service_pb2.TokenChunk
GenerationFinished = inference_service_pb2.GenerationFinished
PositionLogprobs = generation_pb2.PositionLogprobs

# One event of a stream; tell them apart with isinstance.
StreamEvent = GenerationStarted | TokenChunk | GenerationFinished


def _enum_suffix(full_name: str, prefix: str) -> str:
    return full_name.removeprefix(prefix)


def _finish_name(reason: generation_pb2.FinishReason.ValueType) -> str:
    return _enum_suffix(generation_pb2.FinishReason.Name(reason), "FINISH_REASON_")


def _verdict_name(provenance: provenance_pb2.Provenance) -> str:
    name = provenance_pb2.CheckVerdict.Name(provenance.check.verdict)
    return _enum_suffix(name, "CHECK_VERDICT_")


def _message_dict(message: Any, *, all_fields: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=all_fields,
    )
    return result


@dataclass(frozen=True)
class Candidate:
    """One candidate of a call with SamplingParams.n: its own text, finish
    reason, usage, provenance (with its own constraint check) and logprobs."""

    index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: generation_pb2.FinishReason.ValueType
    usage: generation_pb2.Usage
    provenance: provenance_pb2.Provenance
    logprobs: tuple[generation_pb2.PositionLogprobs, ...] = ()
    # With reasoning on: the reasoning before the end tag (`text` is the answer).
    reasoning_text: str = ""

    @property
    def finish_reason_name(self) -> str:
        """For example "END_OF_SEQUENCE" or "MAX_TOKENS"."""
        return _finish_name(self.finish_reason)

    @property
    def check_verdict(self) -> str:
        """The server's re-check of this candidate, for example "SATISFIED"."""
        return _verdict_name(self.provenance)

    @property
    def satisfied(self) -> bool:
        """True when the re-check found a complete, valid output (or nothing to check)."""
        return self.check_verdict in ("SATISFIED", "UNCONSTRAINED")

    @property
    def logprob_sum(self) -> float:
        """Sum of the output tokens' log probabilities (needs `logprobs` asked)."""
        return sum(p.token.logprob for p in self.logprobs)

    def json(self) -> Any:
        """The text parsed as JSON."""
        return json.loads(self.text)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (proto3 JSON field names)."""
        return {
            "index": self.index,
            "text": self.text,
            "reasoning_text": self.reasoning_text,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason_name,
            "usage": _message_dict(self.usage, all_fields=True),
            "provenance": _message_dict(self.provenance),
            "logprobs": [_message_dict(p) for p in self.logprobs],
        }

    @classmethod
    def from_proto(cls, candidate: inference_service_pb2.Candidate) -> Candidate:
        """From a GenerateResponse candidate."""
        return cls(
            index=candidate.index,
            text=candidate.text,
            token_ids=tuple(candidate.token_ids),
            finish_reason=candidate.finish_reason,
            usage=candidate.usage,
            provenance=candidate.provenance,
            logprobs=tuple(candidate.logprobs),
            reasoning_text=candidate.reasoning_text,
        )


@dataclass(frozen=True)
class GenerationResult:
    """A finished generation: the text, why it stopped, usage and provenance.

    The top-level fields describe candidate 0; `candidates` holds every
    candidate when the call asked for several (n), candidate 0 included.
    """

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: generation_pb2.FinishReason.ValueType
    usage: generation_pb2.Usage
    provenance: provenance_pb2.Provenance
    candidates: tuple[Candidate, ...] = ()
    logprobs: tuple[generation_pb2.PositionLogprobs, ...] = ()
    prompt_logprobs: tuple[generation_pb2.PositionLogprobs, ...] = ()
    # With reasoning on (GenerationRequest.reasoning): candidate 0's reasoning
    # before the end tag; `text` is then the answer alone.
    reasoning_text: str = ""

    @property
    def answer_start(self) -> tuple[int, int] | None:
        """(token index, character offset) where the constrained answer
        begins, when the generation reasoned; None otherwise."""
        if not self.provenance.HasField("reasoning"):
            return None
        record = self.provenance.reasoning
        return record.answer_start_token, record.answer_start_char

    @property
    def cached_prompt_tokens(self) -> int:
        """Prompt tokens the engine's prefix cache served."""
        return self.usage.cached_prompt_tokens

    def valid_candidates(self) -> list[Candidate]:
        """The candidates whose re-check passed, in index order."""
        return [c for c in self.candidates if c.satisfied]

    @property
    def finish_reason_name(self) -> str:
        """For example "END_OF_SEQUENCE" or "MAX_TOKENS"."""
        return _finish_name(self.finish_reason)

    @property
    def model_id(self) -> str:
        """The model that generated, from provenance."""
        return self.provenance.model_id

    @property
    def check_verdict(self) -> str:
        """The server's re-check of the output, for example "SATISFIED"."""
        return _verdict_name(self.provenance)

    def json(self) -> Any:
        """The text parsed as JSON (for a JSON-schema-constrained generation)."""
        return json.loads(self.text)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; protos use their field names (proto3 JSON mapping)."""
        return {
            "request_id": self.request_id,
            "text": self.text,
            "reasoning_text": self.reasoning_text,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason_name,
            "usage": _message_dict(self.usage, all_fields=True),
            "provenance": _message_dict(self.provenance),
            "logprobs": [_message_dict(p) for p in self.logprobs],
            "prompt_logprobs": [_message_dict(p) for p in self.prompt_logprobs],
            "candidates": [c.to_dict() for c in self.candidates],
        }

    @classmethod
    def from_response(cls, response: inference_service_pb2.GenerateResponse) -> GenerationResult:
        """From a unary `GenerateResponse`."""
        return cls(
            request_id=response.request_id,
            text=response.text,
            token_ids=tuple(response.token_ids),
            finish_reason=response.finish_reason,
            usage=response.usage,
            provenance=response.provenance,
            candidates=tuple(Candidate.from_proto(c) for c in response.candidates),
            logprobs=tuple(response.logprobs),
            prompt_logprobs=tuple(response.prompt_logprobs),
            reasoning_text=response.reasoning_text,
        )

    @classmethod
    def from_stream(
        cls,
        started: GenerationStarted | None,
        chunks: Sequence[TokenChunk],
        finished: GenerationFinished | Sequence[GenerationFinished],
    ) -> GenerationResult:
        """From a stream's events (chunks of every candidate, one finished
        event per candidate)."""
        finals = [finished] if isinstance(finished, GenerationFinished) else list(finished)
        by_index = {f.candidate_index: f for f in finals}
        candidates = []
        for index in sorted(by_index):
            own = [c for c in chunks if c.candidate_index == index]
            final = by_index[index]
            candidates.append(
                Candidate(
                    index=index,
                    text="".join(c.text for c in own),
                    token_ids=tuple(t for c in own for t in c.token_ids),
                    finish_reason=final.finish_reason,
                    usage=final.usage,
                    provenance=final.provenance,
                    logprobs=tuple(p for c in own for p in c.logprobs),
                    reasoning_text="".join(c.reasoning_text for c in own),
                )
            )
        first = candidates[0]
        request_id = started.request_id if started is not None else ""
        prompt_logprobs = next((f.prompt_logprobs for f in finals if f.prompt_logprobs), ())
        return cls(
            request_id=request_id or first.provenance.request_id,
            text=first.text,
            token_ids=first.token_ids,
            finish_reason=first.finish_reason,
            usage=first.usage,
            provenance=first.provenance,
            candidates=tuple(candidates),
            logprobs=first.logprobs,
            prompt_logprobs=tuple(prompt_logprobs),
            reasoning_text=first.reasoning_text,
        )
