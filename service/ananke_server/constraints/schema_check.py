"""The output check of a JSON schema whose grammar over-approximates: a full
JSON Schema validator (`jsonschema`) of the ORIGINAL schema, in the draft the
schema declares (`$schema`; 2020-12 by default), formats checked where the
validator knows them. Local `$ref`s only: nothing is fetched."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema
import referencing
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator

from .prepare import Keyword


@dataclass(frozen=True)
class Violation:
    """Why a document fails its schema."""

    message: str
    instance_pointer: str  # where in the document ("" for the whole of it)
    schema_pointer: str  # which keyword of the schema ("" when not JSON at all)


def _pointer(parts: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def build_validator(schema: Any) -> Validator:
    """A validator of `schema` in its declared draft (2020-12 by default)."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    # An empty registry retrieves nothing: a remote `$ref` fails, never fetches.
    registry: referencing.Registry[Any] = referencing.Registry()
    validator: Validator = cls(schema, format_checker=cls.FORMAT_CHECKER, registry=registry)
    return validator


@dataclass(frozen=True)
class SchemaCheck:
    """One JSON schema constraint whose preparation touched keywords: what was
    rewritten or dropped and, when the grammar over-approximates, the validator
    every output is checked with."""

    path: str  # field path of the constraint's schema
    keywords: tuple[Keyword, ...]
    lenient: bool  # relaxed keywords are ignored (reported, never retried)
    validator: Validator | None  # None when the grammar enforces every keyword
    schema_bytes: int = 0

    @property
    def validated(self) -> bool:
        """Whether outputs are checked by the validator."""
        return self.validator is not None

    @property
    def retried(self) -> bool:
        """Whether a violating output is retried (validated and not lenient)."""
        return self.validator is not None and not self.lenient

    def check(self, text: str) -> Violation | None:
        """The first violation of the document `text` (None when valid or not validated)."""
        if self.validator is None:
            return None
        try:
            document = json.loads(text)
        except ValueError as error:
            return Violation(f"the output is not JSON: {error}", "", "")
        try:
            found = best_match(self.validator.iter_errors(document))
        except Exception as failure:  # a pattern Python's re rejects, an unresolvable $ref
            return Violation(f"the validator could not check the output: {failure}", "", "")
        if found is None:
            return None
        return Violation(
            found.message[:2000],
            _pointer(found.absolute_path),
            _pointer(found.absolute_schema_path),
        )
