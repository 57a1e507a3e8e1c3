"""Malformed requests against the real server: a table of bad requests (broken
and huge schemas, deep nesting, invalid UTF-8 on the wire, negative and huge
numbers, unknown enum values, oversized messages, empty everything), each
answered with its documented code and ErrorInfo reason, and a property-based
fuzzer over GenerationRequest / ConstraintIR whose every answer is OK or a
rich status whose code matches its reason; the server keeps serving."""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import grpc
import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import errors_pb2, inference_service_pb2_grpc
from ananke.v1 import generation_pb2 as g
from ananke.v1 import inference_service_pb2 as s
from ananke_server.errors import ServiceError, code_for
from ananke_server.settings import Settings
from ananke_server.validation import validate_generation
from conftest import LiveServer
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The live server's settings that validation depends on (see conftest.live_server).
SERVER_SETTINGS = Settings(max_tokens_cap=512)
STREAM = "/ananke.v1.InferenceService/GenerateStream"
UNARY = "/ananke.v1.InferenceService/Generate"
VALIDATE = "/ananke.v1.InferenceService/ValidateConstraints"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _req(**kwargs: Any) -> g.GenerationRequest:
    kwargs.setdefault("sampling", g.SamplingParams(max_tokens=2))
    if "messages" not in kwargs:
        kwargs.setdefault("prompt", "Hi")
    return g.GenerationRequest(**kwargs)


def _sampling(**kwargs: Any) -> g.GenerationRequest:
    return _req(sampling=g.SamplingParams(**{"max_tokens": 2, **kwargs}))


def _one(constraint: c.ConstraintIR) -> g.GenerationRequest:
    return _req(constraints=[constraint])


def _schema(text: str) -> g.GenerationRequest:
    return _one(c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema=text)))


def _regex(pattern: str) -> g.GenerationRequest:
    return _one(c.ConstraintIR(regex=c.RegexConstraint(pattern=pattern)))


def _grammar(syntax: int, text: str) -> g.GenerationRequest:
    return _one(c.ConstraintIR(grammar=c.GrammarConstraint(syntax=syntax, text=text)))  # type: ignore[arg-type]


def _composite(combinator: int, parts: list[c.ConstraintIR]) -> c.ConstraintIR:
    return c.ConstraintIR(composite=c.CompositeConstraint(combinator=combinator, parts=parts))  # type: ignore[arg-type]


def _nested(depth: int) -> c.ConstraintIR:
    inner = c.ConstraintIR(regex=c.RegexConstraint(pattern="a"))
    for _ in range(depth):
        inner = _composite(c.COMBINATOR_SEQUENCE, [inner])
    return inner


def _chat(*messages: tuple[int, str]) -> g.GenerationRequest:
    return _req(messages=[g.ChatMessage(role=r, content=t) for r, t in messages])  # type: ignore[arg-type]


def _nested_schema(depth: int) -> str:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return json.dumps(schema)


def _wire(prompt_bytes: bytes) -> bytes:
    """A GenerateStreamRequest on the wire whose request.prompt holds raw bytes."""
    inner = b"\x12" + _varint(len(prompt_bytes)) + prompt_bytes
    return b"\x0a" + _varint(len(inner)) + inner


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _schema_wire(schema_bytes: bytes) -> bytes:
    """request.constraints[0].json_schema.schema holding raw bytes."""
    schema = b"\x0a" + _varint(len(schema_bytes)) + schema_bytes
    constraint = b"\x52" + _varint(len(schema)) + schema  # field 10, json_schema
    request = b"\x12\x02Hi" + b"\x22" + _varint(len(constraint)) + constraint
    return b"\x0a" + _varint(len(request)) + request


def _nested_wire(depth: int) -> bytes:
    """A request whose constraint nests `depth` composites: deeper than protobuf
    lets Python build, so written by hand."""
    ir = b"\x5a\x03\x0a\x01a"  # ConstraintIR{regex{pattern: "a"}}
    for _ in range(depth):
        composite = b"\x08\x01\x12" + _varint(len(ir)) + ir  # SEQUENCE, parts: [ir]
        ir = b"\x7a" + _varint(len(composite)) + composite  # ConstraintIR{composite}
    request = b"\x12\x02Hi" + b"\x22" + _varint(len(ir)) + ir
    return b"\x0a" + _varint(len(request)) + request


