"""Structural constraints (free text with constrained regions) lowered to one
llguidance Lark grammar: free text is one lazy lexeme that ends at the first
occurrence of a region's trigger, then the rest of the region's `begin`, its
body and its `end` follow (llguidance's tool-calling pattern, which its
StructTag helper also compiles to). Each region body is captured, so the
re-check can check every region alone against its own constraint."""

from __future__ import annotations

import json
from collections.abc import Callable

from ananke.v1 import constraints_pb2
from llguidance import LLMatcher

from ..errors import FieldViolation, ServiceError, invalid
from .core import LARK_HEADER, K, Piece, as_start
from .diagnostics import GrammarValidator
from .folding import inline

MAX_REGION_KINDS = 16
MAX_TAG_BYTES = 256
MAX_REGION_COUNT = 64
# Capture names of region bodies: CAPTURE_PREFIX + region index.
CAPTURE_PREFIX = "ananke_region_"
# Free text: anything, newlines included.
TEXT_TERMINAL = r"/(.|\n)*/"

Lower = Callable[[constraints_pb2.ConstraintIR, str, int], Piece]


def structural_piece(
    spec: constraints_pb2.StructuralConstraint,
    path: str,
    depth: int,
    lower: Lower,
    validate: GrammarValidator,
) -> Piece:
    """The piece of a structural constraint; `lower` compiles a region's body."""
    _check_shape(spec, path)
    rules = [f"TEXT: {TEXT_TERMINAL}"]
    regions: list[tuple[str, str, str]] = []
    warnings: list[str] = []
    for index, region in enumerate(spec.regions):
        here = f"{path}.regions[{index}]"
        trigger = _check_region(region, here)
        body = lower(region.constraint, f"{here}.constraint", depth + 1)
        if body.has_mask or body.lark_body is None:
            what = "a token mask" if body.has_mask else "an intersection of grammars"
            raise ServiceError(
                "CONSTRAINT_UNSUPPORTED",
                f"{here}.constraint: {what} that does not fold into one grammar cannot "
                "constrain a region",
                (FieldViolation(f"{here}.constraint", f"{what} in a region"),),
                {"field": f"{here}.constraint"},
            )
        warnings.extend(body.warnings)
        rest = region.begin[len(trigger) :]
        name = f"r{index}"
        capture = f"{CAPTURE_PREFIX}{index}"
        rules.append(f"{name}_trigger[lazy]: TEXT {_literal(trigger)}")
        rules.append(f"{name}: {name}_trigger {_literal(rest)} {name}_body {_literal(region.end)}")
        rules.append(f'{name}_body[capture="{capture}"]: {inline(body)}')
        own = body.standalone or LLMatcher.grammar_from_lark(LARK_HEADER + as_start(body))
        label = region.name or region.begin
        regions.append((capture, label, own))
    choice = " | ".join(f"r{i}" for i in range(len(spec.regions)))
    tail = "TEXT"
    if spec.max_regions:
        # Past the last region allowed, the free text must not start another.
        tail = "TAIL"
        triggers = "|".join(_regex_literal(r.trigger or r.begin) for r in spec.regions)
        rules.append(f"TAIL: /(?s:.*)/ & ~/(?s:.*)({triggers})(?s:.*)/")
    grammar = "\n".join([f"start: ({choice}){_repeat(spec)} {tail}", *rules])
    piece = Piece(kind=K.CONSTRAINT_KIND_STRUCTURAL, lark_body="%lark {\n" + grammar + "\n}")
    standalone = LARK_HEADER + grammar
    piece.warnings = [*warnings, *validate(standalone, K.CONSTRAINT_KIND_STRUCTURAL, path)]
    piece.standalone = LLMatcher.grammar_from_lark(standalone)
    piece.regions = tuple(regions)
    return piece


def _check_shape(spec: constraints_pb2.StructuralConstraint, path: str) -> None:
    if not 1 <= len(spec.regions) <= MAX_REGION_KINDS:
        raise invalid(
            "STRUCTURAL_INVALID",
            f"a structural constraint needs 1 to {MAX_REGION_KINDS} regions, "
            f"got {len(spec.regions)}",
            f"{path}.regions",
        )
    if spec.min_regions > MAX_REGION_COUNT:
        raise invalid(
            "STRUCTURAL_INVALID",
            f"min_regions must be at most {MAX_REGION_COUNT}",
            f"{path}.min_regions",
        )
    if spec.max_regions and not max(1, spec.min_regions) <= spec.max_regions <= MAX_REGION_COUNT:
        raise invalid(
            "STRUCTURAL_INVALID",
            f"max_regions must be 0 (no limit) or between max(1, min_regions) and "
            f"{MAX_REGION_COUNT}",
            f"{path}.max_regions",
        )


def _check_region(region: constraints_pb2.ConstrainedRegion, path: str) -> str:
    """The region's trigger, after checking begin, trigger, end and constraint."""
    if not region.begin:
        raise invalid("STRUCTURAL_INVALID", "a region needs a non-empty begin", f"{path}.begin")
    for field in ("begin", "end"):
        size = len(getattr(region, field).encode())
        if size > MAX_TAG_BYTES:
            raise invalid(
                "STRUCTURAL_INVALID",
                f"{field} is {size} bytes; the limit is {MAX_TAG_BYTES}",
                f"{path}.{field}",
            )
    trigger = region.trigger or region.begin
    if not region.begin.startswith(trigger):
        raise invalid("STRUCTURAL_INVALID", "trigger must be a prefix of begin", f"{path}.trigger")
    if not region.HasField("constraint"):
        raise invalid("STRUCTURAL_INVALID", "a region needs a constraint", f"{path}.constraint")
    if region.constraint.WhichOneof("kind") == "structural":
        raise invalid(
            "STRUCTURAL_INVALID",
            "a region's constraint cannot be another structural constraint",
            f"{path}.constraint",
        )
    return trigger


def _literal(text: str) -> str:
    """A Lark string literal ('' for the empty string: nothing)."""
    return json.dumps(text) if text else ""


def _regex_literal(text: str) -> str:
    """`text` as a Rust regex matching it literally, safe inside Lark's /.../."""
    return "".join(ch if ch.isascii() and ch.isalnum() else f"\\x{{{ord(ch):X}}}" for ch in text)


def _repeat(spec: constraints_pb2.StructuralConstraint) -> str:
    if spec.max_regions:
        return f"{{{spec.min_regions},{spec.max_regions}}}"
    return f"{{{spec.min_regions},}}" if spec.min_regions else "*"
