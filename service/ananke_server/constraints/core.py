"""Constraint compilation's data types, limits and kind/digest helpers (a leaf of the package)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import TYPE_CHECKING, Literal, TypeAlias

from ananke.v1 import constraints_pb2, provenance_pb2

from ..errors import ServiceError

if TYPE_CHECKING:
    from .schema_check import SchemaCheck

LLGUIDANCE_VERSION = version("llguidance")
MAX_TOP_LEVEL_CONSTRAINTS = 64
MAX_NESTING_DEPTH = 16
MAX_NAME_CHARS = 128
MAX_CHOICE_OPTIONS = 10_000
DEFAULT_MAX_CACHE_BYTES = 256 * 1024 * 1024
# Forces Lark detection in vLLM's guidance backend (it sniffs for this or `start:`).
LARK_HEADER = "%llguidance {}\n"

Kind: TypeAlias = constraints_pb2.ConstraintKind.ValueType
Enforcement: TypeAlias = provenance_pb2.ConstraintEnforcement.ValueType
K = constraints_pb2.ConstraintKind
C = constraints_pb2.Combinator


_ENFORCEMENT_TEXT: dict[Enforcement, str] = {
    provenance_pb2.ENFORCEMENT_NONE: "none",
    provenance_pb2.ENFORCEMENT_GRAMMAR: "grammar",
    provenance_pb2.ENFORCEMENT_INTERSECTION: "logits_processor({grammars} grammars)",
    provenance_pb2.ENFORCEMENT_TOKEN_MASK: "token_mask",
    provenance_pb2.ENFORCEMENT_GRAMMAR_AND_VALIDATION: "grammar+validation",
}


@dataclass(frozen=True)
class CompiledConstraints:
    """The immutable result of compiling a request's constraint list."""

    digest: str
    grammar: str | None  # Lark text for the engine; None when no grammar applies
    check_grammars: tuple[tuple[str, str], ...]  # (constraint name, grammar) per top-level item
    summaries: tuple[provenance_pb2.ConstraintSummary, ...]
    allowed_token_ids: frozenset[int] | None
    forbidden_token_ids: frozenset[int]
    warnings: tuple[str, ...]
    # Grammars intersected by the engine's product grammar (which then also
    # applies the token masks); empty when `grammar` or plain masks suffice.
    intersection: tuple[str, ...] = ()
    # Tokens (end of sequence included) of the shortest complete output the
    # completion search found; None without a grammar or when none was found.
    min_tokens: int | None = None
    # Per summary (same order): its JSON schemas whose preparation rewrote or
    # dropped keywords (see prepare.py).
    summary_checks: tuple[tuple[SchemaCheck, ...], ...] = ()
    # Per top-level structural constraint: (check name, ((capture name, region
    # label, region grammar), ...)) for the re-check of each region alone.
    region_checks: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = ()
    # Loaded from the disk cache (compiled by an earlier process); not stored.
    from_disk: bool = field(default=False, compare=False)

    @property
    def schema_checks(self) -> tuple[SchemaCheck, ...]:
        """Every JSON schema check, in summary order."""
        return tuple(check for checks in self.summary_checks for check in checks)

    @property
    def validated(self) -> tuple[SchemaCheck, ...]:
        """The schema checks every output goes through (grammar over-approximates)."""
        return tuple(check for check in self.schema_checks if check.validated)

    @property
    def retried(self) -> bool:
        """Whether an output that violates a schema is generated again."""
        return any(check.retried for check in self.schema_checks)

    @property
    def constrained(self) -> bool:
        """Whether anything restricts the output."""
        return bool(self.summaries)

    @property
    def has_token_mask(self) -> bool:
        """Whether token-id masks apply."""
        return self.allowed_token_ids is not None or bool(self.forbidden_token_ids)

    @property
    def enforcement_mode(self) -> Enforcement:
        """How the constraints reach the engine (Provenance's enforcement_mode)."""
        if self.intersection:
            return provenance_pb2.ENFORCEMENT_INTERSECTION
        if self.grammar is not None and self.retried:
            # The grammar over-approximates a JSON schema: outputs are validated
            # and regenerated (under lenient they are only reported: GRAMMAR).
            return provenance_pb2.ENFORCEMENT_GRAMMAR_AND_VALIDATION
        if self.grammar is not None:
            return provenance_pb2.ENFORCEMENT_GRAMMAR
        if self.has_token_mask:
            return provenance_pb2.ENFORCEMENT_TOKEN_MASK
        return provenance_pb2.ENFORCEMENT_NONE

    @property
    def enforcement(self) -> str:
        """The deprecated text form of the enforcement fields (provenance.proto)."""
        mode = self.enforcement_mode
        text = _ENFORCEMENT_TEXT[mode].format(grammars=len(self.intersection))
        if self.has_token_mask and mode != provenance_pb2.ENFORCEMENT_TOKEN_MASK:
            text += "+token_mask"
        return text

    @property
    def has_grammar(self) -> bool:
        """Whether a grammar (built-in or in the processor) decides when the output ends."""
        return self.grammar is not None or bool(self.intersection)


