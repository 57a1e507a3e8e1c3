"""Reasoning models: the output is free reasoning text (optionally opened by
the start tag), closed by the end tag, then the answer; the request's
constraints apply to the answer alone. The engine enforces each grammar
wrapped as `reasoning region + grammar` (one llguidance grammar: a lazy lexeme
that ends at the first end tag, bounded in characters, then the request's
grammar by reference); the stream splits reasoning text from answer text; the
re-check, schema validation and provenance work on the answer after the end tag."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ananke.v1 import generation_pb2, provenance_pb2

from .candidates import token_bytes
from .errors import invalid
from .settings import Settings

ANSWER_GRAMMAR = "ananke_answer"
THINK_TAGS = ("<think>", "</think>")


@dataclass(frozen=True)
class ReasoningPlan:
    """A request that reasons: its tags and the reasoning bound in characters."""

    start: str
    end: str
    max_chars: int


def reasoning_tags(value: str) -> tuple[str, str] | None:
    """The (start, end) tags a `reasoning_tags` setting names; None when off."""
    if not value:
        return None
    if value == "think":
        return THINK_TAGS
    start, end = value.split()
    return start, end


def reasoning_info(settings: Settings) -> dict[str, Any]:
    """GetModelInfoResponse's reasoning fields."""
    tags = reasoning_tags(settings.reasoning_tags)
    if tags is None:
        return {}
    return {
        "reasoning_start_tag": tags[0],
        "reasoning_end_tag": tags[1],
        "reasoning_default": settings.reasoning_default,
        "reasoning_max_chars": settings.reasoning_max_chars,
    }


def prompt_suffix(settings: Settings) -> str:
    """What a chat prompt gets after its generation prompt by default: the
    start tag with reasoning_open_prompt (and reasoning on by default)."""
    tags = reasoning_tags(settings.reasoning_tags)
    on = tags is not None and settings.reasoning_default and settings.reasoning_open_prompt
    return tags[0] if on and tags is not None else ""


def plan_for(
    request: generation_pb2.GenerationRequest, settings: Settings, field_prefix: str = "request"
) -> ReasoningPlan | None:
    """Whether and how `request` reasons; ServiceError for fields out of range."""
    tags = reasoning_tags(settings.reasoning_tags)
    asked = request.reasoning if request.HasField("reasoning") else None
    if asked and tags is None:
        raise invalid(
            "REASONING_UNAVAILABLE",
            "this server has no reasoning format (start it with --reasoning-tags)",
            f"{field_prefix}.reasoning",
        )
    cap = settings.reasoning_max_chars
    max_chars = cap
    if request.HasField("reasoning_max_chars"):
        max_chars = request.reasoning_max_chars
        if not 1 <= max_chars <= cap:
            raise invalid(
                "REASONING_INVALID",
                f"reasoning_max_chars must be 1 to {cap}, got {max_chars}",
                f"{field_prefix}.reasoning_max_chars",
            )
    wanted = settings.reasoning_default if asked is None else asked
    if tags is None or not wanted:
        return None
    return ReasoningPlan(start=tags[0], end=tags[1], max_chars=max_chars)


def wrap_grammar(grammar: str, plan: ReasoningPlan) -> str:
    """`grammar` (Lark text or a serialized llguidance TopLevelGrammar) after
    a reasoning region: optional start tag, at most max_chars of free text
    ending at the first end tag, then the grammar."""
    top: dict[str, Any] = (
        json.loads(grammar)
        if grammar.lstrip().startswith("{")
        else {"grammars": [{"lark_grammar": grammar}]}
    )
    inner = list(top["grammars"])
    answer = {**inner[0], "name": ANSWER_GRAMMAR}
    lark = "\n".join(
        [
            "%llguidance {}",
            f"start: ananke_open? ananke_reasoning @{ANSWER_GRAMMAR}",
            f"ananke_open: {json.dumps(plan.start)}",
            # Lazy: the lexeme ends at the first end tag, never past it.
            f"ananke_reasoning[lazy]: /(?s:.{{0,{plan.max_chars}}}){_regex_literal(plan.end)}/",
        ]
    )
    return json.dumps({**top, "grammars": [{"lark_grammar": lark}, answer, *inner[1:]]})


