"""Schema preparation: a JSON schema -> (a) a grammar schema llguidance can
compile that accepts every document the original accepts (a sound
over-approximation) and (b) the keywords the grammar does not enforce, with
their JSON pointers into the original.

Exact rewrites (the grammar still enforces the keyword):
- `dependentRequired` / `dependencies` (array form): `{k: [a, b]}` becomes
  `anyOf: [{properties: {k: false}}, {required: [k, a, b]}]`;
  `dependentSchemas` / `dependencies` (schema form) likewise with the schema;
- `oneOf` becomes `anyOf`; exact when every pair of branches is provably
  disjoint (schema_logic.disjoint: disjoint types, disjoint const/enum values,
  or a property one branch requires that the other forbids or restricts to
  disjoint values/types), an over-approximation otherwise;
- `not` becomes the complement of its schema where schema_logic.complement
  has an exact form (types, const/enum within a finite domain, required,
  properties, nested not/anyOf/allOf of those);
- `if`/`then`/`else` becomes `anyOf: [allOf: [if, then], allOf: [¬if, else]]`
  when ¬if has an exact form; `if` alone (no then/else) is dropped exactly;
- `uniqueItems: false` is dropped (it means nothing).
Dropped (over-approximations, left to the validator): `uniqueItems: true`,
`contains`/`minContains`/`maxContains`, `propertyNames`, `unevaluated*`,
formats llguidance does not know, and what the rewrites cannot express. When
llguidance still refuses the result, later levels drop more: level 1 also
min/maxProperties, patterns with lookaround/backreferences and every rewrite
(dropped instead); level 2 every `pattern`, `format` and `patternProperties`
(with the `additionalProperties` it qualifies) and numeric bounds; level 3
also `allOf`; level 4 also every `$ref` that is part of a cycle (recursion
llguidance cannot build, such as a recursive `$ref` with sibling keywords),
which then accepts any value there."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from jsonschema import FormatChecker

from .schema_logic import complement, disjoint

MAX_LEVEL = 4
# Formats llguidance enforces (llguidance 1.7); any other is dropped from the grammar.
KNOWN_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid", "uri"}
)
# Formats the validator checks (what its optional dependencies allow); any
# other format is an annotation to it.
VALIDATOR_FORMATS = frozenset(FormatChecker().checkers)
_DROPPED: tuple[str, ...] = ("contains", "minContains", "maxContains", "propertyNames")
_DROPPED += ("unevaluatedProperties", "unevaluatedItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_SINGLE: tuple[str, ...] = ("additionalProperties", "additionalItems", "if", "then", "else")
_SCHEMA_SINGLE += ("contains", "propertyNames", "unevaluatedProperties", "unevaluatedItems")
# Keywords whose values are data, never schemas.
_DATA = frozenset({"const", "enum", "default", "examples", "example", "x-guidance", "required"})
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_LOOKAROUND = re.compile(r"\(\?<?[=!]|\\[1-9]|\\k<")
_MAX_ONE_OF_PAIRS = 2_000


@dataclass(frozen=True)
class Keyword:
    """One keyword the preparation touched."""

    pointer: str  # JSON pointer of the keyword in the original schema
    keyword: str
    exact: bool  # True: rewritten into an equivalent form the grammar enforces
    how: str


@dataclass(frozen=True)
class PreparedSchema:
    """A grammar schema and the keywords preparation rewrote or dropped."""

    schema: Any
    keywords: tuple[Keyword, ...]
    level: int

    @property
    def exact(self) -> bool:
        """Whether the grammar schema accepts exactly the original's documents."""
        return all(k.exact for k in self.keywords)

    @property
    def relaxed(self) -> tuple[Keyword, ...]:
        """The keywords the grammar does not enforce."""
        return tuple(k for k in self.keywords if not k.exact)


def prepare(schema: Any, level: int = 0, *, one_of: bool = True) -> PreparedSchema:
    """Prepares `schema` (not modified) at a preparation level (0: rewrites).
    `one_of=False` leaves `oneOf` to llguidance, which proves some branches
    disjoint that schema_logic cannot (it refuses the rest)."""
    preparer = _Preparer(schema, level, one_of)
    prepared = preparer.node(schema, "")
    if level >= 4:
        prepared = _break_cycles(prepared, preparer.found)
    return PreparedSchema(prepared, tuple(preparer.found), level)


def needs_preparation(schema: Any) -> bool:
    """Whether level 0 would change anything in `schema`."""
    return bool(prepare(schema).keywords)


def ladder(schema: Any) -> list[PreparedSchema]:
    """The preparations to try in order, from the closest to the original:
    oneOf left to llguidance, then every level."""
    first = prepare(schema, one_of=False)
    return [first, *(prepare(schema, level) for level in range(MAX_LEVEL + 1))]