@dataclass(frozen=True)
class Verdict:
    """One constraint's compile verdict (ValidateConstraints)."""

    index: int
    name: str
    kind: Kind
    error: ServiceError | None
    warnings: tuple[str, ...] = ()
    schema_checks: tuple[SchemaCheck, ...] = ()


@dataclass
class Piece:
    """A compiled sub-constraint: Lark rule body or token masks."""

    kind: Kind
    lark_body: str | None = None  # right-hand side of a rule
    regex_terminal: str | None = None  # `/.../` when the piece is one regex
    json_schema: object | None = None  # parsed schema when the piece is one JSON schema
    standalone: str | None = None  # its own grammar, for the re-check
    allowed: frozenset[int] | None = None
    forbidden: frozenset[int] = frozenset()
    warnings: list[str] = field(default_factory=list)
    # An intersection that does not fold into one grammar: its grammar pieces
    # (each with lark_body and standalone set); lark_body is then None.
    conjuncts: tuple[Piece, ...] = ()
    schema_checks: tuple[SchemaCheck, ...] = ()
    # A structural constraint's regions: (capture name, label, region grammar).
    regions: tuple[tuple[str, str, str], ...] = ()

    @property
    def has_mask(self) -> bool:
        """Whether the piece restricts tokens by id."""
        return self.allowed is not None or bool(self.forbidden)

    @property
    def needs_processor(self) -> bool:
        """Whether enforcing this piece needs the engine's product grammar."""
        return bool(self.conjuncts) or (self.lark_body is not None and self.has_mask)


@dataclass(frozen=True)
class CacheStats:
    """Counters of the compile cache."""

    size: int
    capacity: int
    hits: int
    misses: int  # compiles started (timed-out ones included)
    bytes: int = 0  # estimated size of the cached entries (see entry_bytes)


def kind_of(constraint: constraints_pb2.ConstraintIR) -> Kind:
    """The ConstraintKind of a ConstraintIR (UNSPECIFIED when no kind is set)."""
    which = constraint.WhichOneof("kind")
    if which == "json_schema":
        return K.CONSTRAINT_KIND_JSON_SCHEMA
    if which == "regex":
        return K.CONSTRAINT_KIND_REGEX
    if which == "grammar":
        if constraint.grammar.syntax == constraints_pb2.GRAMMAR_SYNTAX_GBNF:
            return K.CONSTRAINT_KIND_GRAMMAR_GBNF
        return K.CONSTRAINT_KIND_GRAMMAR_LARK
    if which == "choice":
        return K.CONSTRAINT_KIND_CHOICE
    if which == "token_mask":
        return K.CONSTRAINT_KIND_TOKEN_MASK
    if which == "composite":
        return kind_of_combinator(constraint.composite.combinator)
    if which == "structural":
        return K.CONSTRAINT_KIND_STRUCTURAL
    return K.CONSTRAINT_KIND_UNSPECIFIED


