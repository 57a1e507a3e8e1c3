"""Fast-forward of forced tokens with the real engine over real gRPC.

The session server (`live_server`) runs with fast-forward on (the default);
the guarded server runs with --no-fast-forward, so the same greedy requests
can be compared. For every constraint kind the output is valid, the
independent re-check says SATISFIED and provenance says FAST_FORWARD_ON;
schemas with fixed keys and intersections (the product grammar) forced
tokens. Between the two modes, for greedy decoding: validity, the re-check
verdict and the finish reason are the same, and the streamed text is exactly
the decoded token ids (nothing lost or doubled where a forced run arrives as
one chunk of several tokens). The text itself may differ where two tokens are
near-tied, since a step verifying drafts computes logits over several
positions at once (README, "Fast-forward")."""

from __future__ import annotations

import json
from typing import Any

import grpc
import jsonschema
import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import generation_pb2, inference_service_pb2, provenance_pb2
from conftest import GuardedServer, LiveServer

SATISFIED = provenance_pb2.CHECK_VERDICT_SATISFIED
ON = provenance_pb2.FAST_FORWARD_ON
OFF = provenance_pb2.FAST_FORWARD_OFF

RECORD = {
    "type": "object",
    "properties": {
        "function_name": {"type": "string", "maxLength": 24},
        "return_type": {"enum": ["integer_value", "string_value", "nothing_returned"]},
        "is_pure_function": {"type": "boolean"},
    },
    "required": ["function_name", "return_type", "is_pure_function"],
    "additionalProperties": False,
    "x-guidance": {"whitespace_flexible": False},
}
PROMPT = "Describe a Python function that adds two numbers, as JSON."


def _schema(schema: object) -> c.ConstraintIR:
    return c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema=json.dumps(schema)))


def _regex(pattern: str) -> c.ConstraintIR:
    return c.ConstraintIR(regex=c.RegexConstraint(pattern=pattern))


def _lark(text: str) -> c.ConstraintIR:
    return c.ConstraintIR(grammar=c.GrammarConstraint(syntax=c.GRAMMAR_SYNTAX_LARK, text=text))


def _gbnf(text: str) -> c.ConstraintIR:
    return c.ConstraintIR(grammar=c.GrammarConstraint(syntax=c.GRAMMAR_SYNTAX_GBNF, text=text))


def _composite(combinator: int, *parts: c.ConstraintIR) -> c.ConstraintIR:
    return c.ConstraintIR(
        composite=c.CompositeConstraint(combinator=combinator, parts=parts)  # type: ignore[arg-type]
    )


def _mask(forbidden: list[int]) -> c.ConstraintIR:
    return c.ConstraintIR(token_mask=c.TokenMaskConstraint(forbidden_token_ids=forbidden))


# kind -> (constraints, forced tokens certain after the first token)
KINDS: dict[str, tuple[list[c.ConstraintIR], bool]] = {
    "json_schema": ([_schema(RECORD)], True),
    "regex": ([_regex(r"def [a-z_]{3,12}\(self, other\) -> bool: return True")], True),
    "lark": ([_lark('start: "SELECT " COL " FROM users_table;"\nCOL: /[a-z]{2,8}/')], True),
    "gbnf": ([_gbnf('root ::= "let " [a-z] [a-z]? [a-z]? [a-z]? " = new Map();"')], True),
    "choice": ([c.ConstraintIR(choice=c.ChoiceConstraint(options=["yes", "no"]))], False),
    "sequence": (
        [_composite(c.COMBINATOR_SEQUENCE, _regex(r"RECORD [A-Z]{2,5}\n"), _schema(RECORD))],
        True,
    ),
    "any_of": ([_composite(c.COMBINATOR_ANY_OF, _regex(r"[0-9]{3}"), _schema(RECORD))], False),
    "all_of_folded": (
        [_composite(c.COMBINATOR_ALL_OF, _regex(r"[a-z_]{3,10}"), _regex(r"get_.*"))],
        False,
    ),
    "all_of_intersection": (
        [
            _composite(
                c.COMBINATOR_ALL_OF,
                _schema(RECORD),
                _regex(r'\{"function_name":"[a-z_]{2,12}",.*'),
            )
        ],
        True,
    ),
    "grammar_and_mask": (
        [_lark('start: "total_count = " /[0-9]{1,3}/ ";"'), _mask([13])],  # 13: a control byte
        True,
    ),
}


