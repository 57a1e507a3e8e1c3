"""Request validation: a GenerationRequest becomes a ValidatedRequest with
every default applied, or a ServiceError naming the field at fault. Pure
functions; no engine, no I/O."""

from __future__ import annotations

import math
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from ananke.v1 import generation_pb2

from .errors import invalid
from .settings import Settings

MAX_REQUEST_ID_CHARS = 128
MAX_MESSAGES = 1000
MAX_STOP_SEQUENCES = 16
MAX_STOP_BYTES = 256
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_BYTES = 128
MAX_METADATA_VALUE_BYTES = 1024
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_ROLES = {
    generation_pb2.CHAT_ROLE_SYSTEM: "system",
    generation_pb2.CHAT_ROLE_USER: "user",
    generation_pb2.CHAT_ROLE_ASSISTANT: "assistant",
}


@dataclass(frozen=True)
class Sampling:
    """Sampling as applied: every default filled in, the seed drawn if unset."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: tuple[str, ...]


@dataclass(frozen=True)
class ValidatedRequest:
    """A generation request that passed validation."""

    request_id: str
    prompt: str | None
    messages: tuple[tuple[str, str], ...]
    sampling: Sampling
    metadata: Mapping[str, str]
    context: generation_pb2.GenerationContext


def validate_generation(
    request: generation_pb2.GenerationRequest,
    settings: Settings,
    *,
    header_request_id: str | None,
    vocab_size: int | None = None,
    field_prefix: str = "request",
) -> ValidatedRequest:
    """Checks every field of `request` against its documented range."""
    p = field_prefix
    request_id = request.request_id or header_request_id or str(uuid.uuid4())
    if not _REQUEST_ID.match(request_id):
        raise invalid(
            "REQUEST_FIELD_INVALID",
            f"request_id must be 1 to {MAX_REQUEST_ID_CHARS} printable ASCII characters",
            f"{p}.request_id",
        )
    has_prompt = bool(request.prompt)
    has_messages = len(request.messages) > 0
    if has_prompt and has_messages:
        raise invalid("PROMPT_INVALID", "set either prompt or messages, not both", f"{p}.messages")
    if not has_prompt and not has_messages:
        raise invalid("PROMPT_EMPTY", "the prompt is empty: set prompt or messages", f"{p}.prompt")
    messages = _validate_messages(request, p) if has_messages else ()
    _validate_metadata(request.metadata, p)
    return ValidatedRequest(
        request_id=request_id,
        prompt=request.prompt if has_prompt else None,
        messages=messages,
        sampling=validate_sampling(request.sampling, settings, f"{p}.sampling", vocab_size),
        metadata=dict(request.metadata),
        context=request.context,
    )


def _validate_messages(
    request: generation_pb2.GenerationRequest, p: str
) -> tuple[tuple[str, str], ...]:
    if len(request.messages) > MAX_MESSAGES:
        raise invalid("PROMPT_INVALID", f"at most {MAX_MESSAGES} messages", f"{p}.messages")
    result = []
    for i, message in enumerate(request.messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise invalid(
                "PROMPT_INVALID",
                "role must be SYSTEM, USER or ASSISTANT",
                f"{p}.messages[{i}].role",
            )
        if not message.content and role != "assistant":
            raise invalid(
                "PROMPT_INVALID", "message content is empty", f"{p}.messages[{i}].content"
            )
        result.append((role, message.content))
    if all(not content for _, content in result):
        raise invalid("PROMPT_EMPTY", "every message is empty", f"{p}.messages")
    return tuple(result)


def _validate_metadata(metadata: Mapping[str, str], p: str) -> None:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise invalid(
            "REQUEST_FIELD_INVALID",
            f"at most {MAX_METADATA_ENTRIES} metadata entries",
            f"{p}.metadata",
        )
    for key, value in metadata.items():
        if len(key.encode()) > MAX_METADATA_KEY_BYTES or not key:
            raise invalid(
                "REQUEST_FIELD_INVALID",
                f"metadata keys must be 1 to {MAX_METADATA_KEY_BYTES} bytes",
                f"{p}.metadata",
            )
        if len(value.encode()) > MAX_METADATA_VALUE_BYTES:
            raise invalid(
                "REQUEST_FIELD_INVALID",
                f"metadata values must be at most {MAX_METADATA_VALUE_BYTES} bytes",
                f"{p}.metadata[{key}]",
            )


def validate_sampling(
    sampling: generation_pb2.SamplingParams,
    settings: Settings,
    p: str,
    vocab_size: int | None = None,
) -> Sampling:
    """Applies defaults and checks ranges of the sampling knobs (top_k against
    `vocab_size` when it is known)."""
    max_tokens = (
        sampling.max_tokens
        if sampling.HasField("max_tokens")
        else min(settings.default_max_tokens, settings.max_tokens_cap)
    )
    if not 1 <= max_tokens <= settings.max_tokens_cap:
        raise invalid(
            "MAX_TOKENS_OUT_OF_RANGE",
            f"max_tokens must be 1 to {settings.max_tokens_cap}, got {max_tokens}",
            f"{p}.max_tokens",
            limit=str(settings.max_tokens_cap),
        )
    temperature = sampling.temperature if sampling.HasField("temperature") else 0.0
    if not (math.isfinite(temperature) and 0.0 <= temperature <= 2.0):
        raise invalid(
            "SAMPLING_PARAM_INVALID",
            f"temperature must be 0 to 2, got {temperature}",
            f"{p}.temperature",
        )
    top_p = sampling.top_p if sampling.HasField("top_p") else 1.0
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise invalid(
            "SAMPLING_PARAM_INVALID", f"top_p must be in (0, 1], got {top_p}", f"{p}.top_p"
        )
    top_k = sampling.top_k if sampling.HasField("top_k") else 0
    top_k_limit = vocab_size or top_k
    if sampling.HasField("top_k") and not 1 <= top_k <= top_k_limit:
        raise invalid(
            "SAMPLING_PARAM_INVALID", f"top_k must be 1 to {top_k_limit} when set", f"{p}.top_k"
        )
    if len(sampling.stop) > MAX_STOP_SEQUENCES:
        raise invalid(
            "SAMPLING_PARAM_INVALID", f"at most {MAX_STOP_SEQUENCES} stop sequences", f"{p}.stop"
        )
    for i, stop in enumerate(sampling.stop):
        if not 1 <= len(stop.encode()) <= MAX_STOP_BYTES:
            raise invalid(
                "SAMPLING_PARAM_INVALID",
                f"stop sequences must be 1 to {MAX_STOP_BYTES} bytes",
                f"{p}.stop[{i}]",
            )
    # vLLM seeds are signed 64-bit: keep drawn seeds in range.
    seed = sampling.seed if sampling.HasField("seed") else secrets.randbits(63)
    if seed >= 1 << 63:
        raise invalid("SAMPLING_PARAM_INVALID", "seed must be below 2^63", f"{p}.seed")
    return Sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=tuple(sampling.stop),
    )


def check_prompt_length(
    prompt_tokens: int, max_tokens: int, context_length: int, field_path: str
) -> None:
    """Rejects a prompt that leaves no room for max_tokens in the context."""
    if prompt_tokens + max_tokens > context_length:
        raise invalid(
            "PROMPT_TOO_LONG",
            f"the prompt is {prompt_tokens} tokens; with max_tokens {max_tokens} it exceeds "
            f"the model's context of {context_length} tokens",
            field_path,
            prompt_tokens=str(prompt_tokens),
            context_length=str(context_length),
        )
