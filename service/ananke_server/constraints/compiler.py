"""ConstraintCompiler: the entry point that compiles a request's constraint
list (through the cache), validates constraints one by one, and re-checks outputs."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ananke.v1 import constraints_pb2, provenance_pb2
from llguidance import LLMatcher, LLParserLimits, LLTokenizer

from ..errors import ServiceError, invalid
from ..steering import Outcome, start_search
from .cache import CompileCache, timeout_error
from .check import FreshMatchers, check_output, dead_end
from .core import (
    DEFAULT_MAX_CACHE_BYTES,
    LARK_HEADER,
    LLGUIDANCE_VERSION,
    MAX_TOP_LEVEL_CONSTRAINTS,
    CacheStats,
    CompiledConstraints,
    K,
    Piece,
    Verdict,
    as_start,
    canonical_bytes,
    constraint_digest,
    kind_of,
    order_by_priority,
)
from .diagnostics import GrammarValidator, unsatisfiable
from .disk_cache import DiskCache, DiskStats, namespace
from .folding import combine_all_of, grammar_of, intersection_grammars
from .lowering import Lowerer


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
        eos_ids: Sequence[int] = (),
        disk_cache_dir: Path | None = None,
        disk_cache_bytes: int = 0,
    ) -> None:
        self._tokenizer = tokenizer
        # The engine's EOS set (EngineInfo.eos_token_ids); the tokenizer's own by default.
        self._eos_ids = tuple(eos_ids) or (int(tokenizer.eos_token),)
        self._tokenizer_id = tokenizer_id
        self._timeout_s = timeout_s
        self._limits = LLParserLimits(verbose_errors=False)
        self._fresh = FreshMatchers(tokenizer, self._limits)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="compile")
        disk = None
        if disk_cache_dir is not None and disk_cache_bytes > 0:
            version = namespace(
                tokenizer,
                tokenizer_id=tokenizer_id,
                vocab_size=vocab_size,
                eos_ids=self._eos_ids,
                max_constraint_bytes=max_constraint_bytes,
            )
            disk = DiskCache(disk_cache_dir, max_bytes=disk_cache_bytes, version=version)
        self._cache = CompileCache(
            self._pool,
            capacity=cache_size,
            max_bytes=max_cache_bytes,
            timeout_s=timeout_s,
            disk=disk,
        )
        self._validate = GrammarValidator(tokenizer, self._limits)
        self._lowerer = Lowerer(
            self._validate, vocab_size=vocab_size, max_bytes=max_constraint_bytes
        )

    def stats(self) -> CacheStats:
        """A snapshot of the cache counters."""
        return self._cache.stats()

    def disk_stats(self) -> DiskStats | None:
        """The disk cache's counters (None when there is no disk cache)."""
        return self._cache.disk.stats() if self._cache.disk is not None else None

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
        listed = list(constraints)
        return await self._cache.get_or_compile(key, lambda: self._compile_now(listed, field_path))

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
            raise timeout_error("validating", timeout_s) from None

    def check_output(
        self, compiled: CompiledConstraints, token_ids: Sequence[int], eos_ids: Sequence[int]
    ) -> tuple[provenance_pb2.CheckVerdict.ValueType, str]:
        """Re-checks generated tokens with fresh matchers, one per top-level constraint."""
        return check_output(
            self._tokenizer, self._limits, compiled, token_ids, eos_ids, self._fresh
        )

    def dead_end(self, compiled: CompiledConstraints, token_ids: Sequence[int]) -> bool:
        """Whether, after `token_ids`, no token (EOS included) is allowed by every
        grammar of the intersection and the token masks (fresh matchers)."""
        return dead_end(self._tokenizer, self._limits, compiled, token_ids, self._eos_ids)

    def close(self) -> None:
        """Stops the compile threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- compilation --------------------------------------------------------

    def _cache_key(
        self, constraints: Sequence[constraints_pb2.ConstraintIR], field_path: str
    ) -> str:
        # Request order and field path are part of the key: results name
        # constraints by their request index and path (errors, check names).
        hasher = hashlib.sha256(field_path.encode())
        for constraint in constraints:
            blob = canonical_bytes(constraint)  # equivalent encodings share an entry
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
            pieces = [self._lowerer.piece(c, f"{field_path}[{i}]", 0) for i, c in ordered]
            summaries = tuple(
                provenance_pb2.ConstraintSummary(name=c.name, kind=kind_of(c), priority=c.priority)
                for _, c in ordered
            )
            combined = combine_all_of(pieces, field_path, self._validate) if pieces else None
            grammar: str | None = None
            intersection: tuple[str, ...] = ()
            if combined is not None and combined.needs_processor:
                intersection = intersection_grammars(combined, field_path, self._validate)
            elif combined is not None and combined.lark_body is not None:
                grammar = LARK_HEADER + as_start(combined)
                if combined.standalone != LLMatcher.grammar_from_lark(grammar):
                    # (A standalone grammar of the same text is validated already.)
                    self._validate(grammar, K.CONSTRAINT_KIND_ALL_OF, field_path)
            checks: list[tuple[str, str]] = []
            region_checks = []
            for (i, c), p in zip(ordered, pieces, strict=True):
                name = c.name or f"constraints[{i}]"
                if p.standalone is not None:
                    checks.append((name, p.standalone))
                if p.regions:
                    region_checks.append((name, p.regions))
                for j, part in enumerate(p.conjuncts):
                    checks.append((f"{name}&{j}", grammar_of(part, field_path, self._validate)))
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
                summary_checks=tuple(p.schema_checks for p in pieces),
                region_checks=tuple(region_checks),
            )
            if intersection and self.dead_end(result, ()):
                raise unsatisfiable(field_path, at_start=True)
            grammars = intersection or ((grammar,) if grammar is not None else ())
            search = (
                start_search(self._tokenizer, grammars, allowed=allowed, forbidden=forbidden)
                if grammars
                else None
            )
            if search is not None and search.found:
                result = dataclasses.replace(result, min_tokens=len(search.tokens) + 1)
            elif intersection and search is not None and search.outcome is Outcome.EXHAUSTED:
                # The search saw every state the constraints reach together: no
                # common output; refused now instead of after generating into it.
                raise unsatisfiable(field_path, at_start=True, cause="exhausted")
            return result
        except ServiceError as error:
            return error

    def _validate_now(self, constraints: list[constraints_pb2.ConstraintIR]) -> list[Verdict]:
        verdicts = []
        for index, constraint in enumerate(constraints):
            path = f"constraints[{index}]"
            try:
                piece = self._lowerer.piece(constraint, path, 0)
                if piece.needs_processor:
                    self._check_not_empty_at_start(piece, path)
                elif piece.lark_body is not None:
                    self._validate(LARK_HEADER + as_start(piece), kind_of(constraint), path)
                verdicts.append(
                    Verdict(
                        index,
                        constraint.name,
                        kind_of(constraint),
                        None,
                        tuple(piece.warnings),
                        piece.schema_checks,
                    )
                )
            except ServiceError as error:
                verdicts.append(Verdict(index, constraint.name, kind_of(constraint), error))
        return verdicts

    def _check_not_empty_at_start(self, piece: Piece, path: str) -> None:
        """Raises CONSTRAINT_UNSATISFIABLE when an intersection allows no first token."""
        probe = CompiledConstraints(
            digest="",
            grammar=None,
            check_grammars=(),
            summaries=(),
            allowed_token_ids=piece.allowed,
            forbidden_token_ids=piece.forbidden,
            warnings=(),
            intersection=intersection_grammars(piece, path, self._validate),
        )
        if self.dead_end(probe, ()):
            raise unsatisfiable(path, at_start=True)
        search = start_search(
            self._tokenizer, probe.intersection, allowed=piece.allowed, forbidden=piece.forbidden
        )
        if search is not None and search.outcome is Outcome.EXHAUSTED:
            raise unsatisfiable(path, at_start=True, cause="exhausted")
