"""Steering to valid outputs: completion search over a product of llguidance
matchers (search.py), its state (product.py) and the per-request policy of
budget-aware completion and dead-end avoidance (guide.py). Imports nothing
from the rest of the service, so any engine integration can use it."""

from .guide import (
    Guide,
    SteerConfig,
    dead_end_cause,
    eos_mask,
    fresh_product,
    may_have_steered,
    minimum_tokens,
    replay_steering,
    start_search,
)
from .product import ByteTokens, Mask, Product, RegexTracker, byte_tokens, has_token
from .search import Outcome, Search, shortest_completion

__all__ = [
    "ByteTokens",
    "Guide",
    "Mask",
    "Outcome",
    "Product",
    "RegexTracker",
    "Search",
    "SteerConfig",
    "byte_tokens",
    "dead_end_cause",
    "eos_mask",
    "fresh_product",
    "has_token",
    "may_have_steered",
    "minimum_tokens",
    "replay_steering",
    "shortest_completion",
    "start_search",
]
