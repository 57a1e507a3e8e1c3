"""Budget-aware completion and dead-end search end to end, real engine and
default model over real gRPC.

- A table per grammar-backed kind (JSON schema, regex, Lark, GBNF without a
  root rule, a sequence composite) and intersections: with max_tokens at 1.5x
  the shortest completion (learnt from the server's own
  MAX_TOKENS_BELOW_CONSTRAINT_MINIMUM answer), >= 99% of sampled outputs are
  complete and valid (finish CONSTRAINT_COMPLETE, independent check
  SATISFIED); the rate of a server with steering off is printed beside it.
- A satisfiable intersection that greedy masking dead-ends on (a JSON schema
  and a length regex, max_tokens far away): with steering every output is
  complete and valid, none CONSTRAINT_UNSATISFIABLE (the guide caps the next
  token's length near the regex's bound); the rate with steering off is printed.
- Two grammars with a narrow common language (Lark and GBNF without a root
  rule, one name in common, a prompt that asks for another): with the dead-end
  guard (dead_end_guard, at sampling time) every output is complete and valid;
  the server without it (`--steer-dead-end-retries 0`) is printed beside it.
- Truly empty intersections fail fast with CONSTRAINT_UNSATISFIABLE (cause
  "proved" or "exhausted")."""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import generation_pb2, inference_service_pb2, provenance_pb2
from conftest import LiveServer, start_server, stop_server
from google.rpc import error_details_pb2
from grpc_status import rpc_status

pytestmark = pytest.mark.engine

COMPLETE = generation_pb2.FINISH_REASON_CONSTRAINT_COMPLETE
SATISFIED = provenance_pb2.CHECK_VERDICT_SATISFIED
SAMPLES = 12  # per kind and server; 12/12 is the only rate >= 99%


@pytest.fixture(scope="module")
def plain_server() -> Iterator[LiveServer]:
    """A server with budget steering and the dead-end guard off (masking alone)."""
    server = start_server(
        [
            "--max-tokens-cap",
            "512",
            "--max-concurrent-requests",
            "8",
            "--steer-budget",
            "false",
            "--steer-dead-end-retries",
            "0",
        ],
        Path(tempfile.mkdtemp(prefix="ananke-plain-")),
    )
    try:
        yield server
    finally:
        stop_server(server)


def _schema(schema: object) -> c.ConstraintIR:
    return c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema=json.dumps(schema)))


def _regex(pattern: str) -> c.ConstraintIR:
    return c.ConstraintIR(regex=c.RegexConstraint(pattern=pattern))


def _grammar(text: str, syntax: int = c.GRAMMAR_SYNTAX_LARK) -> c.ConstraintIR:
    return c.ConstraintIR(grammar=c.GrammarConstraint(syntax=syntax, text=text))


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "n": {"type": "integer"}},
    "required": ["name", "n"],
}
MODULE = {"type": "object", "properties": {"module": {"type": "string"}}, "required": ["module"]}
CLASS_RE = r"class \w+\(.*\):\s+def __init__\(self.*\):"
FUNCTION_LARK = r"""
start: "def " IDENT "(" params? "):\n" body
params: IDENT (", " IDENT)*
body: ("    " stmt "\n")+
stmt: "return " expr | "pass" | IDENT " = " expr
expr: IDENT | NUMBER | expr " + " expr | IDENT "(" expr ")"
IDENT: /[a-z_][a-z0-9_]*/
NUMBER: /[0-9]+/
"""
FUNCTION_GBNF = r"""
function ::= "def " identifier "(" identifier? "):\n" body
body ::= ("    " statement "\n")+
statement ::= "return " identifier | identifier " = " identifier
identifier ::= [a-z_] [a-z0-9_]*
"""
SEQUENCE = c.ConstraintIR(
    composite=c.CompositeConstraint(
        combinator=c.COMBINATOR_SEQUENCE,
        parts=[_regex(r"# [A-Za-z ]+\n"), _schema(PERSON)],
    )
)

KINDS = [
    (
        "json schema",
        [_schema(PERSON)],
        "Describe a person called Mara as JSON with a very long name:",
    ),
    ("regex", [_regex(CLASS_RE)], "Write a Python class with many arguments:"),
    ("lark", [_grammar(FUNCTION_LARK)], "Write a long Python function:"),
    ("gbnf (no root rule)", [_grammar(FUNCTION_GBNF, c.GRAMMAR_SYNTAX_GBNF)], "Python code:"),
    ("sequence", [SEQUENCE], "A titled JSON record:"),
    ("intersection", [_schema(PERSON), _regex(r"(?s:.{0,80})")], "A person as JSON:"),
]


