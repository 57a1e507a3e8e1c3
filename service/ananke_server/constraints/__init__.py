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
grammar together with a token mask) is enforced by the engine's product
grammar (request_grammar.py), which runs one llguidance matcher per grammar and
allows a token only when every matcher and every token mask allows it (the
dead-end guard then keeps a common completion reachable). A dead end (no
token allowed) is CONSTRAINT_UNSATISFIABLE: at compile time when the empty
output already has one, otherwise when generation reaches one. Sequence and
any_of always become one grammar; an intersection that needs the product can
only apply to the whole output, not inside a sequence or any_of.

Modules, one job each (imports one way, top to bottom):
- core: data types, limits, kind and digest helpers (a leaf);
- diagnostics: grammar validation and the errors/positions it yields;
- folding: composites into one grammar or an intersection's conjuncts;
- lowering: each ConstraintIR kind into a validated piece;
- check: the output re-check and the dead-end probe;
- cache: the bounded LRU with in-flight dedupe;
- compiler: ConstraintCompiler, tying them together.
"""

from .compiler import ConstraintCompiler
from .core import (
    DEFAULT_MAX_CACHE_BYTES,
    LARK_HEADER,
    LLGUIDANCE_VERSION,
    MAX_CHOICE_OPTIONS,
    MAX_NAME_CHARS,
    MAX_NESTING_DEPTH,
    MAX_TOP_LEVEL_CONSTRAINTS,
    SUPPORTED_KINDS,
    CacheStats,
    CompiledConstraints,
    Kind,
    Verdict,
    constraint_digest,
    kind_of,
    kind_of_combinator,
    order_by_priority,
)
from .diagnostics import unsatisfiable_during_generation

__all__ = [
    "DEFAULT_MAX_CACHE_BYTES",
    "LARK_HEADER",
    "LLGUIDANCE_VERSION",
    "MAX_CHOICE_OPTIONS",
    "MAX_NAME_CHARS",
    "MAX_NESTING_DEPTH",
    "MAX_TOP_LEVEL_CONSTRAINTS",
    "SUPPORTED_KINDS",
    "CacheStats",
    "CompiledConstraints",
    "ConstraintCompiler",
    "Kind",
    "Verdict",
    "constraint_digest",
    "kind_of",
    "kind_of_combinator",
    "order_by_priority",
    "unsatisfiable_during_generation",
]
