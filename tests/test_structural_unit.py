"""Structural constraints (free text with constrained regions): lowering,
validation errors, and the re-check of the whole output and of each region."""

from __future__ import annotations

import json

import grpc
import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import provenance_pb2
from ananke_server.constraints import ConstraintCompiler
from ananke_server.errors import ServiceError
from llguidance import LLMatcher, LLTokenizer

TOKENIZER = LLTokenizer("byte")
EOS = (TOKENIZER.eos_token,)
P = "request.constraints"
SATISFIED = provenance_pb2.CHECK_VERDICT_SATISFIED
INCOMPLETE = provenance_pb2.CHECK_VERDICT_INCOMPLETE
VIOLATED = provenance_pb2.CHECK_VERDICT_VIOLATED
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def make_compiler() -> ConstraintCompiler:
    return ConstraintCompiler(
        TOKENIZER,
        vocab_size=TOKENIZER.vocab_size,
        tokenizer_id="byte",
        max_constraint_bytes=1 << 16,
        cache_size=16,
        timeout_s=10.0,
        workers=1,
    )


def json_region(**fields: object) -> c.ConstrainedRegion:
    options: dict[str, object] = {
        "begin": "```json\n",
        "end": "\n```",
        "name": "json block",
        "constraint": c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema=json.dumps(SCHEMA))),
    }
    options.update(fields)
    return c.ConstrainedRegion(**options)  # type: ignore[arg-type]


def tool_region() -> c.ConstrainedRegion:
    return c.ConstrainedRegion(
        begin="<tool_call>",
        end="</tool_call>",
        constraint=c.ConstraintIR(regex=c.RegexConstraint(pattern="[a-z]+\\([0-9]+\\)")),
    )


def structural(*regions: c.ConstrainedRegion, **fields: int) -> c.ConstraintIR:
    return c.ConstraintIR(
        name="answer", structural=c.StructuralConstraint(regions=list(regions), **fields)
    )


def accepts(grammar: str, text: str) -> bool:
    matcher = LLMatcher(TOKENIZER, grammar, log_level=0)
    tokens = TOKENIZER.tokenize_str(text)
    return matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()


@pytest.fixture
def compiler() -> ConstraintCompiler:
    return make_compiler()


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("plain prose, no region at all", True),
        ('Here:\n```json\n{"n":3}\n```\nand a call <tool_call>f(1)</tool_call> done', True),
        ('```json\n{"n":1}\n``` ```json\n{"n":2}\n```', True),
        ('```json\n{"n":"three"}\n```', False),  # the region breaks its schema
        ("call <tool_call>F(1)</tool_call>", False),
        ('```json\n{"n":1}```', False),  # the end tag is "\n```"
    ],
)
async def test_engine_grammar_constrains_only_the_regions(
    compiler: ConstraintCompiler, text: str, ok: bool
) -> None:
    compiled, _ = await compiler.compile([structural(json_region(), tool_region())], P)
    assert compiled.grammar is not None
    assert accepts(compiled.grammar, text) is ok
    assert compiled.summaries[0].kind == c.CONSTRAINT_KIND_STRUCTURAL


async def test_min_and_max_regions(compiler: ConstraintCompiler) -> None:
    compiled, _ = await compiler.compile(
        [structural(tool_region(), min_regions=1, max_regions=2)], P
    )
    assert compiled.grammar is not None
    one, three = "x <tool_call>a(1)</tool_call>", "<tool_call>a(1)</tool_call>" * 3
    assert not accepts(compiled.grammar, "no call")
    assert accepts(compiled.grammar, one)
    assert not accepts(compiled.grammar, three)  # no third call, not even as free text
    assert not accepts(compiled.grammar, one + " <tool_call>" + one)
    assert accepts(compiled.grammar, one + " tool_call> " + one)


async def test_trigger_prefix_then_rest_of_begin_forced(compiler: ConstraintCompiler) -> None:
    regions = [
        c.ConstrainedRegion(
            trigger="<function", begin=f"<function={name}>", end="</function>",
            constraint=c.ConstraintIR(regex=c.RegexConstraint(pattern=pattern)),
        )
        for name, pattern in (("add", "[0-9]+,[0-9]+"), ("echo", "[a-z]+"))
    ]  # fmt: skip
    compiled, _ = await compiler.compile([structural(*regions)], P)
    assert compiled.grammar is not None
    assert accepts(compiled.grammar, "ok <function=add>1,2</function> <function=echo>hi</function>")
    assert not accepts(compiled.grammar, "<function=add>hi</function>")
    assert not accepts(compiled.grammar, "<function=sub>1,2</function>")


