"""Completion search and steering (ananke_server.steering) with real llguidance
matchers and the default model's real tokenizer (SmolLM2, 49,152 tokens), no
engine. A scripted "model" that always takes the longest allowed token stands
in for one that runs on inside strings and numbers: without steering it runs
out of budget or into dead ends, with steering the output completes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict

import numpy as np
import pytest
from ananke_server.constraints.gbnf import gbnf_to_lark
from ananke_server.steering import (
    Guide,
    Outcome,
    Product,
    SteerConfig,
    byte_tokens,
    has_token,
    may_have_steered,
    shortest_completion,
)
from ananke_server.steering.product import ByteTokens, regex_of_grammar
from default_tokenizer import default_llg_tokenizer
from llguidance import LLMatcher, LLTokenizer


@pytest.fixture(scope="module")
def tok() -> LLTokenizer:
    return default_llg_tokenizer()


@pytest.fixture(scope="module")
def table(tok: LLTokenizer) -> ByteTokens:
    return byte_tokens(tok)


def js(schema: object) -> str:
    return LLMatcher.grammar_from_json_schema(
        json.dumps(schema), overrides={"whitespace_flexible": False}
    )


def rx(pattern: str) -> str:
    return LLMatcher.grammar_from_lark("%llguidance {}\nstart: " + _terminal(pattern))


def _terminal(pattern: str) -> str:
    lark = json.loads(LLMatcher.grammar_from_regex(pattern))["grammars"][0]["lark_grammar"]
    return str(lark).removeprefix("start: ")


def lark(text: str) -> str:
    return LLMatcher.grammar_from_lark(text)


def product(tok: LLTokenizer, table: ByteTokens, *grammars: str, prefix: str = "") -> Product:
    matchers = [LLMatcher(tok, g, log_level=0) for g in grammars]
    assert not any(m.is_error() for m in matchers), [m.get_error() for m in matchers]
    state = Product(matchers, table.words, tokenizer=tok, grammars=grammars)
    ids = tok.tokenize_str(prefix)
    assert state.consume_all(ids) == len(ids), prefix
    return state


NAME_N = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "n": {"type": "integer"}},
    "required": ["name", "n"],
}
CLASS_RE = r"class \w+\(.*\):\s+def __init__\(self.*\):"
FUNCTION_LARK = r"""
start: function
function: "def " IDENT "(" params? "):" NL body
params: IDENT ("," " "? IDENT)*
body: ("    " stmt NL)+
stmt: "return " expr | "pass"
expr: IDENT | NUMBER | expr " + " expr
IDENT: /[a-zA-Z_][a-zA-Z0-9_]*/
NUMBER: /[0-9]+/
NL: "\n"
"""
FUNCTION_GBNF = r"""
root ::= "def " ident "(" ident? "):\n    return " ident "\n"
ident ::= [a-z_] [a-z0-9_]*
"""
SEQUENCE_LARK = '%llguidance {}\nstart: "Answer: " spec "\\n"\nspec: %json ' + json.dumps(
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
)

CASES = [
    ("json from the start", [js(NAME_N)], ""),
    ("json inside a string", [js(NAME_N)], '{"name":"Ma'),
    ("json inside a number", [js(NAME_N)], '{"name":"Mara","n":1000'),
    ("nested arrays", [js({"type": "array", "items": {"type": "array"}})], "[[1,[2,"),
    ("regex inside .*", [rx(CLASS_RE)], "class Foo(Bar, baz"),
    ("regex from the start", [rx(CLASS_RE)], ""),
    ("lark function", [lark(FUNCTION_LARK)], "def compute_total(a, b"),
    ("lark body", [lark(FUNCTION_LARK)], "def f(a):\n    return a + b + c"),
    ("gbnf function", [lark(gbnf_to_lark(FUNCTION_GBNF).lark)], "def run(x"),
    ("choice", [lark('start: "alpha" | "beta" | "gamma"')], "be"),
    ("json inside lark", [lark(SEQUENCE_LARK)], 'Answer: {"ok":t'),
    (
        "json and a length regex",
        [js({"type": "object", "properties": {"module": {"type": "string"}}}), rx("(?s:.{0,40})")],
        '{"module":"a_rather_long_module_name_',
    ),
    ("lark and a length regex", [lark(FUNCTION_LARK), rx("(?s:.{0,48})")], ""),
    ("lark and a length regex, later", [lark(FUNCTION_LARK), rx("(?s:.{0,48})")], "def fun(a, b"),
    (
        "json and a narrow regex",
        [
            js({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}),
            rx(r'\{"a":"[xy]{5}"\}'),
        ],
        "",
    ),
]


@pytest.mark.parametrize(("name", "grammars", "prefix"), CASES, ids=[c[0] for c in CASES])
def test_completion_is_valid_short_and_leaves_the_state(
    tok: LLTokenizer, table: ByteTokens, name: str, grammars: list[str], prefix: str
) -> None:
    state = product(tok, table, *grammars, prefix=prefix)
    before = state.mask().copy()
    search = shortest_completion(state, table)
    assert search.outcome is Outcome.FOUND, (name, search)
    assert np.array_equal(state.mask(), before), "the search must leave the state as it was"
    # Every token of the path is in the product's mask when it is taken (the
    # engine applies the masks too), and the product accepts after it.
    for token in search.tokens:
        assert has_token(state.mask(), token), (name, tok.decode_bytes(list(search.tokens)))
        assert state.consume(token)
    assert state.accepting(), name
    assert len(search.tokens) <= 24, (name, tok.decode_bytes(list(search.tokens)))


def test_exact_search_is_no_longer_than_the_fast_one(tok: LLTokenizer, table: ByteTokens) -> None:
    for _, grammars, prefix in CASES:
        fast = shortest_completion(product(tok, table, *grammars, prefix=prefix), table)
        exact = shortest_completion(
            product(tok, table, *grammars, prefix=prefix), table, exact=True, max_nodes=2000
        )
        assert exact.found
        assert len(exact.tokens) <= len(fast.tokens)


COUNTED = [
    (
        "json string minLength",
        js(
            {
                "type": "object",
                "properties": {
                    "body": {"type": "string", "minLength": 400},
                    "n": {"type": "integer"},
                },
                "required": ["body", "n"],
            }
        ),
        '{"body":"def f(x):',
    ),
    (
        "json array of long strings",
        js({"type": "array", "items": {"type": "string", "minLength": 120}, "minItems": 2}),
        "[",
    ),
    ("regex counted letters", rx("id=[a-z]{300,}!"), "id=abc"),
]


@pytest.mark.parametrize(("name", "grammar", "prefix"), COUNTED, ids=[c[0] for c in COUNTED])
def test_completion_through_a_length_that_masks_do_not_show(
    tok: LLTokenizer, table: ByteTokens, name: str, grammar: str, prefix: str
) -> None:
    # Every character of a counted run leaves the masks as they were, and the
    # minimum lies deeper than a byte-by-byte search reaches in its budget:
    # found with runs of filler tokens, valid, and short in tokens.
    state = product(tok, table, grammar, prefix=prefix)
    search = shortest_completion(state, table, max_nodes=400)
    assert search.outcome is Outcome.FOUND, (name, search)
    for token in search.tokens:
        assert has_token(state.mask(), token), name
        assert state.consume(token)
    assert state.accepting(), name
    data = tok.decode_bytes(list(search.tokens))
    assert len(search.tokens) * 4 <= len(data), (name, len(search.tokens), data[:80])


def test_filler_runs_only_where_bytes_cannot_progress(tok: LLTokenizer, table: ByteTokens) -> None:
    # A content byte changes the masks here, so the shortest in bytes stays the
    # answer (a filler run would take the longer "yes").
    search = shortest_completion(product(tok, table, rx("(yes|no)")), table)
    assert tok.decode_bytes(list(search.tokens)) == b"no"


def test_longest_filler_is_the_longest_allowed_content_token(
    tok: LLTokenizer, table: ByteTokens
) -> None:
    state = product(tok, table, rx("[a-z]{20,}"))
    token = table.longest_filler(state.mask())
    assert token is not None
    text = tok.decode_bytes([token])
    assert text.isalpha()
    assert text.islower()
    assert len(text) > 4
    digits = product(tok, table, rx("[0-9]{20,}"))
    found = table.longest_filler(digits.mask())
    assert found is None or tok.decode_bytes([found]).isdigit()
    assert table.longest_filler(product(tok, table, rx(r"\{\}")).mask()) is None


def test_empty_intersection_is_a_proven_dead_end(tok: LLTokenizer, table: ByteTokens) -> None:
    state = product(tok, table, rx("[0-9]+"), rx("[a-z]+"))
    assert shortest_completion(state, table).outcome is Outcome.NO_TOKEN


def test_regex_of_grammar_reads_back_the_compilers_lowering() -> None:
    assert regex_of_grammar(rx(CLASS_RE)) == CLASS_RE
    assert regex_of_grammar(rx("a/b")) == "a/b"
    assert regex_of_grammar(LLMatcher.grammar_from_regex("[0-9]+")) == "[0-9]+"
    assert regex_of_grammar(lark(FUNCTION_LARK)) is None
    assert regex_of_grammar(js(NAME_N)) is None


# -- the scripted model ---------------------------------------------------------


def longest_first(tok: LLTokenizer) -> Callable[[np.ndarray], Iterator[int]]:
    """Candidates in the order a model that never wants to stop would sample
    them: longest token first, EOS last."""
    lengths = np.array(
        [
            0 if tok.is_special_token(t) else len(tok.decode_bytes([t]))
            for t in range(tok.vocab_size)
        ]
    )
    order = np.argsort(-lengths, kind="stable")

    def candidates(mask: np.ndarray) -> Iterator[int]:
        bits = np.unpackbits(mask.view(np.uint8), bitorder="little")[: tok.vocab_size]
        allowed = order[bits[order] == 1]
        yield from (int(t) for t in allowed)

    return candidates


def generate(
    tok: LLTokenizer,
    table: ByteTokens,
    grammars: Sequence[str],
    max_tokens: int,
    *,
    config: SteerConfig | None,
    verify: bool = False,
    model: Callable[[np.ndarray], Iterator[int]] | None = None,
) -> tuple[list[int], str, Guide | None]:
    """Runs the scripted model (default: longest_first); (tokens, how it ended, guide)."""
    state = product(tok, table, *grammars)
    eos = tok.eos_token
    model = model or longest_first(tok)
    guide = None
    if config is not None:
        guide = Guide(
            state, table, max_tokens=max_tokens, eos_ids=[eos], config=config, verify=verify
        )
    out: list[int] = []
    while len(out) < max_tokens:
        if guide is not None:
            mask = guide.mask()
            if mask is None:
                return out, "dead_end", guide
            token = guide.choose(model(mask))
            if token is None:
                return out, "dead_end", guide
            guide.advance(token)
        else:
            mask = state.mask()
            if not mask.any():
                return out, "dead_end", guide
            token = next(model(mask))
            state.consume(token) if token != eos else None
        out.append(token)
        if token == eos:
            return out, "eos", guide
    return out, "length", guide


def _checked(tok: LLTokenizer, grammars: Sequence[str], tokens: list[int]) -> bool:
    body = [t for t in tokens if t != tok.eos_token]
    for grammar in grammars:
        matcher = LLMatcher(tok, grammar, log_level=0)
        if matcher.try_consume_tokens(body) != len(body) or not matcher.is_accepting():
            return False
    return True


MODULE = {"type": "object", "properties": {"module": {"type": "string"}}, "required": ["module"]}

BUDGET_CASES = [
    ("json", [js(NAME_N)]),
    ("regex", [rx(CLASS_RE)]),
    ("lark", [lark(FUNCTION_LARK)]),
    ("gbnf", [lark(gbnf_to_lark(FUNCTION_GBNF).lark)]),
    ("sequence", [lark(SEQUENCE_LARK)]),
    ("json and a length regex", [js(NAME_N), rx("(?s:.{0,60})")]),
]


@pytest.mark.parametrize(("name", "grammars"), BUDGET_CASES, ids=[c[0] for c in BUDGET_CASES])
def test_budget_steering_completes_within_max_tokens(
    tok: LLTokenizer, table: ByteTokens, name: str, grammars: list[str]
) -> None:
    shortest = shortest_completion(product(tok, table, *grammars), table, exact=True)
    assert shortest.found
    max_tokens = int(1.5 * (len(shortest.tokens) + 1)) + 1
    # Today: the model runs on and is cut by max_tokens (or dead-ends).
    tokens, ended, _ = generate(tok, table, grammars, max_tokens, config=None)
    assert ended != "eos" or not _checked(tok, grammars, tokens), name
    tokens, ended, guide = generate(
        tok, table, grammars, max_tokens, config=SteerConfig(), verify=len(grammars) > 1
    )
    assert ended == "eos", (name, ended, tok.decode_str(tokens))
    assert _checked(tok, grammars, tokens), tok.decode_str(tokens)
    assert guide is not None
    assert guide.steered_from is not None
    assert 0 <= guide.steered_from < len(tokens)
    # The main process replays steering only for outputs where it can have begun.
    assert may_have_steered(grammars, len(tokens), max_tokens=max_tokens, config=SteerConfig())


RECORDS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "properties": {
            "kind": {"enum": ["function", "class", "variable"]},
            "line": {"type": "integer", "minimum": 1, "maximum": 99},
            "exported": {"type": "boolean"},
            "doc": {"type": "string", "maxLength": 12},
        },
        "required": ["kind", "line", "exported", "doc"],
        "additionalProperties": False,
    },
}


def test_budget_steering_keeps_room_for_one_more_array_item(
    tok: LLTokenizer, table: ByteTokens
) -> None:
    # A model that never closes the array: after each record it opens another,
    # and one `,` pushes the completion ~20 tokens further than the fixed margin
    # of 4. Once such a jump is seen the guide keeps that much in hand, so the
    # output closes at every budget instead of being cut by max_tokens.
    longest = longest_first(tok)
    closing = np.array([b"]" in tok.decode_bytes([t]) for t in range(tok.vocab_size)])

    def never_close(mask: np.ndarray) -> Iterator[int]:
        allowed = list(longest(mask))
        yield from (t for t in allowed if not closing[t])
        yield from (t for t in allowed if closing[t])

    grammars = [js(RECORDS)]
    for max_tokens in range(40, 161, 6):
        tokens, ended, guide = generate(
            tok, table, grammars, max_tokens, config=SteerConfig(), model=never_close
        )
        assert ended == "eos", (max_tokens, tok.decode_str(tokens)[-80:])
        assert _checked(tok, grammars, tokens)
        assert tok.decode_str(tokens).count('{"kind"') >= 2, max_tokens
        assert guide is not None
        assert may_have_steered(grammars, len(tokens), max_tokens=max_tokens, config=SteerConfig())


def test_replay_is_skipped_only_where_steering_cannot_have_begun() -> None:
    json_only = [js(NAME_N)]
    config = SteerConfig()
    assert not may_have_steered(json_only, 20, max_tokens=60, config=config)
    assert may_have_steered(
        json_only, 60 - config.widest_margin(60) - 1, max_tokens=60, config=config
    )
    assert not may_have_steered(
        json_only, 60 - config.widest_margin(60) - 2, max_tokens=60, config=config
    )
    # A length-bounded regex part can start steering anywhere (its room runs out).
    assert may_have_steered([*json_only, rx("(?s:.{0,40})")], 20, max_tokens=200, config=config)
    assert not may_have_steered(json_only, 59, max_tokens=60, config=SteerConfig(budget=False))


def test_steering_off_behaves_as_plain_masking(tok: LLTokenizer, table: ByteTokens) -> None:
    grammars = [js(NAME_N)]
    plain, ended, _ = generate(tok, table, grammars, 20, config=None)
    off, ended_off, guide = generate(tok, table, grammars, 20, config=SteerConfig(budget=False))
    assert (off, ended_off) == (plain, ended)
    assert guide is not None
    assert guide.steered_from is None


def test_dead_end_search_finishes_a_satisfiable_intersection(
    tok: LLTokenizer, table: ByteTokens
) -> None:
    grammars = [js(MODULE), rx("(?s:.{0,40})")]
    # Greedy AND masking walks into a prefix the two cannot both finish.
    _, ended, _ = generate(tok, table, grammars, 200, config=None)
    assert ended == "dead_end"
    tokens, ended, _guide = generate(
        tok, table, grammars, 200, config=SteerConfig(budget=False), verify=True
    )
    assert ended == "eos"
    assert _checked(tok, grammars, tokens), tok.decode_str(tokens)


def test_budget_guide_keeps_room_for_the_completion_under_a_length_regex(
    tok: LLTokenizer, table: ByteTokens
) -> None:
    """The engine's guide (no candidate verification: it only masks) caps the
    next token's length near the bound of a length regex, so greedy masking no
    longer walks into the false dead end of the AND; the output is complete."""
    grammars = [js(MODULE), rx("(?s:.{0,40})")]
    tokens, ended, guide = generate(tok, table, grammars, 200, config=SteerConfig())
    assert ended == "eos", tok.decode_str(tokens)
    assert _checked(tok, grammars, tokens), tok.decode_str(tokens)
    text = tok.decode_str([t for t in tokens if t != tok.eos_token])
    assert len(json.loads(text)["module"]) > 0  # the model still wrote something
    assert guide is not None
    assert guide.steered_from is not None


def test_guide_without_verification_reaches_the_dead_end(
    tok: LLTokenizer, table: ByteTokens
) -> None:
    grammars = [js(MODULE), rx("(?s:.{0,40})")]
    _, ended, guide = generate(tok, table, grammars, 200, config=SteerConfig(budget=False))
    assert ended == "dead_end"
    assert guide is not None
    assert guide.dead_end


# -- the engine's grammar object (RequestGrammar.restrict, no vLLM) --------------


def _run_request_grammar(
    tok: LLTokenizer, grammars: list[str], max_tokens: int, *, steer: bool
) -> list[int]:
    """Steps a RequestGrammar as vLLM's structured-output path does (fill the
    row, sample, accept), with a model that takes the longest allowed token."""
    from ananke_server.request_grammar import RequestGrammar, RequestSpec

    spec = RequestSpec(
        grammars=tuple(grammars),
        eos=(tok.eos_token,),
        steer=asdict(SteerConfig()) if steer else None,
    )
    grammar = RequestGrammar.from_spec(spec, tok, max_tokens=max_tokens)
    model = longest_first(tok)
    rows = np.zeros((1, (tok.vocab_size + 31) // 32), dtype=np.int32)
    out: list[int] = []
    while len(out) < max_tokens and not grammar.is_terminated():
        grammar.fill_bitmask(rows, 0)
        token = next(model(rows[0]))
        assert grammar.accept_tokens([token])
        out.append(token)
    return out


def test_request_grammar_steers_to_a_completion(tok: LLTokenizer) -> None:
    grammars = [js(NAME_N)]
    plain = _run_request_grammar(tok, grammars, 16, steer=False)
    assert not _checked(tok, grammars, plain), tok.decode_str(plain)
    steered = _run_request_grammar(tok, grammars, 16, steer=True)
    assert steered[-1] == tok.eos_token, tok.decode_str(steered)
    assert _checked(tok, grammars, steered)


def test_request_grammar_steering_survives_draft_rollbacks(tok: LLTokenizer) -> None:
    from ananke_server.request_grammar import RequestGrammar, RequestSpec

    spec = RequestSpec(grammars=(js(NAME_N),), eos=(tok.eos_token,), steer=asdict(SteerConfig()))
    grammar = RequestGrammar.from_spec(spec, tok, max_tokens=16)
    model = longest_first(tok)
    rows = np.zeros((2, (tok.vocab_size + 31) // 32), dtype=np.int32)
    out: list[int] = []
    while len(out) < 16 and not grammar.is_terminated():
        grammar.fill_bitmask(rows, 0)
        token = next(model(rows[0]))
        assert grammar.accept_tokens([token])
        out.append(token)
        if not grammar.is_terminated():
            # vLLM fills a draft position by accepting a draft, then rolls it back.
            grammar.fill_bitmask(rows, 1)
            draft = next(model(rows[1]))
            assert grammar.accept_tokens([draft])
            grammar.fill_bitmask(rows, 1)
            grammar.rollback(1)
    assert out[-1] == tok.eos_token, tok.decode_str(out)
    assert _checked(tok, [js(NAME_N)], out)


def test_steering_plan_is_fast_forwarded(tok: LLTokenizer) -> None:
    """Once steering closes the output, its plan goes out as drafts (the mask
    allows the plan's next token alone), verified like any forced run."""
    from ananke_server.request_grammar import RequestGrammar, RequestSpec

    spec = RequestSpec(grammars=(js(NAME_N),), eos=(tok.eos_token,), steer=asdict(SteerConfig()))
    grammar = RequestGrammar.from_spec(spec, tok, max_tokens=24)
    model = longest_first(tok)
    rows = np.zeros((1, (tok.vocab_size + 31) // 32), dtype=np.int32)
    out: list[int] = []
    steered_drafts: list[list[int]] = []
    while len(out) < 24 and not grammar.is_terminated():
        grammar.fill_bitmask(rows, 0)
        token = next(model(rows[0]))
        assert grammar.accept_tokens([token])
        out.append(token)
        if grammar.is_terminated():
            break
        drafts = grammar.forced_tokens(8)
        guide = grammar.guide
        assert guide is not None
        if guide.steering and guide.plan:
            assert drafts == guide.plan[:8]
            steered_drafts.append(drafts)
        for draft in drafts:  # verified as vLLM does: the mask, then the token
            grammar.fill_bitmask(rows, 0)
            assert has_token(rows[0], draft)
            assert grammar.accept_tokens([draft])
            out.append(draft)
    assert out[-1] == tok.eos_token, tok.decode_str(out)
    assert len(out) <= 24
    assert _checked(tok, [js(NAME_N)], out)
    assert steered_drafts, "steering began and its plan was drafted"
