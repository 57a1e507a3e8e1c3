"""Schema preparation (constraints/prepare.py): each exact rewrite accepts and
rejects exactly what the original schema does (checked against jsonschema on
hand-picked documents), each over-approximation accepts every document the
original accepts and names the keyword it dropped; strict, lenient and
composite placement; the output check and the retry helpers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import provenance_pb2
from ananke_server.constraints import ConstraintCompiler
from ananke_server.constraints.prepare import prepare
from ananke_server.constraints.schema_check import build_validator
from ananke_server.errors import ServiceError
from ananke_server.schema_outcome import (
    not_satisfied,
    retry_sampling,
    summaries,
    validate_output,
)
from ananke_server.validation import Sampling
from llguidance import LLTokenizer

TOKENIZER = LLTokenizer("byte")
EOS = (TOKENIZER.eos_token,)
SATISFIED = provenance_pb2.CHECK_VERDICT_SATISFIED
P = "request.constraints"


@pytest.fixture(scope="module")
def compiler() -> Iterator[ConstraintCompiler]:
    compiler = ConstraintCompiler(
        TOKENIZER,
        vocab_size=TOKENIZER.vocab_size,
        tokenizer_id="byte",
        max_constraint_bytes=1 << 16,
        cache_size=0,
        timeout_s=10.0,
        workers=1,
    )
    yield compiler
    compiler.close()


def constraint(schema: Any, **options: Any) -> c.ConstraintIR:
    return c.ConstraintIR(
        json_schema=c.JsonSchemaConstraint(
            schema=json.dumps(schema), options=c.JsonSchemaOptions(**options)
        )
    )


def grammar_accepts(compiler: ConstraintCompiler, compiled: Any, document: Any) -> bool:
    text = json.dumps(document, separators=(",", ":"))
    return compiler.check_output(compiled, list(text.encode()), EOS)[0] == SATISFIED


def schema_accepts(schema: Any, document: Any) -> bool:
    return bool(build_validator(schema).is_valid(document))


async def assert_exact(
    compiler: ConstraintCompiler, schema: Any, accepted: list[Any], rejected: list[Any]
) -> None:
    """The grammar alone decides like the original schema, and nothing needs validating."""
    compiled, _ = await compiler.compile([constraint(schema)], P)
    assert compiled.schema_checks, "the schema needed a rewrite"
    assert not compiled.validated, [k.pointer for ch in compiled.schema_checks for k in ch.keywords]
    for document in accepted:
        assert schema_accepts(schema, document), document
        assert grammar_accepts(compiler, compiled, document), document
    for document in rejected:
        assert not schema_accepts(schema, document), document
        assert not grammar_accepts(compiler, compiled, document), document


OBJ_AB = {"a": {"type": "integer"}, "b": {"type": "integer"}}


async def test_dependent_required_is_exact(compiler: ConstraintCompiler) -> None:
    schema = {"type": "object", "properties": OBJ_AB, "dependentRequired": {"a": ["b"]}}
    await assert_exact(compiler, schema, [{"a": 1, "b": 2}, {"b": 2}, {}], [{"a": 1}])


async def test_dependencies_array_and_schema_forms_are_exact(
    compiler: ConstraintCompiler,
) -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {**OBJ_AB, "c": {"type": "string"}},
        "dependencies": {"a": ["b"], "c": {"required": ["a"]}},
    }
    accepted = [{"a": 1, "b": 2}, {"b": 2}, {}, {"a": 1, "b": 2, "c": "x"}]
    rejected = [{"a": 1}, {"c": "x"}, {"b": 1, "c": "x"}]
    await assert_exact(compiler, schema, accepted, rejected)


async def test_decidable_if_then_else_is_exact(compiler: ConstraintCompiler) -> None:
    schema = {
        "type": "object",
        "properties": {"kind": {"enum": ["a", "b"]}, "x": {"type": "integer"}},
        "if": {"properties": {"kind": {"const": "a"}}},
        "then": {"required": ["x"]},
        "else": {"properties": {"x": False}},
    }
    # {} matches `if` (kind is absent), so it needs x.
    accepted = [{"kind": "a", "x": 1}, {"kind": "b"}, {"x": 1}]
    rejected = [{"kind": "a"}, {"kind": "b", "x": 1}, {}]
    await assert_exact(compiler, schema, accepted, rejected)


# llguidance proves these oneOf branches disjoint itself; `not` (which it
# lacks) makes the schema go through preparation, where schema_logic must.
NOT_NULL = {"not": {"type": "null"}}


async def test_disjoint_one_of_is_exact(compiler: ConstraintCompiler) -> None:
    by_type = {"oneOf": [{"type": "string"}, {"type": "integer"}], **NOT_NULL}
    await assert_exact(compiler, by_type, ["s", 3], [True, 1.5, None])
    assert [k.keyword for k in prepare(by_type).keywords] == ["not", "oneOf"]
    by_tag = {
        **NOT_NULL,
        "oneOf": [
            {
                "type": "object",
                "properties": {"t": {"const": "a"}, "v": {"type": "integer"}},
                "required": ["t"],
            },
            {
                "type": "object",
                "properties": {"t": {"const": "b"}, "v": {"type": "string"}},
                "required": ["t"],
            },
        ],
    }
    await assert_exact(
        compiler, by_tag, [{"t": "a", "v": 1}, {"t": "b", "v": "s"}], [{"t": "a", "v": "s"}, {}]
    )


async def test_not_with_a_finite_complement_is_exact(compiler: ConstraintCompiler) -> None:
    await assert_exact(compiler, {"not": {"type": "string"}}, [1, None, [1]], ["s"])
    await assert_exact(compiler, {"enum": ["a", "b", "c"], "not": {"const": "b"}}, ["a"], ["b"])
    no_both = {"type": "object", "properties": OBJ_AB, "not": {"required": ["a", "b"]}}
    await assert_exact(compiler, no_both, [{"a": 1}, {}], [{"a": 1, "b": 2}])


async def test_unique_items_false_means_nothing(compiler: ConstraintCompiler) -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": False}
    await assert_exact(compiler, schema, [[1, 1], []], [["x"]])


OVER_APPROXIMATED = [
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "/uniqueItems"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "/oneOf"),
    ({"type": "string", "not": {"pattern": "^x"}}, "/not"),
    ({"type": "string", "format": "regex"}, "/format"),  # the validator knows it
    ({"type": "array", "contains": {"const": 1}}, "/contains"),
    ({"type": "object", "propertyNames": {"maxLength": 2}}, "/propertyNames"),
    (
        {
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "if": {"properties": {"a": {"const": "x"}}},
            "then": {"required": ["a"]},
        },
        "/if",
    ),
]


@pytest.mark.parametrize(("schema", "pointer"), OVER_APPROXIMATED)
async def test_over_approximation_names_the_keyword_and_validates(
    compiler: ConstraintCompiler, schema: Any, pointer: str
) -> None:
    compiled, _ = await compiler.compile([constraint(schema)], P)
    (check,) = compiled.validated
    assert check.retried
    assert pointer in [k.pointer for k in check.keywords if not k.exact]
    assert any(pointer in w for w in compiled.warnings)


async def test_over_approximation_keeps_every_valid_document(compiler: ConstraintCompiler) -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
            "kind": {"oneOf": [{"type": "integer"}, {"type": "number"}]},
        },
    }
    compiled, _ = await compiler.compile([constraint(schema)], P)
    (check,) = compiled.validated
    for document, valid in [
        ({"tags": [1, 2]}, True),
        ({"tags": [1, 1]}, False),  # the grammar lets it through, the validator does not
        ({"kind": 1.5}, True),
        ({"kind": 1}, False),  # matches both branches of oneOf
    ]:
        text = json.dumps(document, separators=(",", ":"))
        assert grammar_accepts(compiler, compiled, document)
        assert (check.check(text) is None) is valid, document


def test_keyword_pointers_follow_refs_containers_and_escapes() -> None:
    schema: dict[str, Any] = {
        "definitions": {"group": {"item": {"type": "array", "uniqueItems": True}}},
        "properties": {"a/b": {"$ref": "#/definitions/group/item"}},
    }
    prepared = prepare(schema)
    assert [k.pointer for k in prepared.relaxed] == ["/definitions/group/item/uniqueItems"]
    assert "uniqueItems" not in json.dumps(prepared.schema)
    assert schema["definitions"]["group"]["item"]["uniqueItems"] is True  # not modified


async def test_recursion_llguidance_cannot_build_is_cut_and_validated(
    compiler: ConstraintCompiler,
) -> None:
    """A recursive `$ref` with sibling keywords: llguidance refuses it; the last
    preparation level cuts the cycle (any value there) and the validator
    enforces the recursion on the output."""
    schema = {
        "definitions": {
            "node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "child": {"$ref": "#/definitions/node", "required": ["name"]},
                },
            }
        },
        "$ref": "#/definitions/node",
    }
    compiled, _ = await compiler.compile([constraint(schema)], P)
    (check,) = compiled.validated
    assert "/definitions/node/properties/child/$ref" in [
        k.pointer for k in check.keywords if not k.exact
    ]
    good = {"name": "a", "child": {"name": "b", "child": {"name": "c"}}}
    bad = {"name": "a", "child": {"child": {}}}  # the inner node lacks "name"
    for document in (good, bad):
        assert grammar_accepts(compiler, compiled, document)
    assert check.check(json.dumps(good)) is None
    violation = check.check(json.dumps(bad))
    assert violation is not None
    assert violation.instance_pointer == "/child"


async def test_strict_refuses_what_the_grammar_cannot_enforce(compiler: ConstraintCompiler) -> None:
    unique = {"type": "array", "uniqueItems": True}
    with pytest.raises(ServiceError) as raised:
        await compiler.compile([constraint(unique, strict=True)], P)
    assert raised.value.reason == "JSON_SCHEMA_INVALID"
    assert "uniqueItems" in raised.value.message
    exact = {"type": "object", "properties": OBJ_AB, "dependentRequired": {"a": ["b"]}}
    compiled, _ = await compiler.compile([constraint(exact, strict=True)], P)
    assert not compiled.validated


async def test_lenient_ignores_and_never_retries(compiler: ConstraintCompiler) -> None:
    compiled, _ = await compiler.compile(
        [constraint({"type": "array", "uniqueItems": True}, lenient=True)], P
    )
    (check,) = compiled.schema_checks
    assert check.validated
    assert not check.retried
    (item,) = summaries(compiled, validate_output(compiled, "[1,1]", complete=True, attempts=1))
    assert item.schema_keywords[0].enforcement == c.KEYWORD_ENFORCEMENT_IGNORED
    assert item.validation.verdict == provenance_pb2.SCHEMA_VERDICT_INVALID
    assert item.validation.schema_pointer == "/uniqueItems"


async def test_validated_schema_inside_a_sequence_is_unsupported(
    compiler: ConstraintCompiler,
) -> None:
    def sequence(options: dict[str, Any]) -> c.ConstraintIR:
        schema = constraint({"type": "array", "uniqueItems": True}, **options)
        prefix = c.ConstraintIR(regex=c.RegexConstraint(pattern="x"))
        return c.ConstraintIR(
            composite=c.CompositeConstraint(
                combinator=c.COMBINATOR_SEQUENCE, parts=[prefix, schema]
            )
        )

    with pytest.raises(ServiceError) as raised:
        await compiler.compile([sequence({})], P)
    assert raised.value.reason == "CONSTRAINT_UNSUPPORTED"
    compiled, _ = await compiler.compile([sequence({"lenient": True})], P)
    assert compiled.schema_checks
    assert not compiled.validated


async def test_provenance_and_failure_of_a_validated_schema(compiler: ConstraintCompiler) -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    compiled, _ = await compiler.compile([constraint(schema)], P)
    bad = validate_output(compiled, "[1,1]", complete=True, attempts=3)
    assert bad.rejected is not None
    check, violation = bad.rejected
    error = not_satisfied(check, violation, 3)
    assert error.reason == "CONSTRAINT_NOT_SATISFIED_AFTER_RETRIES"
    assert error.metadata["schema_pointer"] == "/uniqueItems"
    assert error.metadata["attempts"] == "3"
    good = validate_output(compiled, "[1,2]", complete=True, attempts=2)
    assert good.rejected is None
    (item,) = summaries(compiled, good)
    assert item.attempts == 2
    assert item.validation.verdict == provenance_pb2.SCHEMA_VERDICT_VALID
    assert item.schema_keywords[0].enforcement == c.KEYWORD_ENFORCEMENT_VALIDATION
    cut = validate_output(compiled, "[1,", complete=False, attempts=1)
    assert summaries(compiled, cut)[0].validation.verdict == (
        provenance_pb2.SCHEMA_VERDICT_NOT_CHECKED
    )


def test_validator_follows_the_declared_draft() -> None:
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer"}
    assert not build_validator(draft4).is_valid(1.0)
    assert build_validator({"type": "integer"}).is_valid(1.0)  # 2020-12 by default
    assert not build_validator({"type": "string", "format": "ipv4"}).is_valid("1.2.3")


def test_retry_sampling_changes_the_seed_and_leaves_greedy() -> None:
    first = Sampling(max_tokens=8, temperature=0.0, top_p=1.0, top_k=0, seed=5, stop=())
    second = retry_sampling(first, 2, 0.7)
    assert second.seed != first.seed
    assert second.temperature == 0.7
    assert retry_sampling(first, 2, 0.7) == second  # reproducible
    warm = retry_sampling(Sampling(8, 0.3, 1.0, 0, 5, ()), 3, 0.7)
    assert warm.temperature == pytest.approx(0.3)
    assert 0 <= warm.seed < 1 << 63
