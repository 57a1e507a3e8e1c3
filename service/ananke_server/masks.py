"""Token bitmasks in llguidance's layout (int32 words, bit i%32 of word i//32),
and the one mask function shared by the engine's per-request product grammar
(request_grammar.py) and the compiler's dead-end proof: the AND of several
matchers' masks and of the request's token masks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Bitmask = npt.NDArray[np.int32]


def mask_words(vocab_size: int) -> int:
    """int32 words per mask row for a vocabulary of `vocab_size` tokens."""
    return (vocab_size + 31) // 32


def token_bitmask(ids: Iterable[int], words: int) -> Bitmask:
    """A bitmask with exactly `ids` set (ids past the mask's width are ignored)."""
    bits = np.zeros(words * 32, dtype=np.uint8)
    bits[[i for i in ids if 0 <= i < words * 32]] = 1
    return np.packbits(bits, bitorder="little").view(np.int32)


@dataclass(frozen=True)
class TokenMasks:
    """A request's token-id masks as bitmasks: `allowed` (None: every token; the
    EOS ids are always added so the output can end) and `forbidden`."""

    allowed: Bitmask | None
    forbidden: Bitmask | None

    @classmethod
    def build(
        cls,
        allowed_ids: Iterable[int] | None,
        forbidden_ids: Iterable[int],
        eos_ids: Iterable[int],
        words: int,
    ) -> TokenMasks:
        """Bitmasks for the given id lists."""
        allowed = None if allowed_ids is None else token_bitmask({*allowed_ids, *eos_ids}, words)
        forbidden_set = set(forbidden_ids)
        forbidden = token_bitmask(forbidden_set, words) if forbidden_set else None
        return cls(allowed, forbidden)


def intersect(matchers: Sequence[Any], masks: TokenMasks, words: int) -> Bitmask | None:
    """The AND of every llguidance matcher's next-token mask and the token masks;
    None when no token at all is allowed (a dead end)."""
    from llguidance.numpy import fill_next_token_bitmask

    scratch = np.empty((max(len(matchers), 1), words), dtype=np.int32)
    if matchers:
        for row, matcher in enumerate(matchers):
            fill_next_token_bitmask(matcher, scratch, row)
        combined: Bitmask = np.bitwise_and.reduce(scratch[: len(matchers)], axis=0)
    else:
        combined = np.full(words, -1, dtype=np.int32)
    if masks.allowed is not None:
        combined &= masks.allowed
    if masks.forbidden is not None:
        combined &= ~masks.forbidden
    return combined if combined.any() else None


def unpack(mask: Bitmask, width: int) -> npt.NDArray[np.bool_]:
    """The mask as one bool per token id, `width` long (ids past the mask: False)."""
    bits = np.unpackbits(mask.view(np.uint8), bitorder="little")[:width]
    if bits.shape[0] < width:
        bits = np.concatenate([bits, np.zeros(width - bits.shape[0], dtype=np.uint8)])
    return bits.astype(bool)


def apply_token_bitmask(row: Any, mask: Bitmask) -> None:
    """Sets to -inf, in place, every logit of `row` (a 1-D torch tensor on any
    device) whose token's bit in `mask` is 0; ids past the mask are forbidden."""
    import torch

    forbid = torch.from_numpy(~unpack(mask, int(row.shape[0]))).to(row.device)
    row.masked_fill_(forbid, float("-inf"))


def force_token(row: Any, token: int) -> None:
    """Leaves only `token` possible in `row` (logit 0, the rest -inf), in place."""
    row.fill_(float("-inf"))
    row[token] = 0.0
