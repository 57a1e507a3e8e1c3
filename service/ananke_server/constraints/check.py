"""The independent re-check of an output with fresh matchers, and the
dead-end probe of an intersection (no token allowed by every part)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from ananke.v1 import provenance_pb2
from llguidance import LLMatcher, LLParserLimits, LLTokenizer
from llguidance.numpy import fill_next_token_bitmask

from .core import CompiledConstraints


def token_bitmask(ids: frozenset[int] | set[int], words: int) -> npt.NDArray[np.int32]:
    """An llguidance-style bitmask (int32 words, bit i%32 of word i//32) with `ids` set."""
    mask = np.zeros(words * 32, dtype=np.uint8)
    mask[[i for i in ids if i < words * 32]] = 1
    return np.packbits(mask, bitorder="little").view(np.int32)


def check_output(
    tokenizer: LLTokenizer,
    limits: LLParserLimits,
    compiled: CompiledConstraints,
    token_ids: Sequence[int],
    eos_ids: Sequence[int],
) -> tuple[provenance_pb2.CheckVerdict.ValueType, str]:
    """Re-checks generated tokens with fresh matchers, one per top-level constraint."""
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
    for name, grammar in compiled.check_grammars:
        matcher = LLMatcher(tokenizer, grammar, log_level=0, limits=limits)
        if matcher.is_error():
            return provenance_pb2.CHECK_VERDICT_VIOLATED, f"{name}: {matcher.get_error()}"
        consumed = matcher.try_consume_tokens(tokens)
        if consumed < len(tokens):
            detail = f"{name}: token {consumed} ({tokens[consumed]}) is not allowed"
            return provenance_pb2.CHECK_VERDICT_VIOLATED, detail
        if not matcher.is_accepting():
            incomplete.append(name)
    if incomplete:
        return provenance_pb2.CHECK_VERDICT_INCOMPLETE, "not complete: " + ", ".join(incomplete)
    return provenance_pb2.CHECK_VERDICT_SATISFIED, ""


def dead_end(
    tokenizer: LLTokenizer,
    limits: LLParserLimits,
    compiled: CompiledConstraints,
    token_ids: Sequence[int],
) -> bool:
    """Whether, after `token_ids`, no token (EOS included) is allowed by every
    grammar of the intersection and the token masks. Rebuilds fresh matchers,
    independently of the engine. False when the tokens themselves are refused."""
    if not compiled.intersection:
        return False
    words = math.ceil(tokenizer.vocab_size / 32)
    combined = np.full(words, -1, dtype=np.int32)
    scratch = np.zeros((1, words), dtype=np.int32)
    tokens = list(token_ids)
    for grammar in compiled.intersection:
        matcher = LLMatcher(tokenizer, grammar, log_level=0, limits=limits)
        if tokens and matcher.try_consume_tokens(tokens) < len(tokens):
            return False
        if matcher.is_error():
            return False
        fill_next_token_bitmask(matcher, scratch, 0)
        combined &= scratch[0]
    eos = tokenizer.eos_token
    if compiled.allowed_token_ids is not None:
        allowed = compiled.allowed_token_ids | {eos}
        combined &= token_bitmask(allowed, words)
    if compiled.forbidden_token_ids:
        combined &= ~token_bitmask(compiled.forbidden_token_ids, words)
    return not combined.any()
