"""Constraint compilation: ConstraintIR list -> one validated llguidance Lark
grammar (plus token-id masks that no grammar can express), cached in a bounded
LRU and compiled off the event loop. Also the independent re-check of an
output with fresh matchers.

How constraints combine (the rule documented in GenerationRequest.constraints):
the top-level list is an intersection (all_of) ordered by descending priority.
An intersection folds into one grammar where the kinds allow it (regexes into
one `&` terminal, JSON schemas into one `allOf`; a lone grammar is itself);
then a single grammar without token masks goes to the engine's built-in
structured outputs. Anything else (two or more grammars that do not fold, or a
grammar together with a token mask) is enforced by the engine's intersection
logits processor, which runs one llguidance matcher per grammar and allows a
token only when every matcher and every token mask allows it. A dead end (no
token allowed) is CONSTRAINT_UNSATISFIABLE: at compile time when the empty
output already has one, otherwise when generation reaches one. Sequence and
any_of always become one grammar; an intersection that needs the processor
can only apply to the whole output, not inside a sequence or any_of.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from typing import TypeAlias

import grpc
import numpy as np
import numpy.typing as npt
from ananke.v1 import constraints_pb2, provenance_pb2
from llguidance import LLMatcher, LLParserLimits, LLTokenizer
from llguidance.gbnf_to_lark import gbnf_to_lark
from llguidance.numpy import fill_next_token_bitmask

from .errors import FieldViolation, ServiceError, invalid

LLGUIDANCE_VERSION = version("llguidance")
MAX_TOP_LEVEL_CONSTRAINTS = 64
MAX_NESTING_DEPTH = 16
MAX_NAME_CHARS = 128
MAX_CHOICE_OPTIONS = 10_000
DEFAULT_MAX_CACHE_BYTES = 256 * 1024 * 1024
# Forces Lark detection in vLLM's guidance backend (it sniffs for this or `start:`).
LARK_HEADER = "%llguidance {}\n"

Kind: TypeAlias = constraints_pb2.ConstraintKind.ValueType
K = constraints_pb2.ConstraintKind
C = constraints_pb2.Combinator


@dataclass(frozen=True)
class CompiledConstraints:
    """The immutable result of compiling a request's constraint list."""

    digest: str
    grammar: str | None  # Lark text for the engine; None when no grammar applies
    check_grammars: tuple[tuple[str, str], ...]  # (constraint name, grammar) per top-level item
    summaries: tuple[provenance_pb2.ConstraintSummary, ...]
    allowed_token_ids: frozenset[int] | None
    forbidden_token_ids: frozenset[int]
    warnings: tuple[str, ...]
    # Grammars intersected by the engine's logits processor (which then also
    # applies the token masks); empty when `grammar` or plain masks suffice.
    intersection: tuple[str, ...] = ()

    @property
    def constrained(self) -> bool:
        """Whether anything restricts the output."""
        return bool(self.summaries)

    @property
    def enforcement(self) -> str:
        """How the constraints reach the engine, for provenance."""
        if self.intersection:
            parts = [f"logits_processor({len(self.intersection)} grammars)"]
        else:
            parts = ["grammar"] if self.grammar is not None else []
        if self.allowed_token_ids is not None or self.forbidden_token_ids:
            parts.append("token_mask")
        return "+".join(parts) or "none"

    @property
    def has_grammar(self) -> bool:
        """Whether a grammar (built-in or in the processor) decides when the output ends."""
        return self.grammar is not None or bool(self.intersection)


@dataclass(frozen=True)
class Verdict:
    """One constraint's compile verdict (ValidateConstraints)."""

    index: int
    name: str
    kind: Kind
    error: ServiceError | None
    warnings: tuple[str, ...] = ()


@dataclass
class _Piece:
    """A compiled sub-constraint: Lark rule body or token masks."""

    kind: Kind
    lark_body: str | None = None  # right-hand side of a rule
    regex_terminal: str | None = None  # `/.../` when the piece is one regex
    json_schema: object | None = None  # parsed schema when the piece is one JSON schema
    standalone: str | None = None  # its own grammar, for the re-check
    allowed: frozenset[int] | None = None
    forbidden: frozenset[int] = frozenset()
    warnings: list[str] = field(default_factory=list)
    # An intersection that does not fold into one grammar: its grammar pieces
    # (each with lark_body and standalone set); lark_body is then None.
    conjuncts: tuple[_Piece, ...] = ()

    @property
    def has_mask(self) -> bool:
        return self.allowed is not None or bool(self.forbidden)

    @property
    def needs_processor(self) -> bool:
        """Whether enforcing this piece needs the intersection logits processor."""
        return bool(self.conjuncts) or (self.lark_body is not None and self.has_mask)


@dataclass(frozen=True)
class CacheStats:
    """Counters of the compile cache."""

    size: int
    capacity: int
    hits: int
    misses: int  # compiles started (timed-out ones included)
    bytes: int = 0  # estimated size of the cached entries (see _entry_bytes)


