"""The GBNF/EBNF converter (constraints.gbnf): the variants callers write
parse and match what they should, a grammar without `root` starts at its first
rule with a warning (ValidateConstraints shows it), and syntax errors carry a
line and column."""

from __future__ import annotations

import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import provenance_pb2
from ananke_server.constraints import ConstraintCompiler
from ananke_server.constraints.gbnf import GbnfError, gbnf_to_lark
from ananke_server.errors import ServiceError
from llguidance import LLMatcher, LLTokenizer

TOKENIZER = LLTokenizer("byte")

JSON_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::=
  "{" ws (
    string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws
array  ::=
  "[" ws (
    value
    ("," ws value)*
  )? "]" ws
string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
  )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ws
ws ::= | " " | "\n" [ \t]{0,20}
"""

CASES = [
    # (name, grammar, matching texts, non-matching texts)
    (
        "no root: first rule",
        'function ::= "def " identifier "():"\nidentifier ::= [a-zA-Z_] [a-zA-Z0-9_]*\n',
        ["def f():", "def _x9():"],
        ["def 9():", "identifier"],
    ),
    (
        "alternatives on later lines",
        'root ::= item\n    | item "," root\nitem ::= [0-9]+\n',
        ["1", "1,22,3"],
        ["1,", ",1"],
    ),
    ("postfix operators", 'root ::= "a"+ "b"? "c"*', ["a", "aab", "abccc"], ["", "b"]),
    ("groups", 'root ::= ("x" | "y")+ ("-" "z")?', ["xyx", "x-z"], ["-z", "x-"]),
    ("repetition counts", 'root ::= [a-c]{2,3} "!"{1,}', ["ab!", "abc!!"], ["a!", "abca!"]),
    ("string escapes", r'root ::= "say \"hi\"\n" "\t" "\x41\u00e9"', ['say "hi"\n\tAé'], ["say"]),
    (
        "class escapes and negation",
        r'root ::= [^"\\] [\x41-\x43] [\-\]]',
        ["xB-", "yA]"],
        ['"A-', "xD-"],
    ),
    (
        "single quotes, =, comments and ;",
        "# a comment\nroot = 'a' b ; # trailing\nb = 'b'\n",
        ["ab"],
        ["a"],
    ),
    (
        "angle-bracket and dashed names",
        '<root> ::= <my-item> my-item\n<my-item> ::= "z"',
        ["zz"],
        ["z"],
    ),
    ("any character", 'root ::= "<" . ">"', ["<x>", "<\n>"], ["<>"]),
    ("llama.cpp json", JSON_GBNF, ['{"a": [1, -2.5, "x\\n"], "b": null}'], ['{"a" 1}']),
]


@pytest.mark.parametrize(("name", "grammar", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_variants_parse_and_match(name: str, grammar: str, good: list[str], bad: list[str]) -> None:
    lark = LLMatcher.grammar_from_lark(gbnf_to_lark(grammar).lark)
    is_error, messages = LLMatcher.validate_grammar_with_warnings(lark, TOKENIZER)
    assert not is_error, messages
    for text, expected in [(t, True) for t in good] + [(t, False) for t in bad]:
        matcher = LLMatcher(TOKENIZER, lark, log_level=0)
        tokens = TOKENIZER.tokenize_str(text)
        ok = matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()
        assert ok is expected, (name, text)


def test_first_rule_starts_with_a_warning() -> None:
    converted = gbnf_to_lark('function ::= "def" name\nname ::= [a-z]+')
    assert converted.start == "function"
    assert "no 'root' rule" in converted.warnings[0]
    assert gbnf_to_lark('name ::= [a-z]+\nroot ::= "x" name').start == "root"
    assert gbnf_to_lark('root ::= "x"').warnings == ()


@pytest.mark.parametrize(
    ("grammar", "message", "line", "column"),
    [
        ('root ::= "def" name ::=', "empty definition", 1, 16),
        ('root ::= "a"\n  | (', "unclosed", 2, 5),
        ('root ::= "a" other', "Rule 'other' is not defined", 1, 14),
        ('root ::= "abc', "unterminated string", 1, 10),
        ("root ::= [a-", "unterminated character class", 1, 10),
        ("root ::= [z-a]", "backwards", 1, 10),
        ('root ::= "a" )', "unbalanced", 1, 14),
        ('root ::= * "a"', "follows nothing", 1, 10),
        ('"a" ::= "b"', "expected a rule", 1, 1),
        ('root ::= "\\u12"', "4 hex digits", 1, 11),
        ("root ::= @", "unexpected character", 1, 10),
    ],
)
def test_syntax_errors_have_positions(grammar: str, message: str, line: int, column: int) -> None:
    with pytest.raises(GbnfError) as caught:
        gbnf_to_lark(grammar)
    assert message in str(caught.value)
    assert (caught.value.line, caught.value.column) == (line, column)


def _compiler() -> ConstraintCompiler:
    return ConstraintCompiler(
        TOKENIZER,
        vocab_size=TOKENIZER.vocab_size,
        tokenizer_id="byte",
        max_constraint_bytes=65536,
        cache_size=8,
        timeout_s=10.0,
        workers=1,
    )


def _gbnf(text: str) -> c.ConstraintIR:
    return c.ConstraintIR(grammar=c.GrammarConstraint(syntax=c.GRAMMAR_SYNTAX_GBNF, text=text))


async def test_validate_constraints_warns_and_compile_accepts() -> None:
    compiler = _compiler()
    try:
        grammar = 'function ::= "def " name "():"\nname ::= [a-z]+'
        (verdict,) = await compiler.validate([_gbnf(grammar)])
        assert verdict.error is None
        assert any("first rule 'function'" in w for w in verdict.warnings)
        compiled, _ = await compiler.compile([_gbnf(grammar)], "request.constraints")
        assert compiled.warnings
        tokens = TOKENIZER.tokenize_str("def run():")
        verdict_, _ = compiler.check_output(compiled, tokens, (TOKENIZER.eos_token,))
        assert verdict_ == provenance_pb2.CHECK_VERDICT_SATISFIED
    finally:
        compiler.close()


async def test_bad_gbnf_is_grammar_invalid_with_position() -> None:
    compiler = _compiler()
    try:
        with pytest.raises(ServiceError) as caught:
            await compiler.compile([_gbnf('root ::= "a"\nitem ::= (')], "request.constraints")
        assert caught.value.reason == "GRAMMAR_INVALID"
        assert caught.value.metadata["line"] == "2"
        assert caught.value.metadata["column"] == "10"
    finally:
        compiler.close()
