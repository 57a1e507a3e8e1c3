"""Composite folding: sequence/any_of into one Lark grammar, all_of into one
mask, one regex `&` terminal, one JSON `allOf`, or (what does not fold) the
conjuncts of a processor-enforced intersection."""

from __future__ import annotations

import json
from collections.abc import Sequence

from llguidance import LLMatcher

from ..errors import FieldViolation, ServiceError
from .core import LARK_HEADER, C, K, Piece, as_start, kind_of_combinator
from .diagnostics import GrammarValidator

# llguidance's own defaults for the options it reads from x-guidance.
_LLGUIDANCE_JSON_DEFAULTS: dict[str, object] = {
    "item_separator": ",",
    "key_separator": ":",
    "lenient": False,
    "coerce_one_of": False,
}


def fold_composite(
    combinator: C.ValueType, parts: list[Piece], path: str, validate: GrammarValidator
) -> Piece:
    """One piece for a composite of already lowered parts."""
    if combinator == C.COMBINATOR_ALL_OF:
        combined = combine_all_of(parts, path, validate)
    else:
        for i, part in enumerate(parts):
            if part.has_mask or part.lark_body is None:
                what = "a token mask" if part.has_mask else "an intersection of grammars"
                raise ServiceError(
                    "CONSTRAINT_UNSUPPORTED",
                    f"{path}.parts[{i}]: {what} that does not fold into one grammar can "
                    "only apply to the whole output (top level or all_of), not inside a "
                    "sequence or any_of",
                    (FieldViolation(f"{path}.parts[{i}]", f"{what} inside a sequence"),),
                    {"field": f"{path}.parts[{i}]"},
                )
        joiner = " " if combinator == C.COMBINATOR_SEQUENCE else " | "
        body = joiner.join(f"({inline(part)})" for part in parts)
        combined = Piece(kind=kind_of_combinator(combinator), lark_body=body)
    combined.warnings = [w for p in parts for w in p.warnings]
    combined.schema_checks = tuple(c for p in parts for c in p.schema_checks)
    if combined.lark_body is not None and combined.standalone is None:
        standalone = LARK_HEADER + as_start(combined)
        validate(standalone, kind_of_combinator(combinator), path)
        combined.standalone = LLMatcher.grammar_from_lark(standalone)
    return combined


