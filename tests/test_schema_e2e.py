"""Schema preparation end to end over real gRPC with the real engine and
default model: a fixed sample of 40 MaskBench schemas, 20 of them ones
llguidance refuses as written, where every returned document must validate
against its ORIGINAL schema with jsonschema (declared draft, formats
checked); the retry path (uniqueItems, which the grammar cannot enforce, with
a prompt that repeats items); the failure after the last attempt; a held
stream; and what ValidateConstraints reports per keyword."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import jsonschema
import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import generation_pb2, inference_service_pb2, provenance_pb2
from conftest import ROOT, LiveServer
from llguidance import LLMatcher, LLTokenizer
from test_constraints_e2e import _prompt_for, _reason

MASKBENCH = ROOT.parent / "shared" / "data" / "maskbench"
PER_GROUP = 20
SERVER_ATTEMPTS = 3  # the server's schema_max_attempts (the default)
COMPLETE = generation_pb2.FINISH_REASON_CONSTRAINT_COMPLETE
VALID = provenance_pb2.SCHEMA_VERDICT_VALID


def _schema(schema: object, **options: Any) -> c.ConstraintIR:
    return c.ConstraintIR(
        json_schema=c.JsonSchemaConstraint(
            schema=json.dumps(schema), options=c.JsonSchemaOptions(**options)
        )
    )


def _request(
    schema: object, prompt: str, *, max_tokens: int, temperature: float | None = None
) -> generation_pb2.GenerationRequest:
    sampling = generation_pb2.SamplingParams(max_tokens=max_tokens, seed=7)
    if temperature is not None:
        sampling.temperature = temperature
    return generation_pb2.GenerationRequest(
        constraints=[_schema(schema)],
        messages=[generation_pb2.ChatMessage(role=generation_pb2.CHAT_ROLE_USER, content=prompt)],
        sampling=sampling,
    )


def _refused_by_llguidance(schema: Any) -> bool:
    grammar = LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    is_error, _ = LLMatcher.validate_grammar_with_warnings(grammar, LLTokenizer("byte"))
    return bool(is_error)


def _sample() -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """30 schemas llguidance refuses as written and 30 it compiles, spread over
    the corpus in name order (fixed: the corpus and llguidance decide it)."""
    refused: list[tuple[str, Any]] = []
    served: list[tuple[str, Any]] = []
    for path in sorted(MASKBENCH.glob("*.json")):
        schema = json.loads(path.read_text())["schema"]
        if isinstance(schema, dict):
            (refused if _refused_by_llguidance(schema) else served).append((path.name, schema))
    return refused[:: len(refused) // PER_GROUP][:PER_GROUP], served[::37][:PER_GROUP]


def _validator(schema: Any) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator: jsonschema.protocols.Validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return validator


@pytest.mark.skipif(not MASKBENCH.is_dir(), reason=f"{MASKBENCH} is missing")
# 40 generations of up to 256 tokens, retries included: over 10 minutes on a
# 2-CPU machine without AVX-512/bf16 (the session's default timeout).
@pytest.mark.timeout(1800)
def test_maskbench_sample_with_refused_schemas_outputs_validate(live_server: LiveServer) -> None:
    refused, served = _sample()
    assert (len(refused), len(served)) == (PER_GROUP, PER_GROUP)
    stub = live_server.stub()

    def run(item: tuple[str, Any]) -> tuple[str, Any, Any]:
        name, schema = item
        request = _request(schema, _prompt_for(schema), max_tokens=256)
        try:
            response = stub.Generate(
                inference_service_pb2.GenerateRequest(request=request), timeout=900
            )
        except grpc.RpcError as error:
            return name, schema, error
        return name, schema, response

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, refused + served))
    refused_names = {name for name, _ in refused}
    finished = retried = 0
    not_satisfied: list[str] = []
    invalid = []
    failed = []  # other errors: no document returned, but each is counted
    for name, schema, response in results:
        if isinstance(response, grpc.RpcError):
            if _reason(response)[0] == "MAX_TOKENS_BELOW_CONSTRAINT_MINIMUM":
                continue  # its shortest valid output needs more than max_tokens
            if _reason(response)[0] == "CONSTRAINT_NOT_SATISFIED_AFTER_RETRIES":
                assert response.code() == grpc.StatusCode.ABORTED, name
                not_satisfied.append(name)
            else:
                # e.g. llguidance's parser limit (an Earley row over 2,000 items)
                # reached during generation, which the engine reports as an error.
                failed.append((name, response.code().name, response.details()))
            continue
        (item,) = response.provenance.constraints.items
        retried += item.attempts > 1
        if response.finish_reason != COMPLETE:
            assert response.finish_reason == generation_pb2.FINISH_REASON_MAX_TOKENS, name
            continue
        finished += 1
        if item.attempts:
            assert item.validation.verdict == VALID, (name, item.validation)
        errors = [e.message for e in _validator(schema).iter_errors(json.loads(response.text))]
        if errors:
            invalid.append((name, name in refused_names, response.text[:200], errors[:2]))
    print(
        f"schema e2e: {len(results)} schemas ({PER_GROUP} refused by llguidance as written), "
        f"{finished} finished, {retried} valid after a retry, {len(not_satisfied)} not "
        f"satisfied after {SERVER_ATTEMPTS} attempts {not_satisfied}, {len(failed)} other "
        f"errors {failed}, {len(invalid)} invalid"
    )
    assert not invalid, invalid
    assert len(failed) <= 3, failed
    # Large schemas need more than max_tokens; a third must finish.
    assert finished >= len(results) // 3, f"only {finished} of {len(results)} finished"


# Four values, three distinct items: repeating "a" is what the prompt asks for.
UNIQUE_LETTERS = {
    "type": "array",
    "items": {"enum": ["a", "b", "c", "d"]},
    "minItems": 3,
    "maxItems": 3,
    "uniqueItems": True,
}
REPEAT = 'Reply with the JSON array ["a", "a", "a"] and nothing else.'


def test_retry_path_returns_unique_items(live_server: LiveServer) -> None:
    """Greedy decoding repeats "a"; the validator rejects it; a retry (new seed,
    sampled) returns distinct items, or the call fails cleanly after the last one."""
    request = _request(UNIQUE_LETTERS, REPEAT, max_tokens=24, temperature=0.0)
    stub = live_server.stub()
    chunks, finished = [], None
    try:
        for event in stub.GenerateStream(
            inference_service_pb2.GenerateStreamRequest(request=request), timeout=300
        ):
            if event.WhichOneof("event") == "chunk":
                chunks.append(event.chunk.text)
            elif event.WhichOneof("event") == "finished":
                finished = event.finished
    except grpc.RpcError as error:
        reason, metadata = _reason(error)
        assert reason == "CONSTRAINT_NOT_SATISFIED_AFTER_RETRIES"
        assert metadata["attempts"] == "3"
        assert metadata["schema_pointer"] == "/uniqueItems"
        assert not chunks, "a rejected attempt's chunks were sent"
        print("retry path: 3 attempts, none unique")
        return
    assert finished is not None
    document = json.loads("".join(chunks))  # only the accepted attempt was streamed
    assert len(set(document)) == 3, document
    (item,) = finished.provenance.constraints.items
    assert item.attempts >= 2, "greedy decoding should have repeated an item first"
    assert item.validation.verdict == VALID
    assert finished.provenance.sampling.temperature > 0  # the retry sampled
    print(f"retry path: {item.attempts} attempts, returned {document}")


def test_unsatisfiable_uniqueness_fails_after_retries_then_serves(
    live_server: LiveServer,
) -> None:
    impossible = {**UNIQUE_LETTERS, "items": {"enum": ["a", "b"]}}  # 3 distinct of 2
    request = _request(impossible, REPEAT, max_tokens=24)
    stub = live_server.stub()
    with pytest.raises(grpc.RpcError) as raised:
        stub.Generate(inference_service_pb2.GenerateRequest(request=request), timeout=300)
    assert raised.value.code() == grpc.StatusCode.ABORTED
    reason, metadata = _reason(raised.value)
    assert reason == "CONSTRAINT_NOT_SATISFIED_AFTER_RETRIES"
    assert (metadata["attempts"], metadata["schema_pointer"]) == ("3", "/uniqueItems")
    assert "non-unique" in metadata["message"]
    fine = _request({"enum": ["yes", "no"]}, "Yes or no?", max_tokens=8)
    response = stub.Generate(inference_service_pb2.GenerateRequest(request=fine), timeout=120)
    assert response.finish_reason == COMPLETE


def test_validate_constraints_reports_keyword_enforcement(live_server: LiveServer) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "dependentRequired": {"a": ["b"]},
        "propertyNames": {"maxLength": 1},
    }
    reply = live_server.stub().ValidateConstraints(
        inference_service_pb2.ValidateConstraintsRequest(
            constraints=[
                _schema(schema),
                _schema({"type": "array", "uniqueItems": True}, strict=True),
            ]
        )
    )
    prepared, strict = reply.verdicts
    assert prepared.ok
    assert prepared.validated
    by_pointer = {k.pointer: k.enforcement for k in prepared.schema_keywords}
    assert by_pointer == {
        "/dependentRequired": c.KEYWORD_ENFORCEMENT_GRAMMAR,
        "/propertyNames": c.KEYWORD_ENFORCEMENT_VALIDATION,
    }
    assert not strict.ok
    assert strict.error.reason == "JSON_SCHEMA_INVALID"