def _request(
    constraints: list[c.ConstraintIR], prompt: str, max_tokens: int, **sampling: float
) -> inference_service_pb2.GenerateRequest:
    return inference_service_pb2.GenerateRequest(
        request=generation_pb2.GenerationRequest(
            prompt=prompt,
            constraints=constraints,
            sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, **sampling),  # type: ignore[arg-type]
        )
    )


def _error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo")


def _min_tokens(server: LiveServer, constraints: list[c.ConstraintIR]) -> int:
    """The server's shortest completion, from its refusal of max_tokens=1."""
    with pytest.raises(grpc.RpcError) as refused:
        server.stub().Generate(_request(constraints, "x", 1), timeout=120)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    info = _error_info(refused.value)
    assert info.reason == "MAX_TOKENS_BELOW_CONSTRAINT_MINIMUM"
    assert info.metadata["max_tokens"] == "1"
    assert info.metadata["field"] == "request.sampling.max_tokens"
    return int(info.metadata["min_tokens"])


def _complete(result: inference_service_pb2.GenerateResponse | grpc.RpcError) -> bool:
    return (
        isinstance(result, inference_service_pb2.GenerateResponse)
        and result.finish_reason == COMPLETE
        and result.provenance.check.verdict == SATISFIED
    )


def _outcome(result: inference_service_pb2.GenerateResponse | grpc.RpcError) -> str:
    """What a failed sample was, in one line."""
    if isinstance(result, grpc.RpcError):
        return f"{result.code().name}: {result.details()}"  # type: ignore[attr-defined]
    return (
        f"{generation_pb2.FinishReason.Name(result.finish_reason)} "
        f"{provenance_pb2.CheckVerdict.Name(result.provenance.check.verdict)} "
        f"{result.provenance.check.detail!r} text={result.text!r}"
    )


def _rate(
    server: LiveServer, constraints: list[c.ConstraintIR], prompt: str, max_tokens: int
) -> tuple[float, list[inference_service_pb2.GenerateResponse | grpc.RpcError]]:
    """Share of SAMPLES sampled outputs that are complete and valid."""

    def one(seed: int) -> inference_service_pb2.GenerateResponse | grpc.RpcError:
        request = _request(constraints, prompt, max_tokens, temperature=0.9, seed=seed)
        try:
            return server.stub().Generate(request, timeout=300)
        except grpc.RpcError as error:
            return error

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(SAMPLES)))
    return sum(map(_complete, results)) / len(results), results


def test_budget_table(live_server: LiveServer, plain_server: LiveServer) -> None:
    rows = []
    failures = []
    started = time.monotonic()
    for name, constraints, prompt in KINDS:
        shortest = _min_tokens(live_server, constraints)
        max_tokens = math.ceil(1.5 * shortest)
        steered, results = _rate(live_server, constraints, prompt, max_tokens)
        today, _ = _rate(plain_server, constraints, prompt, max_tokens)
        rows.append((name, shortest, max_tokens, steered, today))
        if steered < 0.99:
            failures.append((name, [_outcome(r) for r in results if not _complete(r)]))
        for result in results:
            if isinstance(result, inference_service_pb2.GenerateResponse):
                steering = result.provenance.steering
                if result.provenance.HasField("steering"):
                    assert steering.from_token < len(result.token_ids)
                    assert steering.tokens_left == max_tokens - steering.from_token
    print(f"\nbudget-aware completion, {SAMPLES} samples per kind (temperature 0.9):")
    print("| kind | shortest | max_tokens | complete+valid (steering) | today (off) |")
    print("|---|---|---|---|---|")
    for name, shortest, max_tokens, steered, today in rows:
        print(f"| {name} | {shortest} | {max_tokens} | {steered:.0%} | {today:.0%} |")
    print(f"({time.monotonic() - started:.0f} s)")
    assert not failures, failures


def _with_and_without(
    live_server: LiveServer,
    plain_server: LiveServer,
    constraints: list[c.ConstraintIR],
    prompt: str,
    max_tokens: int,
    label: str,
) -> list[inference_service_pb2.GenerateResponse | grpc.RpcError]:
    """Samples on the server that steers and on the one that does not (dead-end
    guard and budget-aware completion off); prints both rates and the dead ends
    without; asserts every steered sample complete and valid; returns them."""
    steered, results = _rate(live_server, constraints, prompt, max_tokens)
    today, before = _rate(plain_server, constraints, prompt, max_tokens)
    dead_ends = sum(
        isinstance(r, grpc.RpcError) and _error_info(r).reason == "CONSTRAINT_UNSATISFIABLE"
        for r in before
    )
    print(
        f"\n{label}, {SAMPLES} samples: complete+valid {steered:.0%} with steering, "
        f"{today:.0%} without ({dead_ends} dead ends)"
    )
    assert steered == 1.0, [str(r)[:300] for r in results]
    return results


