"""The intersection logits processor's logic (intersection.IntersectionMasker) without
vLLM: batch bookkeeping under vLLM's BatchUpdate contract (added, removed,
one-way moves, swaps), the AND of several matchers and token masks, tokens
consumed from the live output list, and a dead end forcing EOS."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch
from ananke_server.intersection import INTERSECTION_ARG, IntersectionMasker
from llguidance import LLMatcher, LLTokenizer

TOKENIZER = LLTokenizer("byte")  # token id = byte value; EOS 261
EOS = TOKENIZER.eos_token
NEG = float("-inf")


class Direction(enum.Enum):
    """Stands in for vllm's MoveDirectionality (both members are truthy)."""

    UNIDIRECTIONAL = enum.auto()
    SWAP = enum.auto()


@dataclass
class Params:
    extra_args: dict[str, Any] | None = None


@dataclass
class Row:
    params: Params
    output: list[int] = field(default_factory=list)


def _spec(*grammars: str, allowed: list[int] | None = None, forbidden: tuple[int, ...] = ()) -> Row:
    args = {"grammars": list(grammars), "allowed": allowed, "forbidden": list(forbidden)}
    return Row(Params({INTERSECTION_ARG: args}))


def _regex(pattern: str) -> str:
    return LLMatcher.grammar_from_regex(pattern)


def _allowed(logits: torch.Tensor, row: int) -> set[int]:
    return {int(i) for i in torch.nonzero(logits[row] > NEG).flatten()}


def _masker() -> IntersectionMasker:
    return IntersectionMasker(lambda: TOKENIZER)


def _add(masker: IntersectionMasker, index: int, row: Row) -> None:
    masker.update([(index, row.params, None, row.output)], [], [])


def test_plain_requests_are_untouched() -> None:
    masker = _masker()
    _add(masker, 0, Row(Params(None)))
    _add(masker, 1, Row(Params({"other": 1})))
    logits = torch.zeros(2, TOKENIZER.vocab_size)
    masker.apply(logits)
    assert not masker.rows
    assert torch.all(logits == 0)


def test_and_of_two_grammars_and_masks() -> None:
    masker = _masker()
    row = _spec(_regex("[a-c][0-9]"), _regex("[b-z][0-9]"), forbidden=(ord("c"),))
    _add(masker, 0, row)
    logits = torch.zeros(1, TOKENIZER.vocab_size)
    masker.apply(logits)
    assert _allowed(logits, 0) == {ord("b")}
    row.output.append(ord("b"))  # vLLM appends the sampled token to the live list
    logits = torch.zeros(1, TOKENIZER.vocab_size)
    masker.apply(logits)
    assert _allowed(logits, 0) == {ord(d) for d in "0123456789"}
    row.output.append(ord("7"))
    logits = torch.zeros(1, TOKENIZER.vocab_size)
    masker.apply(logits)
    assert _allowed(logits, 0) == {EOS}


def test_allowed_list_keeps_eos() -> None:
    masker = _masker()
    row = _spec(_regex("a*"), allowed=[ord("a")])
    _add(masker, 0, row)
    logits = torch.zeros(1, TOKENIZER.vocab_size)
    masker.apply(logits)
    assert _allowed(logits, 0) == {ord("a"), EOS}


def test_dead_end_forces_eos() -> None:
    masker = _masker()
    row = _spec(_regex("ab"), _regex("a[cd]"))
    _add(masker, 0, row)
    logits = torch.zeros(1, TOKENIZER.vocab_size)
    masker.apply(logits)
    assert _allowed(logits, 0) == {ord("a")}
    row.output.append(ord("a"))
    logits = torch.zeros(1, TOKENIZER.vocab_size)
    masker.apply(logits)
    assert _allowed(logits, 0) == {EOS}
    assert logits[0, EOS] == 0.0
    assert masker.dead_ends == 1


def test_placeholder_tokens_wait() -> None:
    masker = _masker()
    row = _spec(_regex("ab"), _regex("a."))
    _add(masker, 0, row)
    row.output.append(-1)  # async scheduling placeholder
    logits = torch.zeros(1, TOKENIZER.vocab_size)
    masker.apply(logits)
    assert _allowed(logits, 0) == {ord("a")}
    row.output[-1] = ord("a")
    logits = torch.zeros(1, TOKENIZER.vocab_size)
    masker.apply(logits)
    assert _allowed(logits, 0) == {ord("b")}


def test_batch_updates_follow_rows() -> None:
    """Four requests: rows move down when one finishes (one-way move over a
    removed row must drop the removed row's state) and swap on reorder."""
    masker = _masker()
    rows = {
        "A": _spec(_regex("a+"), _regex("a{1,9}")),
        "B": Row(Params(None)),
        "C": _spec(_regex("c+"), _regex("c{1,9}")),
        "D": _spec(_regex("d+"), _regex("d{1,9}")),
    }
    masker.update([(i, r.params, None, r.output) for i, r in enumerate(rows.values())], [], [])
    assert sorted(masker.rows) == [0, 2, 3]
    # A (row 0) finishes; condense moves D from row 3 down to row 0 (vLLM reports
    # only the move: the filled removed index is not listed as removed).
    masker.update([], [], [(3, 0, Direction.UNIDIRECTIONAL)])
    assert sorted(masker.rows) == [0, 2]
    logits = torch.zeros(3, TOKENIZER.vocab_size)
    masker.apply(logits)
    assert _allowed(logits, 0) == {ord("d")}
    assert _allowed(logits, 2) == {ord("c")}
    assert torch.all(logits[1] == 0)
    # Reorder: rows 1 and 2 swap (B <-> C).
    masker.update([], [], [(1, 2, Direction.SWAP)])
    assert sorted(masker.rows) == [0, 1]
    logits = torch.zeros(3, TOKENIZER.vocab_size)
    masker.apply(logits)
    assert _allowed(logits, 1) == {ord("c")}
    assert torch.all(logits[2] == 0)
    # C leaves from the end; a plain request takes row 0 over D's old row.
    masker.update([(0, Params(None), None, [])], [1], [])
    assert masker.rows == {}


def test_trailing_removal_and_readd() -> None:
    masker = _masker()
    first = _spec(_regex("x+"), _regex("x{1,3}"))
    _add(masker, 0, first)
    masker.update([], [0], [])
    assert masker.rows == {}
    # A preempted request comes back with tokens already generated: replayed.
    again = _spec(_regex("xy+"), _regex("x.*"))
    again.output.extend([ord("x"), ord("y")])
    _add(masker, 0, again)
    logits = torch.zeros(1, TOKENIZER.vocab_size)
    masker.apply(logits)
    assert _allowed(logits, 0) == {ord("y"), EOS}
