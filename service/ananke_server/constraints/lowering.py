"""Lowering of each ConstraintIR kind to an llguidance grammar piece, with the
per-kind input checks (size, emptiness, syntax) that make bad input a clear error."""

from __future__ import annotations

import json

from ananke.v1 import constraints_pb2
from llguidance import LLMatcher

from ..errors import FieldViolation, ServiceError, invalid
from .core import (
    LARK_HEADER,
    MAX_CHOICE_OPTIONS,
    MAX_NAME_CHARS,
    MAX_NESTING_DEPTH,
    C,
    K,
    Kind,
    Piece,
    as_start,
    kind_of,
)
from .diagnostics import GrammarValidator
from .folding import fold_composite
from .gbnf import GbnfError, gbnf_to_lark
from .prepare import PreparedSchema, ladder, prepare
from .schema_check import SchemaCheck, build_validator
from .structural import structural_piece

_JSON_DEFAULTS: dict[str, object] = {"whitespace_flexible": False}


class Lowerer:
    """Turns ConstraintIR trees into validated Pieces for one tokenizer."""

    def __init__(self, validate: GrammarValidator, *, vocab_size: int, max_bytes: int) -> None:
        self._validate = validate
        self._vocab_size = vocab_size
        self._max_bytes = max_bytes

    def piece(
        self, c: constraints_pb2.ConstraintIR, path: str, depth: int, whole: bool = True
    ) -> Piece:
        """Compiles one ConstraintIR (recursively) into a Piece, validating leaves.
        `whole`: the piece constrains the whole output (top level or all_of
        only), so an over-approximated JSON schema can be validated on it."""
        if len(c.name) > MAX_NAME_CHARS:
            raise invalid(
                "REQUEST_FIELD_INVALID", f"name is longer than {MAX_NAME_CHARS}", f"{path}.name"
            )
        which = c.WhichOneof("kind")
        kind = kind_of(c)
        if which is None:
            raise invalid("CONSTRAINT_EMPTY", f"{path} has no constraint kind set", path)
        if which == "json_schema":
            try:
                return self._json_piece(c.json_schema, f"{path}.json_schema", whole)
            except RecursionError:
                raise invalid(
                    "JSON_SCHEMA_INVALID",
                    "the JSON schema is nested too deeply",
                    f"{path}.json_schema.schema",
                ) from None
        if which == "regex":
            return self._regex_piece(c.regex.pattern, f"{path}.regex.pattern")
        if which == "grammar":
            return self._grammar_piece(c.grammar, f"{path}.grammar", kind)
        if which == "choice":
            return self._choice_piece(c.choice, f"{path}.choice.options")
        if which == "token_mask":
            return self._mask_piece(c.token_mask, f"{path}.token_mask")
        if which == "structural":
            return structural_piece(
                c.structural,
                f"{path}.structural",
                depth,
                lambda ir, where, level: self.piece(ir, where, level, whole=False),
                self._validate,
            )
        return self._composite_piece(c.composite, f"{path}.composite", depth, whole)

    def check_size(self, text: str, path: str) -> None:
        """CONSTRAINT_TOO_LARGE when `text` is over the per-constraint byte limit."""
        size = len(text.encode())
        if size > self._max_bytes:
            raise invalid(
                "CONSTRAINT_TOO_LARGE",
                f"{path} is {size} bytes; the limit is {self._max_bytes}",
                path,
                limit=str(self._max_bytes),
            )

    def _leaf(
        self, kind: Kind, body: str, path: str, source: str | None = None, **extra: object
    ) -> Piece:
        piece = Piece(kind=kind, lark_body=body, **extra)  # type: ignore[arg-type]
        standalone = LARK_HEADER + as_start(piece)
        piece.warnings.extend(self._validate(standalone, kind, path, source))
        piece.standalone = LLMatcher.grammar_from_lark(standalone)
        return piece

    def _json_piece(
        self, spec: constraints_pb2.JsonSchemaConstraint, path: str, whole: bool
    ) -> Piece:
        field_path = f"{path}.schema"
        self.check_size(spec.schema, field_path)
        if not spec.schema.strip():
            raise invalid("JSON_SCHEMA_INVALID", "the JSON schema is empty", field_path)
        try:
            schema = json.loads(spec.schema)
        except json.JSONDecodeError as error:
            raise invalid(
                "JSON_SCHEMA_INVALID",
                f"the JSON schema is not valid JSON: {error.msg} "
                f"(line {error.lineno}, column {error.colno})",
                field_path,
                line=str(error.lineno),
                column=str(error.colno),
            ) from None
        if isinstance(schema, bool):
            schema = {} if schema else {"not": {}}
        if not isinstance(schema, dict):
            raise invalid(
                "JSON_SCHEMA_INVALID", "a JSON schema must be an object or a boolean", field_path
            )
        own_options = schema.get("x-guidance", {})
        if not isinstance(own_options, dict):
            raise invalid(
                "JSON_SCHEMA_INVALID", '"x-guidance" must be an object of options', field_path
            )
        # Request options win over the schema's own x-guidance, which wins over defaults.
        options = {**_JSON_DEFAULTS, **own_options, **json_options(spec.options)}
        original = schema
        schema = {**schema, "x-guidance": options}
        strict = spec.options.HasField("strict") and spec.options.strict
        prepared = prepare(schema)
        failure: ServiceError | None = None
        if not prepared.keywords or (strict and not prepared.exact):
            # Nothing to prepare, or strict: the schema as written (today's behaviour).
            try:
                return self._json_leaf(schema, field_path, spec.schema)
            except ServiceError as error:
                if strict or error.reason != "JSON_SCHEMA_INVALID":
                    raise
                failure = error
        elif self._enforces_as_written(schema, options):
            return self._json_leaf(schema, field_path, spec.schema)
        found: Piece | None = None
        for candidate in ladder(schema):
            if strict and not candidate.exact:
                continue
            try:
                found = self._json_leaf(candidate.schema, field_path, spec.schema)
            except ServiceError as error:
                if error.reason != "JSON_SCHEMA_INVALID":
                    raise
                failure = failure or error
                continue
            prepared = candidate
            break
        if found is None:
            if failure is None:  # strict, and no exact rewrite compiles: the schema's own error
                return self._json_leaf(schema, field_path, spec.schema)
            raise failure
        piece = found
        if prepared.keywords:
            lenient = bool(options.get("lenient"))
            then = "ignored (lenient)" if lenient else "checked by validating the output"
            piece.warnings.extend(
                f"{field_path}: {k.pointer}: not in the grammar ({k.how}); {then}"
                for k in prepared.relaxed
            )
            piece.schema_checks = (
                schema_check(original, prepared, field_path, lenient=lenient, whole=whole),
            )
        return piece

    def _enforces_as_written(self, schema: dict[str, object], options: dict[str, object]) -> bool:
        """Whether llguidance compiles the schema without approximating anything
        (it proves some oneOf branches disjoint and skips formats on
        non-strings, which preparation would flag)."""
        exact = {**schema, "x-guidance": {**options, "lenient": False, "coerce_one_of": False}}
        try:
            self._validate(
                LARK_HEADER + "start: %json " + json.dumps(exact, ensure_ascii=False),
                K.CONSTRAINT_KIND_JSON_SCHEMA,
                "",
            )
        except ServiceError:
            return False
        return True

    def _json_leaf(self, schema: dict[str, object], path: str, source: str) -> Piece:
        body = "%json " + json.dumps(schema, ensure_ascii=False)
        return self._leaf(K.CONSTRAINT_KIND_JSON_SCHEMA, body, path, source, json_schema=schema)

    def _regex_piece(self, pattern: str, path: str) -> Piece:
        self.check_size(pattern, path)
        if not pattern:
            raise invalid("REGEX_INVALID", "the regex is empty", path)
        if (len(pattern) - len(pattern.rstrip("\\"))) % 2:
            # llguidance would silently drop it: `[0-9]+\` would compile as `[0-9]+`.
            offset = len(pattern) - 1
            line = pattern.count("\n", 0, offset) + 1
            column = offset - (pattern.rfind("\n", 0, offset) + 1) + 1
            raise invalid(
                "REGEX_INVALID",
                "the regex ends with an incomplete escape (a lone backslash)",
                path,
                line=str(line),
                column=str(column),
            )
        # Reuse llguidance's own escaping of the pattern into a Lark terminal.
        lark = json.loads(LLMatcher.grammar_from_regex(pattern))["grammars"][0]["lark_grammar"]
        terminal = lark.removeprefix("start: ")
        return self._leaf(K.CONSTRAINT_KIND_REGEX, terminal, path, regex_terminal=terminal)

    def _grammar_piece(
        self, spec: constraints_pb2.GrammarConstraint, path: str, kind: Kind
    ) -> Piece:
        text_path = f"{path}.text"
        self.check_size(spec.text, text_path)
        if spec.syntax not in (
            constraints_pb2.GRAMMAR_SYNTAX_LARK,
            constraints_pb2.GRAMMAR_SYNTAX_GBNF,
        ):
            raise invalid(
                "GRAMMAR_INVALID", "grammar syntax must be LARK or GBNF", f"{path}.syntax"
            )
        if not spec.text.strip():
            raise invalid("GRAMMAR_INVALID", "the grammar is empty", text_path)
        text = spec.text
        converted_warnings: tuple[str, ...] = ()
        if spec.syntax == constraints_pb2.GRAMMAR_SYNTAX_GBNF:
            try:
                converted = gbnf_to_lark(text)
            except GbnfError as error:
                raise invalid(
                    "GRAMMAR_INVALID",
                    f"not a valid GBNF grammar: {error}",
                    text_path,
                    line=str(error.line),
                    column=str(error.column),
                ) from None
            text, converted_warnings = converted.lark, converted.warnings
        piece = Piece(kind=kind, lark_body="%lark {\n" + text + "\n}")
        piece.warnings.extend(converted_warnings)
        # Validate the text as written (no header), so positions refer to it.
        piece.warnings.extend(
            self._validate(LLMatcher.grammar_from_lark(text), kind, text_path, spec.text)
        )
        piece.standalone = LLMatcher.grammar_from_lark(text)
        return piece

    def _choice_piece(self, spec: constraints_pb2.ChoiceConstraint, path: str) -> Piece:
        options = list(dict.fromkeys(spec.options))
        if not options:
            raise invalid("CHOICE_INVALID", "a choice needs at least one option", path)
        if len(options) > MAX_CHOICE_OPTIONS:
            raise invalid("CHOICE_INVALID", f"at most {MAX_CHOICE_OPTIONS} options", path)
        for i, option in enumerate(spec.options):
            if not option:
                raise invalid("CHOICE_INVALID", "choice options must not be empty", f"{path}[{i}]")
        self.check_size("".join(options), path)
        body = " | ".join(json.dumps(option, ensure_ascii=False) for option in options)
        return self._leaf(K.CONSTRAINT_KIND_CHOICE, body, path)

    def _mask_piece(self, spec: constraints_pb2.TokenMaskConstraint, path: str) -> Piece:
        if not spec.allowed_token_ids and not spec.forbidden_token_ids:
            raise invalid("TOKEN_MASK_INVALID", "a token mask needs allowed or forbidden ids", path)
        for name, ids in (
            ("allowed_token_ids", spec.allowed_token_ids),
            ("forbidden_token_ids", spec.forbidden_token_ids),
        ):
            for i, token in enumerate(ids):
                if token >= self._vocab_size:
                    raise invalid(
                        "TOKEN_MASK_INVALID",
                        f"token id {token} is outside the vocabulary (size {self._vocab_size})",
                        f"{path}.{name}[{i}]",
                    )
        allowed = frozenset(spec.allowed_token_ids) if spec.allowed_token_ids else None
        return Piece(
            kind=K.CONSTRAINT_KIND_TOKEN_MASK,
            allowed=allowed,
            forbidden=frozenset(spec.forbidden_token_ids),
        )

    def _composite_piece(
        self, spec: constraints_pb2.CompositeConstraint, path: str, depth: int, whole: bool
    ) -> Piece:
        if depth + 1 > MAX_NESTING_DEPTH:
            raise invalid("COMPOSITE_INVALID", f"nested deeper than {MAX_NESTING_DEPTH}", path)
        if spec.combinator not in (
            C.COMBINATOR_SEQUENCE,
            C.COMBINATOR_ANY_OF,
            C.COMBINATOR_ALL_OF,
        ):
            raise invalid(
                "COMPOSITE_INVALID",
                "combinator must be SEQUENCE, ANY_OF or ALL_OF",
                f"{path}.combinator",
            )
        if not spec.parts:
            raise invalid(
                "COMPOSITE_INVALID", "a composite needs at least one part", f"{path}.parts"
            )
        # Only an intersection's parts each constrain the whole output.
        whole = whole and spec.combinator == C.COMBINATOR_ALL_OF
        parts = [
            self.piece(p, f"{path}.parts[{i}]", depth + 1, whole) for i, p in enumerate(spec.parts)
        ]
        return fold_composite(spec.combinator, parts, path, self._validate)


