"""End to end over real gRPC with the real vLLM engine and default model:
constrained outputs satisfy their constraints, streams equal unary results,
provenance is filled, cancellation and deadlines abort engine requests, and
bad input gets INVALID_ARGUMENT with the right reason while serving goes on."""

from __future__ import annotations

import json
import re
import time

import grpc
import jsonschema
import lark
import pytest
from ananke.v1 import (
    constraints_pb2,
    generation_pb2,
    inference_service_pb2,
    provenance_pb2,
)
from ananke_server.engine_config import host_dtype
from conftest import LiveServer
from google.rpc import error_details_pb2
from grpc_status import rpc_status

CAT_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "indoor": {"type": "boolean"},
    },
    "required": ["name", "age", "indoor"],
    "additionalProperties": False,
}
# Plain Lark (no llguidance extensions) so the `lark` package can re-parse outputs.
ASSIGNMENT_GRAMMAR = r"""
start: NAME " = " value
value: NUMBER | STRING
NAME: /[a-z_][a-z0-9_]{0,15}/
NUMBER: /[0-9]{1,6}/
STRING: /"[a-z ]{0,20}"/
"""


def _request(**kwargs: object) -> generation_pb2.GenerationRequest:
    sampling = kwargs.pop("sampling", None) or generation_pb2.SamplingParams(max_tokens=64)
    return generation_pb2.GenerationRequest(sampling=sampling, **kwargs)  # type: ignore[arg-type]


def _chat(text: str) -> list[generation_pb2.ChatMessage]:
    return [generation_pb2.ChatMessage(role=generation_pb2.CHAT_ROLE_USER, content=text)]


def _stream(
    server: LiveServer, request: generation_pb2.GenerationRequest
) -> list[inference_service_pb2.GenerateStreamResponse]:
    return list(
        server.stub().GenerateStream(
            inference_service_pb2.GenerateStreamRequest(request=request), timeout=120
        )
    )


def _text(events: list[inference_service_pb2.GenerateStreamResponse]) -> str:
    return "".join(e.chunk.text for e in events if e.WhichOneof("event") == "chunk")


def _finished(
    events: list[inference_service_pb2.GenerateStreamResponse],
) -> inference_service_pb2.GenerationFinished:
    assert events[-1].WhichOneof("event") == "finished"
    return events[-1].finished


def test_model_info_reports_the_engine_settings_vllm_resolved(live_server: LiveServer) -> None:
    """The session server runs the defaults with --max-concurrent-requests 8."""
    info = live_server.stub().GetModelInfo(inference_service_pb2.GetModelInfoRequest(), timeout=10)
    engine = info.engine_settings
    assert engine.tensor_parallel_size == 1
    assert engine.max_num_seqs == 8  # max_num_seqs 0 follows max_concurrent_requests
    assert engine.max_num_batched_tokens > 0  # vLLM's default, resolved
    # "auto": the default model's dtype, or float32 on an x86 CPU without native bf16.
    resolved = host_dtype("auto", on_cpu=True)
    assert engine.dtype == ("bfloat16" if resolved == "auto" else resolved)
    assert engine.quantization == ""
    assert engine.enable_prefix_caching is True
    assert engine.kv_cache_dtype == "auto"
    assert engine.enforce_eager is True
    assert engine.distributed_executor_backend


def test_json_schema_stream_validates(live_server: LiveServer) -> None:
    request = _request(
        messages=_chat("Describe a cat as a JSON object with name, age and indoor."),
        constraints=[
            constraints_pb2.ConstraintIR(
                name="cat",
                json_schema=constraints_pb2.JsonSchemaConstraint(schema=json.dumps(CAT_SCHEMA)),
            )
        ],
        sampling=generation_pb2.SamplingParams(max_tokens=96),
    )
    events = _stream(live_server, request)
    assert events[0].WhichOneof("event") == "started"
    assert events[0].started.constraint_digest
    chunks = [e for e in events if e.WhichOneof("event") == "chunk"]
    assert len(chunks) > 3, "tokens must arrive as a stream, not in one piece"
    document = json.loads(_text(events))
    jsonschema.validate(document, CAT_SCHEMA)
    finished = _finished(events)
    assert finished.finish_reason == generation_pb2.FINISH_REASON_CONSTRAINT_COMPLETE
    assert finished.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_SATISFIED


