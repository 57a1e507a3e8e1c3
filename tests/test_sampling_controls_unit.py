"""Validation of the issue-13 sampling controls (n, logprobs, min_tokens,
stop_token_ids, penalties, logit_bias, ignore_eos) and of Tokenize /
Detokenize requests: every documented boundary, the ErrorInfo reason and
the field path."""

from __future__ import annotations

from typing import Any

import pytest
from ananke.v1 import generation_pb2 as g
from ananke.v1 import inference_service_pb2 as s
from ananke_server.errors import ServiceError
from ananke_server.settings import Settings
from ananke_server.validation import (
    MAX_LOGIT_BIAS_ENTRIES,
    check_sampling_with_constraints,
    validate_detokenize,
    validate_sampling,
    validate_tokenize,
)

SETTINGS = Settings(max_tokens_cap=512, default_max_tokens=256, max_candidates=8, max_logprobs=5)
VOCAB = 1000


def applied(**fields: Any) -> Any:
    return validate_sampling(g.SamplingParams(**fields), SETTINGS, "request.sampling", VOCAB)


def expect_error(reason: str, field: str, **fields: Any) -> ServiceError:
    with pytest.raises(ServiceError) as raised:
        applied(**fields)
    error = raised.value
    assert error.reason == reason, error.message
    assert error.metadata["field"] == f"request.sampling.{field}"
    return error


OK = [
    ("n=1", {"n": 1}, "n", 1),
    ("n=cap", {"n": 8, "temperature": 0.5}, "n", 8),
    ("min_tokens=0", {"min_tokens": 0}, "min_tokens", 0),
    ("min_tokens=max_tokens", {"min_tokens": 10, "max_tokens": 10}, "min_tokens", 10),
    ("stop_token_ids=16", {"stop_token_ids": list(range(16))}, "stop_token_ids", tuple(range(16))),
    ("stop_token_ids dedup", {"stop_token_ids": [5, 5, 7]}, "stop_token_ids", (5, 7)),
    ("stop_token_id=vocab-1", {"stop_token_ids": [999]}, "stop_token_ids", (999,)),
    ("repetition_penalty=2", {"repetition_penalty": 2.0}, "repetition_penalty", 2.0),
    ("repetition_penalty tiny", {"repetition_penalty": 0.01}, "repetition_penalty", 0.01),
    ("presence_penalty=-2", {"presence_penalty": -2.0}, "presence_penalty", -2.0),
    ("presence_penalty=2", {"presence_penalty": 2.0}, "presence_penalty", 2.0),
    ("frequency_penalty=-2", {"frequency_penalty": -2.0}, "frequency_penalty", -2.0),
    (
        "logit_bias edges",
        {"logit_bias": {0: -100.0, 999: 100.0}},
        "logit_bias",
        {0: -100, 999: 100},
    ),
    ("ignore_eos", {"ignore_eos": True}, "ignore_eos", True),
    ("logprobs=0", {"logprobs": 0}, "logprobs", 0),
    ("logprobs=cap", {"logprobs": 5}, "logprobs", 5),
    ("prompt_logprobs=0", {"prompt_logprobs": 0}, "prompt_logprobs", 0),
]


@pytest.mark.parametrize(("name", "fields", "key", "want"), OK, ids=[o[0] for o in OK])
def test_in_range(name: str, fields: dict[str, Any], key: str, want: Any) -> None:
    got = getattr(applied(**fields), key)
    if isinstance(want, float):
        assert got == pytest.approx(want)
    else:
        assert got == want


def test_defaults() -> None:
    sampling = applied()
    assert sampling.n == 1
    assert sampling.min_tokens == 0
    assert sampling.stop_token_ids == ()
    assert sampling.repetition_penalty == 1.0
    assert sampling.presence_penalty == 0.0
    assert sampling.frequency_penalty == 0.0
    assert sampling.logit_bias == {}
    assert sampling.ignore_eos is False
    assert sampling.logprobs is None  # unset differs from 0
    assert sampling.prompt_logprobs is None


BAD = [
    ("n=0", {"n": 0}, "CANDIDATES_OUT_OF_RANGE", "n"),
    ("n=cap+1", {"n": 9}, "CANDIDATES_OUT_OF_RANGE", "n"),
    ("n=2 greedy", {"n": 2}, "SAMPLING_PARAM_INVALID", "n"),
    (
        "min_tokens>max",
        {"min_tokens": 11, "max_tokens": 10},
        "SAMPLING_PARAM_INVALID",
        "min_tokens",
    ),
    (
        "17 stop ids",
        {"stop_token_ids": list(range(17))},
        "SAMPLING_PARAM_INVALID",
        "stop_token_ids",
    ),
    ("stop id=vocab", {"stop_token_ids": [3, 1000]}, "TOKEN_ID_INVALID", "stop_token_ids[1]"),
    ("rep=0", {"repetition_penalty": 0.0}, "SAMPLING_PARAM_INVALID", "repetition_penalty"),
    ("rep<0", {"repetition_penalty": -1.0}, "SAMPLING_PARAM_INVALID", "repetition_penalty"),
    ("rep>2", {"repetition_penalty": 2.5}, "SAMPLING_PARAM_INVALID", "repetition_penalty"),
    (
        "rep nan",
        {"repetition_penalty": float("nan")},
        "SAMPLING_PARAM_INVALID",
        "repetition_penalty",
    ),
    ("presence<-2", {"presence_penalty": -2.01}, "SAMPLING_PARAM_INVALID", "presence_penalty"),
    (
        "presence inf",
        {"presence_penalty": float("inf")},
        "SAMPLING_PARAM_INVALID",
        "presence_penalty",
    ),
    ("frequency>2", {"frequency_penalty": 2.01}, "SAMPLING_PARAM_INVALID", "frequency_penalty"),
    ("bias key=vocab", {"logit_bias": {1000: 1.0}}, "TOKEN_ID_INVALID", "logit_bias[1000]"),
    ("bias>100", {"logit_bias": {7: 100.5}}, "SAMPLING_PARAM_INVALID", "logit_bias[7]"),
    ("bias -inf", {"logit_bias": {7: float("-inf")}}, "SAMPLING_PARAM_INVALID", "logit_bias[7]"),
    ("bias nan", {"logit_bias": {7: float("nan")}}, "SAMPLING_PARAM_INVALID", "logit_bias[7]"),
    ("logprobs>cap", {"logprobs": 6}, "LOGPROBS_OUT_OF_RANGE", "logprobs"),
    ("prompt_logprobs>cap", {"prompt_logprobs": 6}, "LOGPROBS_OUT_OF_RANGE", "prompt_logprobs"),
]


