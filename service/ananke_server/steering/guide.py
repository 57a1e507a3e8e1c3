"""One request's steering over its product of matchers: budget-aware
completion (steer to a short completion when the tokens left under max_tokens
come close to what the constraints still need) and dead-end avoidance for
intersections (a token is taken only when a common completion still exists
after it). Engine-independent: an engine feeds it the sampled tokens and asks
for the mask to apply, or for the token to take among candidates it proposes.

Tokens already sampled are never taken back (an engine cannot unsample them and
a client may already hold them): dead ends are avoided ahead instead, by
checking each candidate token before it is taken and keeping a verified
completion from the current state at all times (its next token is always safe)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .product import ByteTokens, Mask, Product, byte_tokens, has_token, regex_of_grammar
from .search import Outcome, Search, shortest_completion


@dataclass(frozen=True)
class SteerConfig:
    """Knobs of budget steering and dead-end search (settings.py sets them)."""

    budget: bool = True  # steer to a completion near max_tokens
    # Tokens kept in hand beyond the known completion and EOS: one sampled token
    # can lengthen it by several (a `,` opening a new JSON member needs `"":0}`).
    margin: int = 4
    check_every: int = 16  # most tokens between two budget checks
    max_nodes: int = 400  # states one search may expand
    retries: int = 8  # candidate tokens checked per step before the plan's is taken

    def widest_margin(self, max_tokens: int) -> int:
        """The most tokens a guide keeps in hand under `max_tokens`: the margin,
        widened by the largest jump it saw, at most half the budget."""
        return max(self.margin, max_tokens // 2)


def eos_mask(words: int, eos_ids: Iterable[int]) -> Mask:
    """A bitmask with only the EOS ids set."""
    return _bits(eos_ids, words)


class Guide:
    """Steering state of one request; call `advance` with every sampled token."""

    def __init__(
        self,
        product: Product,
        table: ByteTokens,
        *,
        max_tokens: int,
        eos_ids: Sequence[int],
        config: SteerConfig,
        verify: bool = False,
    ) -> None:
        self.product = product
        self.table = table
        self.max_tokens = max_tokens
        self.config = config
        self.verify = verify  # check candidates (an intersection can dead-end)
        self._eos = eos_mask(product.words, eos_ids)
        self._eos_ids = frozenset(eos_ids)
        self.produced = 0
        self.steered_from: int | None = None  # token index where steering first began
        self._steering = False
        self.plan: list[int] | None = None  # a verified completion from here
        self.hopeless = False  # the known completion no longer fits in max_tokens
        self.dead_end = False
        self.last_search: Search | None = None
        self._check_at = 0  # produced-count of the next budget check
        self._misses = 0  # budget checks in a row whose search found no completion
        # Where the known completion would end (produced + its tokens) at the last
        # check and when that was, and the largest step forward of that end seen
        # between two checks at most check_every tokens apart.
        self._end: tuple[int, int] | None = None
        self._jump = 0
        # Bytes the next token may take when a length-bounded regex part leaves
        # little room beyond the known completion (see `_cap_by_room`), and the
        # produced-count it was computed for.
        self._cap: int | None = None
        self._cap_at = -1

    @property
    def remaining(self) -> int:
        """Tokens left under max_tokens (EOS included)."""
        return self.max_tokens - self.produced

    @property
    def steering(self) -> bool:
        """Whether the output is being steered to its completion now."""
        return self._steering

    def advance(self, token: int, *, consumed: bool = False) -> bool:
        """Takes a sampled token; False when the product refuses it (a dead end).
        `consumed`: the owner of the matchers has advanced them already (an
        engine grammar object sharing its matchers with the guide)."""
        self.produced += 1
        if token in self._eos_ids:
            return True
        if consumed:
            self.product.observe(token)
        elif self.dead_end or not self.product.consume(token):
            self.dead_end = True
            return False
        if self.plan and self.plan[0] == token:
            self.plan = self.plan[1:]
        else:
            self.plan = None
            if self._steering:  # something else was taken after all: plan again
                self._steering = False
                self._check_at = self.produced
        return True

    def rollback(self, count: int, *, consumed: int | None = None) -> None:
        """Forgets the last `count` tokens, of which the owner rolled its matchers
        back `consumed` (default all; EOS is never consumed); steering plans
        again from there."""
        if count <= 0:
            return
        self.produced -= count
        self.product.unobserve(count if consumed is None else consumed)
        self.plan = None
        self.dead_end = False
        if self._steering or self._cap is not None:
            self._steering = False
            self._check_at = min(self._check_at, self.produced)

    def _search(self) -> Search:
        search = shortest_completion(self.product, self.table, max_nodes=self.config.max_nodes)
        self.last_search = search
        return search

    def steer_mask(self) -> Mask | None:
        """The mask that restricts the next token to the completion when the
        budget calls for it; None when nothing needs restricting."""
        if not self.config.budget or self.hopeless or self.dead_end:
            return None
        if not self.steering:
            if self._cap is not None and self._cap_at == self.produced:
                return self._capped(self._cap)
            if self.produced < self._check_at:
                return None
            self._cap = None
            self._budget_check()  # may start steering or cap the next token
            if not self.steering:
                return None if self._cap is None else self._capped(self._cap)
        if self.plan:
            return self._single(self.plan[0])
        return self._eos.copy()

    def _budget_check(self) -> None:
        """Finds a completion and either starts steering or schedules the next check."""
        search = self._search()
        if search.outcome is Outcome.NO_TOKEN:
            self.dead_end = True
            return
        if not search.found:
            # The completion is beyond the search's reach: back off (4, 8, 16, ...
            # tokens, at most half the budget left) rather than spend a full
            # search every few tokens on a completion that may never come close.
            self._misses += 1
            wait = min(4 << min(self._misses - 1, 16), max(4, self.remaining // 2))
            self._check_at = self.produced + 1 + wait
            return
        self._misses = 0
        need = len(search.tokens) + 1  # the completion, then EOS
        margin = self._margin(need)
        if need > self.remaining - margin:
            # Tight: the fast search's completion may be longer than the shortest.
            exact = shortest_completion(
                self.product, self.table, max_nodes=self.config.max_nodes, exact=True
            )
            if exact.found and len(exact.tokens) < len(search.tokens):
                search = self.last_search = exact
                need = len(search.tokens) + 1
        gap = self.remaining - need - margin
        if need > self.remaining:
            self.hopeless = True
        elif gap <= 0 or not self._cap_by_room(search):
            self._steering = True
            if self.steered_from is None:
                self.steered_from = self.produced
            self.plan = list(search.tokens)
        elif self._cap is None:
            by_tokens = self.produced + max(1, min(self.config.check_every, gap // 2))
            by_room = self._check_at if self._check_at > self.produced else by_tokens
            self._check_at = min(by_tokens, by_room)

    def _margin(self, need: int) -> int:
        """Tokens kept in hand beyond the completion of `need` tokens: the
        configured margin, or the largest jump seen of where the completion ends.
        A sampled token can push that end far (a `,` that opens one more array
        item of required fields: 20 tokens); a jump seen once can come again,
        and when it comes within the margin of max_tokens the output can no
        longer close, so the margin grows to it (at most `widest_margin`)."""
        end = self.produced + need
        if self._end is not None and self.produced - self._end[1] <= self.config.check_every:
            self._jump = max(self._jump, end - self._end[0])
        self._end = (end, self.produced)
        return min(max(self.config.margin, self._jump), self.config.widest_margin(self.max_tokens))

    def _cap_by_room(self, search: Search) -> bool:
        """Keeps the completion inside the room a length-bounded regex part
        (`(?s:.{0,40})` beside a JSON schema) still leaves; False when only
        steering to the completion now keeps it. Near the bound the next token
        may take at most half the spare bytes (bytes >= characters), and the
        check runs again at the next token: the model stays free and the spare
        shrinks until steering closes the output, instead of a token that
        leaves no room for the closing text (a false dead end)."""
        room = self.product.room()
        if room is None:
            return True
        spare = room - len(self.table.tokenizer.decode_bytes(list(search.tokens)))
        if spare >= 2 * self.table.longest:
            self._check_at = self.produced + max(1, (spare - 2 * self.table.longest) // 8)
            return True
        if spare // 2 < 1:
            return False
        self._cap, self._cap_at = spare // 2, self.produced
        self._check_at = self.produced + 1
        return True

    def _capped(self, size: int) -> Mask:
        return self.table.at_most(size) | self._eos

    def _single(self, token: int) -> Mask:
        mask = np.zeros(self.product.words, dtype=np.int32)
        mask[token >> 5] = np.uint32(1 << (token & 31)).view(np.int32)
        return mask

    def mask(self) -> Mask | None:
        """The full mask for the next token (AND of the product, narrowed by
        steering); None at a dead end."""
        narrowed = self.steer_mask()
        if self.dead_end:
            return None
        base = self.product.mask()
        if narrowed is not None:
            both = base & narrowed
            if both.any():
                return both
        if not base.any():
            self.dead_end = True
            return None
        return base.copy()

    def choose(self, candidates: Iterable[int]) -> int | None:
        """The first candidate (in the engine's sampling order) after which a
        common completion still fits; when `retries` candidates fail, the
        known completion's next token. None at a dead end with no way out."""
        mask = self.mask()
        if mask is None:
            return None
        if self.steering and self.plan is not None:
            return self.plan[0] if self.plan else min(self._eos_ids)
        if not self.verify:
            for token in candidates:
                if has_token(mask, token):
                    return token
            return None
        tried = 0
        for token in candidates:
            if tried >= self.config.retries:
                break
            if not has_token(mask, token):
                continue
            tried += 1
            if self._keeps_completion(token):
                return token
        if self.plan is None:
            search = self._search()
            if search.found:
                self.plan = list(search.tokens)
        if self.plan:
            return self.plan[0]
        if self.plan == [] and self.product.accepting():
            return min(self._eos_ids)
        return None

    def _keeps_completion(self, token: int) -> bool:
        """Whether a completion that fits the budget exists after `token` (kept as the plan)."""
        if token in self._eos_ids:
            return self.product.accepting()
        if not self.product.consume(token):
            return False
        try:
            left = self.remaining - 1  # after this token
            if self.product.accepting():
                self.plan = []
                return True
            candidate = self.plan[1:] if self.plan and self.plan[0] == token else self.plan
            if candidate and self._completes(candidate, left):
                self.plan = [token, *candidate]
                return True
            search = self._search()
            limit = left if self.config.budget else None
            if search.found and (limit is None or len(search.tokens) + 1 <= limit):
                self.plan = [token, *search.tokens]
                return True
            return False
        finally:
            self.product.rollback(1)

    def _completes(self, tokens: Sequence[int], left: int) -> bool:
        """Whether `tokens` take the product to an accepting state within `left` tokens."""
        if self.config.budget and len(tokens) + 1 > left:
            return False
        taken = self.product.consume_all(tokens)
        ok = taken == len(tokens) and self.product.accepting()
        self.product.rollback(taken)
        return ok


def minimum_tokens(
    tokenizer: Any,
    grammars: Sequence[str],
    *,
    allowed: Iterable[int] | None = None,
    forbidden: Iterable[int] = (),
    max_nodes: int = 400,
) -> int | None:
    """Tokens (end of sequence included) of the shortest complete output found
    for the AND of `grammars` and the token sets; None when none was found."""
    search = start_search(tokenizer, grammars, allowed=allowed, forbidden=forbidden)
    return len(search.tokens) + 1 if search is not None and search.found else None


def start_search(
    tokenizer: Any,
    grammars: Sequence[str],
    *,
    allowed: Iterable[int] | None = None,
    forbidden: Iterable[int] = (),
    max_nodes: int = 400,
) -> Search | None:
    """The exact completion search from the empty output (None: a grammar does not build)."""
    product = fresh_product(tokenizer, grammars, allowed=allowed, forbidden=forbidden)
    if product is None:
        return None
    return shortest_completion(product, byte_tokens(tokenizer), max_nodes=max_nodes, exact=True)


def fresh_product(
    tokenizer: Any,
    grammars: Sequence[str],
    *,
    allowed: Iterable[int] | None = None,
    forbidden: Iterable[int] = (),
) -> Product | None:
    """A Product of new matchers for `grammars` and the token sets (EOS always
    allowed); None when a grammar does not build."""
    from llguidance import LLMatcher

    words = (int(tokenizer.vocab_size) + 31) // 32
    eos = [int(t) for t in tokenizer.eos_tokens]
    allowed_mask = None if allowed is None else _bits({*allowed, *eos}, words)
    forbidden_set = set(forbidden)
    forbidden_mask = _bits(forbidden_set, words) if forbidden_set else None
    matchers = [LLMatcher(tokenizer, grammar, log_level=0) for grammar in grammars]
    if not matchers or any(m.is_error() for m in matchers):
        return None
    return Product(
        matchers, words, allowed_mask, forbidden_mask, tokenizer=tokenizer, grammars=grammars
    )


def dead_end_cause(
    tokenizer: Any,
    grammars: Sequence[str],
    tokens: Sequence[int],
    *,
    allowed: Iterable[int] | None = None,
    forbidden: Iterable[int] = (),
    max_nodes: int = 2000,
) -> str | None:
    """Why no common completion follows `tokens`, checked with fresh matchers:
    "proved" (no token at all is allowed after them), "exhausted" (a search
    saw every distinct state reachable from there, none accepting),
    "search_budget_spent" (it stopped first); None when it found a completion."""
    product = fresh_product(tokenizer, grammars, allowed=allowed, forbidden=forbidden)
    if product is None or product.consume_all(tokens) != len(tokens):
        return "proved"
    search = shortest_completion(product, byte_tokens(tokenizer), max_nodes=max_nodes)
    if search.found:
        return None
    return {
        Outcome.NO_TOKEN: "proved",
        Outcome.EXHAUSTED: "exhausted",
    }.get(search.outcome, "search_budget_spent")


def _bits(ids: Iterable[int], words: int) -> Mask:
    mask = np.zeros(words, dtype=np.int32)
    for token in ids:
        if 0 <= token < words * 32:
            mask[token >> 5] |= np.uint32(1 << (token & 31)).view(np.int32)
    return mask


def may_have_steered(
    grammars: Sequence[str], produced: int, *, max_tokens: int, config: SteerConfig
) -> bool:
    """Whether budget steering can have begun in an output of `produced` tokens
    (EOS included): it starts only when the known completion plus the margin
    no longer fits (so the output ends within the widest margin of max_tokens) or when a
    length-bounded regex part runs out of room (any plain-regex part), which
    saves the costly replay for every other output."""
    if not config.budget:
        return False
    if produced + config.widest_margin(max_tokens) + 1 >= max_tokens:
        return True
    return any(regex_of_grammar(grammar) is not None for grammar in grammars)


def replay_steering(
    tokenizer: Any,
    grammars: Sequence[str],
    tokens: Sequence[int],
    *,
    max_tokens: int,
    config: SteerConfig,
    allowed: Iterable[int] | None = None,
    forbidden: Iterable[int] = (),
) -> tuple[int, int] | None:
    """Where budget steering began for an output, found by replaying the same
    deterministic budget decisions over its tokens with fresh matchers (the
    engine's guide runs in another process and reports nothing back):
    (index of the first steered token, tokens left then), or None."""
    from llguidance import LLMatcher

    words = (int(tokenizer.vocab_size) + 31) // 32
    eos = [int(t) for t in tokenizer.eos_tokens]
    allowed_mask = None if allowed is None else _bits({*allowed, *eos}, words)
    forbidden_set = set(forbidden)
    forbidden_mask = _bits(forbidden_set, words) if forbidden_set else None
    matchers = [LLMatcher(tokenizer, grammar, log_level=0) for grammar in grammars]
    product = Product(
        matchers, words, allowed_mask, forbidden_mask, tokenizer=tokenizer, grammars=grammars
    )
    guide = Guide(
        product, byte_tokens(tokenizer), max_tokens=max_tokens, eos_ids=eos, config=config
    )
    for token in tokens:
        guide.steer_mask()
        if guide.steered_from is not None or not guide.advance(token):
            break
    if guide.steered_from is None:
        return None
    return guide.steered_from, max_tokens - guide.steered_from
