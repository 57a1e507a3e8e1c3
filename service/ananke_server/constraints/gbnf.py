"""GBNF (llama.cpp's grammar format) and the EBNF variants callers write, to
llguidance Lark.

Accepted: rules `name ::= ...` (also `:=` and `=`, names plain, with dashes or
in angle brackets), alternatives with `|` on the same or later lines, groups,
`*` `+` `?` and `{m}` `{m,}` `{m,n}` repetition, double- or single-quoted
strings and character classes with escapes (`\\n \\t \\r \\\\ \\" \\xHH \\uHHHH
\\UHHHHHHHH`), `.` for any character, `#` comments and `;` rule terminators.
Rules need no line structure: a rule ends where the next `name ::=` begins.
The grammar starts at `root`, or at its first rule (with a warning) when it
has no `root`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_ASSIGN = ("::=", ":=", "=")
_NAME = re.compile(r"<([^<>\n]+)>|([A-Za-z_][A-Za-z0-9_-]*)")
_REPEAT = re.compile(r"\{\s*(\d*)\s*(,?)\s*(\d*)\s*\}")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "f": "\f", "v": "\v"}
_HEX_LENGTH = {"x": 2, "u": 4, "U": 8}


class GbnfError(ValueError):
    """A GBNF syntax error at a line and column (from 1)."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"{message} at line {line}, column {column}")
        self.line = line
        self.column = column


@dataclass(frozen=True)
class _Token:
    kind: str  # name, assign, string, class, any, op, repeat
    value: str
    offset: int


@dataclass(frozen=True)
class Converted:
    """A converted grammar: the Lark text and warnings for the caller."""

    lark: str
    warnings: tuple[str, ...]
    start: str  # the GBNF rule the grammar starts at


def gbnf_to_lark(text: str) -> Converted:
    """Converts a GBNF grammar to Lark; raises GbnfError on a syntax error."""
    return _Converter(text).convert()


