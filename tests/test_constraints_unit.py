"""ConstraintCompiler with llguidance's model-free byte tokenizer (token id =
byte value): valid constraints of every kind, invalid ones with their
ErrorInfo reason and field path, the compile cache, the digest, and
ValidateConstraints verdicts."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import provenance_pb2
from ananke_server.constraints import (
    LARK_HEADER,
    MAX_NESTING_DEPTH,
    MAX_TOP_LEVEL_CONSTRAINTS,
    CompiledConstraints,
    ConstraintCompiler,
    constraint_digest,
    kind_of,
    kind_of_combinator,
)
from ananke_server.errors import ServiceError
from llguidance import LLMatcher, LLTokenizer

TOKENIZER = LLTokenizer("byte")
VOCAB = TOKENIZER.vocab_size
EOS = (TOKENIZER.eos_token,)
MAX_BYTES = 4096
SATISFIED = provenance_pb2.CHECK_VERDICT_SATISFIED
INCOMPLETE = provenance_pb2.CHECK_VERDICT_INCOMPLETE
VIOLATED = provenance_pb2.CHECK_VERDICT_VIOLATED
SEQ, ANY, ALL = c.COMBINATOR_SEQUENCE, c.COMBINATOR_ANY_OF, c.COMBINATOR_ALL_OF
LARK, GBNF = c.GRAMMAR_SYNTAX_LARK, c.GRAMMAR_SYNTAX_GBNF


def make_compiler(**overrides: object) -> ConstraintCompiler:
    options: dict[str, object] = {
        "vocab_size": VOCAB,
        "tokenizer_id": "byte",
        "max_constraint_bytes": MAX_BYTES,
        "cache_size": 64,
        "timeout_s": 10.0,
        "workers": 1,
    }
    options.update(overrides)
    return ConstraintCompiler(TOKENIZER, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def compiler() -> Iterator[ConstraintCompiler]:
    compiler = make_compiler()
    yield compiler
    compiler.close()


# -- builders -------------------------------------------------------------------


def regex(pattern: str, **kw: object) -> c.ConstraintIR:
    return c.ConstraintIR(regex=c.RegexConstraint(pattern=pattern), **kw)  # type: ignore[arg-type]


def schema(
    text: str | dict[str, object], options: c.JsonSchemaOptions | None = None
) -> c.ConstraintIR:
    body = text if isinstance(text, str) else json.dumps(text)
    return c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema=body, options=options))


def grammar(text: str, syntax: int = LARK) -> c.ConstraintIR:
    return c.ConstraintIR(grammar=c.GrammarConstraint(syntax=syntax, text=text))  # type: ignore[arg-type]


def choice(*options: str) -> c.ConstraintIR:
    return c.ConstraintIR(choice=c.ChoiceConstraint(options=options))


def mask(allowed: str | list[int] = (), forbidden: str | list[int] = ()) -> c.ConstraintIR:  # type: ignore[assignment]
    def ids(v: str | list[int]) -> list[int]:
        return [ord(ch) for ch in v] if isinstance(v, str) else list(v)

    return c.ConstraintIR(
        token_mask=c.TokenMaskConstraint(
            allowed_token_ids=ids(allowed), forbidden_token_ids=ids(forbidden)
        )
    )


def composite(combinator: int, *parts: c.ConstraintIR) -> c.ConstraintIR:
    return c.ConstraintIR(composite=c.CompositeConstraint(combinator=combinator, parts=parts))  # type: ignore[arg-type]


def nested(depth: int) -> c.ConstraintIR:
    """`depth` composites nested inside one another around one regex."""
    inner = regex("a")
    for _ in range(depth):
        inner = composite(SEQ, inner)
    return inner


def tokens(text: str) -> list[int]:
    return list(text.encode())


OBJ = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "array", "items": {"type": "string"}}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
INT_A = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
MIN_A = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 5}}}


@dataclass(frozen=True)
class Valid:
    id: str
    constraints: list[c.ConstraintIR]
    good: str
    prefix: str | None  # a proper prefix of `good`: INCOMPLETE (None: not applicable)
    bad: str
    enforcement: str = "grammar"


VALID = [
    Valid("json", [schema(OBJ)], '{"a":1,"b":["x"]}', '{"a":1,', '{"a":"x"}'),
    Valid(
        "json-separators",
        [schema(OBJ, c.JsonSchemaOptions(item_separator=", ", key_separator=": "))],
        '{"a": 1, "b": ["x", "y"]}',
        '{"a": 1, "b": [',
        '{"a":1,"b":[]}',
    ),
    Valid(
        "json-whitespace-flexible",
        [schema(OBJ, c.JsonSchemaOptions(whitespace_flexible=True))],
        '{ "a" : 1 ,\n "b": [ ] }',
        '{ "a" : 1',
        '{"b":[],"a":1}',
    ),
    Valid(
        "json-lenient",
        [schema({"type": "string", "format": "bogus"}, c.JsonSchemaOptions(lenient=True))],
        '"x"',
        '"x',
        "x",
    ),
    Valid(
        "json-coerce-one-of",
        [
            schema(
                {"oneOf": [{"type": "integer"}, {"type": "boolean"}]},
                c.JsonSchemaOptions(coerce_one_of=True),
            )
        ],
        "true",
        "tr",
        '"s"',
    ),
    Valid("json-true-schema", [schema("true")], '[1,{"x":null}]', "[1,", "}"),
    Valid("regex", [regex(r"[a-z]+_\d{2}")], "abc_12", "abc_1", "abc_123"),
    Valid(
        "lark",
        [grammar('start: "def " NAME "():"\nNAME: /[a-z_]+/')],
        "def fib():",
        "def fib",
        "def 1():",
    ),
    Valid("lark-json", [grammar('start: "x=" %json {"type":"integer"}')], "x=12", "x=", "y=1"),
    Valid(
        "gbnf", [grammar('root ::= "def " name\nname ::= [a-z]+', GBNF)], "def foo", "def ", "def 1"
    ),
    Valid("choice", [choice("yes", "no", "yes")], "yes", "ye", "maybe"),
    Valid("mask-allowed", [mask(allowed="ab")], "abba", None, "abc", "token_mask"),
    Valid("mask-forbidden", [mask(forbidden="q")], "abc", None, "aqc", "token_mask"),
    Valid(
        "sequence-regex-json",
        [composite(SEQ, regex(r"HTTP \d{3}\n"), schema(INT_A))],
        'HTTP 200\n{"a":5}',
        "HTTP 200\n",
        'HTTP 20\n{"a":5}',
    ),
    Valid("any-of-regexes", [composite(ANY, regex(r"\d+"), regex("[a-z]+"))], "abc", "", "ab1"),
    Valid("all-of-regexes", [composite(ALL, regex("[a-z]+"), regex(".{3}"))], "abc", "ab", "abcd"),
    Valid(
        "all-of-json", [composite(ALL, schema(INT_A), schema(MIN_A))], '{"a":7}', '{"a"', '{"a":3}'
    ),
    Valid(
        "top-level-regexes-intersect",
        [regex("[a-z]+"), regex(".{3}")],
        "abc",
        "ab",
        "abcd",
    ),
    Valid(
        "top-level-json-and-mask",
        [schema(INT_A), mask(forbidden=" ")],
        '{"a":1}',
        '{"a":',
        '{"a": 1}',
        "logits_processor(1 grammars)+token_mask",
    ),
    Valid(
        "all-of-regex-and-mask",
        [composite(ALL, regex("[a-z]+"), mask(forbidden="q"))],
        "abc",
        "",
        "aqc",
        "logits_processor(1 grammars)+token_mask",
    ),
    Valid(
        "all-of-lark-and-regex",
        [composite(ALL, grammar('start: /[a-z]+/ "!"'), regex("[a-c]+!"))],
        "abc!",
        "abc",
        "abd!",
        "logits_processor(2 grammars)",
    ),
    Valid(
        "top-level-regex-and-json",
        [regex(r"\{.*\}"), schema(INT_A)],
        '{"a":12}',
        '{"a":',
        '{"b":1}',
        "logits_processor(2 grammars)",
    ),
    Valid(
        "nested",
        [
            composite(
                SEQ,
                composite(ANY, regex("fn"), choice("def")),
                regex(" "),
                composite(ALL, regex("[a-z]+"), regex("[a-m]{2,4}")),
                grammar('start: "(" ")"'),
            )
        ],
        "def abc()",
        "def ab",
        "def abcdef()",
    ),
    Valid("nesting-at-the-limit", [nested(MAX_NESTING_DEPTH)], "a", "", "b"),
    Valid(
        "structural",
        [
            c.ConstraintIR(
                structural=c.StructuralConstraint(
                    regions=[
                        c.ConstrainedRegion(begin="<n>", end="</n>", constraint=regex("[0-9]+"))
                    ]
                )
            )
        ],
        "sum <n>12</n> ok",
        "sum <n>1",
        "sum <n>x</n>",
    ),
]


@pytest.mark.parametrize("case", VALID, ids=[v.id for v in VALID])
async def test_valid_constraint(compiler: ConstraintCompiler, case: Valid) -> None:
    compiled, _ = await compiler.compile(case.constraints, "request.constraints")
    assert compiled.constrained
    assert compiled.digest == constraint_digest(case.constraints)
    assert compiled.enforcement == case.enforcement
    mode = compiled.enforcement_mode
    assert (mode == provenance_pb2.ENFORCEMENT_INTERSECTION) == bool(compiled.intersection)
    assert (mode == provenance_pb2.ENFORCEMENT_GRAMMAR) == (compiled.grammar is not None)
    if mode == provenance_pb2.ENFORCEMENT_TOKEN_MASK:
        assert compiled.has_token_mask
    if case.enforcement.startswith("grammar"):
        assert compiled.grammar is not None
        assert compiled.grammar.startswith(LARK_HEADER)
        assert compiled.intersection == ()
    else:
        assert compiled.grammar is None
    if case.enforcement.startswith("logits_processor"):
        assert compiled.intersection
        assert compiled.has_grammar
        assert not compiler.dead_end(compiled, ())
    assert [s.kind for s in compiled.summaries] == [kind_of(x) for x in case.constraints]

    verdict, detail = compiler.check_output(compiled, tokens(case.good), EOS)
    assert (verdict, detail) == (SATISFIED, "")
    # Trailing end-of-sequence tokens are not part of the output.
    assert compiler.check_output(compiled, [*tokens(case.good), *EOS], EOS)[0] == SATISFIED
    if case.prefix is not None:
        assert case.good.startswith(case.prefix)
        verdict, detail = compiler.check_output(compiled, tokens(case.prefix), EOS)
        assert verdict == INCOMPLETE, detail
        assert detail.startswith("not complete")
    verdict, detail = compiler.check_output(compiled, tokens(case.bad), EOS)
    assert verdict == VIOLATED, detail
    assert detail


def test_all_kinds_covered() -> None:
    kinds = {kind_of(x) for case in VALID for x in case.constraints}
    assert kinds == set(c.ConstraintKind.values()) - {c.CONSTRAINT_KIND_UNSPECIFIED}


async def test_unconstrained(compiler: ConstraintCompiler) -> None:
    compiled, _ = await compiler.compile([], "request.constraints")
    assert not compiled.constrained
    assert compiled.digest == ""
    assert compiled.grammar is None
    assert compiled.enforcement == "none"
    assert compiled.enforcement_mode == provenance_pb2.ENFORCEMENT_NONE
    assert compiler.check_output(compiled, tokens("anything"), EOS) == (
        provenance_pb2.CHECK_VERDICT_UNCONSTRAINED,
        "",
    )


async def test_warnings_reported(compiler: ConstraintCompiler) -> None:
    lenient = schema({"type": "string", "format": "bogus"}, c.JsonSchemaOptions(lenient=True))
    compiled, _ = await compiler.compile([lenient], "request.constraints")
    assert any("bogus" in w for w in compiled.warnings)


async def test_request_options_beat_schema_x_guidance(compiler: ConstraintCompiler) -> None:
    body = {**INT_A, "x-guidance": {"key_separator": ": "}}
    own, _ = await compiler.compile([schema(body)], "c")
    assert compiler.check_output(own, tokens('{"a": 1}'), EOS)[0] == SATISFIED
    overridden, _ = await compiler.compile(
        [schema(body, c.JsonSchemaOptions(key_separator=":"))], "c"
    )
    assert compiler.check_output(overridden, tokens('{"a":1}'), EOS)[0] == SATISFIED
    assert compiler.check_output(overridden, tokens('{"a": 1}'), EOS)[0] == VIOLATED


async def test_check_reports_the_violated_constraint_by_name(compiler: ConstraintCompiler) -> None:
    compiled, _ = await compiler.compile(
        [regex("[a-z]+", name="letters"), regex(".{3}", name="three")], "c"
    )
    verdict, detail = compiler.check_output(compiled, tokens("abcd"), EOS)
    assert verdict == VIOLATED
    assert detail.startswith("three:")


async def test_mask_inside_all_of_is_enforced(compiler: ConstraintCompiler) -> None:
    # (At fe5b769 the mask of an all_of composite was dropped at top level.)
    compiled, _ = await compiler.compile(
        [composite(ALL, regex("[a-z]+"), mask(forbidden="q"))], "request.constraints"
    )
    assert compiled.forbidden_token_ids == frozenset({ord("q")})
    assert compiler.check_output(compiled, tokens("aqc"), EOS)[0] == VIOLATED


async def test_dead_end_during_output(compiler: ConstraintCompiler) -> None:
    # The space is forbidden: no common output. The completion search sees it
    # when compiling; dead_end() proves it only once the output reaches it.
    with pytest.raises(ServiceError) as refused:
        await compiler.compile([regex("Hel+o world"), mask(forbidden=" ")], "request.constraints")
    assert refused.value.reason == "CONSTRAINT_UNSATISFIABLE"
    assert refused.value.metadata["cause"] == "exhausted"
    compiled = CompiledConstraints(
        digest="",
        grammar=None,
        check_grammars=(),
        summaries=(),
        allowed_token_ids=None,
        forbidden_token_ids=frozenset(tokens(" ")),
        warnings=(),
        intersection=(LLMatcher.grammar_from_regex("Hel+o world"),),
    )
    assert not compiler.dead_end(compiled, ())
    assert not compiler.dead_end(compiled, tokens("Hel"))
    assert compiler.dead_end(compiled, tokens("Hello"))  # the space is forbidden
    assert not compiler.dead_end(compiled, tokens("Hx"))  # refused tokens are not a dead end


# -- invalid constraints ----------------------------------------------------------


@dataclass(frozen=True)
class Invalid:
    id: str
    constraints: list[c.ConstraintIR]
    reason: str
    field: str
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT


P = "request.constraints"
INVALID = [
    Invalid("json-not-json", [schema("{")], "JSON_SCHEMA_INVALID", f"{P}[0].json_schema.schema"),
    Invalid("json-empty", [schema("  ")], "JSON_SCHEMA_INVALID", f"{P}[0].json_schema.schema"),
    Invalid("json-array", [schema("[1]")], "JSON_SCHEMA_INVALID", f"{P}[0].json_schema.schema"),
    Invalid(
        "json-unknown-type",
        [schema({"type": "foo"})],
        "JSON_SCHEMA_INVALID",
        f"{P}[0].json_schema.schema",
    ),
    Invalid(
        "json-remote-ref",
        [schema({"$ref": "https://example.com/s.json"})],
        "JSON_SCHEMA_INVALID",
        f"{P}[0].json_schema.schema",
    ),
    Invalid(
        "json-unknown-format-strict",
        [schema({"type": "string", "format": "bogus"}, c.JsonSchemaOptions(strict=True))],
        "JSON_SCHEMA_INVALID",
        f"{P}[0].json_schema.schema",
    ),
    Invalid(
        "json-one-of-without-coerce",
        [
            schema(
                {"oneOf": [{"type": "integer"}, {"type": "number"}]},
                c.JsonSchemaOptions(strict=True),
            )
        ],
        "JSON_SCHEMA_INVALID",
        f"{P}[0].json_schema.schema",
    ),
    Invalid("regex-lookaround", [regex("ab(?=c)")], "REGEX_INVALID", f"{P}[0].regex.pattern"),
    Invalid("regex-backreference", [regex(r"(a)\1")], "REGEX_INVALID", f"{P}[0].regex.pattern"),
    Invalid("regex-unclosed", [regex("ab(")], "REGEX_INVALID", f"{P}[0].regex.pattern"),
    Invalid("regex-empty", [regex("")], "REGEX_INVALID", f"{P}[0].regex.pattern"),
    Invalid(
        "lark-unknown-rule",
        [grammar('start: "a" b\nb: "x" | c')],
        "GRAMMAR_INVALID",
        f"{P}[0].grammar.text",
    ),
    Invalid("lark-syntax", [grammar('start: "a" (')], "GRAMMAR_INVALID", f"{P}[0].grammar.text"),
    Invalid(
        "grammar-no-syntax", [grammar('start: "a"', 0)], "GRAMMAR_INVALID", f"{P}[0].grammar.syntax"
    ),
    Invalid("grammar-empty", [grammar(" \n")], "GRAMMAR_INVALID", f"{P}[0].grammar.text"),
    Invalid(
        "gbnf-bad",
        [grammar('root ::= "def" name ::=', GBNF)],
        "GRAMMAR_INVALID",
        f"{P}[0].grammar.text",
    ),
    Invalid("choice-empty", [choice()], "CHOICE_INVALID", f"{P}[0].choice.options"),
    Invalid(
        "choice-empty-option", [choice("a", "")], "CHOICE_INVALID", f"{P}[0].choice.options[1]"
    ),
    Invalid(
        "choice-too-many",
        [choice(*(str(i) for i in range(10_001)))],
        "CHOICE_INVALID",
        f"{P}[0].choice.options",
    ),
    Invalid("mask-empty", [mask()], "TOKEN_MASK_INVALID", f"{P}[0].token_mask"),
    Invalid(
        "mask-allowed-out-of-vocab",
        [mask(allowed=[1, VOCAB])],
        "TOKEN_MASK_INVALID",
        f"{P}[0].token_mask.allowed_token_ids[1]",
    ),
    Invalid(
        "mask-forbidden-out-of-vocab",
        [mask(forbidden=[VOCAB + 1000])],
        "TOKEN_MASK_INVALID",
        f"{P}[0].token_mask.forbidden_token_ids[0]",
    ),
    Invalid("composite-empty", [composite(SEQ)], "COMPOSITE_INVALID", f"{P}[0].composite.parts"),
    Invalid(
        "composite-no-combinator",
        [composite(0, regex("a"))],
        "COMPOSITE_INVALID",
        f"{P}[0].composite.combinator",
    ),
    Invalid(
        "composite-too-deep",
        [nested(MAX_NESTING_DEPTH + 1)],
        "COMPOSITE_INVALID",
        f"{P}[0]" + ".composite.parts[0]" * MAX_NESTING_DEPTH + ".composite",
    ),
    Invalid(
        "all-of-regex-and-json-disjoint",
        [composite(ALL, regex("a"), schema(INT_A))],
        "CONSTRAINT_UNSATISFIABLE",
        P,
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Invalid(
        "top-level-regex-and-json-disjoint",
        [regex("a"), schema(INT_A)],
        "CONSTRAINT_UNSATISFIABLE",
        P,
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Invalid(
        "mask-forbids-every-start",
        [regex("a+"), mask(forbidden="a")],
        "CONSTRAINT_UNSATISFIABLE",
        P,
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Invalid(
        "intersection-inside-sequence",
        [composite(SEQ, composite(ALL, regex("[0-9]+"), schema({"type": "integer"})), regex("x"))],
        "CONSTRAINT_UNSUPPORTED",
        f"{P}[0].composite.parts[0]",
        grpc.StatusCode.UNIMPLEMENTED,
    ),
    Invalid(
        "masked-all-of-inside-any-of",
        [composite(ANY, regex("b"), composite(ALL, regex("a"), mask(forbidden="q")))],
        "CONSTRAINT_UNSUPPORTED",
        f"{P}[0].composite.parts[1]",
        grpc.StatusCode.UNIMPLEMENTED,
    ),
    Invalid(
        "mask-inside-sequence",
        [composite(SEQ, regex("a"), mask(forbidden="b"))],
        "CONSTRAINT_UNSUPPORTED",
        f"{P}[0].composite.parts[1]",
        grpc.StatusCode.UNIMPLEMENTED,
    ),
    Invalid(
        "regex-too-large",
        [regex("a" * (MAX_BYTES + 1))],
        "CONSTRAINT_TOO_LARGE",
        f"{P}[0].regex.pattern",
    ),
    Invalid(
        "json-too-large",
        [schema(json.dumps({"description": "x" * MAX_BYTES}))],
        "CONSTRAINT_TOO_LARGE",
        f"{P}[0].json_schema.schema",
    ),
    Invalid(
        "grammar-too-large",
        [grammar('start: "' + "a" * MAX_BYTES + '"')],
        "CONSTRAINT_TOO_LARGE",
        f"{P}[0].grammar.text",
    ),
    Invalid(
        "choice-too-large",
        [choice("a" * (MAX_BYTES // 2), "b" * (MAX_BYTES // 2 + 1))],
        "CONSTRAINT_TOO_LARGE",
        f"{P}[0].choice.options",
    ),
    Invalid(
        "too-many-top-level",
        [regex("a")] * (MAX_TOP_LEVEL_CONSTRAINTS + 1),
        "CONSTRAINT_TOO_LARGE",
        P,
    ),
    Invalid("kind-unset", [c.ConstraintIR(name="nothing")], "CONSTRAINT_EMPTY", f"{P}[0]"),
    Invalid("name-too-long", [regex("a", name="n" * 129)], "REQUEST_FIELD_INVALID", f"{P}[0].name"),
    Invalid(
        "nested-part-invalid",
        [composite(SEQ, regex("a"), composite(ANY, choice("x"), regex("(")))],
        "REGEX_INVALID",
        f"{P}[0].composite.parts[1].composite.parts[1].regex.pattern",
    ),
    Invalid(
        "second-constraint-invalid",
        [regex("a"), c.ConstraintIR(priority=9, regex=c.RegexConstraint(pattern="(?<=a)"))],
        "REGEX_INVALID",
        f"{P}[1].regex.pattern",
    ),
]


def assert_error(error: ServiceError, reason: str, field: str, code: grpc.StatusCode) -> None:
    assert error.reason == reason, error.message
    assert error.metadata.get("field") == field, error.message
    assert error.code == code
    if error.violations:
        assert [v.field for v in error.violations] == [field]
    assert error.message


@pytest.mark.parametrize("case", INVALID, ids=[i.id for i in INVALID])
async def test_invalid_constraint(compiler: ConstraintCompiler, case: Invalid) -> None:
    with pytest.raises(ServiceError) as raised:
        await compiler.compile(case.constraints, P)
    assert_error(raised.value, case.reason, case.field, case.code)


def test_invalid_table_is_broad() -> None:
    assert len(INVALID) >= 25
    reasons = {i.reason for i in INVALID}
    assert reasons >= {
        "JSON_SCHEMA_INVALID",
        "REGEX_INVALID",
        "GRAMMAR_INVALID",
        "CHOICE_INVALID",
        "TOKEN_MASK_INVALID",
        "COMPOSITE_INVALID",
        "CONSTRAINT_UNSUPPORTED",
        "CONSTRAINT_UNSATISFIABLE",
        "CONSTRAINT_TOO_LARGE",
        "CONSTRAINT_EMPTY",
    }


async def test_json_syntax_error_has_position(compiler: ConstraintCompiler) -> None:
    with pytest.raises(ServiceError) as raised:
        await compiler.compile([schema('{\n  "type": }')], P)
    assert raised.value.metadata["line"] == "2"
    assert raised.value.metadata["column"] == "11"


async def test_x_guidance_not_an_object(compiler: ConstraintCompiler) -> None:
    with pytest.raises(ServiceError) as raised:
        await compiler.compile([schema('{"x-guidance": 1}')], P)
    assert_error(
        raised.value,
        "JSON_SCHEMA_INVALID",
        f"{P}[0].json_schema.schema",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_unknown_combinator_rejected(compiler: ConstraintCompiler) -> None:
    with pytest.raises(ServiceError) as raised:
        await compiler.compile([composite(99, regex("a"), regex("b"))], P)
    assert_error(
        raised.value,
        "COMPOSITE_INVALID",
        f"{P}[0].composite.combinator",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_unknown_grammar_syntax_rejected(compiler: ConstraintCompiler) -> None:
    with pytest.raises(ServiceError) as raised:
        await compiler.compile([grammar('start: "a"', 7)], P)
    assert_error(
        raised.value, "GRAMMAR_INVALID", f"{P}[0].grammar.syntax", grpc.StatusCode.INVALID_ARGUMENT
    )


# -- cache ----------------------------------------------------------------------------


async def test_cache_hit_on_second_compile() -> None:
    compiler = make_compiler(cache_size=4)
    try:
        first, hit1 = await compiler.compile([regex("a+")], P)
        second, hit2 = await compiler.compile([regex("a+")], P)
        assert (hit1, hit2) == (False, True)
        assert second is first
        stats = compiler.stats()
        assert (stats.size, stats.capacity, stats.hits, stats.misses) == (1, 4, 1, 1)
        # Equal content in a new message object is the same key.
        _, hit3 = await compiler.compile(
            [c.ConstraintIR.FromString(regex("a+").SerializeToString())], P
        )
        assert hit3
        assert compiler.stats().hits == 2
    finally:
        compiler.close()


async def test_cache_lru_eviction() -> None:
    compiler = make_compiler(cache_size=2)
    try:
        a, b, x = [regex("a")], [regex("b")], [regex("x")]
        assert (await compiler.compile(a, P))[1] is False
        assert (await compiler.compile(b, P))[1] is False
        assert (await compiler.compile(a, P))[1] is True  # a is now the most recent
        assert (await compiler.compile(x, P))[1] is False  # evicts b, the least recent
        assert compiler.stats().size == 2
        assert (await compiler.compile(a, P))[1] is True
        assert (await compiler.compile(b, P))[1] is False  # b was evicted
        stats = compiler.stats()
        assert (stats.size, stats.capacity, stats.hits, stats.misses) == (2, 2, 2, 4)
    finally:
        compiler.close()


async def test_cache_disabled() -> None:
    compiler = make_compiler(cache_size=0)
    try:
        for _ in range(2):
            assert (await compiler.compile([regex("a")], P))[1] is False
        stats = compiler.stats()
        assert (stats.size, stats.hits, stats.misses) == (0, 0, 2)
    finally:
        compiler.close()


async def test_cache_keeps_errors() -> None:
    compiler = make_compiler(cache_size=4)
    try:
        bad = [regex("(")]
        with pytest.raises(ServiceError) as first:
            await compiler.compile(bad, P)
        with pytest.raises(ServiceError) as second:
            await compiler.compile(bad, P)
        # The same error, as a fresh object (re-raising one object grows its traceback).
        assert second.value == first.value
        assert second.value is not first.value
        stats = compiler.stats()
        assert (stats.size, stats.hits, stats.misses) == (1, 1, 1)
    finally:
        compiler.close()


async def test_too_many_constraints_bypass_cache() -> None:
    compiler = make_compiler(cache_size=4)
    try:
        with pytest.raises(ServiceError):
            await compiler.compile([regex("a")] * (MAX_TOP_LEVEL_CONSTRAINTS + 1), P)
        assert compiler.stats().misses == 0
        await compiler.compile([regex("a")] * MAX_TOP_LEVEL_CONSTRAINTS, P)
    finally:
        compiler.close()


async def test_cached_error_names_the_callers_field_path() -> None:
    compiler = make_compiler(cache_size=4)
    try:
        with pytest.raises(ServiceError):
            await compiler.compile([regex("(")], "constraints")
        with pytest.raises(ServiceError) as raised:
            await compiler.compile([regex("(")], "request.constraints")
        assert raised.value.metadata["field"] == "request.constraints[0].regex.pattern"
    finally:
        compiler.close()


async def test_cached_error_names_the_request_index() -> None:
    compiler = make_compiler(cache_size=4)
    bad = regex("(")
    good = regex("x", priority=1)
    try:
        with pytest.raises(ServiceError) as first:
            await compiler.compile([bad, good], P)
        assert first.value.metadata["field"] == f"{P}[0].regex.pattern"
        with pytest.raises(ServiceError) as second:
            await compiler.compile([good, bad], P)
        assert second.value.metadata["field"] == f"{P}[1].regex.pattern"
    finally:
        compiler.close()


async def test_cached_error_traceback_does_not_grow() -> None:
    compiler = make_compiler(cache_size=4)
    try:
        depths = []
        for _ in range(3):
            try:
                await compiler.compile([regex("(")], P)
            except ServiceError as error:
                depths.append(len(traceback.extract_tb(error.__traceback__)))
        assert depths[1] == depths[2]
    finally:
        compiler.close()


async def test_compile_timeout() -> None:
    compiler = make_compiler(timeout_s=1e-6, cache_size=4, max_constraint_bytes=1 << 20)
    big = [choice(*(f"option-{i}" for i in range(3000)))]
    try:
        with pytest.raises(ServiceError) as raised:
            await compiler.compile(big, P)
        assert raised.value.reason == "CONSTRAINT_COMPILE_TIMEOUT"
        assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        compiler.close()


async def test_validate_timeout_is_a_service_error() -> None:
    compiler = make_compiler(timeout_s=1e-6, max_constraint_bytes=1 << 20)
    try:
        with pytest.raises(ServiceError) as raised:
            await compiler.validate([choice(*(f"option-{i}" for i in range(3000)))])
        assert raised.value.reason == "CONSTRAINT_COMPILE_TIMEOUT"
    finally:
        compiler.close()


# -- digest -------------------------------------------------------------------------------


def test_digest_is_stable_sha256() -> None:
    items = [regex("a", name="r"), schema(INT_A)]
    digest = constraint_digest(items)
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert digest == constraint_digest(
        [c.ConstraintIR.FromString(x.SerializeToString()) for x in items]
    )
    hasher = hashlib.sha256()
    for item in items:
        blob = item.SerializeToString(deterministic=True)
        hasher.update(len(blob).to_bytes(8, "big") + blob)
    assert digest == hasher.hexdigest()
    assert constraint_digest([]) == ""


def test_digest_orders_by_priority() -> None:
    low, high = regex("a", priority=1), regex("b", priority=2)
    assert constraint_digest([low, high]) == constraint_digest([high, low])
    # Ties keep request order, so order matters then.
    a, b = regex("a"), regex("b")
    assert constraint_digest([a, b]) != constraint_digest([b, a])


@pytest.mark.parametrize(
    "changed",
    [
        [regex("ab")],
        [regex("a", name="n")],
        [regex("a", priority=3)],
        [choice("a")],
        [regex("a"), regex("a")],
        [composite(SEQ, regex("a"))],
    ],
    ids=["pattern", "name", "priority", "kind", "count", "wrapped"],
)
def test_digest_differs_when_content_differs(changed: list[c.ConstraintIR]) -> None:
    assert constraint_digest(changed) != constraint_digest([regex("a")])


def _schema_with(text: str, **options: object) -> c.ConstraintIR:
    ir = c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema=text))
    ir.json_schema.options.SetInParent()  # present even when nothing is set
    for key, value in options.items():
        setattr(ir.json_schema.options, key, value)
    return ir


OBJ = '{"type": "object", "properties": {"a": {"type": "integer"}}}'


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"lenient": False},
        {"coerce_one_of": False, "whitespace_flexible": False},
        {"item_separator": ",", "key_separator": ":"},
    ],
    ids=["empty options", "lenient false", "flags false", "compact separators"],
)
async def test_equivalent_encodings_share_digest_and_cache_entry(
    variant: dict[str, object],
) -> None:
    plain = c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema=OBJ))
    encoded = _schema_with(OBJ, **variant)
    assert encoded.SerializeToString() != plain.SerializeToString()
    assert constraint_digest([encoded]) == constraint_digest([plain])
    wrapped = [composite(SEQ, encoded, regex("x"))]
    assert constraint_digest(wrapped) == constraint_digest([composite(SEQ, plain, regex("x"))])
    compiler = make_compiler()
    try:
        first, hit_first = await compiler.compile([plain], "request.constraints")
        second, hit_second = await compiler.compile([encoded], "request.constraints")
        assert (hit_first, hit_second) == (False, True)
        assert second.digest == first.digest
        stats = compiler.stats()
        assert (stats.size, stats.hits, stats.misses) == (1, 1, 1)
    finally:
        compiler.close()


@pytest.mark.parametrize(
    ("text", "options"),
    [
        (OBJ, {"lenient": True}),
        (OBJ, {"whitespace_flexible": True}),
        (OBJ, {"item_separator": ", "}),
        # With flexible whitespace "," is not the default separator.
        (OBJ, {"whitespace_flexible": True, "item_separator": ","}),
        # An explicit option overrides the schema's own x-guidance: not a default then.
        ('{"type": "object", "x-guidance": {"lenient": true}}', {"lenient": False}),
    ],
    ids=["lenient", "flexible", "spaced separator", "flexible separator", "x-guidance"],
)
def test_meaningful_options_keep_their_digest(text: str, options: dict[str, object]) -> None:
    plain = c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema=text))
    assert constraint_digest([_schema_with(text, **options)]) != constraint_digest([plain])


# -- validate() -------------------------------------------------------------------------------


async def test_validate_verdicts(compiler: ConstraintCompiler) -> None:
    verdicts = await compiler.validate(
        [
            c.ConstraintIR(name="ok-regex", regex=c.RegexConstraint(pattern="[a-z]+")),
            c.ConstraintIR(
                name="lark",
                grammar=c.GrammarConstraint(syntax=LARK, text='start: "a" b\nb: "x" | c\n'),
            ),
            schema('{\n "type": }'),
            regex("ab(?=c)"),
            schema({"type": "string", "format": "bogus"}, c.JsonSchemaOptions(lenient=True)),
            c.ConstraintIR(),
        ]
    )
    assert [v.index for v in verdicts] == list(range(6))
    ok, lark, json_bad, regex_bad, lenient, empty = verdicts
    assert (ok.name, ok.kind, ok.error, ok.warnings) == (
        "ok-regex",
        c.CONSTRAINT_KIND_REGEX,
        None,
        (),
    )
    assert lark.name == "lark"
    assert lark.kind == c.CONSTRAINT_KIND_GRAMMAR_LARK
    assert lark.error is not None
    assert lark.error.reason == "GRAMMAR_INVALID"
    assert lark.error.metadata == {
        "field": "constraints[1].grammar.text",
        "line": "2",
        "column": "4",
    }
    assert json_bad.error is not None
    assert json_bad.error.metadata == {
        "field": "constraints[2].json_schema.schema",
        "line": "2",
        "column": "10",
    }
    assert regex_bad.error is not None
    assert regex_bad.error.reason == "REGEX_INVALID"
    assert regex_bad.error.metadata == {
        "field": "constraints[3].regex.pattern",
        "line": "1",
        "column": "3",
    }
    assert lenient.error is None
    assert any("bogus" in w for w in lenient.warnings)
    assert empty.error is not None
    assert empty.error.reason == "CONSTRAINT_EMPTY"
    assert empty.kind == c.CONSTRAINT_KIND_UNSPECIFIED


async def test_validate_does_not_touch_the_cache() -> None:
    compiler = make_compiler()
    try:
        await compiler.validate([regex("a"), regex("(")])
        stats = compiler.stats()
        assert (stats.size, stats.hits, stats.misses) == (0, 0, 0)
    finally:
        compiler.close()


async def test_validate_accepts_each_alone_even_if_list_is_unsatisfiable() -> None:
    compiler = make_compiler()  # fresh: a cached error would carry another field path
    try:
        verdicts = await compiler.validate([regex("a"), schema(INT_A)])
        assert all(v.error is None for v in verdicts)
        with pytest.raises(ServiceError) as raised:
            await compiler.compile([regex("a"), schema(INT_A)], "constraints")
        assert raised.value.reason == "CONSTRAINT_UNSATISFIABLE"
        assert raised.value.metadata["field"] == "constraints"
    finally:
        compiler.close()


async def test_validate_rejects_an_empty_intersection_alone(compiler: ConstraintCompiler) -> None:
    (verdict,) = await compiler.validate([composite(ALL, regex("a"), schema(INT_A))])
    assert verdict.error is not None
    assert verdict.error.reason == "CONSTRAINT_UNSATISFIABLE"
    assert verdict.error.metadata["field"] == "constraints[0]"


async def test_lark_syntax_error_has_position(compiler: ConstraintCompiler) -> None:
    (verdict,) = await compiler.validate([grammar('start: "a" (')])
    assert verdict.error is not None
    assert verdict.error.metadata.get("line") == "1"
    assert int(verdict.error.metadata.get("column", "0")) > 0


async def test_deeply_nested_schema_is_invalid_not_internal() -> None:
    # json.loads raises RecursionError past ~1000 levels; that is bad input, not a crash.
    compiler = make_compiler(max_constraint_bytes=1 << 20)
    with pytest.raises(ServiceError) as raised:
        await compiler.compile([schema("[" * 10000 + "]" * 10000)], P)
    compiler.close()
    assert_error(
        raised.value,
        "JSON_SCHEMA_INVALID",
        f"{P}[0].json_schema.schema",
        grpc.StatusCode.INVALID_ARGUMENT,
    )


# -- review fixes -------------------------------------------------------------------


def engine_accepts(compiled: CompiledConstraints, text: str) -> bool:
    """Whether what the engine enforces (its grammar or every intersection
    grammar) accepts `text` as a complete output."""
    if compiled.grammar is not None:
        grammars = [LLMatcher.grammar_from_lark(compiled.grammar)]
    else:
        grammars = list(compiled.intersection)
    assert grammars
    for text_grammar in grammars:
        matcher = LLMatcher(TOKENIZER, text_grammar, log_level=0)
        ids = tokens(text)
        if matcher.try_consume_tokens(ids) < len(ids) or not matcher.is_accepting():
            return False
    return True


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def test_merged_json_schemas_keep_their_options(compiler: ConstraintCompiler) -> None:
    spaced = c.JsonSchemaOptions(key_separator=": ")
    compiled, _ = await compiler.compile([schema(INT_A, spaced), schema(MIN_A, spaced)], P)
    assert compiled.enforcement == "grammar"
    assert engine_accepts(compiled, '{"a": 7}')
    assert not engine_accepts(compiled, '{"a":7}')
    assert compiler.check_output(compiled, tokens('{"a": 7}'), EOS)[0] == SATISFIED
    # The same through an all_of composite.
    nested_all, _ = await compiler.compile(
        [composite(ALL, schema(INT_A, spaced), schema(MIN_A, spaced))], P
    )
    assert engine_accepts(nested_all, '{"a": 7}')
    assert compiler.check_output(nested_all, tokens('{"a": 7}'), EOS)[0] == SATISFIED


async def test_merged_lenient_json_schemas_compile(compiler: ConstraintCompiler) -> None:
    lenient = c.JsonSchemaOptions(lenient=True)
    bogus = {"type": "string", "format": "bogus"}
    compiled, _ = await compiler.compile([schema(bogus, lenient), schema(bogus, lenient)], P)
    assert compiled.enforcement == "grammar"
    assert engine_accepts(compiled, '"x"')
    assert compiler.check_output(compiled, tokens('"x"'), EOS)[0] == SATISFIED


async def test_json_schemas_with_different_options_intersect(compiler: ConstraintCompiler) -> None:
    flexible = c.JsonSchemaOptions(whitespace_flexible=True)
    spaced = c.JsonSchemaOptions(key_separator=": ")
    compiled, _ = await compiler.compile([schema(INT_A, flexible), schema(MIN_A, spaced)], P)
    assert compiled.enforcement == "logits_processor(2 grammars)"
    assert engine_accepts(compiled, '{"a": 7}')
    assert compiler.check_output(compiled, tokens('{"a": 7}'), EOS)[0] == SATISFIED
    assert compiler.check_output(compiled, tokens('{"a":7}'), EOS)[0] == VIOLATED
    # Explicit llguidance defaults are the same options as unset ones: merged.
    same, _ = await compiler.compile(
        [schema(INT_A, c.JsonSchemaOptions(key_separator=":")), schema(MIN_A)], P
    )
    assert same.enforcement == "grammar"


async def test_json_schemas_with_refs_are_not_merged(compiler: ConstraintCompiler) -> None:
    # A `#/$defs/...` ref resolves against the document root, which a merge changes.
    def ref(kind: str) -> c.ConstraintIR:
        return schema({"$ref": "#/$defs/v", "$defs": {"v": {"type": kind}}})

    compiled, _ = await compiler.compile([ref("integer"), ref("number")], P)
    assert compiled.enforcement == "logits_processor(2 grammars)"
    assert engine_accepts(compiled, "12")
    assert compiler.check_output(compiled, tokens("12"), EOS)[0] == SATISFIED


async def test_unbuildable_json_merge_is_json_schema_invalid() -> None:
    compiler = make_compiler()
    disjoint = [schema({"type": "string"}), schema({"type": "integer"})]
    try:
        with pytest.raises(ServiceError) as raised:
            await compiler.compile(disjoint, P)
        assert_error(raised.value, "JSON_SCHEMA_INVALID", P, grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(ServiceError) as raised:
            await compiler.compile([composite(ALL, *disjoint)], P)
        assert_error(
            raised.value,
            "JSON_SCHEMA_INVALID",
            f"{P}[0].composite",
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    finally:
        compiler.close()


async def test_concurrent_identical_compiles_share_one() -> None:
    compiler = make_compiler(workers=4, cache_size=4, max_constraint_bytes=1 << 20)
    cold = [choice(*(f"option-{i}" for i in range(500)))]
    try:
        results = await asyncio.gather(*(compiler.compile(cold, P) for _ in range(5)))
        assert all(compiled is results[0][0] for compiled, _ in results)
        stats = compiler.stats()
        assert (stats.size, stats.misses) == (1, 1)
    finally:
        compiler.close()


async def test_timed_out_compile_is_counted_and_cached_when_done() -> None:
    compiler = make_compiler(timeout_s=1e-6, cache_size=4, max_constraint_bytes=1 << 20)
    big = [choice(*(f"option-{i}" for i in range(3000)))]
    try:
        with pytest.raises(ServiceError) as raised:
            await compiler.compile(big, P)
        assert raised.value.reason == "CONSTRAINT_COMPILE_TIMEOUT"
        assert compiler.stats().misses == 1
        await wait_until(lambda: compiler.stats().size == 1)
        compiled, hit = await compiler.compile(big, P)
        assert hit
        assert compiled.constrained
        stats = compiler.stats()
        assert (stats.hits, stats.misses) == (1, 1)
    finally:
        compiler.close()


async def test_timed_out_caller_does_not_cancel_the_shared_compile() -> None:
    compiler = make_compiler(timeout_s=0.2, workers=1, cache_size=4)
    release = threading.Event()
    try:
        compiler._pool.submit(release.wait)  # keeps the only compile thread busy
        with pytest.raises(ServiceError) as raised:
            await compiler.compile([regex("a+")], P)
        assert raised.value.reason == "CONSTRAINT_COMPILE_TIMEOUT"
        # A second caller joins the compile still queued behind the busy thread.
        joined = asyncio.ensure_future(compiler.compile([regex("a+")], P))
        await asyncio.sleep(0)
        with pytest.raises(ServiceError):
            await joined  # it times out too
        release.set()
        # The timeouts cancelled nothing: the queued compile runs and is cached.
        await wait_until(lambda: compiler.stats().size == 1, timeout_s=5.0)
        compiled, hit = await compiler.compile([regex("a+")], P)
        assert compiled.constrained
        assert hit
        stats = compiler.stats()
        assert (stats.size, stats.hits, stats.misses) == (1, 1, 1)
    finally:
        release.set()
        compiler.close()


@pytest.mark.parametrize(
    ("pattern", "column"), [("[0-9]+\\", "7"), ("\\", "1"), ("a\\\\\\", "4"), ("a\nb\\", "2")]
)
async def test_regex_ending_in_a_lone_backslash_is_invalid(
    compiler: ConstraintCompiler, pattern: str, column: str
) -> None:
    with pytest.raises(ServiceError) as raised:
        await compiler.compile([regex(pattern)], P)
    assert_error(
        raised.value, "REGEX_INVALID", f"{P}[0].regex.pattern", grpc.StatusCode.INVALID_ARGUMENT
    )
    line = str(pattern.count("\n") + 1)
    assert (raised.value.metadata["line"], raised.value.metadata["column"]) == (line, column)


async def test_regex_ending_in_an_escaped_backslash_is_valid(compiler: ConstraintCompiler) -> None:
    compiled, _ = await compiler.compile([regex("a\\\\")], P)
    assert compiler.check_output(compiled, tokens("a\\"), EOS)[0] == SATISFIED
    assert compiler.check_output(compiled, tokens("a"), EOS)[0] == INCOMPLETE


async def test_validate_applies_the_constraint_limit(compiler: ConstraintCompiler) -> None:
    with pytest.raises(ServiceError) as raised:
        await compiler.validate([regex("a")] * (MAX_TOP_LEVEL_CONSTRAINTS + 1))
    assert_error(
        raised.value, "CONSTRAINT_TOO_LARGE", "constraints", grpc.StatusCode.INVALID_ARGUMENT
    )
    verdicts = await compiler.validate([regex("a")] * MAX_TOP_LEVEL_CONSTRAINTS)
    assert len(verdicts) == MAX_TOP_LEVEL_CONSTRAINTS


async def test_cache_byte_budget() -> None:
    probe = make_compiler()
    try:
        compiled, _ = await probe.compile([regex("a")], P)
        entry = probe.stats().bytes
        assert entry == len(compiled.grammar or "") + sum(
            len(g) for _, g in compiled.check_grammars
        )
        assert entry > 0
        with pytest.raises(ServiceError) as raised:
            await probe.compile([regex("(")], P)
        assert probe.stats().bytes == entry + len(raised.value.message)
    finally:
        probe.close()
    compiler = make_compiler(cache_size=64, max_cache_bytes=2 * entry + entry // 2)
    try:
        a, b, x = [regex("a")], [regex("b")], [regex("x")]
        for constraints in (a, b, a, x):  # x evicts b, the least recently used
            await compiler.compile(constraints, P)
        stats = compiler.stats()
        assert (stats.size, stats.bytes) == (2, 2 * entry)
        assert (await compiler.compile(a, P))[1] is True
        assert (await compiler.compile(b, P))[1] is False
        # An entry bigger than the whole budget is not cached (and evicts nothing).
        before = compiler.stats()
        assert (await compiler.compile([regex("a" * 4 * entry)], P))[1] is False
        after = compiler.stats()
        assert (after.size, after.bytes) == (before.size, before.bytes)
    finally:
        compiler.close()


def test_kind_of_combinator_agrees_with_kind_of() -> None:
    for combinator in (SEQ, ANY, ALL, 99):
        assert kind_of_combinator(combinator) == kind_of(composite(combinator, regex("a")))  # type: ignore[arg-type]
    assert "compile_seconds" not in {f.name for f in dataclasses.fields(CompiledConstraints)}


def test_fresh_matchers_are_independent_copies_of_a_pristine_one() -> None:
    from ananke_server.constraints.check import FreshMatchers
    from llguidance import LLParserLimits

    fresh = FreshMatchers(TOKENIZER, LLParserLimits(), capacity=2)
    grammar = LLMatcher.grammar_from_regex("ab+c")
    first = fresh(grammar)
    assert first.consume_tokens(list(b"abbc"))
    assert first.is_accepting()
    second = fresh(grammar)  # a copy of the kept one: untouched by `first`
    assert not second.is_accepting()
    assert not second.try_consume_tokens(list(b"c"))
    assert second.try_consume_tokens(list(b"abc")) == 3
    for pattern in ("x", "y", "z"):  # more grammars than kept: the oldest go
        fresh(LLMatcher.grammar_from_regex(pattern))
    assert fresh(grammar).try_consume_tokens(list(b"abc")) == 3
