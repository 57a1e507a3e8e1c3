"""Request validation: a GenerationRequest becomes a ValidatedRequest with
every default applied, or a ServiceError naming the field at fault. Pure
functions; no engine, no I/O."""

from __future__ import annotations

import math
import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ananke.v1 import generation_pb2, inference_service_pb2

from .errors import invalid
from .settings import Settings

if TYPE_CHECKING:
    from .adapters import LoadedAdapter

MAX_REQUEST_ID_CHARS = 128
MAX_MESSAGES = 1000
MAX_STOP_SEQUENCES = 16
MAX_STOP_BYTES = 256
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_BYTES = 128
MAX_METADATA_VALUE_BYTES = 1024
MAX_STOP_TOKEN_IDS = 16
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_LOGIT_BIAS = 100.0
MAX_PENALTY = 2.0  # presence and frequency penalties: -2 to 2
MAX_REPETITION_PENALTY = 2.0
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
    n: int = 1
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    ignore_eos: bool = False
    logprobs: int | None = None  # alternatives per output token; None: no logprobs
    prompt_logprobs: int | None = None


@dataclass(frozen=True)
class ValidatedRequest:
    """A generation request that passed validation."""

    request_id: str
    prompt: str | None
    messages: tuple[tuple[str, str], ...]
    sampling: Sampling
    metadata: Mapping[str, str]
    context: generation_pb2.GenerationContext
    adapter: LoadedAdapter | None = None  # the LoRA adapter (set once resolved)


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
    messages = _validate_messages(request.messages, f"{p}.messages") if has_messages else ()
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
    messages: Sequence[generation_pb2.ChatMessage], path: str
) -> tuple[tuple[str, str], ...]:
    if len(messages) > MAX_MESSAGES:
        raise invalid("PROMPT_INVALID", f"at most {MAX_MESSAGES} messages", path)
    result = []
    for i, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise invalid(
                "PROMPT_INVALID",
                "role must be SYSTEM, USER or ASSISTANT",
                f"{path}[{i}].role",
            )
        if not message.content and role != "assistant":
            raise invalid("PROMPT_INVALID", "message content is empty", f"{path}[{i}].content")
        result.append((role, message.content))
    if all(not content for _, content in result):
        raise invalid("PROMPT_EMPTY", "every message is empty", path)
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
        n=_validate_n(sampling, settings, p, temperature),
        min_tokens=_validate_min_tokens(sampling, max_tokens, p),
        stop_token_ids=_validate_stop_token_ids(sampling, p, vocab_size),
        repetition_penalty=_penalty(
            sampling, "repetition_penalty", 1.0, p, low=0.0, high=MAX_REPETITION_PENALTY
        ),
        presence_penalty=_penalty(
            sampling, "presence_penalty", 0.0, p, low=-MAX_PENALTY, high=MAX_PENALTY
        ),
        frequency_penalty=_penalty(
            sampling, "frequency_penalty", 0.0, p, low=-MAX_PENALTY, high=MAX_PENALTY
        ),
        logit_bias=_validate_logit_bias(sampling, p, vocab_size),
        ignore_eos=sampling.ignore_eos,
        logprobs=_logprobs(sampling, "logprobs", settings, p),
        prompt_logprobs=_logprobs(sampling, "prompt_logprobs", settings, p),
    )


def _validate_n(
    sampling: generation_pb2.SamplingParams, settings: Settings, p: str, temperature: float
) -> int:
    n = sampling.n if sampling.HasField("n") else 1
    if not 1 <= n <= settings.max_candidates:
        raise invalid(
            "CANDIDATES_OUT_OF_RANGE",
            f"n must be 1 to {settings.max_candidates}, got {n}",
            f"{p}.n",
            limit=str(settings.max_candidates),
        )
    if n > 1 and temperature == 0.0:
        raise invalid(
            "SAMPLING_PARAM_INVALID",
            f"n = {n} needs temperature above 0: greedy candidates would all be the same",
            f"{p}.n",
        )
    return n


def _validate_min_tokens(sampling: generation_pb2.SamplingParams, max_tokens: int, p: str) -> int:
    min_tokens = sampling.min_tokens
    if min_tokens > max_tokens:
        raise invalid(
            "SAMPLING_PARAM_INVALID",
            f"min_tokens must be 0 to max_tokens ({max_tokens}), got {min_tokens}",
            f"{p}.min_tokens",
        )
    return min_tokens


def _check_token_id(token_id: int, vocab_size: int | None, field_path: str) -> None:
    if vocab_size is not None and vocab_size > 0 and token_id >= vocab_size:
        raise invalid(
            "TOKEN_ID_INVALID",
            f"token id {token_id} is not below the vocab size {vocab_size}",
            field_path,
            vocab_size=str(vocab_size),
        )