WIDE = "x" * (1 << 20)  # one MiB
HUGE_SCHEMA = json.dumps({"type": "object", "description": WIDE})
MANY_PROPERTIES = json.dumps(
    {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(3000)}}
)

# (name, method, request message or raw bytes, code (None: the reason's documented
# code), ErrorInfo reason ("A|B": either) or None for no ErrorInfo)
CASES: list[tuple[str, str, Any, grpc.StatusCode | None, str | None]] = [
    # Empty everything.
    ("empty request", STREAM, g.GenerationRequest(), INVALID, "PROMPT_EMPTY"),
    ("empty prompt", STREAM, _req(prompt=""), INVALID, "PROMPT_EMPTY"),
    ("empty wire message", UNARY, b"", INVALID, "PROMPT_EMPTY"),
    ("no constraints to validate", VALIDATE, s.ValidateConstraintsRequest(), INVALID,
     "CONSTRAINT_EMPTY"),
    ("constraint without kind", STREAM, _one(c.ConstraintIR(name="x")), INVALID,
     "CONSTRAINT_EMPTY"),
    ("empty schema", STREAM, _schema(""), INVALID, "JSON_SCHEMA_INVALID"),
    ("empty regex", STREAM, _regex(""), INVALID, "REGEX_INVALID"),
    ("empty grammar", STREAM, _grammar(c.GRAMMAR_SYNTAX_LARK, ""), INVALID, "GRAMMAR_INVALID"),
    ("empty choice", STREAM, _one(c.ConstraintIR(choice=c.ChoiceConstraint())), INVALID,
     "CHOICE_INVALID"),
    ("empty token mask", STREAM, _one(c.ConstraintIR(token_mask=c.TokenMaskConstraint())),
     INVALID, "TOKEN_MASK_INVALID"),
    ("empty composite", STREAM, _one(_composite(c.COMBINATOR_SEQUENCE, [])), INVALID,
     "COMPOSITE_INVALID"),
    # Prompt and messages.
    ("prompt and messages", STREAM,
     _req(prompt="a", messages=[g.ChatMessage(role=g.CHAT_ROLE_USER, content="b")]), INVALID,
     "PROMPT_INVALID"),
    ("role unset", STREAM, _chat((0, "hi")), INVALID, "PROMPT_INVALID"),
    ("unknown role 99", STREAM, _chat((99, "hi")), INVALID, "PROMPT_INVALID"),
    ("negative role", STREAM, _chat((-1, "hi")), INVALID, "PROMPT_INVALID"),
    ("empty user message", STREAM, _chat((g.CHAT_ROLE_USER, "")), INVALID, "PROMPT_INVALID"),
    ("only empty assistant turns", STREAM, _chat((g.CHAT_ROLE_ASSISTANT, "")), INVALID,
     "PROMPT_EMPTY"),
    ("1001 messages", STREAM, _chat(*[(g.CHAT_ROLE_USER, "a")] * 1001), INVALID,
     "PROMPT_INVALID"),
    ("prompt beyond the context", STREAM, _req(prompt="hello " * 5000), INVALID,
     "PROMPT_TOO_LONG"),
    # Numbers: negative, zero, huge, not finite.
    ("max_tokens 0", STREAM, _sampling(max_tokens=0), INVALID, "MAX_TOKENS_OUT_OF_RANGE"),
    ("max_tokens over cap", STREAM, _sampling(max_tokens=513), INVALID,
     "MAX_TOKENS_OUT_OF_RANGE"),
    ("max_tokens 2^32-1", STREAM, _sampling(max_tokens=2**32 - 1), INVALID,
     "MAX_TOKENS_OUT_OF_RANGE"),
    ("temperature negative", STREAM, _sampling(temperature=-1.0), INVALID,
     "SAMPLING_PARAM_INVALID"),
    ("temperature NaN", STREAM, _sampling(temperature=math.nan), INVALID,
     "SAMPLING_PARAM_INVALID"),
    ("temperature inf", STREAM, _sampling(temperature=math.inf), INVALID,
     "SAMPLING_PARAM_INVALID"),
    ("temperature 1e38", STREAM, _sampling(temperature=1e38), INVALID, "SAMPLING_PARAM_INVALID"),
    ("top_p 0", STREAM, _sampling(top_p=0.0), INVALID, "SAMPLING_PARAM_INVALID"),
    ("top_p negative", STREAM, _sampling(top_p=-0.5), INVALID, "SAMPLING_PARAM_INVALID"),
    ("top_p above 1", STREAM, _sampling(top_p=1.5), INVALID, "SAMPLING_PARAM_INVALID"),
    ("top_k 0 when set", STREAM, _sampling(top_k=0), INVALID, "SAMPLING_PARAM_INVALID"),
    ("seed 2^64-1", STREAM, _sampling(seed=2**64 - 1), INVALID, "SAMPLING_PARAM_INVALID"),
    ("17 stop sequences", STREAM, _sampling(stop=[str(i) for i in range(17)]), INVALID,
     "SAMPLING_PARAM_INVALID"),
    ("empty stop sequence", STREAM, _sampling(stop=[""]), INVALID, "SAMPLING_PARAM_INVALID"),
    ("stop of 257 bytes", STREAM, _sampling(stop=["s" * 257]), INVALID,
     "SAMPLING_PARAM_INVALID"),
    ("token id 2^32-1", STREAM,
     _one(c.ConstraintIR(token_mask=c.TokenMaskConstraint(allowed_token_ids=[2**32 - 1]))),
     INVALID, "TOKEN_MASK_INVALID"),
    # Request fields.
    ("request_id with a space", STREAM, _req(request_id="a b"), INVALID,
     "REQUEST_FIELD_INVALID"),
    ("request_id 129 chars", STREAM, _req(request_id="r" * 129), INVALID,
     "REQUEST_FIELD_INVALID"),
    ("request_id not ASCII", STREAM, _req(request_id="réq"), INVALID, "REQUEST_FIELD_INVALID"),
    ("65 metadata entries", STREAM, _req(metadata={str(i): "v" for i in range(65)}), INVALID,
     "REQUEST_FIELD_INVALID"),
    ("empty metadata key", STREAM, _req(metadata={"": "v"}), INVALID, "REQUEST_FIELD_INVALID"),
    ("metadata value 1025 bytes", STREAM, _req(metadata={"k": "v" * 1025}), INVALID,
     "REQUEST_FIELD_INVALID"),
    ("constraint name 129 chars", STREAM,
     _one(c.ConstraintIR(name="n" * 129, regex=c.RegexConstraint(pattern="a"))), INVALID,
     "REQUEST_FIELD_INVALID"),
    # Broken, huge and deeply nested schemas.
    ("schema not JSON", STREAM, _schema('{"type": '), INVALID, "JSON_SCHEMA_INVALID"),
    ("schema is an array", STREAM, _schema("[]"), INVALID, "JSON_SCHEMA_INVALID"),
    ("schema is a number", STREAM, _schema("42"), INVALID, "JSON_SCHEMA_INVALID"),
    ("unknown schema type", STREAM, _schema('{"type": "nope"}'), INVALID,
     "JSON_SCHEMA_INVALID"),
    ("schema with a dangling $ref", STREAM, _schema('{"$ref": "#/$defs/missing"}'), INVALID,
     "JSON_SCHEMA_INVALID"),
    ("schema over 1 MiB", STREAM, _schema(HUGE_SCHEMA), INVALID, "CONSTRAINT_TOO_LARGE"),
    ("schema nested 10000 deep", STREAM, _schema("[" * 10000 + "]" * 10000), INVALID,
     "JSON_SCHEMA_INVALID"),
    # Either reason is documented for this; the code must be the reason's.
    ("object schema nested 300 deep", STREAM, _schema(_nested_schema(300)), None,
     "JSON_SCHEMA_INVALID|CONSTRAINT_TOO_LARGE"),
    # Other constraint kinds.
    ("unbalanced regex", STREAM, _regex("(ab"), INVALID, "REGEX_INVALID"),
    ("regex lookahead", STREAM, _regex("a(?=b)"), INVALID, "REGEX_INVALID"),
    ("grammar syntax unset", STREAM, _grammar(0, "start: 'a'"), INVALID, "GRAMMAR_INVALID"),
    ("grammar syntax 7", STREAM, _grammar(7, "start: 'a'"), INVALID, "GRAMMAR_INVALID"),
    ("lark undefined rule", STREAM, _grammar(c.GRAMMAR_SYNTAX_LARK, "start: nope"), INVALID,
     "GRAMMAR_INVALID"),
    ("broken GBNF", STREAM, _grammar(c.GRAMMAR_SYNTAX_GBNF, "root ::= ("), INVALID,
     "GRAMMAR_INVALID"),
    ("empty choice option", STREAM,
     _one(c.ConstraintIR(choice=c.ChoiceConstraint(options=["a", ""]))), INVALID,
     "CHOICE_INVALID"),
    ("composite without combinator", STREAM, _one(_composite(0, [_nested(0)])), INVALID,
     "COMPOSITE_INVALID"),
    ("composite combinator 42", STREAM, _one(_composite(42, [_nested(0)])), INVALID,
     "COMPOSITE_INVALID"),
    ("composite nested 17 deep", STREAM, _one(_nested(17)), INVALID, "COMPOSITE_INVALID"),
    ("composite nested 200 deep on the wire", STREAM, _nested_wire(200), INVALID,
     "REQUEST_FIELD_INVALID"),
    ("65 constraints", STREAM, _req(constraints=[_nested(0)] * 65), INVALID,
     "CONSTRAINT_TOO_LARGE"),
    # Bytes on the wire: invalid UTF-8, truncation; oversized messages.
    ("invalid UTF-8 prompt", STREAM, _wire(b"\xff\xfe"), INVALID, "REQUEST_FIELD_INVALID"),
    ("invalid UTF-8 prompt, unary", UNARY, _wire(b"\xc3\x28"), INVALID,
     "REQUEST_FIELD_INVALID"),
    ("invalid UTF-8 in a schema", STREAM, _schema_wire(b'{"\xed\xa0\x80": 1}'), INVALID,
     "REQUEST_FIELD_INVALID"),
    ("truncated message", STREAM, _wire(b"Hello")[:-3], INVALID, "REQUEST_FIELD_INVALID"),
    ("garbage bytes", UNARY, b"\xff\xff\xff\xff\xff", INVALID, "REQUEST_FIELD_INVALID"),
    # grpc refuses these before any handler runs: RESOURCE_EXHAUSTED without ErrorInfo.
    ("message over 8 MiB", STREAM, _req(prompt="x" * (9 << 20)),
     grpc.StatusCode.RESOURCE_EXHAUSTED, None),
    ("wire message over 8 MiB", UNARY, _wire(b"y" * (9 << 20)),
     grpc.StatusCode.RESOURCE_EXHAUSTED, None),
]  # fmt: skip


