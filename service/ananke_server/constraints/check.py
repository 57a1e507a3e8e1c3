"""The independent re-check of an output with fresh matchers, and the
dead-end probe of an intersection (no token allowed by every part)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from ananke.v1 import provenance_pb2
from llguidance import LLMatcher, LLParserLimits, LLTokenizer

from ..masks import TokenMasks, intersect, mask_words
from .core import CompiledConstraints


class FreshMatchers:
    """Fresh (never advanced) matchers for re-checks. Building one costs about
    a millisecond per grammar, a copy of a pristine one about a microsecond:
    one pristine matcher per grammar is kept (bounded, least recently used
    first out) and each call gets a deep copy of it."""

    def __init__(self, tokenizer: LLTokenizer, limits: LLParserLimits, capacity: int = 64):
        self._tokenizer = tokenizer
        self._limits = limits
        self._capacity = capacity
        self._lock = threading.Lock()
        self._pristine: OrderedDict[str, LLMatcher] = OrderedDict()

    def __call__(self, grammar: str) -> LLMatcher:
        """A matcher for `grammar` in its start state."""
        with self._lock:
            kept = self._pristine.get(grammar)
            if kept is not None:
                self._pristine.move_to_end(grammar)
                return kept.deep_copy()
        built = LLMatcher(self._tokenizer, grammar, log_level=0, limits=self._limits)
        with self._lock:
            self._pristine[grammar] = built
            while len(self._pristine) > self._capacity:
                self._pristine.popitem(last=False)
            return built.deep_copy()


def check_output(
    tokenizer: LLTokenizer,
    limits: LLParserLimits,
    compiled: CompiledConstraints,
    token_ids: Sequence[int],
    eos_ids: Sequence[int],
    fresh: Callable[[str], LLMatcher] | None = None,
) -> tuple[provenance_pb2.CheckVerdict.ValueType, str]:
    """Re-checks generated tokens with fresh matchers, one per top-level
    constraint (from `fresh` when given, else built here)."""
    if not compiled.constrained:
        return provenance_pb2.CHECK_VERDICT_UNCONSTRAINED, ""
    tokens = list(token_ids)
    while tokens and tokens[-1] in eos_ids:
        tokens.pop()
    for token in tokens:
        if compiled.allowed_token_ids is not None and token not in compiled.allowed_token_ids:
            return provenance_pb2.CHECK_VERDICT_VIOLATED, f"token {token} is not allowed"
        if token in compiled.forbidden_token_ids:
            return provenance_pb2.CHECK_VERDICT_VIOLATED, f"token {token} is forbidden"
    incomplete: list[str] = []
    region_grammars = dict(compiled.region_checks)
    for name, grammar in compiled.check_grammars:
        if fresh is not None:
            matcher = fresh(grammar)
        else:
            matcher = LLMatcher(tokenizer, grammar, log_level=0, limits=limits)
        if matcher.is_error():
            return provenance_pb2.CHECK_VERDICT_VIOLATED, f"{name}: {matcher.get_error()}"
        consumed = matcher.try_consume_tokens(tokens)
        if consumed < len(tokens):
            detail = f"{name}: token {consumed} ({tokens[consumed]}) is not allowed"
            return provenance_pb2.CHECK_VERDICT_VIOLATED, detail
        if not matcher.is_accepting():
            incomplete.append(name)
        regions = region_grammars.get(name)
        if regions:
            failed = check_regions(tokenizer, limits, name, regions, matcher.get_captures())
            if failed:
                return provenance_pb2.CHECK_VERDICT_VIOLATED, failed
    if incomplete:
        return provenance_pb2.CHECK_VERDICT_INCOMPLETE, "not complete: " + ", ".join(incomplete)
    return provenance_pb2.CHECK_VERDICT_SATISFIED, ""


def check_regions(
    tokenizer: LLTokenizer,
    limits: LLParserLimits,
    name: str,
    regions: Sequence[tuple[str, str, str]],
    captures: Sequence[tuple[str, bytes]],
) -> str:
    """Each complete region of a structural constraint, alone, against its own
    constraint (fresh matchers over the region's bytes); the first failure, or ""."""
    by_capture = {capture: (label, grammar) for capture, label, grammar in regions}
    count = 0
    for capture, body in captures:
        if capture not in by_capture:
            continue
        count += 1
        label, grammar = by_capture[capture]
        matcher = LLMatcher(tokenizer, grammar, log_level=0, limits=limits)
        tokens = tokenizer.tokenize_bytes(body)
        consumed = matcher.try_consume_tokens(tokens)
        if matcher.is_error() or consumed < len(tokens) or not matcher.is_accepting():
            return f"{name}: region {count} ({label}) does not satisfy its constraint"
    return ""


def dead_end(
    tokenizer: LLTokenizer,
    limits: LLParserLimits,
    compiled: CompiledConstraints,
    token_ids: Sequence[int],
    eos_ids: Sequence[int],
) -> bool:
    """Whether, after `token_ids`, no token (EOS included) is allowed by every
    grammar of the intersection and the token masks: the engine's mask function
    (masks.intersect) over fresh matchers, independently of the engine. False
    when the tokens themselves are refused."""
    if not compiled.intersection:
        return False
    tokens = list(token_ids)
    matchers = []
    for grammar in compiled.intersection:
        matcher = LLMatcher(tokenizer, grammar, log_level=0, limits=limits)
        if tokens and matcher.try_consume_tokens(tokens) < len(tokens):
            return False
        if matcher.is_error():
            return False
        matchers.append(matcher)
    words = mask_words(tokenizer.vocab_size)
    masks = TokenMasks.build(
        compiled.allowed_token_ids, compiled.forbidden_token_ids, eos_ids, words
    )
    return intersect(matchers, masks, words) is None
