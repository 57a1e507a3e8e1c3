"""The constraint builders produce the protos the contract describes."""

from __future__ import annotations

import json

import pytest
from ananke import constraints as c
from ananke.v1 import constraints_pb2 as pb


def test_json_schema_from_dict_keeps_key_order() -> None:
    schema = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}
    ir = c.json_schema(schema, name="user", priority=3)
    assert ir.WhichOneof("kind") == "json_schema"
    assert (ir.name, ir.priority) == ("user", 3)
    assert json.loads(ir.json_schema.schema) == schema
    assert list(json.loads(ir.json_schema.schema)["properties"]) == ["b", "a"]
    assert not ir.json_schema.HasField("options")


def test_json_schema_from_str_is_sent_verbatim() -> None:
    text = '{"type": "integer"   }'
    assert c.json_schema(text).json_schema.schema == text
    assert c.json_schema("not json").json_schema.schema == "not json"


def test_json_schema_options_only_set_when_given() -> None:
    ir = c.json_schema({}, whitespace_flexible=False, key_separator=": ")
    options = ir.json_schema.options
    assert options.HasField("whitespace_flexible")
    assert options.whitespace_flexible is False
    assert options.key_separator == ": "
    assert not options.HasField("lenient")
    assert not options.HasField("item_separator")


def test_regex() -> None:
    ir = c.regex(r"\d{3}")
    assert ir.WhichOneof("kind") == "regex"
    assert ir.regex.pattern == r"\d{3}"


@pytest.mark.parametrize(
    ("text", "syntax", "expected"),
    [
        ('root ::= "a" | "b"', None, pb.GRAMMAR_SYNTAX_GBNF),
        ('start: "a" | "b"', None, pb.GRAMMAR_SYNTAX_LARK),
        ('start: "a"', "gbnf", pb.GRAMMAR_SYNTAX_GBNF),
        ('root ::= "a"', "lark", pb.GRAMMAR_SYNTAX_LARK),
    ],
)
def test_grammar_syntax(text: str, syntax: c.GrammarSyntaxName | None, expected: int) -> None:
    ir = c.grammar(text, syntax)
    assert ir.grammar.syntax == expected
    assert ir.grammar.text == text


def test_lark_and_gbnf_shortcuts() -> None:
    assert c.lark('start: "x"').grammar.syntax == pb.GRAMMAR_SYNTAX_LARK
    assert c.gbnf('root ::= "x"').grammar.syntax == pb.GRAMMAR_SYNTAX_GBNF


def test_choice() -> None:
    assert list(c.choice(["yes", "no"]).choice.options) == ["yes", "no"]
    with pytest.raises(TypeError):
        c.choice("yes")


def test_token_mask() -> None:
    ir = c.token_mask(allowed=[1, 2], forbidden=[3])
    assert list(ir.token_mask.allowed_token_ids) == [1, 2]
    assert list(ir.token_mask.forbidden_token_ids) == [3]


@pytest.mark.parametrize(
    ("builder", "combinator"),
    [
        (c.sequence, pb.COMBINATOR_SEQUENCE),
        (c.any_of, pb.COMBINATOR_ANY_OF),
        (c.all_of, pb.COMBINATOR_ALL_OF),
    ],
)
def test_composites(builder: object, combinator: int) -> None:
    inner = c.any_of(c.regex("a"), c.choice(["b"]))
    ir = builder(c.regex("x+"), inner, name="combo")  # type: ignore[operator]
    assert ir.WhichOneof("kind") == "composite"
    assert ir.composite.combinator == combinator
    assert [p.WhichOneof("kind") for p in ir.composite.parts] == ["regex", "composite"]
    assert ir.composite.parts[1].composite.combinator == pb.COMBINATOR_ANY_OF
    assert ir.name == "combo"


def test_composite_rejects_non_constraints() -> None:
    with pytest.raises(TypeError):
        c.sequence(c.regex("a"), "b")  # type: ignore[arg-type]


def test_negative_priority_is_refused() -> None:
    with pytest.raises(ValueError, match="priority"):
        c.regex("a", priority=-1)


def test_unknown_grammar_syntax_is_refused() -> None:
    with pytest.raises(ValueError, match="syntax"):
        c.grammar("x", "ebnf")  # type: ignore[arg-type]


def test_structural_regions() -> None:
    block = c.region("```json\n", c.json_schema({"type": "object"}), trigger="```", end="\n```")
    ir = c.structural(block, c.region("<tool_call>", c.regex("[a-z]+")), min_regions=1, name="a")
    assert ir.name == "a"
    assert ir.WhichOneof("kind") == "structural"
    first, second = ir.structural.regions
    assert (first.begin, first.trigger, first.end) == ("```json\n", "```", "\n```")
    assert first.constraint.json_schema.schema == '{"type": "object"}'
    assert (second.begin, second.trigger, second.end) == ("<tool_call>", "", "")
    assert (ir.structural.min_regions, ir.structural.max_regions) == (1, 0)
    with pytest.raises(ValueError, match="prefix"):
        c.region("<a>", c.regex("x"), trigger="<b")
    with pytest.raises(TypeError):
        c.structural("<a>")  # type: ignore[arg-type]