def _serialize(method: str, request: Any) -> bytes:
    if isinstance(request, bytes):
        return request
    if method == VALIDATE:
        return bytes(request.SerializeToString())
    wrapper = s.GenerateStreamRequest if method == STREAM else s.GenerateRequest
    return bytes(wrapper(request=request).SerializeToString())


def _invoke(channel: grpc.Channel, method: str, payload: bytes, timeout: float = 60) -> int:
    """Sends raw bytes; returns how many responses came back."""
    identity = lambda data: data  # noqa: E731
    if method == STREAM:
        call = channel.unary_stream(
            method, request_serializer=identity, response_deserializer=identity
        )
        return len(list(call(payload, timeout=timeout)))
    unary = channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)
    unary(payload, timeout=timeout)
    return 1


def _error_info(error: grpc.RpcError) -> list[error_details_pb2.ErrorInfo]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return []
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    return infos


# errors.proto: CONSTRAINT_TOO_LARGE is INVALID_ARGUMENT over the size limit and
# RESOURCE_EXHAUSTED over the grammar complexity limits.
_SECOND_CODES = {("CONSTRAINT_TOO_LARGE", grpc.StatusCode.RESOURCE_EXHAUSTED)}


def _documented(reason: str, code: grpc.StatusCode) -> bool:
    """Whether errors.proto documents `code` for `reason`."""
    return code == code_for(reason) or (reason, code) in _SECOND_CODES