def combine_all_of(parts: list[Piece], path: str, validate: GrammarValidator) -> Piece:
    """An intersection: token masks into one mask, regexes into one `&`
    terminal, JSON schemas into one allOf; what remains (two or more
    grammars) becomes the conjuncts of a processor-enforced intersection."""
    allowed: frozenset[int] | None = None
    forbidden: frozenset[int] = frozenset()
    grammars: list[Piece] = []
    for part in parts:
        if part.allowed is not None:
            allowed = part.allowed if allowed is None else allowed & part.allowed
        forbidden = forbidden | part.forbidden
        if part.conjuncts:
            grammars.extend(part.conjuncts)
        elif part.lark_body is not None:
            grammars.append(part)
    regexes = [p for p in grammars if p.regex_terminal is not None]
    schemas = [p for p in grammars if p.json_schema is not None]
    others = [p for p in grammars if p.regex_terminal is None and p.json_schema is None]
    folded: list[Piece] = []
    if len(regexes) >= 2:
        terminal = " & ".join(f"({p.regex_terminal})" for p in regexes)
        folded.append(
            Piece(
                kind=K.CONSTRAINT_KIND_ALL_OF,
                lark_body=f"ALL_OF\nALL_OF: {terminal}",
                warnings=[w for p in regexes for w in p.warnings],
            )
        )
    else:
        folded.extend(regexes)
    options = common_json_options(schemas) if len(schemas) >= 2 else None
    if options is not None:
        # llguidance reads x-guidance only at the top of the schema, so the
        # merge carries the options every part has; parts whose options
        # differ stay separate grammars of the intersection.
        merged = {"allOf": [p.json_schema for p in schemas], "x-guidance": options}
        merged_piece = Piece(
            kind=K.CONSTRAINT_KIND_ALL_OF,
            lark_body="%json " + json.dumps(merged, ensure_ascii=False),
            json_schema=merged,
            warnings=[w for p in schemas for w in p.warnings],
        )
        # Validated as a JSON schema here, so an allOf llguidance cannot
        # build is JSON_SCHEMA_INVALID on the list, not COMPOSITE_INVALID.
        standalone = LARK_HEADER + as_start(merged_piece)
        validate(standalone, K.CONSTRAINT_KIND_JSON_SCHEMA, path)
        merged_piece.standalone = LLMatcher.grammar_from_lark(standalone)
        folded.append(merged_piece)
    else:
        folded.extend(schemas)
    folded.extend(others)
    warnings = [w for p in parts for w in p.warnings]
    checks = tuple(c for p in parts for c in p.schema_checks)
    if not folded:
        return Piece(
            kind=K.CONSTRAINT_KIND_TOKEN_MASK,
            allowed=allowed,
            forbidden=forbidden,
            schema_checks=checks,
        )
    if len(folded) == 1:
        base = folded[0]
        return Piece(
            kind=base.kind if len(grammars) == 1 else K.CONSTRAINT_KIND_ALL_OF,
            lark_body=base.lark_body,
            regex_terminal=base.regex_terminal if len(grammars) == 1 else None,
            json_schema=base.json_schema,
            standalone=base.standalone,
            allowed=allowed,
            forbidden=forbidden,
            warnings=warnings,
            schema_checks=checks,
        )
    for i, piece in enumerate(folded):
        grammar_of(piece, f"{path}&{i}", validate)
    return Piece(
        kind=K.CONSTRAINT_KIND_ALL_OF,
        allowed=allowed,
        forbidden=forbidden,
        warnings=warnings,
        conjuncts=tuple(folded),
        schema_checks=checks,
    )


def grammar_of(piece: Piece, path: str, validate: GrammarValidator) -> str:
    """The validated standalone grammar string of a grammar piece."""
    if piece.standalone is None:
        text = LARK_HEADER + as_start(piece)
        validate(text, piece.kind, path)
        piece.standalone = LLMatcher.grammar_from_lark(text)
    return piece.standalone


def intersection_grammars(piece: Piece, path: str, validate: GrammarValidator) -> tuple[str, ...]:
    """The grammars the engine's product grammar intersects for `piece`."""
    if piece.conjuncts:
        return tuple(grammar_of(part, path, validate) for part in piece.conjuncts)
    return (grammar_of(piece, path, validate),)


def inline(piece: Piece) -> str:
    """A piece's body as it can appear inside another rule."""
    assert piece.lark_body is not None
    if "\n" in piece.lark_body and not piece.lark_body.startswith(("%lark", "%json")):
        # A body with its own rules (a folded all_of) becomes a nested grammar.
        return "%lark {\n" + as_start(piece) + "\n}"
    return piece.lark_body


def common_json_options(schemas: Sequence[Piece]) -> dict[str, object] | None:
    """The x-guidance options of JSON schema pieces when all are equal (llguidance
    defaults filled in) and no part has a `$ref` (refs resolve against the root,
    which a merge changes); None when they cannot fold into one allOf."""
    owns: list[dict[str, object]] = []
    for piece in schemas:
        schema = piece.json_schema
        if not isinstance(schema, dict) or has_ref(schema):
            return None
        own = schema.get("x-guidance", {})
        if not isinstance(own, dict):
            return None
        owns.append(own)
    effective = [{**_LLGUIDANCE_JSON_DEFAULTS, **own} for own in owns]
    if not owns or any(options != effective[0] for options in effective[1:]):
        return None
    return dict(owns[0])


def has_ref(value: object) -> bool:
    """Whether a JSON value has a `$ref` key anywhere."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "$ref" in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
