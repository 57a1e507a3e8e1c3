"""The serving workloads: chat prompts and JSON schemas shared by every system.

- `code`: free code generation (no schema anywhere).
- `json`: short JSON records (function signatures, summaries; ~30 tokens).
- `json_long`: long JSON outputs (>= 150 tokens): an array of code-symbol
  records, and a function call whose arguments carry a code body string.

A JSON workload runs constrained (the schema enforced) and unconstrained (the
very same prompt, which shows the schema, with nothing enforced), so the two
differ only in the constraint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SYSTEM = "You are a coding assistant. Answer briefly."

# 16 prompts so that each of 16 concurrent streams has its own.
TASKS: tuple[str, ...] = (
    "Write a Python function that parses a CSV file into a list of dicts.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a JavaScript function that debounces another function.",
    "Write a Rust function that returns the n-th Fibonacci number.",
    "Write a Python class for a bounded LRU cache.",
    "Write a Go function that reverses a slice of ints in place.",
    "Write a SQL query that finds the ten newest users.",
    "Write a Python function that merges two sorted lists.",
    "Write a TypeScript interface for a blog post with tags.",
    "Write a Python function that counts words in a text file.",
    "Write a bash script that backs up a folder to a tar.gz file.",
    "Write a Java method that checks whether a number is prime.",
    "Write a Python function that flattens a nested list.",
    "Write a C function that computes the length of a string.",
    "Write a Python decorator that retries a function three times.",
    "Write a Python function that validates an email address with a regex.",
)

_NAME = {"type": "string", "maxLength": 40}
_IDENT = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,30}$"}
_PATH = {"type": "string", "pattern": "^[a-z_][a-z0-9_/]{0,40}\\.[a-z]{1,4}$"}
# Four schemas of the kind a code assistant fills in; strings and arrays are
# bounded so a small model finishes them well within max_tokens.
SHORT_SCHEMAS: tuple[dict[str, Any], ...] = (
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z_][a-z0-9_]{0,30}$"},
            "parameters": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": _NAME, "type": _NAME},
                    "required": ["name", "type"],
                    "additionalProperties": False,
                },
                "maxItems": 3,
            },
            "returns": _NAME,
        },
        "required": ["name", "parameters", "returns"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "language": {"enum": ["python", "javascript", "rust", "go", "sql", "other"]},
            "summary": {"type": "string", "maxLength": 80},
            "lines_of_code": {"type": "integer", "minimum": 1, "maximum": 200},
        },
        "required": ["language", "summary", "lines_of_code"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "function": _NAME,
            "tests": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3},
        },
        "required": ["function", "tests"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 60},
            "difficulty": {"enum": ["easy", "medium", "hard"]},
            "keywords": {"type": "array", "items": _NAME, "maxItems": 4},
        },
        "required": ["title", "difficulty", "keywords"],
        "additionalProperties": False,
    },
)

# Long outputs: at least six symbol records (~30 tokens each), or a code body
# of at least 400 characters; upper bounds keep them within max_tokens.
LONG_SCHEMAS: tuple[dict[str, Any], ...] = (
    {
        "type": "object",
        "properties": {
            "file": _PATH,
            "symbols": {
                "type": "array",
                "minItems": 6,
                "maxItems": 8,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": _IDENT,
                        "kind": {"enum": ["function", "class", "method", "variable", "constant"]},
                        "line": {"type": "integer", "minimum": 1, "maximum": 9999},
                        "exported": {"type": "boolean"},
                        "signature": {"type": "string", "maxLength": 60},
                    },
                    "required": ["name", "kind", "line", "exported", "signature"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["file", "symbols"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "tool": {"const": "write_file"},
            "arguments": {
                "type": "object",
                "properties": {
                    "path": _PATH,
                    "language": {"enum": ["python", "javascript", "typescript", "go", "sql"]},
                    "body": {"type": "string", "minLength": 400, "maxLength": 900},
                },
                "required": ["path", "language", "body"],
                "additionalProperties": False,
            },
        },
        "required": ["tool", "arguments"],
        "additionalProperties": False,
    },
)

# The same compile options on every side: no free whitespace (else a weak model
# may emit whitespace until max_tokens), set inside the schema so the OpenAI
# peer's guidance backend applies it too.
GUIDANCE_OPTIONS = {"whitespace_flexible": False}

_LONG_ASK = (
    "List the symbols (functions, classes, variables) of a module that does this, "
    "one record per symbol:",
    "Call the write_file tool with the complete source code for this:",
)


@dataclass(frozen=True)
class Workload:
    """Prompts (one per stream index), their schemas, and how long outputs may get."""

    name: str
    label: str
    schemas: tuple[dict[str, Any], ...]  # empty: unconstrained only
    max_tokens: int
    quick_max_tokens: int

    @property
    def constrained(self) -> bool:
        """Whether the workload has a schema (and so a constrained arm)."""
        return bool(self.schemas)

    def schema(self, index: int) -> dict[str, Any]:
        """The schema of prompt `index`, with the shared llguidance options."""
        schema = self.schemas[index % len(self.schemas)]
        return {**schema, "x-guidance": GUIDANCE_OPTIONS}

    def messages(self, index: int) -> list[tuple[str, str]]:
        """Chat messages of prompt `index` (a JSON workload shows its schema)."""
        task = TASKS[index % len(TASKS)]
        if self.name == "json_long":
            which = index % len(self.schemas)
            task = f"{_LONG_ASK[which]} {task}"
        if self.schemas:
            schema = json.dumps(self.schemas[index % len(self.schemas)])
            task = f"{task} Reply only with JSON matching this schema: {schema}"
        return [("system", SYSTEM), ("user", task)]


WORKLOADS: tuple[Workload, ...] = (
    Workload("code", "code, unconstrained", (), max_tokens=96, quick_max_tokens=48),
    Workload("json", "short JSON", SHORT_SCHEMAS, max_tokens=96, quick_max_tokens=64),
    # Cut at 200 when longer: still >= 150 tokens, and the full run fits its time.
    Workload("json_long", "long JSON", LONG_SCHEMAS, max_tokens=200, quick_max_tokens=160),
)
BY_NAME = {w.name: w for w in WORKLOADS}
