"""Completion search over a product of llguidance matchers, independent of any
engine: the shortest completion from the current state (budget-aware
completion) and whether a common completion still exists (dead-end search).

The search walks single-byte tokens breadth-first from the current state,
identifying states by their next-token masks (two states with the same masks
allow the same tokens now and, since tokens span many bytes, for a long way
after): the first accepting state found gives the shortest completion in bytes,
which is then re-tokenized canonically (fewer tokens) and verified. Every path
returned was replayed through the real matchers, so it is valid whatever the
state identification merged; what merging can cost is optimality, and a search
that ends without a path says "not found", never "impossible", unless the
state allowed no token at all."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .product import CLASS_REPRESENTATIVES, CLOSING, ByteTokens, Product, byte_class, has_token


class Outcome(enum.Enum):
    """How a completion search ended."""

    FOUND = "found"
    EXHAUSTED = "exhausted"  # every distinct reachable state seen, none accepting
    NO_TOKEN = "no_token"  # the state itself allows no token: a proven dead end
    BUDGET = "budget"  # stopped at the node budget


@dataclass(frozen=True)
class Search:
    """The result of a completion search."""

    outcome: Outcome
    tokens: tuple[int, ...] = ()  # a verified path to an accepting state (no EOS)
    nodes: int = 0  # states expanded

    @property
    def found(self) -> bool:
        """Whether a completion was found."""
        return self.outcome is Outcome.FOUND


DEFAULT_MAX_NODES = 400


def shortest_completion(
    product: Product,
    table: ByteTokens,
    *,
    max_nodes: int = DEFAULT_MAX_NODES,
    exact: bool = False,
) -> Search:
    """A short token path from the product's current state to a state where
    every matcher accepts; the product is left in the state it was in.

    First a depth-first walk that takes closing bytes first (fast, short for
    the usual grammars); when it finds nothing, or `exact` asks for the
    shortest, a breadth-first search within the same node budget."""
    if product.is_error():
        return Search(Outcome.NO_TOKEN)
    if product.accepting():
        return Search(Outcome.FOUND)
    if not product.mask().any():
        return Search(Outcome.NO_TOKEN)
    found, nodes, filled = _greedy_search(product, table, max_nodes)
    best = _fewest_tokens(product, table, found) if found is not None else None
    # After a filler run the byte search is skipped even for `exact`: a
    # completion that needed one lies deeper than its node budget reaches.
    if best is None or (exact and not filled):
        exhausted = False
        for representatives in (True, False):
            path, more, exhausted = _byte_search(
                product, table, max_nodes, representatives=representatives
            )
            nodes += more
            if path is not None:
                tokens = _fewest_tokens(product, table, path)
                if tokens is not None and (best is None or len(tokens) < len(best)):
                    best = tokens
                break
            if not exhausted:
                break  # out of budget; class representatives were not the problem
        if best is None:
            return Search(Outcome.EXHAUSTED if exhausted else Outcome.BUDGET, nodes=nodes)
    return Search(Outcome.FOUND, best, nodes)


def _candidates(product: Product, table: ByteTokens) -> Iterator[tuple[list[int], str]]:
    """The steps to try from the current state, in order: the forced run alone
    when there is one, else the closing bytes, a filler run, and the other
    single bytes (at most a few per byte class). Lazy: the product is back in
    this state at each step."""
    forced = product.forced()
    if forced:
        product.rollback(len(forced))
        yield forced, "forced"
        return
    mask = product.mask().copy()
    listed = any(has_token(mask, token) for _, token in table.order)
    per_class = [0, 0, 0, 0]
    filler_tried = False
    for byte, token in table.order:
        if listed and not has_token(mask, token):
            continue
        if not filler_tried and byte not in CLOSING:
            filler_tried = True
            run = _filler_run(product, table)
            if run:
                yield run, "filler"
        group = byte_class(byte)
        if group >= 0:
            if per_class[group] >= CLASS_REPRESENTATIVES:
                continue
            per_class[group] += 1
        yield [token], "byte"


# Most tokens one filler run takes (a JSON string's minLength of a few KB).
FILLER_RUN = 128


def _filler_run(product: Product, table: ByteTokens) -> list[int]:
    """Content whose length is counted where masks do not show it (a JSON
    string's minLength, `[a-z]{50,}`) leaves the masks as they were after every
    character, so single bytes look like a loop there: the longest allowed
    filler token (letters, digits, spaces), again until the masks change or
    the output can end; [] where one content byte already changes the masks
    (single bytes make progress there: `(yes|no)` keeps its shortest `no`) or
    where they never change (state unchanged)."""
    # The masks themselves, not the fingerprint: a regex part's fingerprint
    # holds its distance to a match, which every counted character changes.
    start = product.mask().tobytes()
    probe = next((t for b, t in table.order if byte_class(b) >= 0 and product.allows(t)), None)
    if probe is None or not product.consume(probe):
        return []
    counted = product.mask().tobytes() == start
    product.rollback(1)
    if not counted:
        return []
    taken: list[int] = []
    while len(taken) < FILLER_RUN:
        token = table.longest_filler(product.mask())
        if token is None or not product.consume(token):
            break
        taken.append(token)
        if product.accepting() or product.mask().tobytes() != start:
            product.rollback(len(taken))
            return taken
    product.rollback(len(taken))
    return []


def _greedy_search(
    product: Product, table: ByteTokens, max_nodes: int
) -> tuple[list[int] | None, int, bool]:
    """Depth-first, preferred bytes first, never back into a state seen on the
    way since the last forced run (for content bytes: a state that looks the
    same by its masks) nor into one already explored in vain; (path, nodes,
    whether the path takes a filler run)."""
    taken: list[int] = []
    failed: set[bytes] = set()
    frames = [(_candidates(product, table), 0, _seen(product, frozenset()), False)]
    nodes = 1
    while frames:
        steps, size, recent, filled = frames[-1]
        step = next(steps, None)
        if step is None:
            failed.add(product.fingerprint())
            frames.pop()
            product.rollback(size)
            del taken[len(taken) - size :]
            continue
        tokens, kind = step
        forced, filler = kind != "byte", kind == "filler"
        count = product.consume_all(tokens)
        if count != len(tokens):
            product.rollback(count)
            continue
        if product.accepting():
            path = taken + tokens
            product.rollback(len(path))
            return path, nodes, filled or filler
        content = not forced and byte_class(table.tokenizer.decode_bytes(tokens)[0]) >= 0
        if product.fingerprint() in failed or (not forced and _looped(product, recent, content)):
            product.rollback(count)
            continue
        nodes += 1
        if nodes > max_nodes:
            product.rollback(len(taken) + count)
            return None, nodes, False
        taken.extend(tokens)
        recent = _seen(product, frozenset() if forced else recent)
        frames.append((_candidates(product, table), count, recent, filled or filler))
    return None, nodes, False


def _seen(product: Product, recent: frozenset[bytes]) -> frozenset[bytes]:
    """`recent` plus the current state's exact and mask identities."""
    return recent | {b"E" + product.fingerprint(), b"M" + product.mask_fingerprint()}


def _looped(product: Product, recent: frozenset[bytes], content: bool) -> bool:
    """Whether the current state repeats one in `recent`: exactly, or (after a
    content byte: a letter, digit or UTF-8 byte) by its masks."""
    if b"E" + product.fingerprint() in recent:
        return True
    return content and b"M" + product.mask_fingerprint() in recent


@dataclass(frozen=True)
class _Node:
    path: tuple[int, ...]
    # Fingerprints on the way here since the last forced run: a content byte
    # that leads back to one of them is a loop (staying inside a string) and is pruned.
    recent: frozenset[bytes]


def _byte_search(
    product: Product, table: ByteTokens, max_nodes: int, *, representatives: bool
) -> tuple[list[int] | None, int, bool]:
    """Breadth-first over single-byte tokens (and forced runs); (path, nodes
    expanded, whether the frontier ran out)."""
    level = [_Node((), _seen(product, frozenset()))]
    nodes = 0
    while level:
        following: list[_Node] = []
        # States that look alike at one depth are merged (siblings that differ
        # in one content byte, mostly); across depths only loops are pruned,
        # since equal masks there can hide different parser stacks.
        level_seen: set[bytes] = set()
        for node in level:
            if nodes >= max_nodes:
                return None, nodes, False
            nodes += 1
            path = list(node.path)
            taken = product.consume_all(path)
            if taken != len(path):  # cannot happen: every path was taken before
                product.rollback(taken)
                continue
            forced = product.forced()
            if forced:
                # One edge for a forced run, in the grammar's own tokens.
                accepting = product.accepting()
                fingerprint = product.fingerprint()
                seen = _seen(product, frozenset())
                product.rollback(len(path) + len(forced))
                if accepting:
                    return [*path, *forced], nodes, False
                if fingerprint not in level_seen:
                    level_seen.add(fingerprint)
                    following.append(_Node((*path, *forced), seen))
                continue
            parent = product.fingerprint()
            mask = product.mask().copy()
            # Not forced here, so llguidance's mask lists every byte that may come
            # next (at a forced position it holds only the forced token); when
            # it lists none, bytes are tried by consuming them.
            listed = any(has_token(mask, token) for _, token in table.order)
            per_class = [0, 0, 0, 0]
            for byte, token in table.order:
                if listed and not has_token(mask, token):
                    continue
                group = byte_class(byte)
                if representatives and group >= 0 and per_class[group] >= CLASS_REPRESENTATIVES:
                    continue
                if not product.consume(token):
                    continue
                if group >= 0:
                    per_class[group] += 1
                if product.accepting():
                    product.rollback(len(path) + 1)
                    return [*path, token], nodes, False
                fingerprint = product.fingerprint()
                # Only content bytes (letters, digits, UTF-8) close a loop by
                # masks: a punctuation byte can leave the masks alike and still
                # move the parser on (`)` inside `.*\)` both continues `.*` and ends it).
                if fingerprint == parent or _looped(product, node.recent, group >= 0):
                    product.rollback(1)
                    continue
                if fingerprint not in level_seen:
                    level_seen.add(fingerprint)
                    following.append(_Node((*path, token), _seen(product, node.recent)))
                product.rollback(1)
            product.rollback(len(path))
        level = following
    return None, nodes, True


def _fewest_tokens(
    product: Product, table: ByteTokens, byte_path: list[int]
) -> tuple[int, ...] | None:
    """Tokens for the bytes of a byte path that every mask on the way allows:
    the canonical tokenization when the masks allow it, else the longest
    allowed token at each step. None when no such tokenization is found."""
    data = table.tokenizer.decode_bytes(byte_path)
    canonical = table.tokenize(data)
    if _masks_allow(product, canonical):
        return tuple(canonical)
    tokens: list[int] = []
    rest = data
    while rest:
        mask = product.mask()
        for length in range(min(len(rest), table.longest), 0, -1):
            token = table.by_bytes.get(rest[:length])
            if token is not None and has_token(mask, token) and product.consume(token):
                tokens.append(token)
                rest = rest[length:]
                break
        else:
            product.rollback(len(tokens))
            return None
    accepting = product.accepting()
    product.rollback(len(tokens))
    return tuple(tokens) if accepting else None


def _masks_allow(product: Product, tokens: Sequence[int]) -> bool:
    """Whether the product's masks allow `tokens` one after another and it accepts after them."""
    taken = 0
    for token in tokens:
        if not product.allows(token) or not product.consume(token):
            break
        taken += 1
    ok = taken == len(tokens) and product.accepting()
    product.rollback(taken)
    return ok
