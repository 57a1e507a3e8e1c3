"""Reasoning models (ananke_server.reasoning) without an engine: request
plans and their errors, the wrapped grammar (reasoning region + the request's
grammar) with real llguidance matchers and the default model's tokenizer,
the stream splitter, and where the answer starts in an output's tokens."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import generation_pb2
from ananke_server.errors import ServiceError
from ananke_server.reasoning import (
    ReasoningPlan,
    StreamSplitter,
    plan_for,
    prompt_suffix,
    reasoning_info,
    reasoning_tags,
    split_text,
    split_tokens,
    wrap_grammar,
)
from ananke_server.settings import Settings
from default_tokenizer import compiled_grammars, default_llg_tokenizer
from llguidance import LLMatcher, LLTokenizer

PLAN = ReasoningPlan("<think>", "</think>", 200)
SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}},
    "required": ["a"],
    "additionalProperties": False,
}
ON = Settings(reasoning_tags="think")


@pytest.fixture(scope="module")
def tok() -> LLTokenizer:
    return default_llg_tokenizer()


def accepts(tok: LLTokenizer, grammar: str, text: str) -> bool:
    matcher = LLMatcher(tok, grammar)
    return matcher.consume_tokens(tok.tokenize_str(text)) and matcher.is_accepting()


def test_tags_and_plans() -> None:
    assert reasoning_tags("") is None
    assert reasoning_tags("think") == ("<think>", "</think>")
    assert reasoning_tags("[[ ]]") == ("[[", "]]")
    assert plan_for(generation_pb2.GenerationRequest(), Settings()) is None
    assert plan_for(generation_pb2.GenerationRequest(), ON) == ReasoningPlan(
        "<think>", "</think>", 2000
    )
    off = generation_pb2.GenerationRequest(reasoning=False)
    assert plan_for(off, ON) is None
    asked = generation_pb2.GenerationRequest(reasoning=True, reasoning_max_chars=50)
    assert plan_for(asked, replace(ON, reasoning_default=False)) == replace(PLAN, max_chars=50)
    assert reasoning_info(Settings()) == {}
    assert reasoning_info(ON)["reasoning_end_tag"] == "</think>"
    assert prompt_suffix(ON) == ""
    assert prompt_suffix(replace(ON, reasoning_open_prompt=True)) == "<think>"


@pytest.mark.parametrize(
    ("request_fields", "settings", "reason", "field"),
    [
        ({"reasoning": True}, Settings(), "REASONING_UNAVAILABLE", "request.reasoning"),
        ({"reasoning_max_chars": 0}, ON, "REASONING_INVALID", "request.reasoning_max_chars"),
        ({"reasoning_max_chars": 2001}, ON, "REASONING_INVALID", "request.reasoning_max_chars"),
    ],
)
def test_bad_reasoning_fields(
    request_fields: dict[str, object], settings: Settings, reason: str, field: str
) -> None:
    request = generation_pb2.GenerationRequest(**request_fields)  # type: ignore[arg-type]
    with pytest.raises(ServiceError) as raised:
        plan_for(request, settings)
    assert raised.value.reason == reason
    assert raised.value.metadata["field"] == field


def test_settings_reject_bad_tags() -> None:
    from ananke_server.settings import validate_settings as validate

    with pytest.raises(ValueError, match="reasoning_tags"):
        validate(Settings(reasoning_tags="<a> <b> <c>"))


@pytest.mark.parametrize(
    "constraint",
    [
        c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema=json.dumps(SCHEMA))),
        c.ConstraintIR(regex=c.RegexConstraint(pattern=r"\{\"a\":[0-9]+\}")),
    ],
    ids=["json_schema", "regex"],
)
async def test_wrapped_grammar_constrains_only_the_answer(
    tok: LLTokenizer, constraint: c.ConstraintIR
) -> None:
    (grammar,) = await compiled_grammars(tok, [constraint])
    wrapped = wrap_grammar(grammar, PLAN)
    assert LLMatcher.validate_grammar(wrapped, tok) == ""
    assert accepts(tok, wrapped, 'Let me think: "a" {is} 5.</think>{"a":5}')
    assert accepts(tok, wrapped, '<think>one </thin k> two</think>{"a":12}')
    assert not accepts(tok, wrapped, 'no end tag {"a":5}')
    assert not accepts(tok, wrapped, 'thought</think>{"a":"x"}')
    # The answer starts at the first end tag: a second one is answer text.
    assert not accepts(tok, wrapped, 'a</think>b</think>{"a":5}')
    # Past max_chars of reasoning only the end tag may follow.
    long = wrap_grammar(grammar, replace(PLAN, max_chars=10))
    assert accepts(tok, long, 'abcdefghij</think>{"a":1}')
    assert not accepts(tok, long, 'abcdefghijk</think>{"a":1}')


def test_stream_splitter_holds_back_partial_tags() -> None:
    splitter = StreamSplitter(PLAN)
    pieces = ["<th", "ink>I ", "think </", "b> so</th", "ink", '>{"a"', ": 1}"]
    out = [splitter.feed(piece) for piece in pieces]
    reasoning = "".join(r for r, _ in out)
    answer = "".join(a for _, a in out)
    assert reasoning == "I think </b> so"
    assert answer == '{"a": 1}'
    assert out[0] == ("", "")  # "<th" may open the start tag
    assert out[3] == ("</b> so", "")  # "</th" may open the end tag
    assert splitter.flush() == ""
    unfinished = StreamSplitter(PLAN)
    assert unfinished.feed("still </thi") == ("still ", "")
    assert unfinished.flush() == "</thi"
    assert split_text('<think>x</think>{"a": 1}', PLAN) == ("x", '{"a": 1}')
    assert split_text("x </thi", PLAN) == ("x </thi", None)


def test_split_tokens_finds_the_answer_start(tok: LLTokenizer) -> None:
    eos = frozenset({tok.eos_token})
    text = 'Hmm, numbers.</think>{"a": 7}'
    ids = [*tok.tokenize_str(text), tok.eos_token]
    split = split_tokens(ids, tok, PLAN, eos)
    assert split.ended
    assert split.start_char == text.index("{")
    assert split.reasoning_chars == len("Hmm, numbers.")
    assert bytes(tok.decode_bytes(split.answer_ids[:-1])) == b'{"a": 7}'
    assert split.answer_ids[-1] == tok.eos_token
    assert bytes(tok.decode_bytes(ids[split.start_token :])).startswith(b"{")
    # A token the end tag ends inside ("</think>" then ">{" as one token).
    straddle = [*tok.tokenize_str("ok</think"), *tok.tokenize_str('>{"a": 1}')]
    split = split_tokens(straddle, tok, PLAN, eos)
    assert bytes(tok.decode_bytes(split.answer_ids)) == b'{"a": 1}'
    assert split.start_char == len("ok</think>")
    open_only = split_tokens(tok.tokenize_str("<think>no end"), tok, PLAN, eos)
    assert not open_only.ended
    assert open_only.answer_ids == []
    assert open_only.reasoning_chars == len("no end")
