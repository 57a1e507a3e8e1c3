"""Grammar validation with llguidance and the errors it yields: which reason,
where in the user's text (line/column), and the complexity-limit case."""

from __future__ import annotations

import json
import re

import grpc
from llguidance import LLMatcher, LLParserLimits, LLTokenizer

from ..errors import FieldViolation, ServiceError
from .core import K, Kind

# llguidance writes "at L(C): ..." or, for Lark syntax errors, "L(C): ...".
_LARK_POSITION = re.compile(r"^(?:at )?(\d+)\((\d+)\)")
# The name an error is about: `Invalid type: foo`, `Unknown format: x`,
# `Unimplemented keys: ["a"]`, `unknown name: "r"`, GBNF `Rule 'r' not found`.
_NAMED = re.compile(
    r"(?:Invalid type|Unknown format|Unimplemented keys|unknown name|Rule)\W*"
    r"(?P<name>[A-Za-z0-9_$.-][A-Za-z0-9_$./:-]*)"
)
_REGEX_CARET = re.compile(r"regex parse error:\n {4}(?P<text>.*)\n {4}(?P<caret> *)\^")

# llguidance's parser and lexer limit messages (LLParserLimits); not user mistakes.
_LIMIT_MESSAGE = re.compile(
    r"too big \(limit|too many items \(limit|too many states|fuel exhausted|lex fuel|"
    r"too many expressions constructed|schema too large|exceeds capacity of",
    re.IGNORECASE,
)
_EXCERPT = re.compile(r"\n\s+\d+ \|")
_WRAPPER_POSITION = re.compile(r"^at \d+\(\d+\): ")

_REASON_BY_KIND: dict[Kind, str] = {
    K.CONSTRAINT_KIND_JSON_SCHEMA: "JSON_SCHEMA_INVALID",
    K.CONSTRAINT_KIND_REGEX: "REGEX_INVALID",
    K.CONSTRAINT_KIND_GRAMMAR_LARK: "GRAMMAR_INVALID",
    K.CONSTRAINT_KIND_GRAMMAR_GBNF: "GRAMMAR_INVALID",
    K.CONSTRAINT_KIND_CHOICE: "CHOICE_INVALID",
    K.CONSTRAINT_KIND_TOKEN_MASK: "TOKEN_MASK_INVALID",
    K.CONSTRAINT_KIND_STRUCTURAL: "STRUCTURAL_INVALID",
}


def _position(message: str, kind: Kind) -> tuple[int, int]:
    """Line and column (from 1) of an llguidance error within the user's text."""
    if kind == K.CONSTRAINT_KIND_REGEX:
        found = _REGEX_CARET.search(message)
        if found:
            return 1, len(found.group("caret")) + 1
    if kind in (K.CONSTRAINT_KIND_GRAMMAR_LARK,):
        found = _LARK_POSITION.search(message)
        if found:
            return int(found.group(1)), int(found.group(2))
    return 0, 0


def locate(message: str, source: str | None, kind: Kind) -> tuple[int, int]:
    """Where in the user's text the name an error is about first appears (line,
    column from 1); (0, 0) when the message names nothing findable."""
    if not source:
        return 0, 0
    found = _NAMED.search(message)
    if found is None:
        return 0, 0
    name = found.group("name")
    if kind == K.CONSTRAINT_KIND_JSON_SCHEMA:
        pattern = re.escape(json.dumps(name))
    else:
        pattern = r"(?<![\w-])" + re.escape(name) + r"(?![\w-])"
    hits = list(re.finditer(pattern, source))
    if not hits:
        return 0, 0
    # An undefined rule: its first use; a JSON value: its first occurrence.
    offset = hits[0].start()
    line = source.count("\n", 0, offset) + 1
    return line, offset - (source.rfind("\n", 0, offset) + 1) + 1


def first_line(message: str) -> str:
    """llguidance messages end with a grammar excerpt; keep the useful head."""
    return _EXCERPT.split(message.strip())[0].strip()[:2000]


class GrammarValidator:
    """Validates grammar strings for one tokenizer, turning llguidance's errors
    into ServiceErrors with a reason by kind and a position where one is known."""

    def __init__(self, tokenizer: LLTokenizer, limits: LLParserLimits) -> None:
        self.tokenizer = tokenizer
        self.limits = limits

    def __call__(self, grammar: str, kind: Kind, path: str, source: str | None = None) -> list[str]:
        """Validates a grammar string; returns warnings or raises ServiceError.
        `source` is the user's text, to find where a named error points."""
        is_error, messages = LLMatcher.validate_grammar_with_warnings(
            grammar, self.tokenizer, limits=self.limits
        )
        if not is_error:
            return list(messages)
        message = messages[0] if messages else "invalid grammar"
        reason = _REASON_BY_KIND.get(kind, "COMPOSITE_INVALID")
        if _LIMIT_MESSAGE.search(first_line(message)):
            raise ServiceError(
                "CONSTRAINT_TOO_LARGE",
                f"{path}: grammar exceeds the parser's complexity limits: {first_line(message)}",
                (FieldViolation(path, first_line(message)),),
                {"field": path},
                code_override=grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
        line, column = _position(message, kind)
        if not line:
            line, column = locate(first_line(message), source, kind)
        metadata = {"field": path}
        if line:
            metadata.update(line=str(line), column=str(column))
        text = first_line(message)
        if kind != K.CONSTRAINT_KIND_GRAMMAR_LARK:
            # The position llguidance gives is in our wrapper, not the user's text.
            text = _WRAPPER_POSITION.sub("", text)
        raise ServiceError(reason, f"{path}: {text}", (FieldViolation(path, text),), metadata)


def unsatisfiable(path: str, *, at_start: bool, cause: str = "proved") -> ServiceError:
    """CONSTRAINT_UNSATISFIABLE: the constraints together allow no next token
    (cause "proved"), or no complete output (cause "exhausted": a completion
    search saw every state they reach together)."""
    where = "the empty output" if at_start else "the output so far"
    message = (
        f"{path}: the constraints together allow no token after {where} "
        "(their intersection is empty)"
    )
    if cause == "exhausted":
        message = (
            f"{path}: the constraints have no common complete output after {where} "
            "(a completion search explored every state they reach together)"
        )
    return ServiceError(
        "CONSTRAINT_UNSATISFIABLE",
        message,
        (FieldViolation(path, "empty intersection"),),
        {"field": path, "cause": cause},
    )


def unsatisfiable_during_generation(
    path: str, tokens: int, *, cause: str = "proved"
) -> ServiceError:
    """The error of a generation that reached a dead end after `tokens` tokens.
    `cause`: "proved" (the constraints allow no common token after the output),
    "exhausted" (a search saw every distinct state reachable from there, none
    complete) or "search_budget_spent" (the dead-end search gave up)."""
    if cause == "proved":
        message = unsatisfiable(path, at_start=False).message
        violation = "empty intersection"
    elif cause == "exhausted":
        message = unsatisfiable(path, at_start=False, cause=cause).message
        violation = "no common completion"
    else:
        message = (
            f"{path}: the dead-end search found no common completion of the constraints "
            "after the output so far within its budget (settings dead_end_retries, "
            "steer_search_nodes); they may still have one"
        )
        violation = "no common completion found"
    return ServiceError(
        "CONSTRAINT_UNSATISFIABLE",
        message + f"; generation stopped after {tokens} tokens",
        (FieldViolation(path, violation),),
        {"field": path, "tokens": str(tokens), "cause": cause},
    )
