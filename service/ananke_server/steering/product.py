"""The state the completion search walks: a product of llguidance matchers
(their AND, plus token masks), the single-byte tokens of a tokenizer, and exact
regex automata where masks cannot tell states apart."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from llguidance.numpy import fill_next_token_bitmask

Mask = npt.NDArray[np.int32]

# Bytes tried first at a branch: characters that close structures, then the
# ones that start the shortest values. Order only affects speed and ties.
PREFERRED = b'"}])\n:,0 1a'
# Its closing bytes: the search tries them before any run of filler content.
CLOSING = PREFERRED[:7]
# At most this many members of a byte class ([a-z], [A-Z], [0-9], >= 0x80)
# are expanded at one state; all other allowed bytes are expanded each.
CLASS_REPRESENTATIVES = 2


def byte_class(byte: int) -> int:
    """A class id for bytes whose successors are usually alike (-1: no class)."""
    if 0x61 <= byte <= 0x7A:
        return 0
    if 0x41 <= byte <= 0x5A:
        return 1
    if 0x30 <= byte <= 0x39:
        return 2
    if byte >= 0x80:
        return 3
    return -1


class ByteTokens:
    """The single-byte tokens of one tokenizer, in search order."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.words = (int(tokenizer.vocab_size) + 31) // 32
        by_byte: dict[int, int] = {}
        for token in range(int(tokenizer.vocab_size)):
            if tokenizer.is_special_token(token):
                continue
            data = tokenizer.decode_bytes([token])
            if len(data) == 1:
                by_byte.setdefault(data[0], token)
        order = [b for b in PREFERRED if b in by_byte]
        order += [b for b in sorted(by_byte) if b not in order]
        self.order: tuple[tuple[int, int], ...] = tuple((b, by_byte[b]) for b in order)
        self.by_bytes: dict[bytes, int] = {}
        for token in range(int(tokenizer.vocab_size)):
            if not tokenizer.is_special_token(token):
                self.by_bytes.setdefault(tokenizer.decode_bytes([token]), token)
        self.longest = max(map(len, self.by_bytes), default=1)
        lengths = np.zeros(self.words * 32, dtype=np.int32)
        for data, token in self.by_bytes.items():
            lengths[token] = len(data)
        self._lengths = lengths
        self._at_most: dict[int, Mask] = {}
        # Filler tokens (letters, digits, spaces only, two bytes or more): what
        # the search writes where a length is counted that masks do not show.
        filler = np.zeros(self.words * 32, dtype=bool)
        for data, token in self.by_bytes.items():
            if len(data) > 1 and all(b == 0x20 or (b < 0x80 and chr(b).isalnum()) for b in data):
                filler[token] = True
        self._filler: Mask = np.packbits(filler, bitorder="little").view(np.int32).copy()

    def longest_filler(self, mask: Mask) -> int | None:
        """The longest filler token the mask allows (the lowest id among equals)."""
        both = mask & self._filler
        words = np.flatnonzero(both)
        if not len(words):
            return None
        bits = np.unpackbits(both[words].view(np.uint8), bitorder="little").reshape(-1, 32)
        rows, offsets = np.nonzero(bits)
        ids = words[rows] * 32 + offsets
        return int(ids[int(np.argmax(self._lengths[ids]))])

    def at_most(self, size: int) -> Mask:
        """The (non-special) tokens of at most `size` bytes."""
        mask = self._at_most.get(size)
        if mask is None:
            keep = (self._lengths > 0) & (self._lengths <= size)
            mask = np.packbits(keep, bitorder="little").view(np.int32).copy()
            self._at_most[size] = mask
        return mask

    def tokenize(self, data: bytes) -> list[int]:
        """The tokenizer's canonical tokens for `data`."""
        return [int(t) for t in self.tokenizer.tokenize_bytes(data)]


_TABLES: dict[int, ByteTokens] = {}


