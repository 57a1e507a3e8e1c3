"""Decision procedures over JSON schemas used by schema preparation: local
`$ref` resolution, whether two schemas are provably disjoint (no document
satisfies both), and the complement of a schema within a known domain where
it has an exact, finite form. Each answers None / False when it cannot prove
its answer: callers then over-approximate and leave the keyword to the validator."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

JSON_TYPES = ("null", "boolean", "object", "array", "number", "string")
# Keywords that never change which documents a schema accepts.
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "example",
        "$comment",
        "$id",
        "$schema",
        "id",
        "deprecated",
        "readOnly",
        "writeOnly",
        "markdownDescription",
        "x-guidance",
        "$anchor",
    }
)


def resolve(node: Any, root: Any, depth: int = 0) -> Any:
    """`node` with a local `$ref` (`#/...`) followed, when it is only a ref
    (annotations aside); the node itself otherwise or when unresolvable."""
    while (
        isinstance(node, dict)
        and isinstance(node.get("$ref"), str)
        and set(node) - ANNOTATIONS == {"$ref"}
        and depth < 32
    ):
        target = pointer_get(root, node["$ref"])
        if target is None:
            return node
        node, depth = target, depth + 1
    return node


def pointer_get(root: Any, ref: str) -> Any:
    """The value at a local `$ref` (`#`, `#/a/b`); None when not local or absent."""
    if not ref.startswith("#"):
        return None
    node = root
    for raw in ref[1:].split("/")[1:]:
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


def _canon(value: Any) -> str:
    """A value's identity under JSON Schema equality (1 == 1.0, key order ignored)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return json.dumps(float(value))
    return json.dumps(value, sort_keys=True, default=str)


def values_of(schema: Any) -> list[Any] | None:
    """The finite set of values a schema allows (const / enum), or None."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return [schema["const"]]
    if isinstance(schema.get("enum"), list):
        return list(schema["enum"])
    return None


def type_of_value(value: Any) -> str:
    """The JSON type name of a Python value (integers as "integer")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def types_of(schema: Any) -> set[str] | None:
    """The JSON types a schema allows ("integer" stands for integral numbers);
    None when unrestricted or unknown."""
    if not isinstance(schema, dict):
        return None if schema is not False else set()
    found: set[str] | None = None
    declared = schema.get("type")
    if isinstance(declared, str):
        declared = [declared]
    if isinstance(declared, list) and all(isinstance(t, str) for t in declared):
        found = set(declared)
        if "number" in found:
            found.add("integer")
    values = values_of(schema)
    if values is not None:
        by_value = {type_of_value(v) for v in values}
        if "integer" in by_value:
            by_value.add("number")
        found = by_value if found is None else found & by_value
    return found


def _disjoint_types(a: set[str] | None, b: set[str] | None) -> bool:
    # types_of adds "integer" to any set with "number", so plain intersection works.
    return a is not None and b is not None and not (a & b)


def _forbids(schema: dict[str, Any], key: str) -> bool:
    """Whether an object schema forbids property `key` outright."""
    properties = schema.get("properties")
    if isinstance(properties, dict) and key in properties:
        return properties[key] is False
    return schema.get("additionalProperties") is False and not schema.get("patternProperties")


def disjoint(a: Any, b: Any, root: Any, required: Sequence[str] = ()) -> bool:
    """Whether no document satisfies both schemas, by one of: disjoint types,
    disjoint const/enum values, or a property one side requires (or the
    context does: `required`, the parent's list) that the other forbids or
    restricts to disjoint values/types."""
    a, b = resolve(a, root), resolve(b, root)
    if a is False or b is False:
        return True
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    if _disjoint_types(types_of(a), types_of(b)):
        return True
    va, vb = values_of(a), values_of(b)
    if va is not None and vb is not None and not {_canon(v) for v in va} & {_canon(v) for v in vb}:
        return True
    for first, second in ((a, b), (b, a)):
        own = first.get("required")
        keys = [*required, *(own if isinstance(own, list) else [])]
        for key in keys:
            if not isinstance(key, str):
                continue
            if _forbids(second, key):
                return True
            pa = resolve((first.get("properties") or {}).get(key), root)
            pb = resolve((second.get("properties") or {}).get(key), root)
            if pa is None or pb is None:
                continue
            if disjoint(pa, pb, root):
                return True
    return False


def _other_types(excluded: set[str]) -> list[str] | None:
    """The JSON types outside `excluded`; None when integers split numbers."""
    if "integer" in excluded and "number" not in excluded:
        return None  # "a number that is not an integer" has no `type` form
    return [t for t in JSON_TYPES if t not in excluded]


def complement(schema: Any, domain: Any, root: Any, depth: int = 0) -> Any:
    """A schema accepting exactly the documents of `domain` that `schema`
    rejects (domain ∧ ¬schema up to what `domain` already enforces), or None
    when there is no exact form this preparation can build."""
    schema = resolve(schema, root)
    domain = resolve(domain, root) if domain is not None else None
    if depth > 8:
        return None
    if schema is True:
        return False
    if schema is False:
        return True
    if not isinstance(schema, dict):
        return None
    keys = set(schema) - ANNOTATIONS
    if not keys:
        return False
    if keys == {"not"}:
        return schema["not"]
    if keys == {"type"}:
        declared = types_of(schema)
        others = _other_types(declared) if declared is not None else None
        return None if others is None else {"type": others}
    if keys == {"const"} or keys == {"enum"}:
        return _complement_values(schema, domain)
    if len(keys) > 1:
        # not(A and B) = not A or not B, one keyword at a time.
        parts = [complement({k: schema[k]}, domain, root, depth + 1) for k in sorted(keys)]
        if any(p is None for p in parts):
            return None
        kept = [p for p in parts if p is not False]
        return {"anyOf": kept} if kept else False
    (key,) = keys
    return _complement_single(key, schema[key], domain, root, depth)


def _complement_single(key: str, value: Any, domain: Any, root: Any, depth: int) -> Any:
    """The complement of a one-keyword schema `{key: value}`."""
    # `required` and `properties` hold for every non-object: only an object
    # can violate them.
    if key == "required" and isinstance(value, list):
        absent = [{"type": "object", "properties": {k: False}} for k in value]
        return {"anyOf": absent} if absent else False
    if key == "properties" and isinstance(value, dict):
        props = domain.get("properties", {}) if isinstance(domain, dict) else {}
        branches: list[Any] = []
        for name, sub in value.items():
            inner = complement(sub, props.get(name), root, depth + 1)
            if inner is None:
                return None
            if inner is False:
                continue
            branches.append({"type": "object", "required": [name], "properties": {name: inner}})
        return {"anyOf": branches} if branches else False
    if key in ("anyOf", "allOf") and isinstance(value, list) and value:
        parts = [complement(sub, domain, root, depth + 1) for sub in value]
        if any(p is None for p in parts):
            return None
        return {"allOf" if key == "anyOf" else "anyOf": parts}
    return None


def _complement_values(schema: dict[str, Any], domain: Any) -> Any:
    """¬(const/enum) within a domain whose values are finite (an enum, or a
    boolean / null type); None otherwise."""
    excluded = values_of(schema)
    if excluded is None:
        return None
    gone = {_canon(v) for v in excluded}
    allowed = values_of(domain)
    if allowed is None:
        declared = types_of(domain)
        if declared == {"boolean"}:
            allowed = [True, False]
        elif declared == {"null"}:
            allowed = [None]
        else:
            return None
    kept = [v for v in allowed if _canon(v) not in gone]
    return {"enum": kept} if kept else False