_KIND_BY_COMBINATOR: dict[constraints_pb2.Combinator.ValueType, Kind] = {
    C.COMBINATOR_SEQUENCE: K.CONSTRAINT_KIND_SEQUENCE,
    C.COMBINATOR_ANY_OF: K.CONSTRAINT_KIND_ANY_OF,
    C.COMBINATOR_ALL_OF: K.CONSTRAINT_KIND_ALL_OF,
}


def kind_of_combinator(combinator: constraints_pb2.Combinator.ValueType) -> Kind:
    """The ConstraintKind for a composite's combinator (UNSPECIFIED when unknown)."""
    return _KIND_BY_COMBINATOR.get(combinator, K.CONSTRAINT_KIND_UNSPECIFIED)


SUPPORTED_KINDS: tuple[Kind, ...] = tuple(
    k for k in K.values() if k != K.CONSTRAINT_KIND_UNSPECIFIED
)


def order_by_priority(
    constraints: Sequence[constraints_pb2.ConstraintIR],
) -> list[tuple[int, constraints_pb2.ConstraintIR]]:
    """(request index, constraint) by descending priority; ties keep request order."""
    return sorted(enumerate(constraints), key=lambda pair: -pair[1].priority)


# JsonSchemaOptions values that mean the same as leaving the option unset
# (separators only with compact whitespace, where they are the default).
_JsonOption: TypeAlias = Literal[
    "whitespace_flexible", "lenient", "coerce_one_of", "item_separator", "key_separator"
]
_DEFAULT_JSON_FLAGS: dict[_JsonOption, object] = {
    "whitespace_flexible": False,
    "lenient": False,
    "coerce_one_of": False,
}
_COMPACT_SEPARATORS: dict[_JsonOption, object] = {"item_separator": ",", "key_separator": ":"}


def canonical(constraint: constraints_pb2.ConstraintIR) -> constraints_pb2.ConstraintIR:
    """`constraint` in the one form that every equivalent encoding shares, so
    clients that encode a constraint differently get one digest and one cache
    entry: JSON-schema options set to their default values are cleared (unless
    the schema carries its own "x-guidance", which an explicit option
    overrides), and an options message with nothing set is dropped; composite
    parts likewise. Everything else, names and order included, is kept."""
    which = constraint.WhichOneof("kind")
    if which == "json_schema" and constraint.json_schema.HasField("options"):
        copy = constraints_pb2.ConstraintIR()
        copy.CopyFrom(constraint)
        _canonical_json_options(copy.json_schema)
        return copy
    if which == "composite":
        copy = constraints_pb2.ConstraintIR()
        copy.CopyFrom(constraint)
        del copy.composite.parts[:]
        copy.composite.parts.extend(canonical(p) for p in constraint.composite.parts)
        return copy
    return constraint


def _canonical_json_options(spec: constraints_pb2.JsonSchemaConstraint) -> None:
    options = spec.options
    if "x-guidance" not in spec.schema:
        flexible = options.HasField("whitespace_flexible") and options.whitespace_flexible
        defaults = dict(_DEFAULT_JSON_FLAGS)
        if not flexible:
            defaults.update(_COMPACT_SEPARATORS)
        for name, default in defaults.items():
            if options.HasField(name) and getattr(options, name) == default:
                options.ClearField(name)
    if not options.ListFields():
        spec.ClearField("options")


def canonical_bytes(constraint: constraints_pb2.ConstraintIR) -> bytes:
    """The deterministic protobuf binary of `constraint`'s canonical form."""
    return canonical(constraint).SerializeToString(deterministic=True)


def constraint_digest(constraints: Sequence[constraints_pb2.ConstraintIR]) -> str:
    """sha256 over the canonical serialization of the ordered list."""
    if not constraints:
        return ""
    hasher = hashlib.sha256()
    for _, constraint in order_by_priority(constraints):
        blob = canonical_bytes(constraint)
        hasher.update(len(blob).to_bytes(8, "big"))
        hasher.update(blob)
    return hasher.hexdigest()


def as_start(piece: Piece) -> str:
    """A piece's body as the start rule of a grammar."""
    assert piece.lark_body is not None
    return "start: " + piece.lark_body