def test_length_regex_intersection_no_false_dead_end(
    live_server: LiveServer, plain_server: LiveServer
) -> None:
    constraints = [_schema(MODULE), _regex(r"(?s:.{0,40})")]
    prompt = "Name a long Python module path, as JSON:"
    results = _with_and_without(
        live_server, plain_server, constraints, prompt, 200, "JSON schema AND (?s:.{0,40})"
    )
    for result in results:
        assert isinstance(result, inference_service_pb2.GenerateResponse)
        assert len(result.text) <= 40
        assert "module" in json.loads(result.text)


OUR_NAMES = 'start: "def " NAME "(path):"\nNAME: "load_config" | "save_config" | "parse_args"'
THEIR_NAMES = r"""
function ::= "def " name "(path):"
name ::= "load_config_file" | "save_config" | "parse_args_list"
"""


def test_narrow_common_language_of_two_grammars(
    live_server: LiveServer, plain_server: LiveServer
) -> None:
    constraints = [_grammar(OUR_NAMES), _grammar(THEIR_NAMES, c.GRAMMAR_SYNTAX_GBNF)]
    prompt = "Write only this Python line: def load_config(path):"
    results = _with_and_without(
        live_server, plain_server, constraints, prompt, 40, "Lark AND GBNF, one name in common"
    )
    for result in results:
        assert isinstance(result, inference_service_pb2.GenerateResponse)
        assert result.text == "def save_config(path):"


def test_steering_is_in_provenance(live_server: LiveServer) -> None:
    shortest = _min_tokens(live_server, [_schema(PERSON)])
    request = _request([_schema(PERSON)], "A person as JSON:", shortest + 2, temperature=0.0)
    response = live_server.stub().Generate(request, timeout=120)
    assert response.finish_reason == COMPLETE, response.text
    assert response.provenance.check.verdict == SATISFIED
    assert response.provenance.HasField("steering"), response.text
    assert 0 <= response.provenance.steering.from_token < len(response.token_ids)
    # The engine reports where its guide began steering (vllm_plugin); the
    # deterministic replay over the same tokens, as the front end would run it
    # without the report, must find the same place.
    replayed = _replay(list(request.request.constraints), list(response.token_ids), shortest + 2)
    steering = response.provenance.steering
    assert replayed == (steering.from_token, steering.tokens_left)


def _replay(
    constraints: list[c.ConstraintIR], tokens: list[int], max_tokens: int
) -> tuple[int, int] | None:
    """Budget steering replayed over `tokens` with this project's compiled grammars."""
    import asyncio

    from ananke_server.generation_rules import steer_config
    from ananke_server.settings import Settings
    from ananke_server.steering import replay_steering
    from default_tokenizer import compiled_grammars, default_llg_tokenizer

    tokenizer = default_llg_tokenizer()
    grammars = asyncio.run(compiled_grammars(tokenizer, constraints))
    assert grammars
    eos = set(tokenizer.eos_tokens)
    return replay_steering(
        tokenizer,
        list(grammars),
        [t for t in tokens if t not in eos],
        max_tokens=max_tokens,
        config=steer_config(Settings()),  # the live server's defaults
    )


def test_empty_intersections_fail_fast(live_server: LiveServer) -> None:
    # No common first token: refused when compiling.
    with pytest.raises(grpc.RpcError) as at_start:
        live_server.stub().Generate(
            _request([_schema(MODULE), _regex("[0-9]+")], "x", 50), timeout=60
        )
    assert at_start.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert _error_info(at_start.value).reason == "CONSTRAINT_UNSATISFIABLE"
    # A common prefix, then nothing: found when compiling (or within a few tokens).
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as later:
        live_server.stub().Generate(
            _request([_schema(MODULE), _regex(r'\{"mod[0-9]+')], "x", 50), timeout=60
        )
    assert later.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    info = _error_info(later.value)
    assert info.reason == "CONSTRAINT_UNSATISFIABLE"
    assert info.metadata["cause"] in ("proved", "exhausted"), info.metadata
    assert int(info.metadata.get("tokens", "0")) <= 4  # unset: refused when compiling
    assert time.monotonic() - started < 30
