"""The ananke.v1 contract: every message round-trips through binary and JSON,
the error reasons match the server's code table, proto3 presence works, and
both generated stub kinds (grpcio and betterproto2) expose the service."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from ananke.v1 import (
    constraints_pb2,
    errors_pb2,
    generation_pb2,
    inference_service_pb2,
    inference_service_pb2_grpc,
    provenance_pb2,
)
from ananke_betterproto.ananke import v1 as bp
from ananke_betterproto.message_pool import default_message_pool
from ananke_server.errors import _CODES
from google.protobuf import descriptor, duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message

FILES = (constraints_pb2, errors_pb2, generation_pb2, inference_service_pb2, provenance_pb2)
SERVICE = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"]
FD = descriptor.FieldDescriptor
MAX_DEPTH = 3
PROTO_DIR = Path(__file__).resolve().parent.parent / "proto" / "ananke" / "v1"


def _messages(container: Any) -> Iterator[descriptor.Descriptor]:
    for message in container.message_types_by_name.values():
        if message.GetOptions().map_entry:
            continue
        yield message
        yield from _nested(message)


def _nested(message: descriptor.Descriptor) -> Iterator[descriptor.Descriptor]:
    for nested in message.nested_types:
        if not nested.GetOptions().map_entry:
            yield nested
            yield from _nested(nested)


ALL_MESSAGES = sorted(
    {m.full_name: m for module in FILES for m in _messages(module.DESCRIPTOR)}.values(),
    key=lambda m: m.full_name,
)


def _real_oneofs(message: descriptor.Descriptor) -> list[descriptor.OneofDescriptor]:
    # proto3 `optional` fields live in synthetic one-member oneofs named `_<field>`.
    return [
        o for o in message.oneofs if not (len(o.fields) == 1 and o.name == "_" + o.fields[0].name)
    ]


def _variants(message: descriptor.Descriptor) -> int:
    return max([len(o.fields) for o in _real_oneofs(message)] or [1])


def _scalar(field: descriptor.FieldDescriptor, index: int) -> Any:
    kind = field.type
    if kind == FD.TYPE_STRING:
        return f"{field.name}-{index}-é✓"
    if kind == FD.TYPE_BYTES:
        return bytes([0, 255, index])
    if kind == FD.TYPE_BOOL:
        return True
    if kind == FD.TYPE_FLOAT:
        return 0.5 + index  # exact in float32, so JSON and binary agree
    if kind == FD.TYPE_DOUBLE:
        return 0.25 + index
    if kind == FD.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if kind in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return (1 << 63) + 5 + index  # beyond 2^53: JSON must carry it as a string
    if kind in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return -(1 << 40) - index
    if kind in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return 4_000_000_000 + index
    return -7 - index  # int32, sint32, sfixed32


def fill(message: Message, variant: int = 0, depth: int = 0) -> Message:
    """Sets every field of `message` (one member per real oneof, picked by `variant`)."""
    desc = message.DESCRIPTOR
    if desc.full_name == "google.protobuf.Timestamp":
        assert isinstance(message, timestamp_pb2.Timestamp)
        message.seconds, message.nanos = 1_700_000_000 + variant, 123_000_000
        return message
    if desc.full_name == "google.protobuf.Duration":
        assert isinstance(message, duration_pb2.Duration)
        message.seconds, message.nanos = 3 + variant, 500_000_000
        return message
    chosen = {o.fields[variant % len(o.fields)].name for o in _real_oneofs(desc)}
    skipped = {f.name for o in _real_oneofs(desc) for f in o.fields} - chosen
    for field in desc.fields:
        if field.name in skipped:
            continue
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            for i in range(2):  # keys inserted in sorted order, as deterministic output sorts
                key = f"key{i}" if key_field.type == FD.TYPE_STRING else _scalar(key_field, i)
                if value_field.message_type is None:
                    value[key] = _scalar(value_field, i)
                else:
                    fill(value[key], variant, depth + 1)
        elif field.message_type is not None:
            if depth >= MAX_DEPTH and field.message_type.full_name == desc.full_name:
                continue
            if field.is_repeated:
                if depth < MAX_DEPTH:
                    for i in range(2):
                        fill(value.add(), variant + i, depth + 1)
            elif depth < MAX_DEPTH or field.message_type.full_name.startswith("google."):
                fill(value, variant, depth + 1)
        elif field.is_repeated:
            value.extend(_scalar(field, i) for i in range(2))
        else:
            setattr(message, field.name, _scalar(field, 0))
    return message


def _instances() -> Iterator[tuple[str, Message]]:
    for desc in ALL_MESSAGES:
        cls = _class(desc)
        for variant in range(_variants(desc)):
            yield f"{desc.name}#{variant}", fill(cls(), variant)


def _class(desc: descriptor.Descriptor) -> type[Message]:
    for module in FILES:
        if desc.file.name == module.DESCRIPTOR.name:
            cls = getattr(module, desc.name)
            assert isinstance(cls, type)
            return cls
    raise AssertionError(desc.full_name)


def realistic_constraint() -> constraints_pb2.ConstraintIR:
    """A header regex, then a JSON body, then one of two trailers (nested any_of)."""
    return constraints_pb2.ConstraintIR(
        name="http-response",
        priority=7,
        composite=constraints_pb2.CompositeConstraint(
            combinator=constraints_pb2.COMBINATOR_SEQUENCE,
            parts=[
                constraints_pb2.ConstraintIR(
                    name="status",
                    regex=constraints_pb2.RegexConstraint(pattern=r"HTTP/1\.1 \d{3}\n"),
                ),
                constraints_pb2.ConstraintIR(
                    name="body",
                    json_schema=constraints_pb2.JsonSchemaConstraint(
                        schema='{"type":"object","properties":{"id":{"type":"integer"}}}',
                        options=constraints_pb2.JsonSchemaOptions(
                            whitespace_flexible=False, item_separator=", ", key_separator=": "
                        ),
                    ),
                ),
                constraints_pb2.ConstraintIR(
                    composite=constraints_pb2.CompositeConstraint(
                        combinator=constraints_pb2.COMBINATOR_ANY_OF,
                        parts=[
                            constraints_pb2.ConstraintIR(
                                choice=constraints_pb2.ChoiceConstraint(options=["\nEOF", "\nEND"])
                            ),
                            constraints_pb2.ConstraintIR(
                                grammar=constraints_pb2.GrammarConstraint(
                                    syntax=constraints_pb2.GRAMMAR_SYNTAX_LARK,
                                    text='start: "\\n#" /[a-z]+/',
                                )
                            ),
                        ],
                    )
                ),
            ],
        ),
    )


def realistic_request() -> generation_pb2.GenerationRequest:
    return generation_pb2.GenerationRequest(
        request_id="req-42",
        messages=[
            generation_pb2.ChatMessage(role=generation_pb2.CHAT_ROLE_SYSTEM, content="Be terse."),
            generation_pb2.ChatMessage(role=generation_pb2.CHAT_ROLE_USER, content="Write fib"),
            generation_pb2.ChatMessage(role=generation_pb2.CHAT_ROLE_ASSISTANT, content=""),
        ],
        constraints=[
            realistic_constraint(),
            constraints_pb2.ConstraintIR(
                token_mask=constraints_pb2.TokenMaskConstraint(forbidden_token_ids=[0, 13])
            ),
        ],
        sampling=generation_pb2.SamplingParams(
            max_tokens=128, temperature=0.0, top_p=0.5, top_k=1, seed=0, stop=["\n\n", "```"]
        ),
        context=generation_pb2.GenerationContext(
            current_file="src/fib.zig", language="zig", project_root="/home/me/proj"
        ),
        metadata={"maze.session": "s-1", "attempt": "2"},
    )


def realistic_provenance() -> provenance_pb2.Provenance:
    received = timestamp_pb2.Timestamp(seconds=1_750_000_000, nanos=1_000)
    first = timestamp_pb2.Timestamp(seconds=1_750_000_000, nanos=250_000_000)
    finished = timestamp_pb2.Timestamp(seconds=1_750_000_001, nanos=0)
    return provenance_pb2.Provenance(
        request_id="req-42",
        model_id="SmolLM2-135M-Instruct",
        model_revision="sha256:0123456789abcdef",
        engine_name="vllm",
        engine_version="0.32.0",
        llguidance_version="1.7.6",
        service_version="0.1.0",
        constraints=provenance_pb2.ConstraintProvenance(
            digest="ab" * 32,
            items=[
                provenance_pb2.ConstraintSummary(
                    name="http-response",
                    kind=constraints_pb2.CONSTRAINT_KIND_SEQUENCE,
                    priority=7,
                ),
                provenance_pb2.ConstraintSummary(kind=constraints_pb2.CONSTRAINT_KIND_TOKEN_MASK),
            ],
            cache=provenance_pb2.CACHE_OUTCOME_HIT,
            enforcement="grammar+token_mask",
        ),
        sampling=provenance_pb2.AppliedSampling(
            max_tokens=128, temperature=0.0, top_p=0.5, top_k=1, seed=(1 << 63) - 1, stop=["\n\n"]
        ),
        timestamps=provenance_pb2.GenerationTimestamps(
            received_at=received, first_token_at=first, finished_at=finished
        ),
        timings=provenance_pb2.GenerationTimings(
            queue=duration_pb2.Duration(nanos=5_000),
            compile=duration_pb2.Duration(nanos=1_500_000),
            time_to_first_token=duration_pb2.Duration(nanos=249_999_000),
            total=duration_pb2.Duration(seconds=1),
            check=duration_pb2.Duration(nanos=300_000),
        ),
        prompt_tokens=31,
        completion_tokens=17,
        finish_reason=generation_pb2.FINISH_REASON_CONSTRAINT_COMPLETE,
        check=provenance_pb2.ConstraintCheck(
            verdict=provenance_pb2.CHECK_VERDICT_SATISFIED, detail=""
        ),
        placement=provenance_pb2.Placement(
            host="worker-1", modal_task_id="ta-123", modal_region="us-east", accelerator="H100"
        ),
        client_metadata={"maze.session": "s-1"},
        context=generation_pb2.GenerationContext(language="zig"),
    )


def _hand_built() -> list[tuple[str, Message]]:
    return [
        ("ConstraintIR", realistic_constraint()),
        ("GenerationRequest", realistic_request()),
        (
            "GenerateStreamRequest",
            inference_service_pb2.GenerateStreamRequest(request=realistic_request()),
        ),
        ("Provenance", realistic_provenance()),
        (
            "GenerateResponse",
            inference_service_pb2.GenerateResponse(
                request_id="req-42",
                text="HTTP/1.1 200\n{}",
                token_ids=[1, 2, 70000],
                finish_reason=generation_pb2.FINISH_REASON_CONSTRAINT_COMPLETE,
                usage=generation_pb2.Usage(prompt_tokens=31, completion_tokens=3),
                provenance=realistic_provenance(),
            ),
        ),
    ]


GENERATED = list(_instances())
CASES = [*GENERATED, *_hand_built()]
CASE_IDS = [name for name, _ in CASES]


def test_every_message_type_is_covered() -> None:
    names = {m.full_name for m in ALL_MESSAGES}
    # Cross-check with the .proto sources: every `message X {` is in the descriptors.
    declared = {
        "ananke.v1." + name
        for path in PROTO_DIR.glob("*.proto")
        for name in re.findall(r"^\s*message (\w+)", path.read_text(), re.MULTILINE)
    }
    assert declared == names
    for expected in (
        "ananke.v1.ConstraintIR",
        "ananke.v1.Provenance",
        "ananke.v1.GenerationRequest",
    ):
        assert expected in names
    # Every request/response pair of the service is among them.
    for method in SERVICE.methods:
        assert method.input_type.full_name in names
        assert method.output_type.full_name in names


@pytest.mark.parametrize(("name", "message"), GENERATED, ids=[n for n, _ in GENERATED])
def test_all_fields_set(name: str, message: Message) -> None:
    desc = message.DESCRIPTOR
    expected = len(desc.fields) - sum(len(o.fields) - 1 for o in _real_oneofs(desc))
    assert len(message.ListFields()) == expected
    assert message.ByteSize() > 0 or not desc.fields


def test_every_oneof_member_is_covered() -> None:
    covered = {
        (m.DESCRIPTOR.full_name, m.WhichOneof(o.name))
        for _, m in GENERATED
        for o in _real_oneofs(m.DESCRIPTOR)
    }
    expected = {
        (d.full_name, f.name) for d in ALL_MESSAGES for o in _real_oneofs(d) for f in o.fields
    }
    assert covered == expected


@pytest.mark.parametrize(("name", "message"), CASES, ids=CASE_IDS)
def test_binary_round_trip(name: str, message: Message) -> None:
    data = message.SerializeToString(deterministic=True)
    again = type(message).FromString(data)
    assert again == message
    assert again.SerializeToString(deterministic=True) == data


@pytest.mark.parametrize(("name", "message"), CASES, ids=CASE_IDS)
def test_json_round_trip(name: str, message: Message) -> None:
    text = json_format.MessageToJson(message)
    parsed = json_format.Parse(text, type(message)())
    assert parsed == message
    assert json_format.Parse(text, type(message)()).SerializeToString(deterministic=True) == (
        message.SerializeToString(deterministic=True)
    )


@pytest.mark.parametrize(("name", "message"), CASES, ids=CASE_IDS)
def test_betterproto_matches_grpcio(name: str, message: Message) -> None:
    cls = _betterproto_class(message.DESCRIPTOR)
    data = message.SerializeToString(deterministic=True)
    parsed = cls.parse(data)
    assert bytes(parsed) == data
    assert cls.from_dict(parsed.to_dict()) == parsed
    assert cls.from_json(parsed.to_json()) == parsed
    # And back: the grpcio message reads what betterproto wrote.
    assert type(message).FromString(bytes(parsed)) == message


def _betterproto_class(desc: descriptor.Descriptor) -> Any:
    return default_message_pool.url_to_type["type.googleapis.com/" + desc.full_name]


def test_every_message_has_a_betterproto_class() -> None:
    pool = {url.rsplit("/", 1)[1] for url in default_message_pool.url_to_type}
    assert {m.full_name for m in ALL_MESSAGES} <= pool


def test_betterproto_builds_the_same_bytes() -> None:
    """The same content built by hand on both sides serializes identically."""
    grpcio = generation_pb2.GenerationRequest(
        request_id="r",
        prompt="def fib(",
        constraints=[
            constraints_pb2.ConstraintIR(
                name="sig", priority=2, regex=constraints_pb2.RegexConstraint(pattern=r"n\):")
            )
        ],
        sampling=generation_pb2.SamplingParams(max_tokens=0, temperature=0.0, stop=["\n"]),
        metadata={"k": "v"},
    )
    better = bp.GenerationRequest(
        request_id="r",
        prompt="def fib(",
        constraints=[
            bp.ConstraintIr(name="sig", priority=2, regex=bp.RegexConstraint(pattern=r"n\):"))
        ],
        sampling=bp.SamplingParams(max_tokens=0, temperature=0.0, stop=["\n"]),
        metadata={"k": "v"},
    )
    assert bytes(better) == grpcio.SerializeToString(deterministic=True)
    as_dict = better.to_dict()
    assert as_dict["sampling"]["maxTokens"] == 0  # set to 0 survives, unlike unset
    assert "topP" not in as_dict["sampling"]
    assert bp.GenerationRequest.from_dict(as_dict) == better
    assert json_format.ParseDict(as_dict, generation_pb2.GenerationRequest()) == grpcio


def test_error_reason_table_matches_enum() -> None:
    names = set(errors_pb2.ErrorReason.keys())
    assert set(_CODES) <= names, set(_CODES) - names
    assert names - {"ERROR_REASON_UNSPECIFIED"} == set(_CODES)
    assert "ERROR_REASON_UNSPECIFIED" not in _CODES
    for name, code in _CODES.items():
        assert isinstance(code, grpc.StatusCode), name
        assert code != grpc.StatusCode.OK, name


def test_error_reason_documented_codes() -> None:
    # The status code each reason's comment in errors.proto names.
    assert _CODES["CONSTRAINT_UNSUPPORTED"] == grpc.StatusCode.UNIMPLEMENTED
    assert _CODES["OVERLOADED"] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _CODES["NOT_READY"] == grpc.StatusCode.UNAVAILABLE
    assert _CODES["CONSTRAINT_UNSATISFIABLE"] == grpc.StatusCode.FAILED_PRECONDITION
    assert _CODES["GENERATION_DEADLINE_EXCEEDED"] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _CODES["API_KEY_INVALID"] == grpc.StatusCode.UNAUTHENTICATED
    assert _CODES["INTERNAL_ERROR"] == grpc.StatusCode.INTERNAL


def test_betterproto_error_reasons_match() -> None:
    assert {r.value for r in bp.ErrorReason} == set(errors_pb2.ErrorReason.values())


@pytest.mark.parametrize("name", ["max_tokens", "temperature", "top_p", "top_k", "seed"], ids=str)
def test_sampling_optional_presence(name: str) -> None:
    unset = generation_pb2.SamplingParams()
    assert not unset.HasField(name)
    zero = generation_pb2.SamplingParams(**{name: 0})
    assert zero.HasField(name)
    assert zero != unset
    data = zero.SerializeToString()
    assert data  # an explicit 0 is on the wire
    assert generation_pb2.SamplingParams.FromString(data).HasField(name)
    assert not generation_pb2.SamplingParams.FromString(b"").HasField(name)
    from_json = json_format.Parse(json_format.MessageToJson(zero), generation_pb2.SamplingParams())
    assert from_json.HasField(name)
    zero.ClearField(name)
    assert not zero.HasField(name)
    # betterproto2: None when unset, 0 when set to 0, same bytes.
    assert getattr(bp.SamplingParams.parse(b""), name) is None
    assert getattr(bp.SamplingParams.parse(data), name) == 0
    assert bytes(bp.SamplingParams(**{name: 0})) == data


def test_json_schema_options_presence() -> None:
    options = constraints_pb2.JsonSchemaOptions(whitespace_flexible=False, item_separator="")
    assert options.HasField("whitespace_flexible")
    assert options.HasField("item_separator")
    assert not options.HasField("lenient")
    again = constraints_pb2.JsonSchemaOptions.FromString(options.SerializeToString())
    assert again.HasField("item_separator")


def test_oneof_kind_is_exclusive() -> None:
    constraint = constraints_pb2.ConstraintIR(regex=constraints_pb2.RegexConstraint(pattern="a"))
    assert constraint.WhichOneof("kind") == "regex"
    constraint.choice.options.append("x")
    assert constraint.WhichOneof("kind") == "choice"
    assert not constraint.HasField("regex")
    assert constraints_pb2.ConstraintIR().WhichOneof("kind") is None


def _methods() -> list[str]:
    return [m.name for m in SERVICE.methods]


def test_service_methods_from_descriptor() -> None:
    assert _methods() == [
        "GenerateStream",
        "Generate",
        "ValidateConstraints",
        "GetModelInfo",
        "GetServerStats",
        "Tokenize",
        "Detokenize",
        "LoadAdapter",
        "UnloadAdapter",
        "ListAdapters",
    ]
    streaming = {m.name: (m.client_streaming, m.server_streaming) for m in SERVICE.methods}
    assert streaming["GenerateStream"] == (False, True)
    assert all(v == (False, False) for k, v in streaming.items() if k != "GenerateStream")
    for method in SERVICE.methods:
        assert method.input_type.name == method.name + "Request"
        assert method.output_type.name == method.name + "Response"


def test_grpcio_stubs_have_every_method() -> None:
    channel = grpc.insecure_channel("127.0.0.1:1")  # lazy: never connects
    try:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        for method in SERVICE.methods:
            callable_ = getattr(stub, method.name)
            expected = (
                grpc.UnaryStreamMultiCallable
                if method.server_streaming
                else grpc.UnaryUnaryMultiCallable
            )
            assert isinstance(callable_, expected), method.name
    finally:
        channel.close()
    servicer_methods = {
        name
        for name in vars(inference_service_pb2_grpc.InferenceServiceServicer)
        if not name.startswith("_")
    }
    assert servicer_methods == set(_methods())
    assert callable(inference_service_pb2_grpc.add_InferenceServiceServicer_to_server)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_betterproto_stub_has_every_method() -> None:
    public = {name for name in vars(bp.InferenceServiceStub) if not name.startswith("_")}
    assert public == {_snake(name) for name in _methods()}


def test_betterproto_stub_paths_match_descriptor() -> None:
    """The stub calls the same method paths the descriptor names."""
    seen: list[tuple[str, str]] = []

    class RecordingChannel:
        def unary_unary(self, path: str, *_: Any) -> Any:
            seen.append(("unary", path))
            return lambda message: None

        def unary_stream(self, path: str, *_: Any) -> Any:
            seen.append(("stream", path))
            return lambda message: iter(())

    stub = bp.InferenceServiceStub(RecordingChannel())  # type: ignore[arg-type]
    stub.generate(bp.GenerateRequest())
    list(stub.generate_stream(bp.GenerateStreamRequest()))
    stub.validate_constraints(bp.ValidateConstraintsRequest())
    stub.get_model_info()
    stub.get_server_stats()
    stub.tokenize(bp.TokenizeRequest())
    stub.detokenize(bp.DetokenizeRequest())
    stub.load_adapter(bp.LoadAdapterRequest())
    stub.unload_adapter(bp.UnloadAdapterRequest())
    stub.list_adapters()
    expected = {
        ("stream" if m.server_streaming else "unary", f"/{SERVICE.full_name}/{m.name}")
        for m in SERVICE.methods
    }
    assert set(seen) == expected