async def test_recheck_covers_each_region(compiler: ConstraintCompiler) -> None:
    compiled, _ = await compiler.compile([structural(json_region(), tool_region())], P)
    ((name, regions),) = compiled.region_checks
    assert name == "answer"
    assert [label for _, label, _ in regions] == ["json block", "<tool_call>"]
    good = 'a ```json\n{"n":3}\n``` b <tool_call>f(2)</tool_call>'
    assert compiler.check_output(compiled, TOKENIZER.tokenize_str(good), EOS) == (SATISFIED, "")
    cut = 'a ```json\n{"n":'
    verdict, _ = compiler.check_output(compiled, TOKENIZER.tokenize_str(cut), EOS)
    assert verdict == INCOMPLETE  # the trigger opened a region: it must be finished
    bad = 'a ```json\n{"n":"x"}\n```'
    verdict, detail = compiler.check_output(compiled, TOKENIZER.tokenize_str(bad), EOS)
    assert verdict == VIOLATED
    assert "answer" in detail


async def test_region_check_catches_a_region_the_whole_grammar_let_through(
    compiler: ConstraintCompiler,
) -> None:
    # The per-region check runs the region's own grammar on its captured bytes.
    compiled, _ = await compiler.compile([structural(tool_region())], P)
    ((_, regions),) = compiled.region_checks
    from ananke_server.constraints.check import check_regions
    from llguidance import LLParserLimits

    limits = LLParserLimits()
    assert check_regions(TOKENIZER, limits, "answer", regions, [(regions[0][0], b"f(1)")]) == ""
    failed = check_regions(TOKENIZER, limits, "answer", regions, [(regions[0][0], b"F(1)")])
    assert failed == "answer: region 1 (<tool_call>) does not satisfy its constraint"


@pytest.mark.parametrize(
    ("constraint", "reason", "field"),
    [
        (structural(), "STRUCTURAL_INVALID", "structural.regions"),
        (structural(json_region(begin="")), "STRUCTURAL_INVALID", "structural.regions[0].begin"),
        (
            structural(json_region(trigger="<x>")),
            "STRUCTURAL_INVALID",
            "structural.regions[0].trigger",
        ),
        (
            structural(json_region(end="x" * 300)),
            "STRUCTURAL_INVALID",
            "structural.regions[0].end",
        ),
        (
            structural(c.ConstrainedRegion(begin="<a>")),
            "STRUCTURAL_INVALID",
            "structural.regions[0].constraint",
        ),
        (
            structural(c.ConstrainedRegion(begin="<a>", constraint=structural(tool_region()))),
            "STRUCTURAL_INVALID",
            "structural.regions[0].constraint",
        ),
        (
            structural(tool_region(), max_regions=0, min_regions=99),
            "STRUCTURAL_INVALID",
            "structural.min_regions",
        ),
        (
            structural(tool_region(), min_regions=3, max_regions=2),
            "STRUCTURAL_INVALID",
            "structural.max_regions",
        ),
        (
            structural(
                c.ConstrainedRegion(
                    begin="<a>",
                    constraint=c.ConstraintIR(
                        token_mask=c.TokenMaskConstraint(forbidden_token_ids=[1])
                    ),
                )
            ),
            "CONSTRAINT_UNSUPPORTED",
            "structural.regions[0].constraint",
        ),
        (
            structural(
                c.ConstrainedRegion(
                    begin="<a>", constraint=c.ConstraintIR(regex=c.RegexConstraint(pattern="("))
                )
            ),
            "REGEX_INVALID",
            "structural.regions[0].constraint.regex.pattern",
        ),
    ],
)
async def test_bad_structural_constraints(
    compiler: ConstraintCompiler, constraint: c.ConstraintIR, reason: str, field: str
) -> None:
    with pytest.raises(ServiceError) as raised:
        await compiler.compile([constraint], P)
    assert raised.value.reason == reason
    assert raised.value.metadata["field"] == f"{P}[0].{field}"
    if reason == "STRUCTURAL_INVALID":
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_structural_inside_a_sequence_and_validate(compiler: ConstraintCompiler) -> None:
    header = c.ConstraintIR(regex=c.RegexConstraint(pattern="Answer: "))
    seq = c.ConstraintIR(
        composite=c.CompositeConstraint(
            combinator=c.COMBINATOR_SEQUENCE, parts=[header, structural(tool_region())]
        )
    )
    compiled, _ = await compiler.compile([seq], P)
    assert compiled.grammar is not None
    assert accepts(compiled.grammar, "Answer: see <tool_call>g(3)</tool_call>")
    assert not accepts(compiled.grammar, "see <tool_call>g(3)</tool_call>")
    (verdict,) = await compiler.validate([structural(tool_region())])
    assert verdict.error is None
    assert verdict.kind == c.CONSTRAINT_KIND_STRUCTURAL


@pytest.mark.parametrize("tag", ["«fence»\n", 'say "hi"\\', "tab\there", "nul\x00x", "/slash/"])
async def test_any_text_works_as_a_tag(compiler: ConstraintCompiler, tag: str) -> None:
    region = c.ConstrainedRegion(
        begin=tag, end=tag, constraint=c.ConstraintIR(regex=c.RegexConstraint(pattern="[0-9]"))
    )
    compiled, _ = await compiler.compile([structural(region, max_regions=1)], P)
    assert compiled.grammar is not None
    assert accepts(compiled.grammar, f"text {tag}7{tag} more")
    assert not accepts(compiled.grammar, f"text {tag}x{tag}")
    assert not accepts(compiled.grammar, f"{tag}7{tag} {tag}")  # past max_regions
