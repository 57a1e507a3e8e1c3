"""vLLM's per-token log probabilities turned into the engine API's
PositionLogprobs (read by attribute: no vllm import)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .engine_api import PositionLogprobs, TokenLogprob


def _position(entries: Any, token_id: int, top: int) -> PositionLogprobs | None:
    """One position of vLLM's logprobs ({id: Logprob}): the token there and
    the `top` most likely alternatives. Alternatives a mask removed (-inf)
    are left out."""
    if not entries:
        return None
    chosen = entries.get(token_id)
    if chosen is None:
        return None
    ranked = sorted(
        (
            TokenLogprob(int(t), float(lp.logprob), int(lp.rank or 0))
            for t, lp in entries.items()
            if math.isfinite(lp.logprob)
        ),
        key=lambda e: (e.rank, e.token_id),
    )
    logprob, rank = float(chosen.logprob), int(chosen.rank or 0)
    if math.isnan(logprob):
        # A token accepted as a fast-forward draft has no sampled distribution:
        # it was the only token the constraint mask allowed (probability 1).
        logprob, rank = 0.0, 1
        ranked = [TokenLogprob(token_id, 0.0, 1)]
    return PositionLogprobs(
        token=TokenLogprob(token_id, logprob, rank),
        top=tuple(ranked[:top]),
    )


def output_logprobs(
    logprobs: Any, token_ids: tuple[int, ...], top: int | None
) -> tuple[PositionLogprobs, ...]:
    if top is None or not logprobs:
        return ()
    positions = (_position(logprobs[i], t, top) for i, t in enumerate(token_ids))
    return tuple(p for p in positions if p is not None)


def prompt_logprobs(
    logprobs: Any, prompt_ids: Sequence[int], top: int | None
) -> tuple[PositionLogprobs, ...]:
    if top is None:
        return ()
    positions = (
        _position(logprobs[i], t, top) for i, t in enumerate(prompt_ids) if i < len(logprobs)
    )
    return tuple(p for p in positions if p is not None)