def json_options(options: constraints_pb2.JsonSchemaOptions) -> dict[str, object]:
    """The llguidance JSON compile options a request set (unset ones omitted)."""
    result: dict[str, object] = {}
    for name in (
        "whitespace_flexible",
        "lenient",
        "coerce_one_of",
        "item_separator",
        "key_separator",
    ):
        if options.HasField(name):  # (strict is ours, not llguidance's)
            result[name] = getattr(options, name)
    return result


def schema_check(
    original: object, prepared: PreparedSchema, path: str, *, lenient: bool, whole: bool
) -> SchemaCheck:
    """The check of a prepared schema: a validator of the original when the
    grammar over-approximates (none under lenient inside a sequence/any_of,
    where the schema is not the whole output)."""
    size = len(json.dumps(original))
    if prepared.exact:
        return SchemaCheck(path, prepared.keywords, lenient, None, size)
    if not whole:
        if lenient:
            return SchemaCheck(path, prepared.keywords, lenient, None, size)
        named = ", ".join(k.pointer for k in prepared.relaxed[:8])
        message = (
            f"{path}: the grammar cannot enforce {named}; such a schema is enforced by "
            "validating the output, which needs it to be the whole output (top level or "
            "all_of, not inside a sequence or any_of); set lenient to ignore them there"
        )
        raise ServiceError(
            "CONSTRAINT_UNSUPPORTED", message, (FieldViolation(path, message),), {"field": path}
        )
    try:
        validator = build_validator(original)
        validator.is_valid(None)  # a schema the validator cannot read fails here, not per output
    except Exception as error:  # jsonschema raises many kinds (bad refs, bad regexes)
        raise invalid(
            "JSON_SCHEMA_INVALID", f"the JSON schema validator cannot read it: {error}", path
        ) from None
    return SchemaCheck(path, prepared.keywords, lenient, validator, size)
