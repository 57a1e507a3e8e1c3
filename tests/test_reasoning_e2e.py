"""Reasoning models against the real engine over gRPC: a server started with
`--reasoning-tags think --reasoning-open-prompt` opens `<think>` after the
chat generation prompt, so the default model reasons first; the constraint
applies only to the answer after `</think>`. The reasoning streams apart
from the answer, the answer alone re-checks SATISFIED, provenance says where
it starts, and `reasoning: false` (or a server without the setting) behaves
as before."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
from ananke import constraints as c
from ananke.v1 import generation_pb2, inference_service_pb2, provenance_pb2
from conftest import LiveServer, start_server, stop_server
from google.rpc import error_details_pb2
from grpc_status import rpc_status

pytestmark = pytest.mark.engine

SATISFIED = provenance_pb2.CHECK_VERDICT_SATISFIED
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "legs": {"type": "integer"}},
    "required": ["name", "legs"],
    "additionalProperties": False,
}
PATTERN = r"The answer is [0-9]{1,3}\."
REASONING_CHARS = 160


@pytest.fixture(scope="module")
def thinking_server() -> Iterator[LiveServer]:
    """A server whose chat prompts open a `<think>` block."""
    server = start_server(
        [
            "--max-tokens-cap",
            "512",
            "--reasoning-tags",
            "think",
            "--reasoning-open-prompt",
            "--reasoning-max-chars",
            "400",
        ],
        Path(tempfile.mkdtemp(prefix="ananke-reasoning-")),
    )
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def decode() -> Callable[[Sequence[int]], str]:
    """The model's own tokenizer, to decode token ids back to text."""
    from ananke_server.model_prep import default_model_dir
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    return lambda ids: str(tokenizer.decode(list(ids), skip_special_tokens=True))


def _request(question: str, constraint: Any, **fields: Any) -> generation_pb2.GenerationRequest:
    return generation_pb2.GenerationRequest(
        messages=[generation_pb2.ChatMessage(role=generation_pb2.CHAT_ROLE_USER, content=question)],
        constraints=[constraint] if constraint is not None else [],
        sampling=generation_pb2.SamplingParams(max_tokens=160),
        **fields,
    )


def _schema_request(**fields: Any) -> generation_pb2.GenerationRequest:
    return _request(
        "Think step by step about a spider, then answer with JSON giving its name and legs.",
        c.json_schema(SCHEMA),
        reasoning_max_chars=REASONING_CHARS,
        **fields,
    )


def _stream(server: LiveServer, request: generation_pb2.GenerationRequest) -> list[Any]:
    return list(
        server.stub().GenerateStream(
            inference_service_pb2.GenerateStreamRequest(request=request), timeout=240
        )
    )


def _reason(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return error.code(), info.reason, info.metadata["field"]


def test_stream_splits_reasoning_and_constrains_only_the_answer(
    thinking_server: LiveServer, decode: Callable[[Sequence[int]], str]
) -> None:
    events = _stream(thinking_server, _schema_request())
    chunks = [e.chunk for e in events if e.WhichOneof("event") == "chunk"]
    finished = events[-1].finished
    reasoning = "".join(ch.reasoning_text for ch in chunks)
    answer = "".join(ch.text for ch in chunks)
    provenance = finished.provenance
    print(f"reasoning={reasoning!r} answer={answer!r} record={provenance.reasoning}")
    assert provenance.check.verdict == SATISFIED, (reasoning, answer, provenance.check.detail)
    assert finished.finish_reason == generation_pb2.FINISH_REASON_CONSTRAINT_COMPLETE
    jsonschema.validate(json.loads(answer), SCHEMA)
    # The model reasoned, and its reasoning came in chunks of its own before the answer.
    assert reasoning.strip(), answer
    assert "</think>" not in reasoning + answer
    assert 0 < len(reasoning) <= REASONING_CHARS
    first_answer = next(i for i, ch in enumerate(chunks) if ch.text)
    assert not any(ch.reasoning_text for ch in chunks[first_answer + 1 :])
    # Provenance says where the constrained answer begins.
    record = provenance.reasoning
    assert record.ended
    assert record.end_tag == "</think>"
    assert record.start_tag == "<think>"
    assert record.max_chars == REASONING_CHARS
    assert record.reasoning_chars == len(reasoning)
    ids = [t for ch in chunks for t in ch.token_ids]
    whole = decode(ids)
    assert whole.removeprefix("<think>") == reasoning + "</think>" + answer
    assert whole[record.answer_start_char :] == answer
    assert 0 < record.answer_start_token < len(ids)
    assert decode(ids[record.answer_start_token :]).endswith(answer)
    assert "</think>" in decode(ids[: record.answer_start_token + 1])


def test_unary_regex_answer_and_reasoning_fields(thinking_server: LiveServer) -> None:
    request = _request(
        "How many legs do three spiders have? Think, then say 'The answer is N.'",
        c.regex(PATTERN),
        reasoning_max_chars=REASONING_CHARS,
    )
    response = thinking_server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=request), timeout=240
    )
    assert re.fullmatch(PATTERN, response.text), response
    assert response.reasoning_text.strip()
    assert response.candidates[0].reasoning_text == response.reasoning_text
    assert response.provenance.check.verdict == SATISFIED
    assert response.provenance.reasoning.ended


