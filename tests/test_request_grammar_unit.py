"""The per-request product grammar (request_grammar.RequestGrammar) without the
engine: AND of matchers and token masks, the common forced run and its limits,
accept/validate/rollback in step, dead ends and EOS, the restrict hook; and the
vLLM plugin's patched validate_tokens and proposer over stand-in requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from ananke_server.request_grammar import (
    GRAMMAR_ARG,
    SENTINEL_GRAMMAR,
    RequestGrammar,
    RequestSpec,
)
from llguidance import LLMatcher, LLTokenizer

TOKENIZER = LLTokenizer("byte")  # token id = byte value
EOS = TOKENIZER.eos_token
WORDS = (TOKENIZER.vocab_size + 31) // 32


def _lark(body: str) -> str:
    return "%llguidance {}\n" + body


def _grammar(*grammars: str, **kwargs: Any) -> RequestGrammar:
    spec = RequestSpec(grammars=grammars, **kwargs)
    return RequestGrammar.from_spec(spec, TOKENIZER, max_tokens=kwargs.get("max_tokens"))


def _ids(text: str) -> list[int]:
    return list(text.encode())


def _allowed(grammar: RequestGrammar) -> set[int]:
    rows = np.zeros((2, WORDS), dtype=np.int32)
    grammar.fill_bitmask(rows, 1)
    bits = np.unpackbits(rows[1].view(np.uint8), bitorder="little")
    return {int(i) for i in np.nonzero(bits)[0]}


def test_single_grammar_forces_fixed_text() -> None:
    grammar = _grammar(_lark('start: "abc" /[0-9]+/ "xyz"'))
    assert grammar.forced_tokens(8) == _ids("abc")
    assert grammar.forced_tokens(2) == _ids("ab")
    assert grammar.accept_tokens(_ids("abc1"))
    assert grammar.forced_tokens(8) == []  # another digit or 'x'
    assert _allowed(grammar) == set(_ids("0123456789x"))
    assert grammar.accept_tokens(_ids("x"))
    assert grammar.forced_tokens(8) == _ids("yz")
    assert grammar.num_generated == 5


def test_forced_run_stops_before_budget() -> None:
    spec = RequestSpec(grammars=(_lark('start: "abcdef"'),))
    grammar = RequestGrammar.from_spec(spec, TOKENIZER, max_tokens=4)
    # 4 tokens left: 3 drafts plus the token the verifying step samples.
    assert grammar.forced_tokens(8) == _ids("abc")
    assert grammar.accept_tokens(_ids("abc"))
    assert grammar.forced_tokens(8) == []


def test_fast_forward_off_forces_nothing() -> None:
    grammar = _grammar(_lark('start: "abc"'), fast_forward=False)
    assert grammar.forced_tokens(8) == []
    assert _allowed(grammar) == {ord("a")}


def test_intersection_mask_is_the_and() -> None:
    grammar = _grammar(_lark("start: /[a-c]+/"), _lark("start: /[b-d]+/"))
    assert _allowed(grammar) == {ord("b"), ord("c")}
    assert grammar.validate_tokens(_ids("bcab")) == _ids("bc")
    assert not grammar.accept_tokens(_ids("a"))


def test_intersection_forced_run_is_common() -> None:
    # One side forces "abc", the other allows any letters: the product forces "abc".
    grammar = _grammar(_lark('start: "abc" /[0-9]/'), _lark("start: /[a-z]+[0-9]/"))
    assert grammar.forced_tokens(8) == _ids("abc")
    # The other side forbids 'c': only the prefix both allow is drafted.
    grammar = _grammar(_lark('start: "abc"'), _lark("start: /[ab]+/"))
    assert grammar.forced_tokens(8) == _ids("ab")


def test_token_masks_cut_forced_run_and_mask() -> None:
    grammar = _grammar(_lark('start: "abc" | "abd"'), forbidden=frozenset({ord("c")}))
    assert grammar.forced_tokens(8) == _ids("ab")
    assert grammar.accept_tokens(_ids("ab"))
    assert _allowed(grammar) == {ord("d")}
    masked = _grammar(allowed=frozenset(_ids("xy")))
    assert _allowed(masked) == {*_ids("xy"), EOS}  # EOS always allowed
    assert masked.forced_tokens(8) == []


def test_accept_and_rollback_restore_state() -> None:
    grammar = _grammar(_lark('start: "ab" /[0-9]/ "cd"'), _lark("start: /.+/"))
    before = _allowed(grammar)
    assert grammar.accept_tokens(_ids("ab1c"))
    grammar.rollback(4)
    assert grammar.num_generated == 0
    assert _allowed(grammar) == before
    assert grammar.forced_tokens(8) == _ids("ab")


def test_eos_after_completion_terminates_and_rolls_back() -> None:
    grammar = _grammar(_lark('start: "ok"'))
    assert grammar.accept_tokens(_ids("ok"))
    assert _allowed(grammar) == {EOS}
    assert grammar.forced_tokens(8) == []  # EOS is never drafted
    assert grammar.accept_tokens([EOS])
    assert grammar.is_terminated()
    assert not grammar.dead_end
    assert not grammar.accept_tokens(_ids("x"))
    grammar.rollback(1)
    assert not grammar.is_terminated()


def test_dead_end_allows_only_eos() -> None:
    grammar = _grammar(_lark('start: "a"'), _lark('start: "b"'))
    assert _allowed(grammar) == {EOS}
    assert grammar.forced_tokens(8) == []
    assert grammar.accept_tokens([EOS])
    assert grammar.dead_end
    assert grammar.is_terminated()


def test_eos_refused_while_grammar_needs_more() -> None:
    grammar = _grammar(_lark('start: "ab"'))
    assert not grammar.accept_tokens([EOS])


def test_restrict_hook_narrows_mask_and_forced_run() -> None:
    class NoB(RequestGrammar):
        def restrict(self, row: Any) -> None:
            row[ord("b") >> 5] &= ~np.int32(1 << (ord("b") & 31))

    spec = RequestSpec(grammars=(_lark('start: "abc" | "xbc"'),))
    base = RequestGrammar.from_spec(spec, TOKENIZER, max_tokens=None)
    grammar = NoB(base.matchers, vocab_words=WORDS, eos_token=EOS)
    assert grammar.accept_tokens(_ids("a"))
    assert _allowed(grammar) == {EOS}  # restrict emptied the row: EOS instead
    assert grammar.forced_tokens(8) == []
    assert grammar.num_generated == 1


def test_spec_round_trip_and_bad_args() -> None:
    spec = RequestSpec(("g1", "g2"), frozenset({3, 1}), frozenset({7}), fast_forward=False)
    assert RequestSpec.from_args(spec.to_args()) == spec
    with pytest.raises(ValueError, match=GRAMMAR_ARG):
        RequestSpec.from_args({"grammar": "x"})
    assert LLMatcher.validate_grammar(SENTINEL_GRAMMAR, TOKENIZER) == ""


@dataclass
class _Structured:
    grammar: Any


@dataclass
class _Request:
    structured_output_request: _Structured | None

    @property
    def use_structured_output(self) -> bool:
        return self.structured_output_request is not None


def test_plugin_validate_tokens_and_proposer() -> None:
    from ananke_server import vllm_plugin

    assert vllm_plugin.supported()
    vllm_plugin.register()
    vllm_plugin.register()  # idempotent
    from vllm.v1.structured_output import StructuredOutputManager

    @dataclass
    class _Spec:
        model: str
        num_speculative_tokens: int = 3

    @dataclass
    class _Config:
        speculative_config: _Spec | None

    manager = StructuredOutputManager.__new__(StructuredOutputManager)
    manager.vllm_config = _Config(_Spec(vllm_plugin.PROPOSER_FQCN))
    grammar = vllm_plugin._adapter_class()(_grammar(_lark('start: "abcdef"')))
    ours = _Request(_Structured(grammar))
    assert manager.validate_tokens(ours, [0, 0, 0]) == _ids("abc")
    assert manager.validate_tokens(ours, [0, -1, -1]) == _ids("a")
    # An unconstrained request gets no drafts from our placeholders.
    assert manager.validate_tokens(_Request(None), [0, 0, 0]) == []
    proposer = vllm_plugin.ForcedTokenProposer(manager.vllm_config)
    assert proposer.propose([[5], [], [6, 7]]) == [[0, 0, 0], [], [0, 0, 0]]


def test_plugin_expands_draft_temperatures_on_cpu() -> None:
    """vLLM 0.32's CPU kernel left per-draft temperatures uninitialised (a float
    output written through an int64 copy); after register() the rejection
    sampler's own expansion gives each draft position its request's value."""
    import torch
    from ananke_server import vllm_plugin

    vllm_plugin.register()
    from vllm.v1.sample import rejection_sampler

    temperature = torch.tensor([0.0, 0.0, 0.7, 0.0, 1.3], dtype=torch.float32)
    cumulative = torch.tensor([0, 2, 5, 5, 6], dtype=torch.int32)
    for _ in range(20):  # uninitialised memory differs between calls
        expanded = rejection_sampler.expand_batch_to_tokens(
            temperature, cumulative, 6, replace_from=0, replace_to=1
        )
        assert expanded.tolist() == pytest.approx([1.0, 1.0, 0.7, 0.7, 0.7, 1.3])
    top_k = rejection_sampler.expand_batch_to_tokens(
        torch.tensor([5, 0, 9]), torch.tensor([1, 1, 3]), 3
    )
    assert top_k.tolist() == [5, 9, 9]


def test_plugin_allows_logit_bias_with_our_proposer_only() -> None:
    """vLLM refuses logit_bias under speculative decoding; with our proposer
    (every draft a forced token) the plugin lets it through, min_p stays refused."""
    from ananke_server import vllm_plugin

    vllm_plugin.register()
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams

    @dataclass
    class _Spec:
        model: str

    ours, other = _Spec(vllm_plugin.PROPOSER_FQCN), _Spec("some.other.Proposer")
    biased = SamplingParams(logit_bias={5: 2.0})
    biased._validate_spec_decode(ours)
    with pytest.raises(VLLMValidationError, match="logit_bias"):
        biased._validate_spec_decode(other)
    with pytest.raises(VLLMValidationError, match="min_p"):
        SamplingParams(logit_bias={5: 2.0}, min_p=0.1)._validate_spec_decode(ours)
    SamplingParams()._validate_spec_decode(ours)