class _Converter:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = list(self._tokenize())

    def error(self, message: str, offset: int) -> GbnfError:
        line = self.text.count("\n", 0, offset) + 1
        column = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        return GbnfError(message, line, column)

    # -- lexing -----------------------------------------------------------------

    def _tokenize(self) -> list[_Token]:
        text, i, out = self.text, 0, []
        while i < len(text):
            char = text[i]
            if char.isspace() or char == ";":
                i += 1
            elif char == "#":
                end = text.find("\n", i)
                i = len(text) if end < 0 else end
            elif text.startswith(_ASSIGN, i):
                op = next(a for a in _ASSIGN if text.startswith(a, i))
                out.append(_Token("assign", op, i))
                i += len(op)
            elif char in "\"'":
                start = i
                value, i = self._string(i)
                out.append(_Token("string", value, start))
            elif char == "[":
                start = i
                value, i = self._char_class(i)
                out.append(_Token("class", value, start))
            elif char == ".":
                out.append(_Token("any", ".", i))
                i += 1
            elif char in "|()*+?":
                out.append(_Token("op", char, i))
                i += 1
            elif char == "{":
                found = _REPEAT.match(text, i)
                if found is None:
                    raise self.error("expected a repetition like {2,5}", i)
                out.append(_Token("repeat", self._repeat(found, i), i))
                i = found.end()
            else:
                found = _NAME.match(text, i)
                if found is None:
                    raise self.error(f"unexpected character {char!r}", i)
                out.append(_Token("name", found.group(1) or found.group(2), i))
                i = found.end()
        return out

    def _repeat(self, found: re.Match[str], offset: int) -> str:
        low, comma, high = found.groups()
        if not low and not high:
            raise self.error("a repetition needs a count", offset)
        if not comma:
            return "{" + low + "}"
        if high and int(high) < int(low or 0):
            raise self.error("a repetition's maximum is below its minimum", offset)
        return "{" + (low or "0") + "," + high + "}"

    def _escape(self, i: int) -> tuple[str, int]:
        """The character an escape at text[i] (a backslash) stands for, and the next index."""
        text = self.text
        if i + 1 >= len(text):
            raise self.error("incomplete escape", i)
        code = text[i + 1]
        if code in _HEX_LENGTH:
            digits = text[i + 2 : i + 2 + _HEX_LENGTH[code]]
            if len(digits) != _HEX_LENGTH[code] or not all(
                c in "0123456789abcdefABCDEF" for c in digits
            ):
                raise self.error(f"\\{code} needs {_HEX_LENGTH[code]} hex digits", i)
            value = int(digits, 16)
            if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                raise self.error(f"\\{code}{digits} is not a character", i)
            return chr(value), i + 2 + len(digits)
        return _ESCAPES.get(code, code), i + 2

    def _string(self, i: int) -> tuple[str, int]:
        quote, text, out, start = self.text[i], self.text, [], i
        i += 1
        while i < len(text) and text[i] != quote:
            if text[i] == "\\":
                char, i = self._escape(i)
                out.append(char)
            elif text[i] == "\n":
                raise self.error("unterminated string", start)
            else:
                out.append(text[i])
                i += 1
        if i >= len(text):
            raise self.error("unterminated string", start)
        return "".join(out), i + 1

    def _char_class(self, i: int) -> tuple[str, int]:
        """A character class as a Rust regex class; every non-alphanumeric
        character written as \\x{..} so nothing needs Lark or regex escaping."""
        text, start, parts = self.text, i, []
        i += 1
        negated = i < len(text) and text[i] == "^"
        i += negated
        while i < len(text) and text[i] != "]":
            if text[i] == "\\":
                char, i = self._escape(i)
            else:
                char, i = text[i], i + 1
            if text.startswith("-", i) and i + 1 < len(text) and text[i + 1] != "]":
                if text[i + 1] == "\\":
                    high, i = self._escape(i + 1)
                else:
                    high, i = text[i + 1], i + 2
                if ord(high) < ord(char):
                    raise self.error("a character range runs backwards", start)
                parts.append(f"{_class_char(char)}-{_class_char(high)}")
            else:
                parts.append(_class_char(char))
        if i >= len(text):
            raise self.error("unterminated character class", start)
        if not parts:
            raise self.error("empty character class", start)
        return "[" + ("^" if negated else "") + "".join(parts) + "]", i + 1

    # -- rules ------------------------------------------------------------------

    def convert(self) -> Converted:
        rules: dict[str, list[list[_Token]]] = {}
        first_offset: dict[str, int] = {}
        tokens, i = self.tokens, 0
        if not tokens:
            raise self.error("the grammar has no rules", 0)
        while i < len(tokens):
            head = tokens[i]
            if head.kind != "name" or i + 1 >= len(tokens) or tokens[i + 1].kind != "assign":
                raise self.error("expected a rule: name ::= ...", head.offset)
            i += 2
            body: list[_Token] = []
            while i < len(tokens) and not (
                tokens[i].kind == "name" and i + 1 < len(tokens) and tokens[i + 1].kind == "assign"
            ):
                if tokens[i].kind == "assign":
                    raise self.error(f"unexpected {tokens[i].value}", tokens[i].offset)
                body.append(tokens[i])
                i += 1
            if not body:
                raise self.error(f"rule {head.value!r} has an empty definition", head.offset)
            rules.setdefault(head.value, []).append(body)
            first_offset.setdefault(head.value, head.offset)
        names = _lark_names(list(rules))
        warnings: list[str] = []
        start = "root" if "root" in rules else next(iter(rules))
        if start != "root":
            warnings.append(
                f"the GBNF grammar has no 'root' rule; it starts at its first rule '{start}'"
            )
        lines = [f"start: {names[start]}"]
        for name, bodies in rules.items():
            alternatives = [self._body(body, names) for body in bodies]
            lines.append(f"{names[name]}: " + " | ".join(f"({a})" for a in alternatives))
        return Converted("\n".join(lines) + "\n", tuple(warnings), start)

    def _body(self, body: list[_Token], names: dict[str, str]) -> str:
        out: list[str] = []
        depth = 0
        previous: _Token | None = None
        for token in body:
            if token.kind == "name":
                if token.value not in names:
                    raise self.error(f"Rule '{token.value}' is not defined", token.offset)
                out.append(names[token.value])
            elif token.kind == "string":
                out.append(json.dumps(token.value, ensure_ascii=False) if token.value else '""')
            elif token.kind == "class":
                out.append(f"/{token.value}/")
            elif token.kind == "any":
                out.append("/(?s:.)/")
            elif token.kind == "repeat" or token.value in "*+?":
                if previous is None or (previous.kind == "op" and previous.value in "(|"):
                    raise self.error(f"{token.value} follows nothing", token.offset)
                out.append(token.value)
            else:
                depth += {"(": 1, ")": -1}.get(token.value, 0)
                if depth < 0:
                    raise self.error("unbalanced ')'", token.offset)
                out.append(token.value)
            previous = token
        if depth:
            raise self.error("unclosed '('", body[-1].offset)
        return " ".join(out)


def _class_char(char: str) -> str:
    return char if char.isascii() and char.isalnum() else f"\\x{{{ord(char):X}}}"


def _lark_names(names: list[str]) -> dict[str, str]:
    """Lark rule names (lowercase, [a-z0-9_]) for GBNF names, distinct and never `start`."""
    taken = {"start"}
    mapped: dict[str, str] = {}
    for name in names:
        base = re.sub(r"[^a-z0-9_]", "_", name.lower())
        if not base or not base[0].isalpha():
            base = "r_" + base
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate)
        mapped[name] = candidate
    return mapped