def _refs(node: Any, pointer: str, found: list[tuple[str, str]]) -> None:
    """(location, target) of every local `$ref` under `node`."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            found.append((pointer, ref[1:]))
        for key, value in node.items():
            _refs(value, f"{pointer}/{_escape(key)}", found)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refs(value, f"{pointer}/{i}", found)


def _inside(location: str, target: str) -> bool:
    return location == target or location.startswith(target + "/")


def _break_cycles(schema: Any, found: list[Keyword]) -> Any:
    """`schema` with each `$ref` on a cycle replaced by `{}` (noted in `found`)."""
    refs: list[tuple[str, str]] = []
    _refs(schema, "", refs)
    targets = {target for _, target in refs}

    def reaches(start: str, goal: str) -> bool:
        seen, stack = {start}, [start]
        while stack:
            current = stack.pop()
            for location, target in refs:
                if _inside(location, current) and target not in seen:
                    if _inside(goal, target):
                        return True
                    seen.add(target)
                    stack.append(target)
        return False

    circular = set()
    for location, target in refs:
        owner = [t for t in targets if _inside(location, t)]
        if _inside(location, target) or any(reaches(target, o) for o in owner):
            circular.add(location)
    if not circular:
        return schema

    def rebuild(node: Any, pointer: str) -> Any:
        if pointer in circular:
            found.append(Keyword(f"{pointer}/$ref", "$ref", False, "recursion cut: any value"))
            return {k: v for k, v in node.items() if k in ("description", "title")}
        if isinstance(node, dict):
            return {k: rebuild(v, f"{pointer}/{_escape(k)}") for k, v in node.items()}
        if isinstance(node, list):
            return [rebuild(v, f"{pointer}/{i}") for i, v in enumerate(node)]
        return node

    return rebuild(schema, "")


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


class _Preparer:
    def __init__(self, root: Any, level: int, one_of: bool) -> None:
        self.root = root
        self.level = level
        self.rewrite_one_of = one_of
        self.found: list[Keyword] = []

    def note(self, pointer: str, keyword: str, exact: bool, how: str) -> None:
        self.found.append(Keyword(f"{pointer}/{_escape(keyword)}", keyword, exact, how))

    def node(self, value: Any, pointer: str) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out[key] = self.child(key, sub, f"{pointer}/{_escape(key)}")
        return self.rewrite(out, value, pointer)

    def child(self, key: str, sub: Any, pointer: str) -> Any:
        if key == "not":
            return sub  # replaced by its complement or dropped, never compiled
        if key in _SCHEMA_MAPS and isinstance(sub, dict):
            return {k: self.node(v, f"{pointer}/{_escape(k)}") for k, v in sub.items()}
        if key in _SCHEMA_LISTS and isinstance(sub, list):
            return [self.node(v, f"{pointer}/{i}") for i, v in enumerate(sub)]
        if key in _SCHEMA_SINGLE:
            return self.node(sub, pointer)
        if key == "items":
            if isinstance(sub, list):
                return [self.node(v, f"{pointer}/{i}") for i, v in enumerate(sub)]
            return self.node(sub, pointer)
        if key == "dependencies" and isinstance(sub, dict):
            return {
                k: v if isinstance(v, list) else self.node(v, f"{pointer}/{_escape(k)}")
                for k, v in sub.items()
            }
        if isinstance(sub, dict) and key not in _DATA:
            # An unknown keyword holding an object may be a container of
            # schemas a `$ref` points into (`definitions/group/name`).
            return self.node(sub, pointer)
        return sub

    def rewrite(self, out: dict[str, Any], original: dict[str, Any], pointer: str) -> Any:
        extras: list[Any] = []
        if "uniqueItems" in out:
            unique = out.pop("uniqueItems")
            how = "dropped from the grammar" if unique else "false means nothing"
            self.note(pointer, "uniqueItems", not unique, how)
        for key in _DROPPED:
            if key in out:
                out.pop(key)
                self.note(pointer, key, False, "dropped from the grammar")
        fmt = out.get("format")
        if isinstance(fmt, str) and (fmt not in KNOWN_FORMATS or self.level >= 2):
            out.pop("format")
            how = f"format {fmt!r} dropped from the grammar"
            if fmt not in VALIDATOR_FORMATS and fmt not in KNOWN_FORMATS:
                how += " (the validator has no checker for it either: an annotation)"
            self.note(pointer, "format", False, how)
        self.dependencies(out, pointer, extras)
        self.negation(out, original, pointer, extras)
        self.conditional(out, original, pointer, extras)
        self.one_of(out, original, pointer, extras)
        if self.level >= 1:
            self.loosen(out, pointer)
        if extras:
            out["allOf"] = [*out.get("allOf", []), *extras]
        if self.level >= 3 and "allOf" in out:
            out.pop("allOf")
            self.note(pointer, "allOf", False, "dropped (too complex for the grammar)")
        return out

    def dependencies(self, out: dict[str, Any], pointer: str, extras: list[Any]) -> None:
        for keyword in ("dependentRequired", "dependentSchemas", "dependencies"):
            entries = out.pop(keyword, None)
            if not isinstance(entries, dict):
                if entries is not None:
                    out[keyword] = entries
                continue
            if self.level >= 1:
                self.note(pointer, keyword, False, "dropped from the grammar")
                continue
            for name, then in entries.items():
                absent = {"properties": {name: False}}
                if isinstance(then, list):
                    present: Any = {"required": [name, *then]}
                else:
                    present = {"required": [name], "allOf": [then]}
                extras.append({"anyOf": [absent, present]})
            self.note(pointer, keyword, True, "rewritten as anyOf [absent, present and ...]")

    def negation(
        self, out: dict[str, Any], original: dict[str, Any], pointer: str, extras: list[Any]
    ) -> None:
        if "not" not in out:
            return
        out.pop("not")
        inverse = complement(original["not"], original, self.root) if self.level == 0 else None
        if inverse is None or needs_preparation(inverse):
            self.note(pointer, "not", False, "dropped from the grammar")
            return
        extras.append(inverse)
        self.note(pointer, "not", True, "rewritten as the complement")

    def conditional(
        self, out: dict[str, Any], original: dict[str, Any], pointer: str, extras: list[Any]
    ) -> None:
        if "if" not in out:
            for key in ("then", "else"):
                if key in out:  # ignored by JSON Schema without `if`
                    out.pop(key)
                    self.note(pointer, key, True, "dropped (no `if`: it means nothing)")
            return
        condition, then, otherwise = out.pop("if"), out.pop("then", True), out.pop("else", True)
        if "then" not in original and "else" not in original:
            self.note(pointer, "if", True, "dropped (no then/else: it means nothing)")
            return
        inverse = complement(original["if"], original, self.root) if self.level == 0 else None
        if inverse is None or needs_preparation(inverse):
            for key in ("if", "then", "else"):
                if key in original:
                    self.note(pointer, key, False, "dropped from the grammar")
            return
        extras.append({"anyOf": [{"allOf": [condition, then]}, {"allOf": [inverse, otherwise]}]})
        self.note(pointer, "if", True, "rewritten as anyOf [if and then, not-if and else]")

    def one_of(
        self, out: dict[str, Any], original: dict[str, Any], pointer: str, extras: list[Any]
    ) -> None:
        branches = out.pop("oneOf", None) if self.rewrite_one_of else None
        if not isinstance(branches, list):
            if branches is not None:
                out["oneOf"] = branches
            return
        raw = original["oneOf"]
        # The parent's `required` holds in every branch too.
        required = original.get("required")
        context = [k for k in required if isinstance(k, str)] if isinstance(required, list) else []
        pairs = len(raw) * (len(raw) - 1) // 2
        exact = pairs <= _MAX_ONE_OF_PAIRS and all(
            disjoint(raw[i], raw[j], self.root, context)
            for i in range(len(raw))
            for j in range(i + 1, len(raw))
        )
        if "anyOf" in out:
            extras.append({"anyOf": branches})
        else:
            out["anyOf"] = branches
        how = "anyOf (branches provably disjoint)" if exact else "anyOf (branches may overlap)"
        self.note(pointer, "oneOf", exact, how)

    def loosen(self, out: dict[str, Any], pointer: str) -> None:
        """Level 1+: what llguidance refuses in some contexts."""
        for key in ("minProperties", "maxProperties"):
            if key in out:
                out.pop(key)
                self.note(pointer, key, False, "dropped from the grammar")
        if self.level >= 2:
            for key in _BOUNDS:
                if key in out:
                    out.pop(key)
                    self.note(pointer, key, False, "dropped from the grammar")
        pattern = out.get("pattern")
        if isinstance(pattern, str) and (self.level >= 2 or _LOOKAROUND.search(pattern)):
            out.pop("pattern")
            self.note(pointer, "pattern", False, "dropped from the grammar")
        patterns = out.get("patternProperties")
        if isinstance(patterns, dict) and (
            self.level >= 2 or any(_LOOKAROUND.search(p) for p in patterns)
        ):
            out.pop("patternProperties")
            self.note(pointer, "patternProperties", False, "dropped from the grammar")
            if "additionalProperties" in out:
                # It applies only to keys no pattern matches: without the
                # patterns it would forbid keys the schema allows.
                out.pop("additionalProperties")
                self.note(pointer, "additionalProperties", False, "dropped with patternProperties")