def _validate_stop_token_ids(
    sampling: generation_pb2.SamplingParams, p: str, vocab_size: int | None
) -> tuple[int, ...]:
    if len(sampling.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise invalid(
            "SAMPLING_PARAM_INVALID",
            f"at most {MAX_STOP_TOKEN_IDS} stop_token_ids",
            f"{p}.stop_token_ids",
        )
    for i, token_id in enumerate(sampling.stop_token_ids):
        _check_token_id(token_id, vocab_size, f"{p}.stop_token_ids[{i}]")
    return tuple(dict.fromkeys(sampling.stop_token_ids))


def _penalty(
    sampling: generation_pb2.SamplingParams,
    name: str,
    default: float,
    p: str,
    *,
    low: float,
    high: float,
) -> float:
    """A penalty in (low, high] for the repetition penalty (low is 0, which is
    excluded), [low, high] for the others."""
    value = float(getattr(sampling, name)) if sampling.HasField(name) else default  # type: ignore[arg-type]
    in_range = low < value <= high if low == 0.0 else low <= value <= high
    if not (math.isfinite(value) and in_range):
        shown = f"in ({low:g}, {high:g}]" if low == 0.0 else f"{low:g} to {high:g}"
        raise invalid(
            "SAMPLING_PARAM_INVALID", f"{name} must be {shown}, got {value}", f"{p}.{name}"
        )
    return value


def _validate_logit_bias(
    sampling: generation_pb2.SamplingParams, p: str, vocab_size: int | None
) -> dict[int, float]:
    if len(sampling.logit_bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise invalid(
            "SAMPLING_PARAM_INVALID",
            f"at most {MAX_LOGIT_BIAS_ENTRIES} logit_bias entries, got {len(sampling.logit_bias)}",
            f"{p}.logit_bias",
        )
    bias: dict[int, float] = {}
    for token_id, value in sorted(sampling.logit_bias.items()):
        _check_token_id(token_id, vocab_size, f"{p}.logit_bias[{token_id}]")
        if not (math.isfinite(value) and -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS):
            raise invalid(
                "SAMPLING_PARAM_INVALID",
                f"logit_bias values must be -{MAX_LOGIT_BIAS:g} to {MAX_LOGIT_BIAS:g}, "
                f"got {value} for token {token_id}",
                f"{p}.logit_bias[{token_id}]",
            )
        bias[token_id] = float(value)
    return bias


def _logprobs(
    sampling: generation_pb2.SamplingParams, name: str, settings: Settings, p: str
) -> int | None:
    if not sampling.HasField(name):  # type: ignore[arg-type]
        return None
    value = int(getattr(sampling, name))
    if value > settings.max_logprobs:
        raise invalid(
            "LOGPROBS_OUT_OF_RANGE",
            f"{name} must be 0 to {settings.max_logprobs}, got {value}",
            f"{p}.{name}",
            limit=str(settings.max_logprobs),
        )
    return value


def check_sampling_with_constraints(sampling: Sampling, has_grammar: bool, p: str) -> None:
    """Rejects sampling controls that fight a grammar: once a grammar is
    complete it allows only end-of-sequence, which min_tokens and ignore_eos
    would forbid or skip."""
    if not has_grammar:
        return
    if sampling.min_tokens > 0:
        raise invalid(
            "SAMPLING_PARAM_INVALID",
            "min_tokens cannot be combined with a grammar constraint "
            "(a complete grammar allows only end-of-sequence)",
            f"{p}.min_tokens",
        )
    if sampling.ignore_eos:
        raise invalid(
            "SAMPLING_PARAM_INVALID",
            "ignore_eos cannot be combined with a grammar constraint "
            "(a complete grammar allows only end-of-sequence)",
            f"{p}.ignore_eos",
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


@dataclass(frozen=True)
class TokenizeInput:
    """A Tokenize request that passed validation: text or chat messages."""

    text: str | None
    messages: tuple[tuple[str, str], ...]
    return_tokens: bool


def validate_tokenize(request: inference_service_pb2.TokenizeRequest) -> TokenizeInput:
    """Exactly one of text and messages, as for a generation's prompt."""
    has_text = bool(request.text)
    has_messages = len(request.messages) > 0
    if has_text and has_messages:
        raise invalid("PROMPT_INVALID", "set either text or messages, not both", "messages")
    if not has_text and not has_messages:
        raise invalid("PROMPT_EMPTY", "nothing to tokenize: set text or messages", "text")
    return TokenizeInput(
        text=request.text if has_text else None,
        messages=_validate_messages(request.messages, "messages") if has_messages else (),
        return_tokens=request.return_tokens,
    )


def validate_detokenize(
    request: inference_service_pb2.DetokenizeRequest, vocab_size: int, context_length: int
) -> list[int]:
    """Token ids below the vocab size, at most a context's worth."""
    if len(request.token_ids) > context_length:
        raise invalid(
            "REQUEST_FIELD_INVALID",
            f"at most {context_length} token ids (the model's context), "
            f"got {len(request.token_ids)}",
            "token_ids",
        )
    for i, token_id in enumerate(request.token_ids):
        _check_token_id(token_id, vocab_size, f"token_ids[{i}]")
    return list(request.token_ids)
