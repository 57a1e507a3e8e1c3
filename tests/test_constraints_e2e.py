"""Every constraint kind end to end over real gRPC with the real engine and
default model: GBNF, choice, token masks, sequence, any_of, all_of folded into
one grammar and all_of enforced by the intersection logits processor, an
unsatisfiable intersection (FAILED_PRECONDITION, the server keeps serving),
concurrent mixes of processor and plain requests, and a fixed sample of 50
MaskBench schemas whose finished outputs must validate with `jsonschema`."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import jsonschema
import pytest
from ananke.v1 import (
    constraints_pb2 as c,
)
from ananke.v1 import (
    generation_pb2,
    inference_service_pb2,
    provenance_pb2,
)
from conftest import ROOT, LiveServer
from google.rpc import error_details_pb2
from grpc_status import rpc_status

MASKBENCH = ROOT.parent / "shared" / "data" / "maskbench"
SAMPLE_SIZE = 50
COMPLETE = generation_pb2.FINISH_REASON_CONSTRAINT_COMPLETE
SATISFIED = provenance_pb2.CHECK_VERDICT_SATISFIED


def _regex(pattern: str) -> c.ConstraintIR:
    return c.ConstraintIR(regex=c.RegexConstraint(pattern=pattern))


def _schema(schema: object) -> c.ConstraintIR:
    return c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema=json.dumps(schema)))


def _lark(text: str) -> c.ConstraintIR:
    return c.ConstraintIR(grammar=c.GrammarConstraint(syntax=c.GRAMMAR_SYNTAX_LARK, text=text))


def _composite(combinator: int, *parts: c.ConstraintIR) -> c.ConstraintIR:
    return c.ConstraintIR(
        composite=c.CompositeConstraint(combinator=combinator, parts=parts)  # type: ignore[arg-type]
    )


def _generate(
    server: LiveServer,
    constraints: list[c.ConstraintIR],
    *,
    prompt: str | None = None,
    chat: str | None = None,
    max_tokens: int = 64,
    timeout: float = 180,
) -> inference_service_pb2.GenerateResponse:
    request = generation_pb2.GenerationRequest(
        constraints=constraints,
        sampling=generation_pb2.SamplingParams(max_tokens=max_tokens),
    )
    if chat is not None:
        request.messages.append(
            generation_pb2.ChatMessage(role=generation_pb2.CHAT_ROLE_USER, content=chat)
        )
    else:
        request.prompt = prompt or "Output: "
    return server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=request), timeout=timeout
    )


def _reason(error: grpc.RpcError) -> tuple[str, dict[str, str]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    raise AssertionError("no ErrorInfo")


def _assert_complete(response: inference_service_pb2.GenerateResponse) -> None:
    assert response.finish_reason == COMPLETE, (response.finish_reason, response.text)
    assert response.provenance.check.verdict == SATISFIED, response.provenance.check.detail


def test_gbnf(live_server: LiveServer) -> None:
    gbnf = 'root ::= "let " name " = " num ";"\nname ::= [a-z]+\nnum ::= [0-9] | [1-9] [0-9]'
    response = _generate(
        live_server,
        [c.ConstraintIR(grammar=c.GrammarConstraint(syntax=c.GRAMMAR_SYNTAX_GBNF, text=gbnf))],
        prompt="A JavaScript statement: ",
    )
    _assert_complete(response)
    assert re.fullmatch(r"let [a-z]+ = ([0-9]|[1-9][0-9]);", response.text), response.text


def test_choice(live_server: LiveServer) -> None:
    options = ["alpha", "beta", "gamma delta"]
    response = _generate(
        live_server,
        [c.ConstraintIR(choice=c.ChoiceConstraint(options=options))],
        chat="Pick the second Greek letter.",
    )
    _assert_complete(response)
    assert response.text in options


def _token_ids(server: LiveServer, text: str) -> list[int]:
    """Token ids the model produces for `text` (unconstrained echo would be
    model-dependent, so generate it under a regex and read the ids back)."""
    response = _generate(server, [_regex(re.escape(text))], prompt="Say: ")
    assert response.text == text
    return list(response.token_ids)


def test_token_mask_allowed_only(live_server: LiveServer) -> None:
    info = live_server.stub().GetModelInfo(inference_service_pb2.GetModelInfoRequest())
    allowed = sorted(set(_token_ids(live_server, " one two three four five")))
    mask = c.ConstraintIR(token_mask=c.TokenMaskConstraint(allowed_token_ids=allowed))
    response = _generate(live_server, [mask], prompt="Count in words:", max_tokens=12)
    assert response.token_ids, "something was generated"
    assert set(response.token_ids) <= set(allowed) | set(info.eos_token_ids)
    assert response.provenance.check.verdict == SATISFIED
    assert response.provenance.constraints.enforcement == "token_mask"
    assert response.provenance.constraints.enforcement_mode == provenance_pb2.ENFORCEMENT_TOKEN_MASK
    assert response.provenance.constraints.token_mask


def test_forbidden_token_ids_never_appear(live_server: LiveServer) -> None:
    prompt = "The numbers from 1 to 10 are: 1, 2, 3,"
    free = _generate(live_server, [], prompt=prompt, max_tokens=16)
    forbidden = sorted(set(free.token_ids[:6]))
    mask = c.ConstraintIR(token_mask=c.TokenMaskConstraint(forbidden_token_ids=forbidden))
    response = _generate(live_server, [mask], prompt=prompt, max_tokens=16)
    assert response.token_ids
    assert not set(response.token_ids) & set(forbidden)
    assert response.provenance.check.verdict == SATISFIED


def test_sequence_regex_then_json(live_server: LiveServer) -> None:
    schema = {
        "type": "object",
        "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["id"],
        "additionalProperties": False,
    }
    seq = _composite(c.COMBINATOR_SEQUENCE, _regex(r"RECORD [A-Z]{2,5}\n"), _schema(schema))
    response = _generate(live_server, [seq], prompt="A record header then JSON:\n")
    _assert_complete(response)
    header, body = response.text.split("\n", 1)
    assert re.fullmatch(r"RECORD [A-Z]{2,5}", header)
    jsonschema.validate(json.loads(body), schema)


def test_any_of(live_server: LiveServer) -> None:
    any_of = _composite(c.COMBINATOR_ANY_OF, _regex(r"[0-9]{3}"), _schema({"type": "boolean"}))
    response = _generate(live_server, [any_of], prompt="A value: ")
    _assert_complete(response)
    assert re.fullmatch(r"[0-9]{3}", response.text) or response.text in ("true", "false")


def test_all_of_regex_and_regex_folds(live_server: LiveServer) -> None:
    all_of = _composite(c.COMBINATOR_ALL_OF, _regex(r"[a-z_]{3,10}"), _regex(r"get_.*"))
    response = _generate(live_server, [all_of], prompt="A Python getter name: ")
    _assert_complete(response)
    assert re.fullmatch(r"get_[a-z_]{0,6}", response.text), response.text
    assert response.provenance.constraints.enforcement == "grammar"
    assert response.provenance.constraints.enforcement_mode == provenance_pb2.ENFORCEMENT_GRAMMAR


def test_all_of_json_and_regex_through_the_processor(live_server: LiveServer) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    pattern = r'\{"name":"[A-Z][a-z]{1,8}","age":[1-9][0-9]?\}'
    all_of = _composite(c.COMBINATOR_ALL_OF, _schema(schema), _regex(pattern))
    response = _generate(live_server, [all_of], chat="Give a person as JSON.")
    _assert_complete(response)
    assert re.fullmatch(pattern, response.text), response.text
    jsonschema.validate(json.loads(response.text), schema)
    assert response.provenance.constraints.enforcement == "logits_processor(2 grammars)"
    assert (
        response.provenance.constraints.enforcement_mode == provenance_pb2.ENFORCEMENT_INTERSECTION
    )
    assert response.provenance.constraints.intersected_grammars == 2
    assert not response.provenance.constraints.token_mask


def test_top_level_lark_and_regex_and_mask_through_the_processor(live_server: LiveServer) -> None:
    lark = 'start: "x = " NUM\nNUM: /[0-9]+/'
    seven = _token_ids(live_server, "7")
    constraints = [
        _lark(lark),
        _regex(r"x = [0-9]{2,4}"),
        c.ConstraintIR(token_mask=c.TokenMaskConstraint(forbidden_token_ids=seven)),
    ]
    response = _generate(live_server, constraints, prompt="Assign a number: ")
    _assert_complete(response)
    assert re.fullmatch(r"x = [0-9]{2,4}", response.text), response.text
    assert not set(response.token_ids) & set(seven)
    assert response.provenance.constraints.enforcement.startswith("logits_processor")
    assert response.provenance.constraints.enforcement.endswith("+token_mask")
    assert (
        response.provenance.constraints.enforcement_mode == provenance_pb2.ENFORCEMENT_INTERSECTION
    )
    assert response.provenance.constraints.token_mask


def test_unsatisfiable_at_compile_time(live_server: LiveServer) -> None:
    all_of = _composite(c.COMBINATOR_ALL_OF, _schema({"type": "integer"}), _regex("abc"))
    with pytest.raises(grpc.RpcError) as raised:
        _generate(live_server, [all_of])
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(raised.value)[0] == "CONSTRAINT_UNSATISFIABLE"
    verdicts = live_server.stub().ValidateConstraints(
        inference_service_pb2.ValidateConstraintsRequest(constraints=[all_of])
    )
    assert not verdicts.ok
    assert verdicts.verdicts[0].error.reason == "CONSTRAINT_UNSATISFIABLE"


def _call(server: LiveServer, method: str, request: generation_pb2.GenerationRequest) -> None:
    if method == "Generate":
        server.stub().Generate(inference_service_pb2.GenerateRequest(request=request), timeout=120)
    else:
        list(
            server.stub().GenerateStream(
                inference_service_pb2.GenerateStreamRequest(request=request), timeout=120
            )
        )


def test_unsatisfiable_found_before_generating_then_keeps_serving(live_server: LiveServer) -> None:
    # Both allow two letters first; then one wants "c", the other "d" or "e": a dead end
    # the first token does not show; the completion search finds it when compiling.
    all_of = _composite(c.COMBINATOR_ALL_OF, _lark("start: /[a-z]{2}c/"), _regex("[a-z]{2}[de]"))
    for method in ("Generate", "GenerateStream"):
        request = generation_pb2.GenerationRequest(
            prompt="Letters: ",
            constraints=[all_of],
            sampling=generation_pb2.SamplingParams(max_tokens=32),
        )
        with pytest.raises(grpc.RpcError) as raised:
            _call(live_server, method, request)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION, method
        reason, metadata = _reason(raised.value)
        assert reason == "CONSTRAINT_UNSATISFIABLE"
        assert metadata["cause"] == "exhausted", metadata
        assert "tokens" not in metadata, "refused before generating"
    # The server keeps serving, constrained and not.
    ok = _generate(live_server, [_regex("abc")])
    _assert_complete(ok)
    assert ok.text == "abc"
    stats = live_server.stub().GetServerStats(inference_service_pb2.GetServerStatsRequest())
    assert stats.engine_unfinished_requests == 0


def test_concurrent_processor_and_plain_requests(live_server: LiveServer) -> None:
    """Rows of the processor come and go while other requests run: each output
    still satisfies exactly its own constraints."""
    jobs: list[tuple[list[c.ConstraintIR], str]] = []
    for i in range(12):
        digits = f"{i % 9 + 1}"
        if i % 3 == 0:
            jobs.append(([_regex(f"{digits}[0-9]{{2,5}}")], f"{digits}[0-9]{{2,5}}"))
        else:
            pair = _composite(
                c.COMBINATOR_ALL_OF, _schema({"type": "integer"}), _regex(f"{digits}[0-9]{{1,4}}")
            )
            jobs.append(([pair], f"{digits}[0-9]{{1,4}}"))

    def run(job: tuple[list[c.ConstraintIR], str]) -> tuple[str, str, int]:
        response = _generate(live_server, job[0], prompt="A number: ", max_tokens=16)
        return response.text, job[1], response.finish_reason

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, jobs))
    for text, pattern, reason in results:
        assert reason == COMPLETE, (text, pattern)
        assert re.fullmatch(pattern, text), (text, pattern)


# -- MaskBench sample ------------------------------------------------------------


def _maskbench_candidates() -> list[tuple[str, dict[str, Any]]]:
    files = sorted(MASKBENCH.glob("*.json"))
    picked = []
    for path in files[::7]:  # a fixed, spread-out order over the corpus
        schema = json.loads(path.read_text())["schema"]
        if isinstance(schema, dict):
            picked.append((path.name, schema))
    return picked


def _prompt_for(schema: dict[str, Any]) -> str:
    text = json.dumps(schema, separators=(",", ":"))
    if len(text) > 1500:
        text = text[:1500] + " ..."
    return f"Write one JSON document that is valid against this JSON Schema:\n{text}"


@pytest.mark.skipif(not MASKBENCH.is_dir(), reason=f"{MASKBENCH} is missing")
def test_maskbench_sample_outputs_validate(live_server: LiveServer) -> None:
    stub = live_server.stub()
    sample: list[tuple[str, dict[str, Any]]] = []
    for name, schema in _maskbench_candidates():
        verdict = stub.ValidateConstraints(
            inference_service_pb2.ValidateConstraintsRequest(constraints=[_schema(schema)])
        )
        # Grammar-enforced schemas only: tests/test_schema_e2e.py covers the
        # validated ones (which may end in CONSTRAINT_NOT_SATISFIED_AFTER_RETRIES).
        if verdict.ok and not verdict.verdicts[0].validated:
            sample.append((name, schema))
        if len(sample) == SAMPLE_SIZE:
            break
    assert len(sample) == SAMPLE_SIZE

    def run(item: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any], Any]:
        name, schema = item
        try:
            response = _generate(
                live_server,
                [_schema(schema)],
                chat=_prompt_for(schema),
                max_tokens=200,
                timeout=600,
            )
        except grpc.RpcError as error:
            # Its shortest valid output needs more than max_tokens: refused up front.
            if _reason(error)[0] != "MAX_TOKENS_BELOW_CONSTRAINT_MINIMUM":
                raise
            return name, schema, None
        return name, schema, response

    with ThreadPoolExecutor(8) as pool:
        results = [r for r in pool.map(run, sample) if r[2] is not None]
    finished = 0
    failures = []
    for name, schema, response in results:
        check = response.provenance.check.verdict
        assert check != provenance_pb2.CHECK_VERDICT_VIOLATED, (name, response.text)
        if response.finish_reason != COMPLETE:
            assert response.finish_reason == generation_pb2.FINISH_REASON_MAX_TOKENS, name
            continue
        finished += 1
        validator = jsonschema.validators.validator_for(schema)(schema)
        errors = [e.message for e in validator.iter_errors(json.loads(response.text))]
        if errors:
            failures.append((name, response.text, errors[:3]))
    print(f"maskbench e2e: {len(sample)} schemas, {finished} finished, {len(failures)} invalid")
    assert not failures, failures
    assert finished >= SAMPLE_SIZE // 2, f"only {finished} of {SAMPLE_SIZE} finished"