def test_table_has_at_least_40_rows() -> None:
    assert len(CASES) >= 40
    assert len({case[0] for case in CASES}) == len(CASES)
    assert set(KNOWN_BUGS) <= {case[0] for case in CASES}


# Rows the server gets wrong today (strict: they fail loudly once fixed).
KNOWN_BUGS: dict[str, str] = {}


@pytest.mark.parametrize(
    ("name", "method", "request_", "code", "reason"),
    [
        pytest.param(
            *case,
            id=case[0],
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[case[0]])]
            if case[0] in KNOWN_BUGS
            else [],
        )
        for case in CASES
    ],
)
def test_bad_request(
    live_server: LiveServer,
    name: str,
    method: str,
    request_: Any,
    code: grpc.StatusCode | None,
    reason: str | None,
) -> None:
    with live_server.channel() as channel, pytest.raises(grpc.RpcError) as raised:
        _invoke(channel, method, _serialize(method, request_))
    error = raised.value
    actual, details = error.code(), error.details()  # type: ignore[attr-defined]
    assert code is None or actual == code, (name, details)
    infos = _error_info(error)
    if reason is None:
        assert infos == []  # documented: grpc's own limit, no ErrorInfo
        return
    assert len(infos) == 1, (name, details)
    assert infos[0].domain == "ananke.dev"
    assert infos[0].reason in reason.split("|"), (name, infos[0].reason, details)
    assert _documented(infos[0].reason, actual), (name, actual)


