"""Candidates and log probabilities on the wire: engine log probabilities
as protos (with each token's text and bytes), and a unary GenerateResponse
assembled from a stream's events, one candidate per finished event."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ananke.v1 import generation_pb2, inference_service_pb2

from .engine_api import PositionLogprobs, TokenLogprob

# llguidance marks special tokens with a leading 0xFF byte in decode_bytes.
_SPECIAL_MARKER = 0xFF


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The bytes of one token as llguidance decodes it (special-token marker dropped)."""
    raw = bytes(tokenizer.decode_bytes([token_id]))
    return raw[1:] if raw[:1] == bytes([_SPECIAL_MARKER]) else raw


def _token(tokenizer: Any, entry: TokenLogprob) -> generation_pb2.TokenLogprob:
    raw = token_bytes(tokenizer, entry.token_id)
    return generation_pb2.TokenLogprob(
        token_id=entry.token_id,
        text=raw.decode("utf-8", errors="replace"),
        token_bytes=raw,
        logprob=entry.logprob,
        rank=entry.rank,
    )


def logprobs_to_proto(
    positions: Iterable[PositionLogprobs], tokenizer: Any
) -> list[generation_pb2.PositionLogprobs]:
    """Engine log probabilities as PositionLogprobs messages."""
    return [
        generation_pb2.PositionLogprobs(
            token=_token(tokenizer, p.token), top=[_token(tokenizer, t) for t in p.top]
        )
        for p in positions
    ]


def token_list(tokenizer: Any, token_ids: Sequence[int]) -> list[generation_pb2.TokenLogprob]:
    """Each token's id, text and bytes (logprob and rank 0), for Tokenize."""
    return [_token(tokenizer, TokenLogprob(t, 0.0, 0)) for t in token_ids]


def gather_response(
    events: Iterable[inference_service_pb2.GenerateStreamResponse],
) -> inference_service_pb2.GenerateResponse:
    """The unary response for a stream's events: every candidate in index
    order, and candidate 0 in the top-level fields old clients read."""
    response = inference_service_pb2.GenerateResponse()
    texts: dict[int, list[str]] = {}
    thoughts: dict[int, list[str]] = {}
    candidates: dict[int, inference_service_pb2.Candidate] = {}

    def candidate(index: int) -> inference_service_pb2.Candidate:
        if index not in candidates:
            candidates[index] = inference_service_pb2.Candidate(index=index)
            texts[index] = []
            thoughts[index] = []
        return candidates[index]

    for event in events:
        kind = event.WhichOneof("event")
        if kind == "started":
            response.request_id = event.started.request_id
        elif kind == "chunk":
            chunk = event.chunk
            target = candidate(chunk.candidate_index)
            texts[chunk.candidate_index].append(chunk.text)
            thoughts[chunk.candidate_index].append(chunk.reasoning_text)
            target.token_ids.extend(chunk.token_ids)
            target.logprobs.extend(chunk.logprobs)
        elif kind == "finished":
            finished = event.finished
            target = candidate(finished.candidate_index)
            target.finish_reason = finished.finish_reason
            target.usage.CopyFrom(finished.usage)
            target.provenance.CopyFrom(finished.provenance)
            response.prompt_logprobs.extend(finished.prompt_logprobs)
    for index in sorted(candidates):
        target = candidates[index]
        target.text = "".join(texts[index])
        target.reasoning_text = "".join(thoughts[index])
        response.candidates.append(target)
    if response.candidates:
        first = response.candidates[0]
        response.text = first.text
        response.reasoning_text = first.reasoning_text
        response.token_ids.extend(first.token_ids)
        response.finish_reason = first.finish_reason
        response.usage.CopyFrom(first.usage)
        response.provenance.CopyFrom(first.provenance)
        response.logprobs.extend(first.logprobs)
    return response