def test_unconstrained_output_is_split_without_a_bound(
    thinking_server: LiveServer, decode: Callable[[Sequence[int]], str]
) -> None:
    request = _request("Think about the sea.", None)
    request.sampling.max_tokens = 30
    response = thinking_server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=request), timeout=240
    )
    record = response.provenance.reasoning
    assert record.max_chars == 0  # no grammar: nothing forces the end tag
    whole = decode(response.token_ids)
    whole = whole.removeprefix("<think>")
    if record.ended:
        assert whole == response.reasoning_text + "</think>" + response.text
    else:
        assert whole == response.reasoning_text
        assert response.text == ""
    assert response.reasoning_text


def test_reasoning_off_per_request_is_the_old_behaviour(thinking_server: LiveServer) -> None:
    request = _request("Say 'The answer is 7.'", c.regex(PATTERN), reasoning=False)
    response = thinking_server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=request), timeout=240
    )
    assert re.fullmatch(PATTERN, response.text), response.text
    assert response.reasoning_text == ""
    assert not response.provenance.HasField("reasoning")
    assert response.provenance.check.verdict == SATISFIED
    # Tokenize renders chat prompts as Generate does by default: reasoning opened.
    tokens = thinking_server.stub().Tokenize(
        inference_service_pb2.TokenizeRequest(messages=request.messages)
    )
    assert tokens.rendered_text.endswith("<|im_start|>assistant\n<think>")


def test_model_info_reports_the_format(thinking_server: LiveServer) -> None:
    info = thinking_server.stub().GetModelInfo(inference_service_pb2.GetModelInfoRequest())
    assert (info.reasoning_start_tag, info.reasoning_end_tag) == ("<think>", "</think>")
    assert info.reasoning_default
    assert info.reasoning_max_chars == 400


def test_bad_reasoning_fields(thinking_server: LiveServer, live_server: LiveServer) -> None:
    too_long = _schema_request()
    too_long.reasoning_max_chars = 401
    with pytest.raises(grpc.RpcError) as raised:
        thinking_server.stub().Generate(
            inference_service_pb2.GenerateRequest(request=too_long), timeout=60
        )
    assert _reason(raised.value) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "REASONING_INVALID",
        "request.reasoning_max_chars",
    )
    with pytest.raises(grpc.RpcError) as raised:
        live_server.stub().Generate(
            inference_service_pb2.GenerateRequest(request=_schema_request(reasoning=True)),
            timeout=60,
        )
    assert _reason(raised.value) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "REASONING_UNAVAILABLE",
        "request.reasoning",
    )
    info = live_server.stub().GetModelInfo(inference_service_pb2.GetModelInfoRequest())
    assert info.reasoning_end_tag == ""
    assert not info.reasoning_default