def test_regex_output_full_matches(live_server: LiveServer) -> None:
    pattern = r"def [a-z_]{1,12}\((x|y|z)?\): return [0-9]{1,3}"
    request = _request(
        prompt="# A tiny Python function\n",
        constraints=[
            constraints_pb2.ConstraintIR(regex=constraints_pb2.RegexConstraint(pattern=pattern))
        ],
    )
    response = live_server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=request), timeout=120
    )
    assert re.fullmatch(pattern, response.text), response.text
    assert response.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_SATISFIED


def test_lark_grammar_output_parses(live_server: LiveServer) -> None:
    request = _request(
        prompt="A Python assignment: ",
        constraints=[
            constraints_pb2.ConstraintIR(
                grammar=constraints_pb2.GrammarConstraint(
                    syntax=constraints_pb2.GRAMMAR_SYNTAX_LARK, text=ASSIGNMENT_GRAMMAR
                )
            )
        ],
    )
    response = live_server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=request), timeout=120
    )
    lark.Lark(ASSIGNMENT_GRAMMAR, parser="earley").parse(response.text)
    assert response.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_SATISFIED


def test_choice_output_is_one_option(live_server: LiveServer) -> None:
    options = ["rust", "zig", "python"]
    request = _request(
        messages=_chat("Which language is Maze written in?"),
        constraints=[
            constraints_pb2.ConstraintIR(choice=constraints_pb2.ChoiceConstraint(options=options))
        ],
    )
    response = live_server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=request), timeout=120
    )
    assert response.text in options


def test_generate_equals_concatenated_stream(live_server: LiveServer) -> None:
    request = _request(
        prompt="def fibonacci(n):",
        sampling=generation_pb2.SamplingParams(max_tokens=40, temperature=0.0, seed=7),
    )
    events = _stream(live_server, request)
    unary = live_server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=request), timeout=120
    )
    assert unary.text == _text(events)
    streamed_ids = [
        t for e in events if e.WhichOneof("event") == "chunk" for t in e.chunk.token_ids
    ]
    assert list(unary.token_ids) == streamed_ids
    assert unary.finish_reason == _finished(events).finish_reason


def test_provenance_is_filled(live_server: LiveServer) -> None:
    schema = json.dumps(
        {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": False,
        }
    )
    request = _request(
        request_id="prov-test-1",
        messages=_chat("Answer with JSON."),
        constraints=[
            constraints_pb2.ConstraintIR(
                name="answer",
                priority=3,
                json_schema=constraints_pb2.JsonSchemaConstraint(schema=schema),
            )
        ],
        sampling=generation_pb2.SamplingParams(max_tokens=32, temperature=0.7, top_p=0.9, seed=42),
        context=generation_pb2.GenerationContext(
            current_file="src/lib.rs", language="rust", project_root="/repo"
        ),
        metadata={"maze_session": "s-1"},
    )
    response = live_server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=request), timeout=120
    )
    p = response.provenance
    assert p.request_id == response.request_id == "prov-test-1"
    assert p.model_id == "SmolLM2-135M-Instruct"
    assert p.model_revision.startswith("sha256:")
    assert (p.engine_name, p.engine_version) == ("vllm", "0.32.0")
    assert p.llguidance_version
    assert p.service_version
    assert re.fullmatch(r"[0-9a-f]{64}", p.constraints.digest)
    assert [(i.name, i.kind, i.priority) for i in p.constraints.items] == [
        ("answer", constraints_pb2.CONSTRAINT_KIND_JSON_SCHEMA, 3)
    ]
    assert p.constraints.cache in (
        provenance_pb2.CACHE_OUTCOME_HIT,
        provenance_pb2.CACHE_OUTCOME_MISS,
        provenance_pb2.CACHE_OUTCOME_DISK_HIT,  # another session server compiled it
    )
    assert p.sampling.seed == 42
    assert p.sampling.max_tokens == 32
    assert p.sampling.temperature == pytest.approx(0.7)
    assert p.sampling.top_p == pytest.approx(0.9)
    assert p.timestamps.received_at.seconds > 0
    assert p.timestamps.first_token_at.ToNanoseconds() >= p.timestamps.received_at.ToNanoseconds()
    assert p.timestamps.finished_at.ToNanoseconds() >= p.timestamps.first_token_at.ToNanoseconds()
    assert p.timings.total.ToNanoseconds() >= p.timings.time_to_first_token.ToNanoseconds() > 0
    assert p.prompt_tokens == response.usage.prompt_tokens > 0
    assert p.completion_tokens == response.usage.completion_tokens > 0
    assert p.finish_reason == response.finish_reason
    assert p.check.verdict == provenance_pb2.CHECK_VERDICT_SATISFIED
    assert p.placement.host
    assert p.placement.accelerator == "cpu"
    assert dict(p.client_metadata) == {"maze_session": "s-1"}
    assert p.context.language == "rust"
    # The same constraints again come from the compile cache.
    again = live_server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=request), timeout=120
    )
    assert again.provenance.constraints.cache == provenance_pb2.CACHE_OUTCOME_HIT
    assert again.provenance.constraints.digest == p.constraints.digest


