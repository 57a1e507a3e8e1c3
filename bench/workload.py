"""The serving workload: chat prompts and JSON schemas shared by every system."""

from __future__ import annotations

import json
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
# Four schemas of the kind a code assistant fills in; strings and arrays are
# bounded so a small model finishes them well within max_tokens.
SCHEMAS: tuple[dict[str, Any], ...] = (
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

# The same compile options on every side: no free whitespace (else a weak model
# may emit whitespace until max_tokens), set inside the schema so the OpenAI
# peer's guidance backend applies it too.
GUIDANCE_OPTIONS = {"whitespace_flexible": False}


def schema_for(index: int) -> dict[str, Any]:
    """The schema of prompt `index`, with the shared llguidance options."""
    schema = SCHEMAS[index % len(SCHEMAS)]
    return {**schema, "x-guidance": GUIDANCE_OPTIONS}


def messages_for(index: int, constrained: bool) -> list[tuple[str, str]]:
    """Chat messages of prompt `index` (the constrained one asks for JSON)."""
    task = TASKS[index % len(TASKS)]
    if constrained:
        schema = json.dumps(SCHEMAS[index % len(SCHEMAS)])
        task = f"{task} Reply only with JSON matching this schema: {schema}"
    return [("system", SYSTEM), ("user", task)]
