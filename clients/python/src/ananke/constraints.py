"""Typed builders for `ananke.v1.ConstraintIR` messages."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from ananke.v1 import constraints_pb2 as pb

__all__ = [
    "ConstraintIR",
    "GrammarSyntaxName",
    "all_of",
    "any_of",
    "choice",
    "detect_grammar_syntax",
    "gbnf",
    "grammar",
    "json_schema",
    "lark",
    "regex",
    "region",
    "sequence",
    "structural",
    "token_mask",
]

ConstraintIR = pb.ConstraintIR
GrammarSyntaxName = Literal["lark", "gbnf"]


def _ir(name: str, priority: int) -> pb.ConstraintIR:
    if priority < 0:
        raise ValueError(f"priority must be >= 0, got {priority}")
    return pb.ConstraintIR(name=name, priority=priority)


def json_schema(
    schema: Mapping[str, Any] | str | bool,
    *,
    name: str = "",
    priority: int = 0,
    whitespace_flexible: bool | None = None,
    lenient: bool | None = None,
    coerce_one_of: bool | None = None,
    item_separator: str | None = None,
    key_separator: str | None = None,
) -> pb.ConstraintIR:
    """The output is one JSON value valid against `schema`.

    A mapping (or bool schema) is serialized with key order kept; a string is
    sent verbatim, so the server judges it (a broken schema fails there with
    JSON_SCHEMA_INVALID).
    """
    text = schema if isinstance(schema, str) else json.dumps(schema, ensure_ascii=False)
    options = pb.JsonSchemaOptions()
    if whitespace_flexible is not None:
        options.whitespace_flexible = whitespace_flexible
    if lenient is not None:
        options.lenient = lenient
    if coerce_one_of is not None:
        options.coerce_one_of = coerce_one_of
    if item_separator is not None:
        options.item_separator = item_separator
    if key_separator is not None:
        options.key_separator = key_separator
    ir = _ir(name, priority)
    ir.json_schema.schema = text
    if options.ListFields():
        ir.json_schema.options.CopyFrom(options)
    return ir


def regex(pattern: str, *, name: str = "", priority: int = 0) -> pb.ConstraintIR:
    """The whole output matches `pattern` (Rust regex syntax, implicitly anchored)."""
    ir = _ir(name, priority)
    ir.regex.pattern = pattern
    return ir


def detect_grammar_syntax(text: str) -> GrammarSyntaxName:
    """Guess a grammar's syntax: GBNF when it has `::=` rules, else Lark."""
    return "gbnf" if "::=" in text else "lark"


def grammar(
    text: str,
    syntax: GrammarSyntaxName | None = None,
    *,
    name: str = "",
    priority: int = 0,
) -> pb.ConstraintIR:
    """The output is a sentence of a grammar; `syntax` is detected when omitted."""
    chosen = syntax or detect_grammar_syntax(text)
    if chosen not in ("lark", "gbnf"):
        raise ValueError(f"grammar syntax must be 'lark' or 'gbnf', got {chosen!r}")
    ir = _ir(name, priority)
    ir.grammar.syntax = pb.GRAMMAR_SYNTAX_GBNF if chosen == "gbnf" else pb.GRAMMAR_SYNTAX_LARK
    ir.grammar.text = text
    return ir


def lark(text: str, *, name: str = "", priority: int = 0) -> pb.ConstraintIR:
    """The output is a sentence of a Lark grammar (llguidance dialect)."""
    return grammar(text, "lark", name=name, priority=priority)


def gbnf(text: str, *, name: str = "", priority: int = 0) -> pb.ConstraintIR:
    """The output is a sentence of a GBNF grammar (`root ::= ...`)."""
    return grammar(text, "gbnf", name=name, priority=priority)


def choice(options: Iterable[str], *, name: str = "", priority: int = 0) -> pb.ConstraintIR:
    """The output is exactly one of `options`."""
    if isinstance(options, str):
        raise TypeError("choice() takes an iterable of strings, not a single string")
    ir = _ir(name, priority)
    ir.choice.options.extend(options)
    return ir


def token_mask(
    *,
    allowed: Iterable[int] = (),
    forbidden: Iterable[int] = (),
    name: str = "",
    priority: int = 0,
) -> pb.ConstraintIR:
    """Only `allowed` token ids may be generated (when given); `forbidden` never are."""
    ir = _ir(name, priority)
    ir.token_mask.allowed_token_ids.extend(allowed)
    ir.token_mask.forbidden_token_ids.extend(forbidden)
    return ir


def _composite(
    combinator: pb.Combinator.ValueType,
    parts: tuple[pb.ConstraintIR, ...],
    name: str,
    priority: int,
) -> pb.ConstraintIR:
    for part in parts:
        if not isinstance(part, pb.ConstraintIR):
            raise TypeError(f"composite parts must be ConstraintIR, got {type(part).__name__}")
    ir = _ir(name, priority)
    ir.composite.combinator = combinator
    ir.composite.parts.extend(parts)
    return ir


def sequence(*parts: pb.ConstraintIR, name: str = "", priority: int = 0) -> pb.ConstraintIR:
    """The output is one output of each part, concatenated in order."""
    return _composite(pb.COMBINATOR_SEQUENCE, parts, name, priority)


def any_of(*parts: pb.ConstraintIR, name: str = "", priority: int = 0) -> pb.ConstraintIR:
    """The output satisfies at least one part."""
    return _composite(pb.COMBINATOR_ANY_OF, parts, name, priority)


def all_of(*parts: pb.ConstraintIR, name: str = "", priority: int = 0) -> pb.ConstraintIR:
    """The output satisfies every part."""
    return _composite(pb.COMBINATOR_ALL_OF, parts, name, priority)


def region(
    begin: str,
    constraint: pb.ConstraintIR,
    *,
    end: str = "",
    trigger: str = "",
    name: str = "",
) -> pb.ConstrainedRegion:
    """A constrained region: `begin` (or its prefix `trigger`) in free text opens
    it, its body follows `constraint`, then `end` is forced."""
    if not isinstance(constraint, pb.ConstraintIR):
        raise TypeError(f"constraint must be a ConstraintIR, got {type(constraint).__name__}")
    if trigger and not begin.startswith(trigger):
        raise ValueError(f"trigger {trigger!r} is not a prefix of begin {begin!r}")
    return pb.ConstrainedRegion(
        begin=begin, trigger=trigger, constraint=constraint, end=end, name=name
    )


def structural(
    *regions: pb.ConstrainedRegion,
    min_regions: int = 0,
    max_regions: int = 0,
    name: str = "",
    priority: int = 0,
) -> pb.ConstraintIR:
    """Free text in which each region's trigger opens a region constrained by its
    own constraint (a "structural tag"), e.g. prose with a JSON code block:
    `structural(region("```json\\n", json_schema(s), end="\\n```"))`."""
    for each in regions:
        if not isinstance(each, pb.ConstrainedRegion):
            raise TypeError(f"regions must be ConstrainedRegion, got {type(each).__name__}")
    if min_regions < 0 or max_regions < 0:
        raise ValueError("min_regions and max_regions must be >= 0")
    ir = _ir(name, priority)
    ir.structural.regions.extend(regions)
    ir.structural.min_regions = min_regions
    ir.structural.max_regions = max_regions
    return ir
