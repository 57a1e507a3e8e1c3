"""Request validation tables: every documented range boundary of
generation.proto, with the ErrorInfo reason and field path it produces."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from ananke.v1 import generation_pb2 as g
from ananke_server.errors import ServiceError
from ananke_server.settings import Settings
from ananke_server.validation import (
    MAX_MESSAGES,
    check_prompt_length,
    validate_generation,
    validate_sampling,
)

SETTINGS = Settings(max_tokens_cap=512, default_max_tokens=256)
USER = g.CHAT_ROLE_USER


def request(**fields: Any) -> g.GenerationRequest:
    fields.setdefault("prompt", "def fib(n):")
    return g.GenerationRequest(**fields)


def sampling(**fields: Any) -> g.SamplingParams:
    return g.SamplingParams(**fields)


def expect_error(reason: str, field: str, call: Any) -> ServiceError:
    with pytest.raises(ServiceError) as raised:
        call()
    error = raised.value
    assert error.reason == reason, error.message
    assert error.metadata["field"] == field
    if error.violations:
        assert [v.field for v in error.violations] == [field]
    return error


# -- sampling --------------------------------------------------------------------------

OK_SAMPLING = [
    ("max_tokens=1", {"max_tokens": 1}),
    ("max_tokens=cap", {"max_tokens": 512}),
    ("temperature=0", {"temperature": 0.0}),
    ("temperature=2", {"temperature": 2.0}),
    ("top_p=1", {"top_p": 1.0}),
    ("top_p=tiny", {"top_p": 1e-6}),
    ("top_k=1", {"top_k": 1}),
    ("stop=16", {"stop": [f"s{i}" for i in range(16)]}),
    ("stop=256 bytes", {"stop": ["é" * 128]}),
    ("seed=0", {"seed": 0}),
    ("seed=2^63-1", {"seed": (1 << 63) - 1}),
]


@pytest.mark.parametrize(("name", "fields"), OK_SAMPLING, ids=[n for n, _ in OK_SAMPLING])
def test_sampling_in_range(name: str, fields: dict[str, Any]) -> None:
    applied = validate_sampling(sampling(**fields), SETTINGS, "request.sampling")
    for key, value in fields.items():
        got = getattr(applied, key)
        if key == "stop":
            assert got == tuple(value)
        elif isinstance(value, float):
            assert got == pytest.approx(value)
        else:
            assert got == value


BAD_SAMPLING = [
    ("max_tokens=0", {"max_tokens": 0}, "MAX_TOKENS_OUT_OF_RANGE", "max_tokens"),
    ("max_tokens=cap+1", {"max_tokens": 513}, "MAX_TOKENS_OUT_OF_RANGE", "max_tokens"),
    ("temperature=-0.1", {"temperature": -0.1}, "SAMPLING_PARAM_INVALID", "temperature"),
    ("temperature=2.01", {"temperature": 2.01}, "SAMPLING_PARAM_INVALID", "temperature"),
    ("temperature=nan", {"temperature": float("nan")}, "SAMPLING_PARAM_INVALID", "temperature"),
    ("temperature=inf", {"temperature": float("inf")}, "SAMPLING_PARAM_INVALID", "temperature"),
    ("top_p=0", {"top_p": 0.0}, "SAMPLING_PARAM_INVALID", "top_p"),
    ("top_p=1.1", {"top_p": 1.1}, "SAMPLING_PARAM_INVALID", "top_p"),
    ("top_p=-1", {"top_p": -1.0}, "SAMPLING_PARAM_INVALID", "top_p"),
    ("top_p=nan", {"top_p": float("nan")}, "SAMPLING_PARAM_INVALID", "top_p"),
    ("top_k=0 set", {"top_k": 0}, "SAMPLING_PARAM_INVALID", "top_k"),
    ("stop=17", {"stop": [f"s{i}" for i in range(17)]}, "SAMPLING_PARAM_INVALID", "stop"),
    ("stop empty", {"stop": ["ok", ""]}, "SAMPLING_PARAM_INVALID", "stop[1]"),
    ("stop 257 bytes", {"stop": ["a" * 255 + "é"]}, "SAMPLING_PARAM_INVALID", "stop[0]"),
    ("seed=2^63", {"seed": 1 << 63}, "SAMPLING_PARAM_INVALID", "seed"),
]


@pytest.mark.parametrize(
    ("name", "fields", "reason", "field"), BAD_SAMPLING, ids=[b[0] for b in BAD_SAMPLING]
)
def test_sampling_out_of_range(name: str, fields: dict[str, Any], reason: str, field: str) -> None:
    expect_error(
        reason,
        f"request.sampling.{field}",
        lambda: validate_sampling(sampling(**fields), SETTINGS, "request.sampling"),
    )


def test_max_tokens_error_names_the_limit() -> None:
    error = expect_error(
        "MAX_TOKENS_OUT_OF_RANGE",
        "request.sampling.max_tokens",
        lambda: validate_sampling(sampling(max_tokens=513), SETTINGS, "request.sampling"),
    )
    assert error.metadata["limit"] == "512"
    assert "513" in error.message


def test_sampling_defaults() -> None:
    applied = validate_sampling(sampling(), SETTINGS, "request.sampling")
    assert applied.max_tokens == 256
    assert applied.temperature == 0.0
    assert applied.top_p == 1.0
    assert applied.top_k == 0
    assert applied.stop == ()
    assert 0 <= applied.seed < 1 << 63


def test_default_max_tokens_is_capped() -> None:
    low_cap = Settings(max_tokens_cap=100, default_max_tokens=256)
    assert validate_sampling(sampling(), low_cap, "s").max_tokens == 100


def test_drawn_seeds_differ() -> None:
    seeds = {validate_sampling(sampling(), SETTINGS, "s").seed for _ in range(8)}
    assert len(seeds) > 1


def test_unset_differs_from_zero() -> None:
    # temperature 0 set explicitly is greedy, like the default; max_tokens 0 set is an error.
    assert validate_sampling(sampling(temperature=0.0), SETTINGS, "s").temperature == 0.0
    with pytest.raises(ServiceError):
        validate_sampling(sampling(max_tokens=0), SETTINGS, "s")
    with pytest.raises(ServiceError):
        validate_sampling(sampling(top_p=0.0), SETTINGS, "s")


# -- the request -------------------------------------------------------------------------


def test_valid_prompt_request() -> None:
    validated = validate_generation(
        request(
            request_id="req-1",
            metadata={"k": "v"},
            context=g.GenerationContext(language="zig"),
        ),
        SETTINGS,
        header_request_id="from-header",
    )
    assert validated.request_id == "req-1"
    assert validated.prompt == "def fib(n):"
    assert validated.messages == ()
    assert validated.metadata == {"k": "v"}
    assert validated.context.language == "zig"
    assert validated.sampling.max_tokens == 256


def test_valid_chat_request() -> None:
    validated = validate_generation(
        g.GenerationRequest(
            messages=[
                g.ChatMessage(role=g.CHAT_ROLE_SYSTEM, content="Be terse."),
                g.ChatMessage(role=USER, content="fib?"),
                g.ChatMessage(role=g.CHAT_ROLE_ASSISTANT, content=""),
            ]
        ),
        SETTINGS,
        header_request_id=None,
    )
    assert validated.prompt is None
    assert validated.messages == (("system", "Be terse."), ("user", "fib?"), ("assistant", ""))


def test_request_id_from_header_then_uuid() -> None:
    assert validate_generation(request(), SETTINGS, header_request_id="hdr-7").request_id == "hdr-7"
    generated = validate_generation(request(), SETTINGS, header_request_id=None).request_id
    assert uuid.UUID(generated)
    assert generated != validate_generation(request(), SETTINGS, header_request_id=None).request_id


@pytest.mark.parametrize(
    "request_id", ["a", "x" * 128, "!~", "req_1.2-3:4/5"], ids=["1", "128", "edges", "punct"]
)
def test_request_id_accepted(request_id: str) -> None:
    assert (
        validate_generation(
            request(request_id=request_id), SETTINGS, header_request_id=None
        ).request_id
        == request_id
    )


@pytest.mark.parametrize(
    "request_id",
    ["x" * 129, "has space", "tab\t", "é", "new\nline", "\x7f"],
    ids=["129", "space", "tab", "non-ascii", "newline", "del"],
)
def test_request_id_rejected(request_id: str) -> None:
    expect_error(
        "REQUEST_FIELD_INVALID",
        "request.request_id",
        lambda: validate_generation(
            request(request_id=request_id), SETTINGS, header_request_id=None
        ),
    )


def test_header_request_id_checked_too() -> None:
    expect_error(
        "REQUEST_FIELD_INVALID",
        "request.request_id",
        lambda: validate_generation(request(), SETTINGS, header_request_id="bad id"),
    )


def _messages(*pairs: tuple[int, str]) -> list[g.ChatMessage]:
    return [g.ChatMessage(role=role, content=content) for role, content in pairs]  # type: ignore[arg-type]


BAD_REQUESTS = [
    ("no prompt", g.GenerationRequest(), "PROMPT_EMPTY", "request.prompt"),
    (
        "prompt and messages",
        g.GenerationRequest(prompt="x", messages=_messages((USER, "y"))),
        "PROMPT_INVALID",
        "request.messages",
    ),
    (
        "role unset",
        g.GenerationRequest(messages=_messages((USER, "a"), (0, "b"))),
        "PROMPT_INVALID",
        "request.messages[1].role",
    ),
    (
        "role unknown",
        g.GenerationRequest(messages=_messages((17, "b"))),
        "PROMPT_INVALID",
        "request.messages[0].role",
    ),
    (
        "user content empty",
        g.GenerationRequest(messages=_messages((USER, ""))),
        "PROMPT_INVALID",
        "request.messages[0].content",
    ),
    (
        "system content empty",
        g.GenerationRequest(messages=_messages((USER, "a"), (g.CHAT_ROLE_SYSTEM, ""))),
        "PROMPT_INVALID",
        "request.messages[1].content",
    ),
    (
        "only empty assistant",
        g.GenerationRequest(messages=_messages((g.CHAT_ROLE_ASSISTANT, ""))),
        "PROMPT_EMPTY",
        "request.messages",
    ),
    (
        "too many messages",
        g.GenerationRequest(messages=_messages(*[(USER, "m")] * (MAX_MESSAGES + 1))),
        "PROMPT_INVALID",
        "request.messages",
    ),
    (
        "65 metadata entries",
        g.GenerationRequest(prompt="x", metadata={f"k{i}": "v" for i in range(65)}),
        "REQUEST_FIELD_INVALID",
        "request.metadata",
    ),
    (
        "metadata key 129 bytes",
        g.GenerationRequest(prompt="x", metadata={"k" * 129: "v"}),
        "REQUEST_FIELD_INVALID",
        "request.metadata",
    ),
    (
        "metadata key empty",
        g.GenerationRequest(prompt="x", metadata={"": "v"}),
        "REQUEST_FIELD_INVALID",
        "request.metadata",
    ),
    (
        "metadata value 1025 bytes",
        g.GenerationRequest(prompt="x", metadata={"k": "v" * 1023 + "é"}),
        "REQUEST_FIELD_INVALID",
        "request.metadata[k]",
    ),
    (
        "bad sampling",
        g.GenerationRequest(prompt="x", sampling=g.SamplingParams(top_p=2.0)),
        "SAMPLING_PARAM_INVALID",
        "request.sampling.top_p",
    ),
]


@pytest.mark.parametrize(
    ("name", "message", "reason", "field"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_request_rejected(name: str, message: g.GenerationRequest, reason: str, field: str) -> None:
    expect_error(
        reason, field, lambda: validate_generation(message, SETTINGS, header_request_id=None)
    )


def test_limits_accepted_at_the_boundary() -> None:
    validated = validate_generation(
        g.GenerationRequest(
            messages=_messages(*[(USER, "m")] * MAX_MESSAGES),
            metadata={"k" * 128: "v" * 1024, **{f"k{i}": "" for i in range(63)}},
        ),
        SETTINGS,
        header_request_id=None,
    )
    assert len(validated.messages) == MAX_MESSAGES
    assert len(validated.metadata) == 64


def test_field_prefix_is_used() -> None:
    expect_error(
        "PROMPT_EMPTY",
        "req.prompt",
        lambda: validate_generation(
            g.GenerationRequest(), SETTINGS, header_request_id=None, field_prefix="req"
        ),
    )


# -- prompt length ------------------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "max_tokens"), [(100, 28), (0, 128), (127, 1)])
def test_prompt_length_fits(prompt: int, max_tokens: int) -> None:
    check_prompt_length(prompt, max_tokens, 128, "request.prompt")


@pytest.mark.parametrize(("prompt", "max_tokens"), [(100, 29), (128, 1), (1, 128)])
def test_prompt_too_long(prompt: int, max_tokens: int) -> None:
    error = expect_error(
        "PROMPT_TOO_LONG",
        "request.messages",
        lambda: check_prompt_length(prompt, max_tokens, 128, "request.messages"),
    )
    assert error.metadata["prompt_tokens"] == str(prompt)
    assert error.metadata["context_length"] == "128"
    assert error.code.name == "INVALID_ARGUMENT"
