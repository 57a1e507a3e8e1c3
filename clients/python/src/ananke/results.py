"""What a generation returns: stream events and the final result."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from ananke.v1 import generation_pb2, inference_service_pb2, provenance_pb2

__all__ = [
    "GenerationFinished",
    "GenerationResult",
    "GenerationStarted",
    "StreamEvent",
    "TokenChunk",
]

GenerationStarted = inference_service_pb2.GenerationStarted
TokenChunk = inference_service_pb2.TokenChunk
GenerationFinished = inference_service_pb2.GenerationFinished

# One event of a stream; tell them apart with isinstance.
StreamEvent = GenerationStarted | TokenChunk | GenerationFinished


def _enum_suffix(full_name: str, prefix: str) -> str:
    return full_name.removeprefix(prefix)


@dataclass(frozen=True)
class GenerationResult:
    """A finished generation: the text, why it stopped, usage and provenance."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: generation_pb2.FinishReason.ValueType
    usage: generation_pb2.Usage
    provenance: provenance_pb2.Provenance

    @property
    def finish_reason_name(self) -> str:
        """For example "END_OF_SEQUENCE" or "MAX_TOKENS"."""
        name = generation_pb2.FinishReason.Name(self.finish_reason)
        return _enum_suffix(name, "FINISH_REASON_")

    @property
    def model_id(self) -> str:
        """The model that generated, from provenance."""
        return self.provenance.model_id

    @property
    def check_verdict(self) -> str:
        """The server's re-check of the output, for example "SATISFIED"."""
        name = provenance_pb2.CheckVerdict.Name(self.provenance.check.verdict)
        return _enum_suffix(name, "CHECK_VERDICT_")

    def json(self) -> Any:
        """The text parsed as JSON (for a JSON-schema-constrained generation)."""
        return json.loads(self.text)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; protos use their field names (proto3 JSON mapping)."""
        return {
            "request_id": self.request_id,
            "text": self.text,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason_name,
            "usage": json_format.MessageToDict(
                self.usage,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            ),
            "provenance": json_format.MessageToDict(
                self.provenance, preserving_proto_field_name=True
            ),
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
        )

    @classmethod
    def from_stream(
        cls,
        started: GenerationStarted | None,
        chunks: Sequence[TokenChunk],
        finished: GenerationFinished,
    ) -> GenerationResult:
        """From a stream's events."""
        request_id = started.request_id if started is not None else ""
        return cls(
            request_id=request_id or finished.provenance.request_id,
            text="".join(c.text for c in chunks),
            token_ids=tuple(t for c in chunks for t in c.token_ids),
            finish_reason=finished.finish_reason,
            usage=finished.usage,
            provenance=finished.provenance,
        )