def test_still_serving_after_the_table(live_server: LiveServer) -> None:
    _assert_serving(live_server)


def _assert_serving(server: LiveServer) -> None:
    with server.channel() as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    response = server.stub().Generate(
        s.GenerateRequest(request=_req(prompt="Hello", sampling=g.SamplingParams(max_tokens=2))),
        timeout=60,
    )
    assert response.usage.completion_tokens >= 1


# -- property-based fuzzing ---------------------------------------------------------------

_text = st.text(max_size=40)
_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0]),
)


@st.composite
def _constraint(draw: st.DrawFn, depth: int = 0) -> c.ConstraintIR:
    kinds = ["none", "json", "regex", "grammar", "choice", "mask"]
    if depth < 3:
        kinds.append("composite")
    kind = draw(st.sampled_from(kinds))
    name = draw(st.one_of(st.just(""), st.text(max_size=8), st.just("n" * 129)))
    if kind == "none":
        return c.ConstraintIR(name=name)
    if kind == "json":
        schema = draw(
            st.one_of(
                _text,
                st.sampled_from(
                    ['{"type": "integer"}', '{"type": "string", "maxLength": 3}', "true", "[]"]
                ),
                st.recursive(
                    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: (
                        st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
                    ),
                    max_leaves=10,
                ).map(json.dumps),
            )
        )
        return c.ConstraintIR(name=name, json_schema=c.JsonSchemaConstraint(schema=schema))
    if kind == "regex":
        pattern = draw(st.one_of(_text, st.sampled_from(["[0-9]{1,3}", "(a|b)+", "(", "a{2,1}"])))
        return c.ConstraintIR(name=name, regex=c.RegexConstraint(pattern=pattern))
    if kind == "grammar":
        syntax = draw(st.integers(-1, 4))
        text = draw(st.one_of(_text, st.sampled_from(['start: "a" | "b"', 'root ::= "x"'])))
        return c.ConstraintIR(name=name, grammar=c.GrammarConstraint(syntax=syntax, text=text))  # type: ignore[arg-type]
    if kind == "choice":
        options = draw(st.lists(_text, max_size=4))
        return c.ConstraintIR(name=name, choice=c.ChoiceConstraint(options=options))
    if kind == "mask":
        ids = st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 60000), max_size=4)
        return c.ConstraintIR(
            name=name,
            token_mask=c.TokenMaskConstraint(
                allowed_token_ids=draw(ids), forbidden_token_ids=draw(ids)
            ),
        )
    parts = draw(st.lists(_constraint(depth + 1), max_size=3))
    return _composite(draw(st.integers(-1, 5)), parts)