def kind_of(constraint: constraints_pb2.ConstraintIR) -> Kind:
    """The ConstraintKind of a ConstraintIR (UNSPECIFIED when no kind is set)."""
    which = constraint.WhichOneof("kind")
    if which == "json_schema":
        return K.CONSTRAINT_KIND_JSON_SCHEMA
    if which == "regex":
        return K.CONSTRAINT_KIND_REGEX
    if which == "grammar":
        if constraint.grammar.syntax == constraints_pb2.GRAMMAR_SYNTAX_GBNF:
            return K.CONSTRAINT_KIND_GRAMMAR_GBNF
        return K.CONSTRAINT_KIND_GRAMMAR_LARK
    if which == "choice":
        return K.CONSTRAINT_KIND_CHOICE
    if which == "token_mask":
        return K.CONSTRAINT_KIND_TOKEN_MASK
    if which == "composite":
        return kind_of_combinator(constraint.composite.combinator)
    return K.CONSTRAINT_KIND_UNSPECIFIED


_KIND_BY_COMBINATOR: dict[constraints_pb2.Combinator.ValueType, Kind] = {
    C.COMBINATOR_SEQUENCE: K.CONSTRAINT_KIND_SEQUENCE,
    C.COMBINATOR_ANY_OF: K.CONSTRAINT_KIND_ANY_OF,
    C.COMBINATOR_ALL_OF: K.CONSTRAINT_KIND_ALL_OF,
}


def kind_of_combinator(combinator: constraints_pb2.Combinator.ValueType) -> Kind:
    """The ConstraintKind for a composite's combinator (UNSPECIFIED when unknown)."""
    return _KIND_BY_COMBINATOR.get(combinator, K.CONSTRAINT_KIND_UNSPECIFIED)


SUPPORTED_KINDS: tuple[Kind, ...] = tuple(
    k for k in K.values() if k != K.CONSTRAINT_KIND_UNSPECIFIED
)


def order_by_priority(
    constraints: Sequence[constraints_pb2.ConstraintIR],
) -> list[tuple[int, constraints_pb2.ConstraintIR]]:
    """(request index, constraint) by descending priority; ties keep request order."""
    return sorted(enumerate(constraints), key=lambda pair: -pair[1].priority)


def constraint_digest(constraints: Sequence[constraints_pb2.ConstraintIR]) -> str:
    """sha256 over the deterministic serialization of the ordered list."""
    if not constraints:
        return ""
    hasher = hashlib.sha256()
    for _, constraint in order_by_priority(constraints):
        blob = constraint.SerializeToString(deterministic=True)
        hasher.update(len(blob).to_bytes(8, "big"))
        hasher.update(blob)
    return hasher.hexdigest()


# llguidance writes "at L(C): ..." or, for Lark syntax errors, "L(C): ...".
_LARK_POSITION = re.compile(r"^(?:at )?(\d+)\((\d+)\)")
# The name an error is about: `Invalid type: foo`, `Unknown format: x`,
# `Unimplemented keys: ["a"]`, `unknown name: "r"`, GBNF `Rule 'r' not found`.
_NAMED = re.compile(
    r"(?:Invalid type|Unknown format|Unimplemented keys|unknown name|Rule)\W*"
    r"(?P<name>[A-Za-z0-9_$.-][A-Za-z0-9_$./:-]*)"
)
_GBNF_LINE = re.compile(r"at line (\d+)")
_REGEX_CARET = re.compile(r"regex parse error:\n {4}(?P<text>.*)\n {4}(?P<caret> *)\^")


def _position(message: str, kind: Kind) -> tuple[int, int]:
    """Line and column (from 1) of an llguidance error within the user's text."""
    if kind == K.CONSTRAINT_KIND_REGEX:
        found = _REGEX_CARET.search(message)
        if found:
            return 1, len(found.group("caret")) + 1
    if kind in (K.CONSTRAINT_KIND_GRAMMAR_LARK,):
        found = _LARK_POSITION.search(message)
        if found:
            return int(found.group(1)), int(found.group(2))
    return 0, 0


def _locate(message: str, source: str | None, kind: Kind) -> tuple[int, int]:
    """Where in the user's text the name an error is about first appears (line,
    column from 1); (0, 0) when the message names nothing findable."""
    if not source:
        return 0, 0
    found = _NAMED.search(message)
    if found is None:
        return 0, 0
    name = found.group("name")
    if kind == K.CONSTRAINT_KIND_JSON_SCHEMA:
        pattern = re.escape(json.dumps(name))
    else:
        pattern = r"(?<![\w-])" + re.escape(name) + r"(?![\w-])"
    hits = list(re.finditer(pattern, source))
    if not hits:
        return 0, 0
    # An undefined rule: its first use; a JSON value: its first occurrence.
    offset = hits[0].start()
    line = source.count("\n", 0, offset) + 1
    return line, offset - (source.rfind("\n", 0, offset) + 1) + 1


# llguidance's parser and lexer limit messages (LLParserLimits); not user mistakes.
_LIMIT_MESSAGE = re.compile(
    r"too big \(limit|too many items \(limit|too many states|fuel exhausted|lex fuel|"
    r"too many expressions constructed|schema too large|exceeds capacity of",
    re.IGNORECASE,
)
_EXCERPT = re.compile(r"\n\s+\d+ \|")
_WRAPPER_POSITION = re.compile(r"^at \d+\(\d+\): ")