def wrap_all(grammars: Sequence[str], plan: ReasoningPlan | None) -> tuple[str, ...]:
    """Every grammar wrapped (unchanged without a plan)."""
    if plan is None:
        return tuple(grammars)
    return tuple(wrap_grammar(g, plan) for g in grammars)


class StreamSplitter:
    """Splits one candidate's streamed text into reasoning and answer text,
    dropping the tags; text that may begin a tag waits for the next chunk."""

    def __init__(self, plan: ReasoningPlan) -> None:
        self._plan = plan
        self._pending = ""
        self._at_start = True
        self._reasoning = True

    def feed(self, text: str) -> tuple[str, str]:
        """(reasoning text, answer text) that `text` adds."""
        if not self._reasoning:
            return "", text
        buffer = self._pending + text
        self._pending = ""
        start, end = self._plan.start, self._plan.end
        if self._at_start:
            if len(buffer) < len(start) and start.startswith(buffer):
                self._pending = buffer
                return "", ""
            self._at_start = False
            if buffer.startswith(start):
                buffer = buffer[len(start) :]
        at = buffer.find(end)
        if at >= 0:
            self._reasoning = False
            return buffer[:at], buffer[at + len(end) :]
        keep = _partial_suffix(buffer, end)
        self._pending = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], ""

    def flush(self) -> str:
        """Reasoning text still held back (the output ended)."""
        held, self._pending = self._pending, ""
        return held


def split_text(text: str, plan: ReasoningPlan) -> tuple[str, str | None]:
    """(reasoning, answer) of a whole output; answer None when reasoning did not end."""
    body = text[len(plan.start) :] if text.startswith(plan.start) else text
    at = body.find(plan.end)
    if at < 0:
        return body, None
    return body[:at], body[at + len(plan.end) :]


@dataclass(frozen=True)
class AnswerSplit:
    """Where the answer begins in an output's tokens."""

    ended: bool
    answer_ids: list[int]  # the answer's tokens, for the re-check
    start_token: int
    start_char: int
    reasoning_chars: int

    def provenance(self, plan: ReasoningPlan, bounded: bool) -> provenance_pb2.ReasoningProvenance:
        """The record of it (max_chars only when a grammar bounded the reasoning)."""
        return provenance_pb2.ReasoningProvenance(
            ended=self.ended,
            answer_start_token=self.start_token,
            answer_start_char=self.start_char,
            reasoning_chars=self.reasoning_chars,
            max_chars=plan.max_chars if bounded else 0,
            start_tag=plan.start,
            end_tag=plan.end,
        )


def split_tokens(
    token_ids: Sequence[int], tokenizer: Any, plan: ReasoningPlan, eos: frozenset[int]
) -> AnswerSplit:
    """The answer part of an output's tokens (trailing end-of-sequence tokens
    kept at its end). A token the end tag ends inside is re-tokenized from its
    answer bytes, so the answer is checked alone, byte for byte."""
    count = len(token_ids)
    while count and token_ids[count - 1] in eos:
        count -= 1
    body, trailing = list(token_ids[:count]), list(token_ids[count:])
    pieces = [token_bytes(tokenizer, t) for t in body]
    data = b"".join(pieces)
    start, end = plan.start.encode(), plan.end.encode()
    offset = len(start) if data.startswith(start) else 0
    at = data.find(end, offset)
    if at < 0:
        chars = len(data[offset:].decode("utf-8", errors="replace"))
        return AnswerSplit(False, [], len(body), len(data.decode("utf-8", "replace")), chars)
    answer_at = at + len(end)
    reasoning_chars = len(data[offset:at].decode("utf-8", errors="replace"))
    start_char = len(data[:answer_at].decode("utf-8", errors="replace"))
    position = 0
    for index, piece in enumerate(pieces):
        if position + len(piece) > answer_at:
            head = []
            if position < answer_at:  # the token straddles the end tag
                head = [int(t) for t in tokenizer.tokenize_bytes(piece[answer_at - position :])]
            else:
                head = [body[index]]
            ids = head + body[index + 1 :] + trailing
            return AnswerSplit(True, ids, index, start_char, reasoning_chars)
        position += len(piece)
    return AnswerSplit(True, trailing, len(body), start_char, reasoning_chars)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `tag`."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def _regex_literal(text: str) -> str:
    """`text` as a regex matching it literally, safe inside Lark's /.../."""
    return "".join(ch if ch.isascii() and ch.isalnum() else f"\\x{{{ord(ch):X}}}" for ch in text)