def byte_tokens(tokenizer: Any) -> ByteTokens:
    """The ByteTokens of a tokenizer, built once per tokenizer object."""
    table = _TABLES.get(id(tokenizer))
    if table is None or table.tokenizer is not tokenizer:
        table = _TABLES[id(tokenizer)] = ByteTokens(tokenizer)
    return table


def has_token(mask: Mask, token: int) -> bool:
    """Whether bit `token` is set in an llguidance bitmask row."""
    word = token >> 5
    return word < mask.shape[0] and bool((int(mask[word]) >> (token & 31)) & 1)


_LARK_REGEX = re.compile(r"(?:%llguidance \{\}\n)?start: /(?P<body>.*)/\s*", re.DOTALL)


def regex_of_grammar(grammar: str) -> str | None:
    """The pattern of a grammar that is one regex terminal (`start: /.../`, as the
    compiler lowers a regex constraint), else None."""
    text = grammar
    if grammar.startswith("{"):
        try:
            parts = json.loads(grammar).get("grammars", [])
        except (ValueError, AttributeError):
            return None
        if len(parts) != 1 or not isinstance(parts[0].get("lark_grammar"), str):
            return None
        text = parts[0]["lark_grammar"]
    found = _LARK_REGEX.fullmatch(text)
    if found is None or "\n" in found.group("body"):
        return None
    body, out, i = found.group("body"), [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append("/" if body[i + 1] == "/" else body[i : i + 2])
            i += 2
        else:
            if body[i] == "/":
                return None  # an unescaped slash: not one terminal
            out.append(body[i])
            i += 1
    return "".join(out)


class RegexTracker:
    r"""The exact automaton state of a regex over the bytes taken so far.

    Masks alone cannot tell some regex states apart: inside `.*\)` the state
    after `)` allows the same tokens as before it (`.*` absorbs the `)`), yet
    only it can end the match. An interegular DFA over the same pattern gives
    the search exact identities; where the two disagree (a syntax interegular
    reads differently) the tracker switches itself off and masks decide."""

    def __init__(self, fsm: Any, tokenizer: Any) -> None:
        self._fsm = fsm
        self._tokenizer = tokenizer
        self._distance = _distances(fsm)
        self._room = _rooms(fsm, self._distance)
        # (DFA state or None when off, undecoded UTF-8 tail) per token taken.
        self._stack: list[tuple[Any, bytes]] = [(fsm.initial, b"")]

    @classmethod
    def for_grammar(cls, grammar: str, tokenizer: Any) -> RegexTracker | None:
        """A tracker when the grammar is one regex interegular can read, else None."""
        pattern = regex_of_grammar(grammar)
        if pattern is None:
            return None
        try:
            import interegular

            fsm = interegular.parse_pattern(pattern).to_fsm()
        except Exception:  # any pattern interegular does not support
            return None
        return cls(fsm, tokenizer)

    def state(self) -> bytes | None:
        """An identity of the current state, None when the tracker is off."""
        state, tail = self._stack[-1]
        return None if state is None else f"{state}:".encode() + tail

    def distance(self) -> int | None:
        """Characters the current state needs at least to reach a match (None: off)."""
        state = self._stack[-1][0]
        return None if state is None else self._distance.get(state, -1)

    def room(self) -> int | None:
        """Characters the regex still allows at most (None: unbounded, or off)."""
        state = self._stack[-1][0]
        return None if state is None else self._room.get(state)

    def push(self, token: int) -> None:
        """Advances over one token's bytes."""
        state, tail = self._stack[-1]
        if state is not None:
            data = tail + self._tokenizer.decode_bytes([token])
            text, tail = _split_utf8(data)
            fsm = self._fsm
            for char in text:
                state = fsm.map.get(state, {}).get(fsm.alphabet[char])
                if state is None:
                    break
        self._stack.append((state, tail))

    def pop(self, count: int) -> None:
        """Undoes the last `count` tokens."""
        del self._stack[len(self._stack) - count :]


def _distances(fsm: Any) -> dict[Any, int]:
    """Per DFA state, the fewest characters to a final state (unreachable: absent)."""
    reverse: dict[Any, set[Any]] = {}
    for state, edges in fsm.map.items():
        for target in edges.values():
            reverse.setdefault(target, set()).add(state)
    distance = dict.fromkeys(fsm.finals, 0)
    frontier = list(distance)
    while frontier:
        following = []
        for state in frontier:
            for source in reverse.get(state, ()):
                if source not in distance:
                    distance[source] = distance[state] + 1
                    following.append(source)
        frontier = following
    return distance


def _rooms(fsm: Any, distance: dict[Any, int]) -> dict[Any, int]:
    """Per live DFA state (one that can still reach a final state), the most
    characters a match may still take; absent where a cycle makes it unbounded.
    Longest paths in reverse topological order (iterative: a `.{0,2000}` is a
    chain of 2,001 states)."""
    successors = {
        state: {t for t in fsm.map.get(state, {}).values() if t in distance} for state in distance
    }
    predecessors: dict[Any, set[Any]] = {state: set() for state in distance}
    for state, targets in successors.items():
        for target in targets:
            predecessors[target].add(state)
    waiting = {state: len(targets) for state, targets in successors.items()}
    room = {state: 0 for state, count in waiting.items() if count == 0}
    ready = list(room)
    while ready:
        state = ready.pop()
        for source in predecessors[state]:
            room[source] = max(room.get(source, 0), room[state] + 1)
            waiting[source] -= 1
            if waiting[source] == 0:
                ready.append(source)
    return {state: r for state, r in room.items() if waiting[state] == 0}


def _split_utf8(data: bytes) -> tuple[str, bytes]:
    """The decodable head of `data` and an incomplete UTF-8 tail (at most 3 bytes)."""
    for cut in range(len(data), max(-1, len(data) - 4), -1):
        try:
            return data[:cut].decode("utf-8"), data[cut:]
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace"), b""


class Product:
    """Several llguidance matchers stepped together (their AND) plus optional
    allowed/forbidden token bitmasks. A token is taken only when every part
    allows it, so a refused token never leaves a matcher in its error state."""

    def __init__(
        self,
        matchers: Sequence[Any],
        words: int,
        allowed: Mask | None = None,
        forbidden: Mask | None = None,
        *,
        tokenizer: Any = None,
        grammars: Sequence[str] = (),
    ) -> None:
        self.matchers = list(matchers)
        self.words = words
        self.allowed = allowed
        self.forbidden = forbidden
        # Exact automata for the matchers that are plain regexes (see RegexTracker).
        self.trackers: list[RegexTracker | None] = [None] * len(self.matchers)
        if tokenizer is not None:
            for i, grammar in enumerate(grammars[: len(self.matchers)]):
                self.trackers[i] = RegexTracker.for_grammar(grammar, tokenizer)
        self._scratch = np.empty((max(1, len(self.matchers)), words), dtype=np.int32)
        self._mask: Mask | None = None  # of the current state, while valid
        self._fingerprint: bytes | None = None
        self._mask_fingerprint: bytes | None = None
        self._filled = [False] * len(self.matchers)

    def is_error(self) -> bool:
        """Whether a matcher is in its error state."""
        return any(m.is_error() for m in self.matchers)

    def accepting(self) -> bool:
        """Whether every matcher accepts the output so far."""
        return all(m.is_accepting() for m in self.matchers)

    def _row(self, i: int) -> Mask:
        """Matcher i's mask in the current state (filled once per state)."""
        if not self._filled[i]:
            fill_next_token_bitmask(self.matchers[i], self._scratch, i)
            self._filled[i] = True
        row: Mask = self._scratch[i]
        return row

    def mask(self) -> Mask:
        """The AND of every part's next-token mask (a view: copy it to keep it)."""
        if self._mask is None:
            mask = self._row(0).copy()
            for i in range(1, len(self.matchers)):
                mask &= self._row(i)
            if self.allowed is not None:
                mask &= self.allowed
            if self.forbidden is not None:
                mask &= ~self.forbidden
            self._mask = mask
        return self._mask

    def fingerprint(self) -> bytes:
        """An identity of the current state: per matcher its exact regex state
        or its mask and forced bytes, plus whether all accept."""
        if self._fingerprint is None:
            self._fingerprint = self._digest(exact=True)
        return self._fingerprint

    def mask_fingerprint(self) -> bytes:
        """Like `fingerprint`, with a regex's exact state replaced by its distance
        to a match: a step that keeps it has made no progress (one more
        character inside `.{0,48}` changes the exact state, not the distance)."""
        if self._mask_fingerprint is None:
            self._mask_fingerprint = self._digest(exact=False)
        return self._mask_fingerprint

    def _digest(self, *, exact: bool) -> bytes:
        hasher = hashlib.blake2b(digest_size=16)
        for i, matcher in enumerate(self.matchers):
            tracker = self.trackers[i]
            if tracker is not None and tracker.state() is not None:
                if exact:
                    hasher.update(b"R" + (tracker.state() or b""))
                else:
                    # Progress of a regex is how close it is to a match: in
                    # `.{0,48}` every character costs room but is no progress.
                    hasher.update(b"D%d" % (tracker.distance() or 0))
                continue
            # Python's own hash of the 6 KB row (64 bits, several times faster
            # than hashing it here): equal states give equal rows, and a merge by
            # collision could only cost optimality (every path is replayed).
            hasher.update(b"%x;" % hash(self._row(i).tobytes()))
            # Mid-way through a forced run taken byte by byte (not as the forced
            # token) llguidance's mask can be empty; the forced bytes tell such states apart.
            hasher.update(matcher.compute_ff_bytes() + b"\0")
        hasher.update(b"A" if self.accepting() else b"-")
        return hasher.digest()

    def room(self) -> int | None:
        """Characters the tightest length-bounded regex part still allows (None: none bounds)."""
        rooms = [r for t in self.trackers if t is not None and (r := t.room()) is not None]
        return min(rooms) if rooms else None

    def observe(self, token: int) -> None:
        """Follows a token the matchers' owner made them take."""
        for tracker in self.trackers:
            if tracker is not None:
                tracker.push(token)
        self._changed()

    def unobserve(self, count: int) -> None:
        """Follows a rollback of `count` tokens the matchers' owner made."""
        if count > 0:
            for tracker in self.trackers:
                if tracker is not None:
                    tracker.pop(count)
        self._changed()

    def _changed(self) -> None:
        self._mask = None
        self._fingerprint = None
        self._mask_fingerprint = None
        self._filled = [False] * len(self.matchers)

    def allows(self, token: int) -> bool:
        """Whether every part allows `token` now."""
        return has_token(self.mask(), token)

    def consume(self, token: int) -> bool:
        """Takes `token` when every part allows it; False (nothing changed) otherwise."""
        if self.allowed is not None and not has_token(self.allowed, token):
            return False
        if self.forbidden is not None and has_token(self.forbidden, token):
            return False
        for i, matcher in enumerate(self.matchers):
            if matcher.try_consume_tokens([token]) != 1:
                for earlier in self.matchers[:i]:
                    earlier.rollback(1)
                return False
        for tracker in self.trackers:
            if tracker is not None:
                tracker.push(token)
        self._changed()
        return True

    def consume_all(self, tokens: Sequence[int]) -> int:
        """Takes tokens while every part allows them; how many were taken."""
        for taken, token in enumerate(tokens):
            if not self.consume(token):
                return taken
        return len(tokens)

    def forced(self) -> list[int]:
        """Takes the tokens some matcher forces (as far as every part allows them)
        and returns them; empty when nothing is forced."""
        for matcher in self.matchers:
            tokens = [int(t) for t in matcher.compute_ff_tokens()]
            if tokens:
                return tokens[: self.consume_all(tokens)]
        return []

    def rollback(self, count: int) -> None:
        """Undoes the last `count` tokens taken."""
        if count:
            for matcher in self.matchers:
                matcher.rollback(count)
            for tracker in self.trackers:
                if tracker is not None:
                    tracker.pop(count)
            self._changed()
