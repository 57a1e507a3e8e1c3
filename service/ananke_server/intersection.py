"""The logic of the engine's intersection processor, independent of vLLM's
classes: per batch row, llguidance matchers whose masks are ANDed (with the
request's token masks) into the logits. vllm_engine.py wraps it in vLLM's
LogitsProcessor interface; it runs in the EngineCore process.

A request opts in through `SamplingParams.extra_args[INTERSECTION_ARG]`:
{"grammars": [Lark text, ...], "allowed": [ids] | None, "forbidden": [ids],
"eos": [ids]}. When the AND allows no token the row is forced to end (EOS,
never an all -inf row); the servicer then proves the dead end with fresh
matchers and reports CONSTRAINT_UNSATISFIABLE."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .masks import Bitmask, TokenMasks, apply_token_bitmask, force_token, intersect, mask_words

log = logging.getLogger("ananke.intersection")

# SamplingParams.extra_args key that switches the intersection processor on.
INTERSECTION_ARG = "ananke_intersection"


@dataclass
class _RequestMatchers:
    """One request's state in the intersection processor."""

    matchers: list[Any]  # llguidance.LLMatcher
    masks: TokenMasks
    eos: int  # the token forced at a dead end
    output_ids: list[int]  # vLLM's live list of the request's output tokens
    consumed: int = 0
    dead_end: bool = False


class IntersectionMasker:
    """Per-row matcher state and masking for the intersection processor.

    Batch bookkeeping follows vLLM's BatchUpdate contract (as its own
    `process_dict_updates`): added entries replace the row they land on,
    removed rows are dropped, moves are one-way (a->b) or swaps (a<->b)."""

    def __init__(self, tokenizer_factory: Callable[[], Any]) -> None:
        self._tokenizer_factory = tokenizer_factory
        self._tokenizer: Any = None
        self._limits: Any = None
        self.rows: dict[int, _RequestMatchers] = {}
        self.dead_ends = 0  # requests ended by a forced EOS since start

    def tokenizer(self) -> Any:
        """The llguidance tokenizer, built on first use (in the EngineCore process)."""
        if self._tokenizer is None:
            from llguidance import LLParserLimits

            self._tokenizer = self._tokenizer_factory()
            self._limits = LLParserLimits(verbose_errors=False)
        return self._tokenizer

    def new_state(self, extra_args: dict[str, Any] | None, output_ids: list[int]) -> Any:
        """The row state for a request, or None when it does not use the processor."""
        spec = (extra_args or {}).get(INTERSECTION_ARG)
        if not spec:
            return None
        from llguidance import LLMatcher

        tokenizer = self.tokenizer()
        words = mask_words(tokenizer.vocab_size)
        matchers = [
            LLMatcher(tokenizer, grammar, log_level=0, limits=self._limits)
            for grammar in spec["grammars"]
        ]
        eos_ids = [int(t) for t in spec.get("eos") or tokenizer.eos_tokens]
        masks = TokenMasks.build(spec.get("allowed"), spec.get("forbidden") or (), eos_ids, words)
        state = _RequestMatchers(matchers, masks, eos_ids[0], output_ids)
        state.dead_end = any(m.is_error() for m in matchers)
        return state

    def update(self, added: Any, removed: Any, moved: Any) -> None:
        """Applies one BatchUpdate's added (index, params, prompt, output), removed
        (index) and moved (a, b, MoveDirectionality) entries, in that order."""
        for index, params, _prompt, output_ids in added:
            state = self.new_state(getattr(params, "extra_args", None), output_ids)
            if state is not None:
                self.rows[index] = state
            else:
                self.rows.pop(index, None)
        if not self.rows:
            return
        for index in removed:
            self.rows.pop(index, None)
        for a, b, direction in moved:
            # A one-way move (a->b) overwrites b, whose request is gone; a swap keeps both.
            a_state = self.rows.pop(a, None)
            b_state = self.rows.pop(b, None)
            if a_state is not None:
                self.rows[b] = a_state
            if b_state is not None and getattr(direction, "name", direction) == "SWAP":
                self.rows[a] = b_state

    def row_mask(self, state: _RequestMatchers) -> Bitmask | None:
        """Consumes the row's new tokens; the AND of its masks, None at a dead end."""
        new = state.output_ids[state.consumed :]
        for token in new:
            if token < 0:  # an async-scheduling placeholder: wait for the real id
                break
            state.consumed += 1
            if not state.dead_end and not all(m.consume_token(token) for m in state.matchers):
                state.dead_end = True
        if state.dead_end:
            return None
        mask = intersect(state.matchers, state.masks, mask_words(self.tokenizer().vocab_size))
        if mask is None:
            state.dead_end = True
        return mask

    def apply(self, logits: Any) -> Any:
        """Masks each processed row of `logits` (a torch tensor [batch, vocab]) in place."""
        if not self.rows:
            return logits
        for index, state in self.rows.items():
            was_dead = state.dead_end
            mask = self.row_mask(state)
            row = logits[index]
            if mask is None:
                force_token(row, state.eos)
                if not was_dead:
                    self.dead_ends += 1
                    log.warning(
                        "intersection dead end after %d tokens: forcing EOS", state.consumed
                    )
                continue
            apply_token_bitmask(row, mask)
        return logits