def _first_line(message: str) -> str:
    """llguidance messages end with a grammar excerpt; keep the useful head."""
    return _EXCERPT.split(message.strip())[0].strip()[:2000]


_Result: TypeAlias = CompiledConstraints | ServiceError


class ConstraintCompiler:
    """Compiles ConstraintIR lists for one tokenizer; thread-safe; caches results.

    The cache is an LRU bounded by entry count and by an estimate of its size
    in bytes. Concurrent requests for the same key share one compile; a compile
    that outlives its callers' timeout still finishes and is cached."""

    def __init__(
        self,
        tokenizer: LLTokenizer,
        *,
        vocab_size: int,
        tokenizer_id: str,
        max_constraint_bytes: int,
        cache_size: int,
        timeout_s: float,
        workers: int,
        max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
    ) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._tokenizer_id = tokenizer_id
        self._max_bytes = max_constraint_bytes
        self._capacity = cache_size
        self._timeout_s = timeout_s
        self._max_cache_bytes = max_cache_bytes
        self._cache: OrderedDict[str, _Result] = OrderedDict()
        self._cache_bytes = 0
        # Compiles under way, by cache key: later callers await the same one.
        self._in_flight: dict[str, concurrent.futures.Future[_Result]] = {}
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="compile")
        self._limits = LLParserLimits(verbose_errors=False)

    # -- public API ---------------------------------------------------------

    def stats(self) -> CacheStats:
        """A snapshot of the cache counters."""
        with self._lock:
            return CacheStats(
                len(self._cache), self._capacity, self._hits, self._misses, self._cache_bytes
            )

    async def compile(
        self, constraints: Sequence[constraints_pb2.ConstraintIR], field_path: str
    ) -> tuple[CompiledConstraints, bool]:
        """Compiles (or finds in the cache) a request's constraints.

        Returns the result and whether it was a cache hit (not when the call
        joined an identical compile under way); raises ServiceError for
        constraints that cannot be enforced. A caller that times out leaves
        the compile running for the others and for the cache."""
        self._check_shape(constraints, field_path)
        key = self._cache_key(constraints, field_path)
        started: concurrent.futures.Future[_Result] | None = None
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self._hits += 1
                shared = None
            else:
                shared = self._in_flight.get(key)
                if shared is None:
                    self._misses += 1
                    shared = started = self._pool.submit(
                        self._compile_now, list(constraints), field_path
                    )
                    self._in_flight[key] = started
        if started is not None:
            # Outside the lock: a future already done runs the callback at once.
            started.add_done_callback(partial(self._compiled, key))
        if shared is not None:
            try:
                # shield: a caller that times out must not cancel the shared compile.
                cached = await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(shared)), self._timeout_s
                )
            except TimeoutError:
                raise ServiceError(
                    "CONSTRAINT_COMPILE_TIMEOUT",
                    f"compiling the constraints took longer than {self._timeout_s:g} s",
                    metadata={"timeout_s": f"{self._timeout_s:g}"},
                ) from None
        assert cached is not None
        if isinstance(cached, ServiceError):
            # A fresh copy per caller: re-raising one object grows its traceback.
            raise dataclasses.replace(cached)
        return cached, shared is None

    async def validate(self, constraints: Sequence[constraints_pb2.ConstraintIR]) -> list[Verdict]:
        """A verdict for every constraint, compiled one by one (no cache)."""
        self._check_shape(constraints, "constraints")
        loop = asyncio.get_running_loop()
        timeout_s = self._timeout_s * max(1, len(constraints))
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._pool, self._validate_now, list(constraints)),
                timeout_s,
            )
        except TimeoutError:
            raise ServiceError(
                "CONSTRAINT_COMPILE_TIMEOUT",
                f"validating the constraints took longer than {timeout_s:g} s",
                metadata={"timeout_s": f"{timeout_s:g}"},
            ) from None

    def check_output(
        self, compiled: CompiledConstraints, token_ids: Sequence[int], eos_ids: Sequence[int]
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
            matcher = LLMatcher(self._tokenizer, grammar, log_level=0, limits=self._limits)
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

    def close(self) -> None:
        """Stops the compile threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- cache ----------------------------------------------------------------

    def _compiled(self, key: str, future: concurrent.futures.Future[_Result]) -> None:
        """Done callback of a compile: caches its result, even when every caller
        has already timed out (a cancelled or crashed compile is not cached)."""
        with self._lock:
            if self._in_flight.get(key) is future:
                del self._in_flight[key]
            if future.cancelled() or future.exception() is not None:
                return
            self._store(key, future.result())

    def _store(self, key: str, result: _Result) -> None:
        """Adds an entry, then evicts the least recently used ones while the
        cache holds too many entries or bytes. Call with the lock held."""
        size = _entry_bytes(result)
        if self._capacity <= 0 or size > self._max_cache_bytes:
            return
        previous = self._cache.pop(key, None)
        if previous is not None:
            self._cache_bytes -= _entry_bytes(previous)
        self._cache[key] = result
        self._cache_bytes += size
        while len(self._cache) > self._capacity or self._cache_bytes > self._max_cache_bytes:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= _entry_bytes(evicted)

    # -- compilation --------------------------------------------------------

    def _cache_key(
        self, constraints: Sequence[constraints_pb2.ConstraintIR], field_path: str
    ) -> str:
        # Request order and field path are part of the key: results name
        # constraints by their request index and path (errors, check names).
        hasher = hashlib.sha256(field_path.encode())
        for constraint in constraints:
            blob = constraint.SerializeToString(deterministic=True)
            hasher.update(len(blob).to_bytes(8, "big") + blob)
        return "|".join([hasher.hexdigest(), self._tokenizer_id, LLGUIDANCE_VERSION])

    def _check_shape(
        self, constraints: Sequence[constraints_pb2.ConstraintIR], field_path: str
    ) -> None:
        if len(constraints) > MAX_TOP_LEVEL_CONSTRAINTS:
            raise invalid(
                "CONSTRAINT_TOO_LARGE",
                f"at most {MAX_TOP_LEVEL_CONSTRAINTS} constraints per request, "
                f"got {len(constraints)}",
                field_path,
            )

    def _compile_now(
        self, constraints: list[constraints_pb2.ConstraintIR], field_path: str
    ) -> CompiledConstraints | ServiceError:
        try:
            ordered = order_by_priority(constraints)
            pieces = [self._piece(c, f"{field_path}[{i}]", depth=0) for i, c in ordered]
            summaries = tuple(
                provenance_pb2.ConstraintSummary(name=c.name, kind=kind_of(c), priority=c.priority)
                for _, c in ordered
            )
            combined = self._combine_all_of(pieces, field_path) if pieces else None
            grammar: str | None = None
            intersection: tuple[str, ...] = ()
            if combined is not None and combined.needs_processor:
                intersection = self._intersection_grammars(combined, field_path)
            elif combined is not None and combined.lark_body is not None:
                grammar = LARK_HEADER + self._as_start(combined)
                if combined.standalone != LLMatcher.grammar_from_lark(grammar):
                    # (A standalone grammar of the same text is validated already.)
                    self._validate(grammar, K.CONSTRAINT_KIND_ALL_OF, field_path)
            checks: list[tuple[str, str]] = []
            for (i, c), p in zip(ordered, pieces, strict=True):
                name = c.name or f"constraints[{i}]"
                if p.standalone is not None:
                    checks.append((name, p.standalone))
                for j, part in enumerate(p.conjuncts):
                    checks.append((f"{name}&{j}", self._grammar_of(part, field_path)))
            allowed = combined.allowed if combined else None
            forbidden = combined.forbidden if combined else frozenset()
            warnings = tuple(w for p in pieces for w in p.warnings)
            result = CompiledConstraints(
                digest=constraint_digest(constraints),
                grammar=grammar,
                check_grammars=tuple(checks),
                summaries=summaries,
                allowed_token_ids=allowed,
                forbidden_token_ids=forbidden,
                warnings=warnings,
                intersection=intersection,
            )
            if intersection and self.dead_end(result, ()):
                raise _unsatisfiable(field_path, at_start=True)
            return result
        except ServiceError as error:
            return error

    def _grammar_of(self, piece: _Piece, path: str) -> str:
        """The validated standalone grammar string of a grammar piece."""
        if piece.standalone is None:
            text = LARK_HEADER + self._as_start(piece)
            self._validate(text, piece.kind, path)
            piece.standalone = LLMatcher.grammar_from_lark(text)
        return piece.standalone

    def _intersection_grammars(self, piece: _Piece, path: str) -> tuple[str, ...]:
        """The grammars the logits processor intersects for `piece`."""
        if piece.conjuncts:
            return tuple(self._grammar_of(part, path) for part in piece.conjuncts)
        return (self._grammar_of(piece, path),)

    def dead_end(self, compiled: CompiledConstraints, token_ids: Sequence[int]) -> bool:
        """Whether, after `token_ids`, no token (EOS included) is allowed by every
        grammar of the intersection and the token masks. Rebuilds fresh matchers,
        independently of the engine. False when the tokens themselves are refused."""
        if not compiled.intersection:
            return False
        words = math.ceil(self._tokenizer.vocab_size / 32)
        combined = np.full(words, -1, dtype=np.int32)
        scratch = np.zeros((1, words), dtype=np.int32)
        tokens = list(token_ids)
        for grammar in compiled.intersection:
            matcher = LLMatcher(self._tokenizer, grammar, log_level=0, limits=self._limits)
            if tokens and matcher.try_consume_tokens(tokens) < len(tokens):
                return False
            if matcher.is_error():
                return False
            fill_next_token_bitmask(matcher, scratch, 0)
            combined &= scratch[0]
        eos = self._tokenizer.eos_token
        if compiled.allowed_token_ids is not None:
            allowed = compiled.allowed_token_ids | {eos}
            combined &= token_bitmask(allowed, words)
        if compiled.forbidden_token_ids:
            combined &= ~token_bitmask(compiled.forbidden_token_ids, words)
        return not combined.any()

    def _validate_now(self, constraints: list[constraints_pb2.ConstraintIR]) -> list[Verdict]:
        verdicts = []
        for index, constraint in enumerate(constraints):
            path = f"constraints[{index}]"
            try:
                piece = self._piece(constraint, path, depth=0)
                if piece.needs_processor:
                    self._check_not_empty_at_start(piece, path)
                elif piece.lark_body is not None:
                    self._validate(LARK_HEADER + self._as_start(piece), kind_of(constraint), path)
                verdicts.append(
                    Verdict(
                        index, constraint.name, kind_of(constraint), None, tuple(piece.warnings)
                    )
                )
            except ServiceError as error:
                verdicts.append(Verdict(index, constraint.name, kind_of(constraint), error))
        return verdicts

    def _check_not_empty_at_start(self, piece: _Piece, path: str) -> None:
        """Raises CONSTRAINT_UNSATISFIABLE when an intersection allows no first token."""
        probe = CompiledConstraints(
            digest="",
            grammar=None,
            check_grammars=(),
            summaries=(),
            allowed_token_ids=piece.allowed,
            forbidden_token_ids=piece.forbidden,
            warnings=(),
            intersection=self._intersection_grammars(piece, path),
        )
        if self.dead_end(probe, ()):
            raise _unsatisfiable(path, at_start=True)

    def _validate(
        self, grammar: str, kind: Kind, path: str, source: str | None = None
    ) -> list[str]:
        """Validates a grammar string; returns warnings or raises ServiceError.
        `source` is the user's text, to find where a named error points."""
        is_error, messages = LLMatcher.validate_grammar_with_warnings(
            grammar, self._tokenizer, limits=self._limits
        )
        if not is_error:
            return list(messages)
        message = messages[0] if messages else "invalid grammar"
        reason = _REASON_BY_KIND.get(kind, "COMPOSITE_INVALID")
        if _LIMIT_MESSAGE.search(_first_line(message)):
            raise ServiceError(
                "CONSTRAINT_TOO_LARGE",
                f"{path}: grammar exceeds the parser's complexity limits: {_first_line(message)}",
                (FieldViolation(path, _first_line(message)),),
                {"field": path},
                code_override=grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
        line, column = _position(message, kind)
        if not line:
            line, column = _locate(_first_line(message), source, kind)
        metadata = {"field": path}
        if line:
            metadata.update(line=str(line), column=str(column))
        text = _first_line(message)
        if kind != K.CONSTRAINT_KIND_GRAMMAR_LARK:
            # The position llguidance gives is in our wrapper, not the user's text.
            text = _WRAPPER_POSITION.sub("", text)
        raise ServiceError(reason, f"{path}: {text}", (FieldViolation(path, text),), metadata)

    def _check_size(self, text: str, path: str) -> None:
        size = len(text.encode())
        if size > self._max_bytes:
            raise invalid(
                "CONSTRAINT_TOO_LARGE",
                f"{path} is {size} bytes; the limit is {self._max_bytes}",
                path,
                limit=str(self._max_bytes),
            )

    def _piece(self, c: constraints_pb2.ConstraintIR, path: str, depth: int) -> _Piece:
        """Compiles one ConstraintIR (recursively) into a _Piece, validating leaves."""
        if len(c.name) > MAX_NAME_CHARS:
            raise invalid(
                "REQUEST_FIELD_INVALID", f"name is longer than {MAX_NAME_CHARS}", f"{path}.name"
            )
        which = c.WhichOneof("kind")
        kind = kind_of(c)
        if which is None:
            raise invalid("CONSTRAINT_EMPTY", f"{path} has no constraint kind set", path)
        if which == "json_schema":
            try:
                return self._json_piece(c.json_schema, f"{path}.json_schema")
            except RecursionError:
                raise invalid(
                    "JSON_SCHEMA_INVALID",
                    "the JSON schema is nested too deeply",
                    f"{path}.json_schema.schema",
                ) from None
        if which == "regex":
            return self._regex_piece(c.regex.pattern, f"{path}.regex.pattern")
        if which == "grammar":
            return self._grammar_piece(c.grammar, f"{path}.grammar", kind)
        if which == "choice":
            return self._choice_piece(c.choice, f"{path}.choice.options")
        if which == "token_mask":
            return self._mask_piece(c.token_mask, f"{path}.token_mask")
        return self._composite_piece(c.composite, f"{path}.composite", depth)

    def _leaf(
        self, kind: Kind, body: str, path: str, source: str | None = None, **extra: object
    ) -> _Piece:
        piece = _Piece(kind=kind, lark_body=body, **extra)  # type: ignore[arg-type]
        standalone = LARK_HEADER + self._as_start(piece)
        piece.warnings.extend(self._validate(standalone, kind, path, source))
        piece.standalone = LLMatcher.grammar_from_lark(standalone)
        return piece

    def _json_piece(self, spec: constraints_pb2.JsonSchemaConstraint, path: str) -> _Piece:
        field_path = f"{path}.schema"
        self._check_size(spec.schema, field_path)
        if not spec.schema.strip():
            raise invalid("JSON_SCHEMA_INVALID", "the JSON schema is empty", field_path)
        try:
            schema = json.loads(spec.schema)
        except json.JSONDecodeError as error:
            raise invalid(
                "JSON_SCHEMA_INVALID",
                f"the JSON schema is not valid JSON: {error.msg} "
                f"(line {error.lineno}, column {error.colno})",
                field_path,
                line=str(error.lineno),
                column=str(error.colno),
            ) from None
        if isinstance(schema, bool):
            schema = {} if schema else {"not": {}}
        if not isinstance(schema, dict):
            raise invalid(
                "JSON_SCHEMA_INVALID", "a JSON schema must be an object or a boolean", field_path
            )
        own_options = schema.get("x-guidance", {})
        if not isinstance(own_options, dict):
            raise invalid(
                "JSON_SCHEMA_INVALID", '"x-guidance" must be an object of options', field_path
            )
        # Request options win over the schema's own x-guidance, which wins over defaults.
        options = {**_JSON_DEFAULTS, **own_options, **_json_options(spec.options)}
        schema = {**schema, "x-guidance": options}
        body = "%json " + json.dumps(schema, ensure_ascii=False)
        return self._leaf(
            K.CONSTRAINT_KIND_JSON_SCHEMA, body, field_path, spec.schema, json_schema=schema
        )

    def _regex_piece(self, pattern: str, path: str) -> _Piece:
        self._check_size(pattern, path)
        if not pattern:
            raise invalid("REGEX_INVALID", "the regex is empty", path)
        if (len(pattern) - len(pattern.rstrip("\\"))) % 2:
            # llguidance would silently drop it: `[0-9]+\` would compile as `[0-9]+`.
            offset = len(pattern) - 1
            line = pattern.count("\n", 0, offset) + 1
            column = offset - (pattern.rfind("\n", 0, offset) + 1) + 1
            raise invalid(
                "REGEX_INVALID",
                "the regex ends with an incomplete escape (a lone backslash)",
                path,
                line=str(line),
                column=str(column),
            )
        # Reuse llguidance's own escaping of the pattern into a Lark terminal.
        lark = json.loads(LLMatcher.grammar_from_regex(pattern))["grammars"][0]["lark_grammar"]
        terminal = lark.removeprefix("start: ")
        return self._leaf(K.CONSTRAINT_KIND_REGEX, terminal, path, regex_terminal=terminal)

    def _grammar_piece(
        self, spec: constraints_pb2.GrammarConstraint, path: str, kind: Kind
    ) -> _Piece:
        text_path = f"{path}.text"
        self._check_size(spec.text, text_path)
        if spec.syntax not in (
            constraints_pb2.GRAMMAR_SYNTAX_LARK,
            constraints_pb2.GRAMMAR_SYNTAX_GBNF,
        ):
            raise invalid(
                "GRAMMAR_INVALID", "grammar syntax must be LARK or GBNF", f"{path}.syntax"
            )
        if not spec.text.strip():
            raise invalid("GRAMMAR_INVALID", "the grammar is empty", text_path)
        text = spec.text
        if spec.syntax == constraints_pb2.GRAMMAR_SYNTAX_GBNF:
            try:
                text = gbnf_to_lark(text)
            except Exception as error:  # the converter raises bare exceptions
                message = f"not a valid GBNF grammar: {error}"
                line, column = _locate(message, spec.text, kind)
                at_line = _GBNF_LINE.search(message)
                if not line and at_line:
                    line, column = int(at_line.group(1)), 0
                position = {"line": str(line), "column": str(column)} if line else {}
                raise invalid("GRAMMAR_INVALID", message, text_path, **position) from None
        piece = _Piece(kind=kind, lark_body="%lark {\n" + text + "\n}")
        # Validate the text as written (no header), so positions refer to it.
        piece.warnings.extend(
            self._validate(LLMatcher.grammar_from_lark(text), kind, text_path, spec.text)
        )
        piece.standalone = LLMatcher.grammar_from_lark(text)
        return piece

    def _choice_piece(self, spec: constraints_pb2.ChoiceConstraint, path: str) -> _Piece:
        options = list(dict.fromkeys(spec.options))
        if not options:
            raise invalid("CHOICE_INVALID", "a choice needs at least one option", path)
        if len(options) > MAX_CHOICE_OPTIONS:
            raise invalid("CHOICE_INVALID", f"at most {MAX_CHOICE_OPTIONS} options", path)
        for i, option in enumerate(spec.options):
            if not option:
                raise invalid("CHOICE_INVALID", "choice options must not be empty", f"{path}[{i}]")
        self._check_size("".join(options), path)
        body = " | ".join(json.dumps(option, ensure_ascii=False) for option in options)
        return self._leaf(K.CONSTRAINT_KIND_CHOICE, body, path)

    def _mask_piece(self, spec: constraints_pb2.TokenMaskConstraint, path: str) -> _Piece:
        if not spec.allowed_token_ids and not spec.forbidden_token_ids:
            raise invalid("TOKEN_MASK_INVALID", "a token mask needs allowed or forbidden ids", path)
        for name, ids in (
            ("allowed_token_ids", spec.allowed_token_ids),
            ("forbidden_token_ids", spec.forbidden_token_ids),
        ):
            for i, token in enumerate(ids):
                if token >= self._vocab_size:
                    raise invalid(
                        "TOKEN_MASK_INVALID",
                        f"token id {token} is outside the vocabulary (size {self._vocab_size})",
                        f"{path}.{name}[{i}]",
                    )
        allowed = frozenset(spec.allowed_token_ids) if spec.allowed_token_ids else None
        return _Piece(
            kind=K.CONSTRAINT_KIND_TOKEN_MASK,
            allowed=allowed,
            forbidden=frozenset(spec.forbidden_token_ids),
        )

    def _composite_piece(
        self, spec: constraints_pb2.CompositeConstraint, path: str, depth: int
    ) -> _Piece:
        if depth + 1 > MAX_NESTING_DEPTH:
            raise invalid("COMPOSITE_INVALID", f"nested deeper than {MAX_NESTING_DEPTH}", path)
        if spec.combinator not in (
            C.COMBINATOR_SEQUENCE,
            C.COMBINATOR_ANY_OF,
            C.COMBINATOR_ALL_OF,
        ):
            raise invalid(
                "COMPOSITE_INVALID",
                "combinator must be SEQUENCE, ANY_OF or ALL_OF",
                f"{path}.combinator",
            )
        if not spec.parts:
            raise invalid(
                "COMPOSITE_INVALID", "a composite needs at least one part", f"{path}.parts"
            )
        parts = [self._piece(p, f"{path}.parts[{i}]", depth + 1) for i, p in enumerate(spec.parts)]
        if spec.combinator == C.COMBINATOR_ALL_OF:
            combined = self._combine_all_of(parts, path)
        else:
            for i, part in enumerate(parts):
                if part.has_mask or part.lark_body is None:
                    what = "a token mask" if part.has_mask else "an intersection of grammars"
                    raise ServiceError(
                        "CONSTRAINT_UNSUPPORTED",
                        f"{path}.parts[{i}]: {what} that does not fold into one grammar can "
                        "only apply to the whole output (top level or all_of), not inside a "
                        "sequence or any_of",
                        (FieldViolation(f"{path}.parts[{i}]", f"{what} inside a sequence"),),
                        {"field": f"{path}.parts[{i}]"},
                    )
            joiner = " " if spec.combinator == C.COMBINATOR_SEQUENCE else " | "
            body = joiner.join(f"({self._inline(part)})" for part in parts)
            kind = (
                K.CONSTRAINT_KIND_SEQUENCE
                if spec.combinator == C.COMBINATOR_SEQUENCE
                else K.CONSTRAINT_KIND_ANY_OF
            )
            combined = _Piece(kind=kind, lark_body=body)
        combined.warnings = [w for p in parts for w in p.warnings]
        if combined.lark_body is not None and combined.standalone is None:
            standalone = LARK_HEADER + self._as_start(combined)
            self._validate(standalone, kind_of_combinator(spec.combinator), path)
            combined.standalone = LLMatcher.grammar_from_lark(standalone)
        return combined

    def _combine_all_of(self, parts: list[_Piece], path: str) -> _Piece:
        """An intersection: token masks into one mask, regexes into one `&`
        terminal, JSON schemas into one allOf; what remains (two or more
        grammars) becomes the conjuncts of a processor-enforced intersection."""
        allowed: frozenset[int] | None = None
        forbidden: frozenset[int] = frozenset()
        grammars: list[_Piece] = []
        for part in parts:
            if part.allowed is not None:
                allowed = part.allowed if allowed is None else allowed & part.allowed
            forbidden = forbidden | part.forbidden
            if part.conjuncts:
                grammars.extend(part.conjuncts)
            elif part.lark_body is not None:
                grammars.append(part)
        regexes = [p for p in grammars if p.regex_terminal is not None]
        schemas = [p for p in grammars if p.json_schema is not None]
        others = [p for p in grammars if p.regex_terminal is None and p.json_schema is None]
        folded: list[_Piece] = []
        if len(regexes) >= 2:
            terminal = " & ".join(f"({p.regex_terminal})" for p in regexes)
            folded.append(
                _Piece(
                    kind=K.CONSTRAINT_KIND_ALL_OF,
                    lark_body=f"ALL_OF\nALL_OF: {terminal}",
                    warnings=[w for p in regexes for w in p.warnings],
                )
            )
        else:
            folded.extend(regexes)
        options = _common_json_options(schemas) if len(schemas) >= 2 else None
        if options is not None:
            # llguidance reads x-guidance only at the top of the schema, so the
            # merge carries the options every part has; parts whose options
            # differ stay separate grammars of the intersection.
            merged = {"allOf": [p.json_schema for p in schemas], "x-guidance": options}
            merged_piece = _Piece(
                kind=K.CONSTRAINT_KIND_ALL_OF,
                lark_body="%json " + json.dumps(merged, ensure_ascii=False),
                json_schema=merged,
                warnings=[w for p in schemas for w in p.warnings],
            )
            # Validated as a JSON schema here, so an allOf llguidance cannot
            # build is JSON_SCHEMA_INVALID on the list, not COMPOSITE_INVALID.
            standalone = LARK_HEADER + self._as_start(merged_piece)
            self._validate(standalone, K.CONSTRAINT_KIND_JSON_SCHEMA, path)
            merged_piece.standalone = LLMatcher.grammar_from_lark(standalone)
            folded.append(merged_piece)
        else:
            folded.extend(schemas)
        folded.extend(others)
        warnings = [w for p in parts for w in p.warnings]
        if not folded:
            return _Piece(kind=K.CONSTRAINT_KIND_TOKEN_MASK, allowed=allowed, forbidden=forbidden)
        if len(folded) == 1:
            base = folded[0]
            return _Piece(
                kind=base.kind if len(grammars) == 1 else K.CONSTRAINT_KIND_ALL_OF,
                lark_body=base.lark_body,
                regex_terminal=base.regex_terminal if len(grammars) == 1 else None,
                json_schema=base.json_schema,
                standalone=base.standalone,
                allowed=allowed,
                forbidden=forbidden,
                warnings=warnings,
            )
        for i, piece in enumerate(folded):
            self._grammar_of(piece, f"{path}&{i}")
        return _Piece(
            kind=K.CONSTRAINT_KIND_ALL_OF,
            allowed=allowed,
            forbidden=forbidden,
            warnings=warnings,
            conjuncts=tuple(folded),
        )

    def _inline(self, piece: _Piece) -> str:
        assert piece.lark_body is not None
        if "\n" in piece.lark_body and not piece.lark_body.startswith(("%lark", "%json")):
            # A body with its own rules (a folded all_of) becomes a nested grammar.
            return "%lark {\n" + self._as_start(piece) + "\n}"
        return piece.lark_body

    @staticmethod
    def _as_start(piece: _Piece) -> str:
        assert piece.lark_body is not None
        return "start: " + piece.lark_body


def _entry_bytes(entry: _Result) -> int:
    """An estimate of a cache entry's size: its grammar strings (an error: its message)."""
    if isinstance(entry, ServiceError):
        return len(entry.message)
    return (
        len(entry.grammar or "")
        + sum(len(grammar) for _, grammar in entry.check_grammars)
        + sum(len(grammar) for grammar in entry.intersection)
    )


def token_bitmask(ids: frozenset[int] | set[int], words: int) -> npt.NDArray[np.int32]:
    """An llguidance-style bitmask (int32 words, bit i%32 of word i//32) with `ids` set."""
    mask = np.zeros(words * 32, dtype=np.uint8)
    mask[[i for i in ids if i < words * 32]] = 1
    return np.packbits(mask, bitorder="little").view(np.int32)


def _unsatisfiable(path: str, *, at_start: bool) -> ServiceError:
    where = "the empty output" if at_start else "the output so far"
    message = (
        f"{path}: the constraints together allow no token after {where} "
        "(their intersection is empty)"
    )
    return ServiceError(
        "CONSTRAINT_UNSATISFIABLE",
        message,
        (FieldViolation(path, "empty intersection"),),
        {"field": path},
    )


def unsatisfiable_during_generation(path: str, tokens: int) -> ServiceError:
    """The error of a generation that reached a dead end after `tokens` tokens."""
    error = _unsatisfiable(path, at_start=False)
    return ServiceError(
        error.reason,
        error.message + f"; generation stopped after {tokens} tokens",
        error.violations,
        {**error.metadata, "tokens": str(tokens)},
    )


_JSON_DEFAULTS: dict[str, object] = {"whitespace_flexible": False}

_REASON_BY_KIND: dict[Kind, str] = {
    K.CONSTRAINT_KIND_JSON_SCHEMA: "JSON_SCHEMA_INVALID",
    K.CONSTRAINT_KIND_REGEX: "REGEX_INVALID",
    K.CONSTRAINT_KIND_GRAMMAR_LARK: "GRAMMAR_INVALID",
    K.CONSTRAINT_KIND_GRAMMAR_GBNF: "GRAMMAR_INVALID",
    K.CONSTRAINT_KIND_CHOICE: "CHOICE_INVALID",
    K.CONSTRAINT_KIND_TOKEN_MASK: "TOKEN_MASK_INVALID",
}


# llguidance's own defaults for the options it reads from x-guidance.
_LLGUIDANCE_JSON_DEFAULTS: dict[str, object] = {
    "item_separator": ",",
    "key_separator": ":",
    "lenient": False,
    "coerce_one_of": False,
}


def _common_json_options(schemas: Sequence[_Piece]) -> dict[str, object] | None:
    """The x-guidance options of JSON schema pieces when all are equal (llguidance
    defaults filled in) and no part has a `$ref` (refs resolve against the root,
    which a merge changes); None when they cannot fold into one allOf."""
    owns: list[dict[str, object]] = []
    for piece in schemas:
        schema = piece.json_schema
        if not isinstance(schema, dict) or _has_ref(schema):
            return None
        own = schema.get("x-guidance", {})
        if not isinstance(own, dict):
            return None
        owns.append(own)
    effective = [{**_LLGUIDANCE_JSON_DEFAULTS, **own} for own in owns]
    if not owns or any(options != effective[0] for options in effective[1:]):
        return None
    return dict(owns[0])


def _has_ref(value: object) -> bool:
    """Whether a JSON value has a `$ref` key anywhere."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "$ref" in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _json_options(options: constraints_pb2.JsonSchemaOptions) -> dict[str, object]:
    """The llguidance JSON compile options a request set (unset ones omitted)."""
    result: dict[str, object] = {}
    for name in (
        "whitespace_flexible",
        "lenient",
        "coerce_one_of",
        "item_separator",
        "key_separator",
    ):
        if options.HasField(name):
            result[name] = getattr(options, name)
    return result


__all__ = [
    "CacheStats",
    "CompiledConstraints",
    "ConstraintCompiler",
    "Verdict",
    "constraint_digest",
    "kind_of",
]