def _request(constraints: list[c.ConstraintIR], max_tokens: int = 96) -> Any:
    request = generation_pb2.GenerationRequest(
        constraints=constraints,
        sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )
    request.messages.append(
        generation_pb2.ChatMessage(role=generation_pb2.CHAT_ROLE_USER, content=PROMPT)
    )
    return request


def _stream(stub: Any, request: Any, metadata: Any = None) -> list[Any]:
    return list(
        stub.GenerateStream(
            inference_service_pb2.GenerateStreamRequest(request=request),
            timeout=240,
            metadata=metadata,
        )
    )


def _parts(events: list[Any]) -> tuple[str, list[list[int]], Any]:
    chunks = [e.chunk for e in events if e.WhichOneof("event") == "chunk"]
    assert events[-1].WhichOneof("event") == "finished"
    return (
        "".join(ch.text for ch in chunks),
        [list(ch.token_ids) for ch in chunks],
        events[-1].finished,
    )


@pytest.fixture(scope="module")
def decode() -> Any:
    """The model's own tokenizer, to decode token ids back to text."""
    from ananke_server.model_prep import default_model_dir
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_valid_with_fast_forward(live_server: LiveServer, kind: str) -> None:
    constraints, forces = KINDS[kind]
    text, chunks, finished = _parts(_stream(live_server.stub(), _request(constraints)))
    provenance = finished.provenance
    assert provenance.check.verdict == SATISFIED, (kind, text, provenance.check.detail)
    assert finished.finish_reason == generation_pb2.FINISH_REASON_CONSTRAINT_COMPLETE, text
    assert provenance.fast_forward == ON
    tokens = sum(len(ids) for ids in chunks)
    assert provenance.forced_tokens <= provenance.completion_tokens
    if forces:
        assert provenance.forced_tokens > 0, (kind, text)
        # A forced run reaches the stream as one chunk carrying several token ids.
        assert max(len(ids) for ids in chunks) > 1, chunks
    assert tokens <= provenance.completion_tokens  # EOS is not streamed


def test_json_output_is_a_record(live_server: LiveServer) -> None:
    text, _, finished = _parts(_stream(live_server.stub(), _request([_schema(RECORD)])))
    jsonschema.validate(json.loads(text), RECORD)
    assert 0 < finished.provenance.forced_tokens < finished.provenance.completion_tokens


@pytest.mark.parametrize("kind", ["json_schema", "all_of_intersection", "lark", "regex"])
def test_greedy_same_with_and_without_fast_forward(
    live_server: LiveServer, guarded_server: GuardedServer, kind: str, decode: Any
) -> None:
    constraints, _ = KINDS[kind]
    request = _request(constraints)
    fast = _parts(_stream(live_server.stub(), request))
    slow = _parts(_stream(guarded_server.stub(), request, metadata=guarded_server.auth()))
    for text, chunks, finished in (fast, slow):
        # No text lost or doubled: the stream's text is its token ids decoded.
        assert text == decode([t for ids in chunks for t in ids]), (kind, chunks)
        assert finished.provenance.check.verdict == SATISFIED, (kind, text)
    assert fast[2].finish_reason == slow[2].finish_reason
    assert fast[2].provenance.fast_forward == ON
    assert slow[2].provenance.fast_forward == OFF
    assert slow[2].provenance.forced_tokens == 0
    assert fast[2].provenance.forced_tokens > 0


def test_forced_run_longer_than_max_tokens_is_refused(live_server: LiveServer) -> None:
    """A grammar whose forced run (and so its shortest output) is longer than
    max_tokens is refused before generating (budget-aware completion, issue 14),
    instead of being cut at max_tokens."""
    constraints = [_lark('start: "the_quick_brown_fox_jumps_over_the_lazy_dog_" /[a-z]+/')]
    with pytest.raises(grpc.RpcError) as caught:
        _parts(_stream(live_server.stub(), _request(constraints, 5)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "MAX_TOKENS_BELOW_CONSTRAINT_MINIMUM" in str(caught.value.trailing_metadata())