@st.composite
def _generation_request(draw: st.DrawFn) -> g.GenerationRequest:
    request = g.GenerationRequest()
    if draw(st.booleans()):
        request.prompt = draw(_text)
    if draw(st.booleans()):
        for _ in range(draw(st.integers(0, 3))):
            request.messages.add(role=draw(st.integers(-2, 5)), content=draw(_text))  # type: ignore[arg-type]
    request.request_id = draw(st.one_of(st.just(""), st.text(max_size=10), st.just("id-1")))
    sampling = request.sampling
    # Never unset: keeps valid generations to a few tokens.
    sampling.max_tokens = draw(st.sampled_from([0, 1, 2, 3, 513, 2**32 - 1]))
    if draw(st.booleans()):
        sampling.temperature = draw(_floats)
    if draw(st.booleans()):
        sampling.top_p = draw(_floats)
    if draw(st.booleans()):
        sampling.top_k = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        sampling.seed = draw(st.integers(0, 2**64 - 1))
    sampling.stop.extend(draw(st.lists(st.text(max_size=4), max_size=3)))
    for key, value in draw(st.dictionaries(st.text(max_size=4), _text, max_size=3)).items():
        request.metadata[key] = value
    request.constraints.extend(draw(st.lists(_constraint(), max_size=2)))
    return request


@functools.cache
def _vocab_size(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        return int(stub.GetModelInfo(s.GetModelInfoRequest(), timeout=10).vocab_size)


def _expected_validation_reason(address: str, request: g.GenerationRequest) -> str | None:
    """What request-level validation (which runs before anything else) says."""
    try:
        validate_generation(
            request, SERVER_SETTINGS, header_request_id=None, vocab_size=_vocab_size(address)
        )
    except ServiceError as error:
        return error.reason
    return None


def _check_answer(channel: grpc.Channel, method: str, payload: bytes) -> str | None:
    """None for OK; else the reason, after checking the status is a documented one."""
    failure: grpc.RpcError | None = None
    try:
        count = _invoke(channel, method, payload, timeout=120)
    except grpc.RpcError as error:
        failure = error
    if failure is None:
        assert count >= 1
        return None
    code, details = failure.code(), failure.details()  # type: ignore[attr-defined]
    infos = _error_info(failure)
    assert len(infos) == 1, (code, details)
    reason = infos[0].reason
    assert infos[0].domain == "ananke.dev"
    assert reason in errors_pb2.ErrorReason.keys()  # noqa: SIM118
    assert reason != "INTERNAL_ERROR", details
    assert _documented(reason, code), (reason, code, details)
    return reason


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=_generation_request(), unary=st.booleans())
def test_fuzz_generation_requests(
    live_server: LiveServer, request: g.GenerationRequest, unary: bool
) -> None:
    method = UNARY if unary else STREAM
    with live_server.channel() as channel:
        reason = _check_answer(channel, method, _serialize(method, request))
    expected = _expected_validation_reason(live_server.address, request)
    if expected is not None:
        assert reason == expected


@settings(max_examples=60, deadline=None, derandomize=True)
@given(constraints=st.lists(_constraint(), max_size=3))
def test_fuzz_validate_constraints(
    live_server: LiveServer, constraints: list[c.ConstraintIR]
) -> None:
    payload = s.ValidateConstraintsRequest(constraints=constraints).SerializeToString()
    with live_server.channel() as channel:
        reason = _check_answer(channel, VALIDATE, payload)
    if not constraints:
        assert reason == "CONSTRAINT_EMPTY"


def test_still_serving_after_fuzzing(live_server: LiveServer) -> None:
    _assert_serving(live_server)