@pytest.mark.parametrize(("name", "fields", "reason", "field"), BAD, ids=[b[0] for b in BAD])
def test_out_of_range(name: str, fields: dict[str, Any], reason: str, field: str) -> None:
    expect_error(reason, field, **fields)


def test_too_many_logit_bias_entries() -> None:
    bias = dict.fromkeys(range(MAX_LOGIT_BIAS_ENTRIES + 1), 1.0)
    with pytest.raises(ServiceError) as raised:
        validate_sampling(g.SamplingParams(logit_bias=bias), SETTINGS, "s", 1 << 16)
    assert raised.value.reason == "SAMPLING_PARAM_INVALID"
    assert str(MAX_LOGIT_BIAS_ENTRIES) in raised.value.message


def test_limits_named_in_metadata() -> None:
    assert expect_error("CANDIDATES_OUT_OF_RANGE", "n", n=9).metadata["limit"] == "8"
    assert expect_error("LOGPROBS_OUT_OF_RANGE", "logprobs", logprobs=6).metadata["limit"] == "5"
    token = expect_error("TOKEN_ID_INVALID", "stop_token_ids[0]", stop_token_ids=[5000])
    assert token.metadata["vocab_size"] == "1000"


@pytest.mark.parametrize(
    ("fields", "field"), [({"min_tokens": 3}, "min_tokens"), ({"ignore_eos": True}, "ignore_eos")]
)
def test_grammar_refuses_min_tokens_and_ignore_eos(fields: dict[str, Any], field: str) -> None:
    sampling = applied(**fields)
    check_sampling_with_constraints(sampling, has_grammar=False, p="request.sampling")
    with pytest.raises(ServiceError) as raised:
        check_sampling_with_constraints(sampling, has_grammar=True, p="request.sampling")
    assert raised.value.reason == "SAMPLING_PARAM_INVALID"
    assert raised.value.metadata["field"] == f"request.sampling.{field}"
    assert "grammar" in raised.value.message


# -- Tokenize / Detokenize --------------------------------------------------------------


def test_tokenize_text_or_messages() -> None:
    text = validate_tokenize(s.TokenizeRequest(text="hi", return_tokens=True))
    assert (text.text, text.messages, text.return_tokens) == ("hi", (), True)
    chat = validate_tokenize(
        s.TokenizeRequest(messages=[g.ChatMessage(role=g.CHAT_ROLE_USER, content="hi")])
    )
    assert chat.text is None
    assert chat.messages == (("user", "hi"),)


@pytest.mark.parametrize(
    ("request_", "reason", "field"),
    [
        (s.TokenizeRequest(), "PROMPT_EMPTY", "text"),
        (
            s.TokenizeRequest(
                text="x", messages=[g.ChatMessage(role=g.CHAT_ROLE_USER, content="y")]
            ),
            "PROMPT_INVALID",
            "messages",
        ),
        (
            s.TokenizeRequest(messages=[g.ChatMessage(content="y")]),
            "PROMPT_INVALID",
            "messages[0].role",
        ),
    ],
    ids=["empty", "both", "no role"],
)
def test_tokenize_rejects(request_: s.TokenizeRequest, reason: str, field: str) -> None:
    with pytest.raises(ServiceError) as raised:
        validate_tokenize(request_)
    assert raised.value.reason == reason
    assert raised.value.metadata["field"] == field


def test_detokenize_checks_ids() -> None:
    assert validate_detokenize(s.DetokenizeRequest(token_ids=[0, 999]), VOCAB, 4096) == [0, 999]
    with pytest.raises(ServiceError) as raised:
        validate_detokenize(s.DetokenizeRequest(token_ids=[1, 1000]), VOCAB, 4096)
    assert raised.value.reason == "TOKEN_ID_INVALID"
    assert raised.value.metadata["field"] == "token_ids[1]"
    with pytest.raises(ServiceError) as raised:
        validate_detokenize(s.DetokenizeRequest(token_ids=[1] * 11), VOCAB, 10)
    assert raised.value.reason == "REQUEST_FIELD_INVALID"