def test_unconstrained_seed_drawn_and_reported(live_server: LiveServer) -> None:
    request = _request(
        prompt="Hello", sampling=generation_pb2.SamplingParams(max_tokens=4, temperature=1.0)
    )
    response = live_server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=request), timeout=120
    )
    assert response.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_UNCONSTRAINED
    assert response.provenance.sampling.seed != 0
    assert response.finish_reason == generation_pb2.FINISH_REASON_MAX_TOKENS


# Forces a long output: the model cannot end early with end-of-sequence.
LONG_OUTPUT = constraints_pb2.ConstraintIR(
    name="long", regex=constraints_pb2.RegexConstraint(pattern="[a-z ,.]{2000}")
)


def _stats(server: LiveServer) -> inference_service_pb2.GetServerStatsResponse:
    return server.stub().GetServerStats(inference_service_pb2.GetServerStatsRequest(), timeout=10)


def _wait_engine_idle(server: LiveServer, timeout_s: float = 10.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        unfinished = _stats(server).engine_unfinished_requests
        if unfinished == 0 or time.monotonic() > deadline:
            return unfinished
        time.sleep(0.1)


def test_cancel_mid_stream_aborts_engine_request(live_server: LiveServer) -> None:
    before = _stats(live_server).generations.cancelled
    request = _request(
        prompt="Once upon a time, a dragon",
        constraints=[LONG_OUTPUT],
        sampling=generation_pb2.SamplingParams(max_tokens=500),
    )
    call = live_server.stub().GenerateStream(
        inference_service_pb2.GenerateStreamRequest(request=request), timeout=120
    )
    chunks = 0
    for event in call:
        if event.WhichOneof("event") == "chunk":
            chunks += 1
            if chunks == 3:
                assert _stats(live_server).engine_unfinished_requests >= 1
                call.cancel()
                break
    assert chunks == 3
    assert _wait_engine_idle(live_server) == 0
    deadline = time.monotonic() + 10
    while _stats(live_server).generations.cancelled <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _stats(live_server).generations.cancelled == before + 1


def test_deadline_aborts_generation(live_server: LiveServer) -> None:
    request = _request(
        prompt="Count forever: one, two, three,",
        constraints=[LONG_OUTPUT],
        sampling=generation_pb2.SamplingParams(max_tokens=500),
    )
    with pytest.raises(grpc.RpcError) as raised:
        live_server.stub().Generate(
            inference_service_pb2.GenerateRequest(request=request), timeout=1.0
        )
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _wait_engine_idle(live_server) == 0


def _schema(text: str) -> constraints_pb2.ConstraintIR:
    return constraints_pb2.ConstraintIR(
        json_schema=constraints_pb2.JsonSchemaConstraint(schema=text)
    )


def _call(server: LiveServer, method: str, request: generation_pb2.GenerationRequest) -> None:
    stub = server.stub()
    if method == "Generate":
        stub.Generate(inference_service_pb2.GenerateRequest(request=request), timeout=30)
    else:
        list(
            stub.GenerateStream(
                inference_service_pb2.GenerateStreamRequest(request=request), timeout=30
            )
        )


BAD_REQUESTS = [
    (
        "malformed JSON schema",
        _request(prompt="x", constraints=[_schema('{"type": ')]),
        "JSON_SCHEMA_INVALID",
        "request.constraints[0].json_schema.schema",
    ),
    (
        "unknown schema type",
        _request(prompt="x", constraints=[_schema('{"type": "nope"}')]),
        "JSON_SCHEMA_INVALID",
        "request.constraints[0].json_schema.schema",
    ),
    (
        "bad regex",
        _request(
            prompt="x",
            constraints=[
                constraints_pb2.ConstraintIR(
                    regex=constraints_pb2.RegexConstraint(pattern="a(?=b)")
                )
            ],
        ),
        "REGEX_INVALID",
        "request.constraints[0].regex.pattern",
    ),
    (
        "bad grammar",
        _request(
            prompt="x",
            constraints=[
                constraints_pb2.ConstraintIR(
                    grammar=constraints_pb2.GrammarConstraint(
                        syntax=constraints_pb2.GRAMMAR_SYNTAX_LARK, text="start: undefined_rule"
                    )
                )
            ],
        ),
        "GRAMMAR_INVALID",
        "request.constraints[0].grammar.text",
    ),
    ("empty prompt", _request(prompt=""), "PROMPT_EMPTY", "request.prompt"),
    (
        "max_tokens 0",
        _request(prompt="x", sampling=generation_pb2.SamplingParams(max_tokens=0)),
        "MAX_TOKENS_OUT_OF_RANGE",
        "request.sampling.max_tokens",
    ),
    (
        "max_tokens over cap",
        _request(prompt="x", sampling=generation_pb2.SamplingParams(max_tokens=513)),
        "MAX_TOKENS_OUT_OF_RANGE",
        "request.sampling.max_tokens",
    ),
    (
        "temperature out of range",
        _request(prompt="x", sampling=generation_pb2.SamplingParams(max_tokens=4, temperature=2.5)),
        "SAMPLING_PARAM_INVALID",
        "request.sampling.temperature",
    ),
]


@pytest.mark.parametrize(
    ("case", "request_", "reason", "field"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_input_is_invalid_argument(
    live_server: LiveServer,
    case: str,
    request_: generation_pb2.GenerationRequest,
    reason: str,
    field: str,
) -> None:
    for method in ("Generate", "GenerateStream"):
        with pytest.raises(grpc.RpcError) as raised:
            _call(live_server, method, request_)
        error = raised.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, method)
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None
        infos, violations = [], []
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                infos.append(info)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(v.field for v in bad.field_violations)
        assert [(i.reason, i.domain) for i in infos] == [(reason, "ananke.dev")]
        assert field in violations or infos[0].metadata.get("field") == field
    # The server keeps serving after bad input.
    ok = live_server.stub().Generate(
        inference_service_pb2.GenerateRequest(
            request=_request(prompt="Hi", sampling=generation_pb2.SamplingParams(max_tokens=2))
        ),
        timeout=60,
    )
    assert ok.usage.completion_tokens >= 1


def test_stop_sequence_cuts_output_and_check_sees_the_cut(live_server: LiveServer) -> None:
    # The regex forces a ";" that the stop sequence then cuts: the returned text
    # is a valid prefix of the constraint, not a complete sentence of it.
    request = _request(
        prompt="Some words: ",
        constraints=[
            constraints_pb2.ConstraintIR(
                regex=constraints_pb2.RegexConstraint(pattern="[a-z]{2,8};[a-z]{2,8}")
            )
        ],
        sampling=generation_pb2.SamplingParams(max_tokens=32, stop=[";"]),
    )
    response = live_server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=request), timeout=120
    )
    assert re.fullmatch("[a-z]{2,8}", response.text), response.text
    assert response.finish_reason == generation_pb2.FINISH_REASON_STOP_SEQUENCE
    assert response.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_INCOMPLETE
