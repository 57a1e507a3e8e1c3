"""The engine's dead-end search at sampling time (ananke_server.dead_end_guard)
with real llguidance matchers and the default model's real tokenizer, no
engine: a scheduler-side RequestGrammar fills each row's mask as vLLM does, a
scripted model scores the row, the guard (the worker-side replica) narrows it,
and the top token is taken. The scripted model wants to write a name only one
of two grammars has, whose prefix both allow: masking alone walks into the dead
end, the guard steers to a name both have."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
from ananke_server.dead_end_guard import DeadEndGuard, Sampling, needs_guard
from ananke_server.request_grammar import RequestGrammar, RequestSpec
from ananke_server.steering import SteerConfig
from default_tokenizer import default_llg_tokenizer
from llguidance import LLMatcher, LLTokenizer

# A narrow common language: only `save_config` is in both; `load_config` and
# `parse_args` are prefixes both allow, whose endings the two grammars part on.
OURS = 'start: "def " ("load_config" | "save_config" | "parse_args") "(path):"'
THEIRS = 'start: "def " ("load_config_file" | "save_config" | "parse_args_list") "(path):"'
WANTED = "def load_config(path):"  # what the scripted model would write
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def tok() -> LLTokenizer:
    return default_llg_tokenizer()


def _spec(tok: LLTokenizer, *grammars: str, retries: int = 8) -> RequestSpec:
    return RequestSpec(
        grammars=tuple(LLMatcher.grammar_from_lark(g) for g in grammars),
        eos=(tok.eos_token,),
        steer=asdict(SteerConfig(retries=retries)),
    )


_PIECES: list[list[bytes]] = []


def _scores(tok: LLTokenizer, output: list[int]) -> torch.Tensor:
    """The scripted model: tokens that continue WANTED score by their length;
    every other token a little by its length (so the order is total)."""
    if not _PIECES:
        _PIECES.append([tok.decode_bytes([t]) for t in range(tok.vocab_size)])
    done = tok.decode_bytes(output)
    left = WANTED.encode()[len(done) :] if WANTED.encode().startswith(done) else None
    scores = torch.tensor([len(p) / 100 for p in _PIECES[0]])
    if left:
        for token, piece in enumerate(_PIECES[0]):
            if piece and left.startswith(piece):
                scores[token] += 100.0
    scores[tok.eos_token] = 50.0 if left == b"" else -1.0
    return scores


def _masked(scores: torch.Tensor, grammar: RequestGrammar) -> torch.Tensor:
    rows = np.zeros((1, grammar.words), dtype=np.int32)
    grammar.fill_bitmask(rows, 0)
    bits = np.unpackbits(rows[0].view(np.uint8), bitorder="little")[: scores.shape[0]]
    return torch.where(torch.from_numpy(bits.astype(bool)), scores, float("-inf"))


def _run(
    tok: LLTokenizer, spec: RequestSpec, *, guard: bool, drafts: int = 0, temperature: float = 0.0
) -> tuple[str, RequestGrammar, DeadEndGuard | None]:
    """Steps scheduler and guard as vLLM does; with drafts, each step first takes
    the forced run (the row is sampled after it, the worker's output lags)."""
    scheduler = RequestGrammar.from_spec(spec, tok, max_tokens=MAX_TOKENS)
    output: list[int] = []
    replica = None
    if guard:
        sampling = Sampling(temperature=temperature, top_k=0, top_p=1.0, seed=7)
        replica = DeadEndGuard(
            spec, tok, max_tokens=MAX_TOKENS, output=output, drafts=drafts, sampling=sampling
        )
    while not scheduler.is_terminated() and len(output) < MAX_TOKENS:
        forced = scheduler.forced_tokens(drafts) if drafts else []
        assert scheduler.accept_tokens(forced)
        row = _masked(_scores(tok, output + forced), scheduler)
        if replica is not None:
            replica.narrow(row)
        if temperature > 0:
            token = int(torch.multinomial(torch.softmax(row / temperature, -1), 1))
        else:
            token = int(torch.argmax(row))
        assert scheduler.accept_tokens([token]), "the guard chose a token the mask refuses"
        output += [*forced, token]
    text = tok.decode_str([t for t in output if t != tok.eos_token])
    return text, scheduler, replica


def _both_accept(tok: LLTokenizer, text: str) -> bool:
    for grammar in (OURS, THEIRS):
        matcher = LLMatcher(tok, LLMatcher.grammar_from_lark(grammar), log_level=0)
        ids = tok.tokenize_str(text)
        if matcher.try_consume_tokens(ids) != len(ids) or not matcher.is_accepting():
            return False
    return True


def test_masking_alone_walks_into_the_dead_end(tok: LLTokenizer) -> None:
    text, scheduler, _ = _run(tok, _spec(tok, OURS, THEIRS), guard=False)
    assert text == "def load_config"
    assert scheduler.dead_end


@pytest.mark.parametrize("drafts", [0, 4], ids=["one token a step", "fast-forward"])
def test_guard_finishes_the_narrow_intersection(tok: LLTokenizer, drafts: int) -> None:
    text, scheduler, replica = _run(tok, _spec(tok, OURS, THEIRS), guard=True, drafts=drafts)
    assert text == "def save_config(path):"
    assert not scheduler.dead_end
    assert _both_accept(tok, text)
    assert replica is not None
    assert replica.chosen >= 1
    assert replica.skipped == 0


def test_sampled_outputs_are_all_complete(tok: LLTokenizer) -> None:
    for _ in range(3):
        text, scheduler, _ = _run(tok, _spec(tok, OURS, THEIRS), guard=True, temperature=1.0)
        assert not scheduler.dead_end, text
        assert _both_accept(tok, text), text


def test_a_replica_out_of_step_leaves_the_row(tok: LLTokenizer) -> None:
    spec = _spec(tok, OURS, THEIRS)
    output = tok.tokenize_str("class")  # not what the scheduler took
    sampling = Sampling(temperature=0.0, top_k=0, top_p=1.0, seed=None)
    replica = DeadEndGuard(
        spec, tok, max_tokens=MAX_TOKENS, output=output, drafts=0, sampling=sampling
    )
    row = torch.zeros(tok.vocab_size)
    replica.narrow(row)
    assert replica.broken
    assert bool(torch.isfinite(row).all())


def test_which_requests_are_guarded(tok: LLTokenizer) -> None:
    assert needs_guard(_spec(tok, OURS, THEIRS))
    assert not needs_guard(_spec(tok, OURS))
    assert not needs_guard(_spec(tok, OURS, THEIRS, retries=0))
    masked = RequestSpec(
        grammars=_spec(tok, OURS).grammars, forbidden=frozenset({5}), steer=asdict(SteerConfig())
    )
    assert needs_guard(masked)
