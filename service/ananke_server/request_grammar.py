"""One request's constraint state inside the engine: the product of its
llguidance matchers and token masks, and the grammar's forced tokens.

Pure logic (llguidance and numpy, no vLLM): `vllm_plugin` wraps it as vLLM's
per-request structured-output grammar, so intersections, token masks and
fast-forward all go through the one structured-output path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .masks import TokenMasks, intersect, mask_words
from .steering import Guide, Product, SteerConfig, byte_tokens

# SamplingParams.extra_args key carrying a request's constraint spec (see `RequestSpec`).
GRAMMAR_ARG = "ananke_grammar"
# The structured-output grammar sent beside the spec. The plugin replaces it with the
# spec's product; if the plugin is not active in the EngineCore, vLLM enforces this
# sentinel instead, which the engine's warm-up detects (no silent wrong constraint).
SENTINEL_TEXT = "ananke-plugin-missing"
SENTINEL_GRAMMAR = '%llguidance {}\nstart: "' + SENTINEL_TEXT + '"'


@dataclass(frozen=True)
class RequestSpec:
    """What a request asks the engine to enforce (plain data, travels in extra_args)."""

    grammars: tuple[str, ...] = ()  # llguidance grammar texts, all enforced (AND)
    allowed: frozenset[int] | None = None  # token ids allowed (EOS always allowed)
    forbidden: frozenset[int] = frozenset()
    eos: tuple[int, ...] = ()  # every id that ends a generation (besides the tokenizer's)
    fast_forward: bool = True
    steer: dict[str, Any] | None = None  # SteerConfig fields: budget-aware completion

    def to_args(self) -> dict[str, Any]:
        """The extra_args value (msgspec/pickle-friendly builtins only)."""
        return {
            "grammars": list(self.grammars),
            "allowed": None if self.allowed is None else sorted(self.allowed),
            "forbidden": sorted(self.forbidden),
            "eos": list(self.eos),
            "fast_forward": self.fast_forward,
            "steer": self.steer,
        }

    @staticmethod
    def from_args(args: Any) -> RequestSpec:
        """Parses an extra_args value; ValueError names what is wrong."""
        if not isinstance(args, dict) or not isinstance(args.get("grammars"), list):
            raise ValueError(f"{GRAMMAR_ARG} must be a dict with a 'grammars' list")
        allowed = args.get("allowed")
        return RequestSpec(
            grammars=tuple(str(g) for g in args["grammars"]),
            allowed=None if allowed is None else frozenset(int(t) for t in allowed),
            forbidden=frozenset(int(t) for t in args.get("forbidden") or ()),
            eos=tuple(int(t) for t in args.get("eos") or ()),
            fast_forward=bool(args.get("fast_forward", True)),
            steer=args["steer"] if isinstance(args.get("steer"), dict) else None,
        )


def _has_bit(mask: npt.NDArray[np.int32], token: int) -> bool:
    word = token >> 5
    return 0 <= word < mask.shape[0] and bool((int(mask[word]) >> (token & 31)) & 1)


class RequestGrammar:
    """The product of a request's llguidance matchers and token masks: the one
    place of per-request matcher state in the engine.

    - mask (`fill_bitmask`): the AND of every matcher's mask and the token masks;
      when the AND is empty (a dead end) only EOS is allowed, so generation ends
      and the servicer's fresh re-check reports it.
    - `accept_tokens` / `validate_tokens` / `rollback`: applied to every matcher in
      step; a token must pass every matcher and the masks.
    - `forced_tokens(limit)`: the common forced run: the longest run one matcher
      forces (`compute_ff_tokens`, tokenizer-aware), cut to the prefix every
      other matcher and the masks accept. Every token in it is the only token
      the product allows, so a draft of it is always accepted.

    Hooks for budget-aware completion and dead-end search (issue 14):
    - `max_tokens` (the request's limit, None if unknown) and `num_generated`
      (tokens accepted so far, net of rollbacks) say how much budget is left;
    - `restrict(row)` runs after the AND on every mask this object fills and may
      clear more bits (the row masks token number `num_generated`: vLLM fills
      draft positions by accepting the drafts first and rolling them back
      after); the default keeps the row. If it empties the row, EOS is allowed
      instead (as at a dead end);
    - `forced_tokens` never drafts past the budget, and the drafts it returns
      are validated through `restrict` too (a subclass narrowing the mask stays
      consistent with fast-forward).
    Override in a subclass or wrap; keep every per-request matcher here."""

    def __init__(
        self,
        matchers: Sequence[Any],
        *,
        vocab_words: int,
        eos_token: int,
        eos_tokens: Sequence[int] = (),
        allowed: frozenset[int] | None = None,
        forbidden: frozenset[int] = frozenset(),
        max_tokens: int | None = None,
        fast_forward: bool = True,
    ) -> None:
        self.matchers = list(matchers)  # llguidance.LLMatcher
        self.words = vocab_words
        self.eos_token = eos_token
        self.eos_tokens = frozenset({eos_token, *eos_tokens})
        self.masks = TokenMasks.build(allowed, forbidden, self.eos_tokens, vocab_words)
        self.max_tokens = max_tokens
        self.fast_forward = fast_forward
        self.num_generated = 0
        self.guide: Guide | None = None  # budget-aware completion (steering/), see steer()
        self.forced_proposed = 0  # forced tokens handed out as drafts (accepted or not)
        self.terminated = False
        self.dead_end = False
        # Tokens accepted after the matchers stopped (EOS at a dead end, or EOS
        # vLLM's guidance grammar also takes without consuming): rolled back
        # without touching the matchers.
        self._unconsumed = 0

    @staticmethod
    def from_spec(
        spec: RequestSpec, tokenizer: Any, *, max_tokens: int | None, limits: Any = None
    ) -> RequestGrammar:
        """Builds the matchers of `spec` on an llguidance tokenizer."""
        from llguidance import LLMatcher

        matchers = [
            LLMatcher(tokenizer, grammar, log_level=0, limits=limits) for grammar in spec.grammars
        ]
        grammar = RequestGrammar(
            matchers,
            vocab_words=mask_words(tokenizer.vocab_size),
            eos_token=int(tokenizer.eos_token),
            eos_tokens=spec.eos,
            allowed=spec.allowed,
            forbidden=spec.forbidden,
            max_tokens=max_tokens,
            fast_forward=spec.fast_forward,
        )
        if spec.steer is not None and max_tokens is not None and matchers:
            grammar.steer(SteerConfig(**spec.steer), tokenizer, spec.grammars)
        return grammar

    def steer(
        self, config: SteerConfig, tokenizer: Any, grammars: Sequence[str], *, verify: bool = False
    ) -> None:
        """Switches budget-aware completion on: a Guide over these same matchers
        narrows the mask (`restrict`) when max_tokens comes close. `verify`: the
        guide also checks candidate tokens (dead_end_guard), budget or not."""
        if self.max_tokens is None or not (config.budget or verify) or self.error():
            return
        product = Product(
            self.matchers,
            self.words,
            self.masks.allowed,
            self.masks.forbidden,
            tokenizer=tokenizer,
            grammars=grammars,
        )
        self.guide = Guide(
            product,
            byte_tokens(tokenizer),
            max_tokens=self.max_tokens,
            eos_ids=sorted(self.eos_tokens),
            config=config,
            verify=verify,
        )

    def error(self) -> str:
        """The first matcher error (a grammar that failed to build), or ''."""
        for matcher in self.matchers:
            if matcher.is_error():
                return str(matcher.get_error())
        return ""

    def _stopped(self) -> bool:
        return self.terminated or any(m.is_stopped() for m in self.matchers)

    def _token_allowed(self, token: int) -> bool:
        allowed, forbidden = self.masks.allowed, self.masks.forbidden
        if allowed is not None and not _has_bit(allowed, token):
            return False
        return forbidden is None or not _has_bit(forbidden, token)

    def _eos_ok(self) -> bool:
        """EOS may end the request now: every matcher is done or accepts it, or
        the product allows nothing else (a dead end)."""
        if all(m.is_stopped() or m.validate_tokens([self.eos_token]) == 1 for m in self.matchers):
            return True
        row = np.empty((1, self.words), dtype=np.int32)
        return not self._product_row(row, 0)

    def accept_tokens(self, tokens: Sequence[int]) -> bool:
        """Advances every matcher; False when a token breaks the product."""
        for token in tokens:
            if self.terminated:
                return False
            if token in self.eos_tokens:
                # EOS ends the request; the matchers are not advanced by it (as a
                # finished matcher takes no token), so only our count moves.
                if not self._eos_ok():
                    return False
                self.dead_end = not all(
                    m.is_stopped() or m.validate_tokens([self.eos_token]) == 1
                    for m in self.matchers
                )
                self.terminated = True
                self._unconsumed += 1
                self.num_generated += 1
                if self.guide is not None:
                    self.guide.advance(token)
                continue
            if not self._token_allowed(token):
                return False
            if not all(m.consume_token(token) for m in self.matchers):
                return False
            self.num_generated += 1
            if self.guide is not None:
                self.guide.advance(token, consumed=True)
        return True

    def validate_tokens(self, tokens: Sequence[int]) -> list[int]:
        """The longest prefix of `tokens` the product accepts (state unchanged)."""
        tokens = [t for t in tokens if t >= 0]
        if self._stopped() or not tokens:
            return []
        count = len(tokens)
        for matcher in self.matchers:
            count = min(count, int(matcher.validate_tokens(tokens[:count])))
        for i in range(count):
            if not self._token_allowed(tokens[i]):
                return tokens[:i]
        return tokens[:count]

    def rollback(self, num_tokens: int) -> None:
        """Undoes the last `num_tokens` accepted tokens."""
        if num_tokens <= 0:
            return
        self.num_generated -= num_tokens
        if self.guide is not None:
            self.guide.rollback(num_tokens, consumed=num_tokens - min(num_tokens, self._unconsumed))
        lifted = min(num_tokens, self._unconsumed)
        self._unconsumed -= lifted
        num_tokens -= lifted
        if lifted:
            self.terminated = False
            self.dead_end = False
        if num_tokens > 0:
            for matcher in self.matchers:
                matcher.rollback(num_tokens)

    def is_terminated(self) -> bool:
        """True once EOS has been accepted."""
        return self.terminated

    def _product_row(self, bitmask: npt.NDArray[np.int32], index: int) -> bool:
        """Writes the AND of every mask (and `restrict`) into row `index`; False if empty."""
        row = bitmask[index]
        if len(self.matchers) == 1 and self.masks.allowed is None and self.masks.forbidden is None:
            from llguidance.numpy import fill_next_token_bitmask

            fill_next_token_bitmask(self.matchers[0], bitmask, index)
        else:
            combined = intersect(self.matchers, self.masks, self.words)
            if combined is None:
                return False
            row[:] = combined
        self.restrict(row)
        return bool(row.any())

    def fill_bitmask(self, bitmask: npt.NDArray[np.int32], index: int) -> None:
        """Writes the product mask into row `index` of `bitmask` ([rows, words]);
        EOS alone when the product is empty or the request has ended."""
        if self.terminated or not self._product_row(bitmask, index):
            row = bitmask[index]
            row[:] = 0
            row[self.eos_token >> 5] = np.uint32(1 << (self.eos_token & 31)).view(np.int32)

    def restrict(self, row: npt.NDArray[np.int32]) -> None:
        """Narrows a filled mask row to the completion while budget-aware
        completion steers (the row is kept when the two would leave nothing)."""
        if self.guide is None or self.terminated:
            return
        narrowed = self.guide.steer_mask()
        if narrowed is not None:
            both = row & narrowed
            if both.any():
                row[:] = both

    def forced_tokens(self, limit: int) -> list[int]:
        """Up to `limit` tokens the product forces next, never past max_tokens;
        [] when fast-forward is off or nothing is forced."""
        if self.max_tokens is not None:
            # The step that verifies the drafts also samples one more token.
            limit = min(limit, self.max_tokens - self.num_generated - 1)
        if not self.fast_forward or limit <= 0 or self._stopped() or not self.matchers:
            return []
        # While steering, the mask allows the plan's tokens alone (a forced run
        # tokenized otherwise would be rejected).
        candidate = self._steered_run(limit)
        if not candidate:
            for matcher in self.matchers:
                run = [int(t) for t in matcher.compute_ff_tokens()[:limit]]
                if len(run) > len(candidate):
                    candidate = run
        for i, token in enumerate(candidate):
            if token in self.eos_tokens:
                candidate = candidate[:i]
                break
        masked = self.masks.allowed is not None or self.masks.forbidden is not None
        if candidate and (len(self.matchers) > 1 or masked):
            candidate = self.validate_tokens(candidate)
        if candidate and type(self).restrict is not RequestGrammar.restrict:
            candidate = self._through_restrict(candidate)
        self.forced_proposed += len(candidate)
        return candidate

    def _steered_run(self, limit: int) -> list[int]:
        """While budget steering closes the output its plan is forced too (its
        mask allows the plan's next token alone): up to `limit` of it. The plan
        was replayed through these matchers; `forced_tokens` validates it like
        any run where several matchers or token masks take part."""
        guide = self.guide
        if guide is None or not guide.steering or not guide.plan:
            return []
        return list(guide.plan[:limit])

    def _through_restrict(self, tokens: list[int]) -> list[int]:
        """The prefix of `tokens` that `restrict` still allows at each position."""
        row = np.empty((1, self.words), dtype=np.int32)
        kept = 0
        for token in tokens:
            if not self._product_row(row, 0) or not _has_bit(row[0], token):
                break
            if not self.accept_tokens([token]):
                break
            kept += 1
        self.rollback(kept)
        return tokens[:kept]
