"""The sync and asyncio clients against the fake service."""

from __future__ import annotations

import inspect

import grpc
import pytest
from ananke import (
    AnankeClient,
    AnankeError,
    AsyncAnankeClient,
    GenerationFinished,
    GenerationStarted,
    TokenChunk,
    build_generation_request,
)
from ananke import constraints as c
from ananke.v1 import generation_pb2


def test_generate_returns_result_with_provenance(fake_server) -> None:
    with AnankeClient(fake_server.address) as client:
        result = client.generate(
            "def f(",
            constraints=[c.regex("[a-z]+"), c.choice(["a", "b"])],
            max_tokens=8,
            temperature=0.0,
            seed=7,
            stop=["\n"],
            request_id="r-42",
            metadata={"maze": "1"},
        )
    assert result.text == "Hello"
    assert result.token_ids == (10, 11)
    assert result.finish_reason_name == "END_OF_SEQUENCE"
    assert result.request_id == "r-42"
    assert result.model_id == "fake/model"
    assert result.check_verdict == "SATISFIED"
    assert result.provenance.client_metadata == {"maze": "1"}
    (call,) = fake_server.fake.calls_to("Generate")
    req = call.request.request
    assert req.prompt == "def f("
    assert [ir.WhichOneof("kind") for ir in req.constraints] == ["regex", "choice"]
    assert req.sampling.max_tokens == 8
    assert req.sampling.HasField("temperature")
    assert req.sampling.seed == 7
    assert list(req.sampling.stop) == ["\n"]
    assert not req.sampling.HasField("top_p")


def test_to_dict_is_json_ready(fake_server) -> None:
    import json

    with AnankeClient(fake_server.address) as client:
        data = client.generate("x").to_dict()
    decoded = json.loads(json.dumps(data))
    assert decoded["text"] == "Hello"
    assert decoded["finish_reason"] == "END_OF_SEQUENCE"
    assert decoded["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "cached_prompt_tokens": 0,
    }
    assert decoded["provenance"]["model_id"] == "fake/model"


def test_stream_yields_started_chunks_finished(fake_server) -> None:
    with AnankeClient(fake_server.address) as client:
        stream = client.generate_stream("x", constraints=c.regex("H.*"))
        events = list(stream)
    assert isinstance(events[0], GenerationStarted)
    assert [e.text for e in events if isinstance(e, TokenChunk)] == ["Hel", "lo"]
    assert isinstance(events[-1], GenerationFinished)
    assert stream.result.text == "Hello"
    assert stream.result.token_ids == (10, 11)
    assert stream.result.request_id == "req-1"


def test_stream_texts_and_collect(fake_server) -> None:
    with AnankeClient(fake_server.address) as client:
        assert list(client.generate_stream("x").texts()) == ["Hel", "lo"]
        assert client.generate_stream("x").collect().usage.completion_tokens == 5


def test_result_before_finish_raises(fake_server) -> None:
    with AnankeClient(fake_server.address) as client:
        stream = client.generate_stream("x")
        next(stream)
        with pytest.raises(RuntimeError):
            _ = stream.result
        stream.close()


def test_stream_without_finished_event_is_an_error(fake_server) -> None:
    fake_server.fake.stream_skip_finished = True
    with AnankeClient(fake_server.address) as client, pytest.raises(AnankeError) as info:
        client.generate_stream("x").collect()
    assert info.value.code is grpc.StatusCode.UNKNOWN


def test_closing_a_stream_cancels_the_call(fake_server) -> None:
    fake_server.fake.stream_hang_after = 1
    with AnankeClient(fake_server.address) as client:
        stream = client.generate_stream("x")
        first_token = next(e for e in stream if isinstance(e, TokenChunk))
        assert first_token.text == "Hel"
        stream.close()
        assert fake_server.fake.cancelled.wait(5)
        fake_server.fake.stream_hang_after = None
        assert client.generate("again").text == "Hello"


def test_deadline_exceeded(fake_server) -> None:
    fake_server.fake.stream_hang_after = 1
    with (
        AnankeClient(fake_server.address, timeout=0.3) as client,
        pytest.raises(AnankeError) as info,
    ):
        client.generate_stream("x").collect()
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_chat_messages(fake_server) -> None:
    with AnankeClient(fake_server.address) as client:
        client.generate(
            messages=[
                ("system", "Be terse."),
                ("user", "Hi"),
                generation_pb2.ChatMessage(role=generation_pb2.CHAT_ROLE_ASSISTANT, content=""),
            ]
        )
    req = fake_server.fake.calls_to("Generate")[0].request.request
    assert not req.prompt
    assert [(m.role, m.content) for m in req.messages] == [
        (generation_pb2.CHAT_ROLE_SYSTEM, "Be terse."),
        (generation_pb2.CHAT_ROLE_USER, "Hi"),
        (generation_pb2.CHAT_ROLE_ASSISTANT, ""),
    ]


def test_request_needs_exactly_one_of_prompt_and_messages() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        build_generation_request()
    with pytest.raises(ValueError, match="exactly one"):
        build_generation_request("x", messages=[("user", "y")])
    with pytest.raises(ValueError, match="role"):
        build_generation_request(messages=[("robot", "y")])  # type: ignore[list-item]
    assert not build_generation_request("x").HasField("sampling")
    with pytest.raises(TypeError, match="max_token"):
        build_generation_request("x", max_token=3)  # type: ignore[call-arg]


def test_both_clients_take_the_same_generation_arguments() -> None:
    from ananke.request import GenerationArgs

    names = set(GenerationArgs.__annotations__)
    for method in (
        AnankeClient.generate,
        AnankeClient.generate_stream,
        AsyncAnankeClient.generate,
        AsyncAnankeClient.generate_stream,
    ):
        params = inspect.signature(method).parameters
        assert list(params)[:2] == ["self", "prompt"]
        assert {"timeout", "call_metadata", "args"} <= set(params)
        assert names.isdisjoint(params)  # each generation option is declared once


def test_api_key_and_call_metadata_are_sent(fake_server) -> None:
    with AnankeClient(
        fake_server.address, api_key="sekrit", call_metadata=[("x-team", "maze")]
    ) as client:
        client.model_info(call_metadata={"x-request-id": "abc"})
        client.generate_stream("x").collect()
    for call in fake_server.fake.calls:
        assert call.metadata["authorization"] == "Bearer sekrit"
        assert call.metadata["x-team"] == "maze"
    assert fake_server.fake.calls_to("GetModelInfo")[0].metadata["x-request-id"] == "abc"


def test_no_authorization_without_api_key(fake_server) -> None:
    with AnankeClient(fake_server.address) as client:
        client.model_info()
    assert "authorization" not in fake_server.fake.calls[0].metadata


def test_validate_model_info_health(fake_server) -> None:
    with AnankeClient(fake_server.address) as client:
        verdicts = client.validate_constraints([c.json_schema({}), c.json_schema("nope")])
        assert not verdicts.ok
        assert [v.ok for v in verdicts.verdicts] == [True, False]
        assert verdicts.verdicts[1].error.reason == "JSON_SCHEMA_INVALID"
        assert client.validate_constraints(c.json_schema({"type": "string"})).ok
        assert client.model_info().vocab_size == 100
        assert client.server_stats().active_generations == 1
        assert client.health() == "SERVING"
        fake_server.fake.set_health(False)
        assert client.health() == "NOT_SERVING"
        with pytest.raises(AnankeError) as info:
            client.health("no.such.Service")
        assert info.value.code is grpc.StatusCode.NOT_FOUND


async def test_async_generate_and_stream(fake_server) -> None:
    async with AsyncAnankeClient(fake_server.address, api_key="k") as client:
        result = await client.generate("x", constraints=c.json_schema({"type": "object"}))
        assert result.text == "Hello"
        stream = client.generate_stream("x")
        kinds = [type(e).__name__ async for e in stream]
        assert kinds == ["GenerationStarted", "TokenChunk", "TokenChunk", "GenerationFinished"]
        assert stream.result.finish_reason_name == "END_OF_SEQUENCE"
        assert [t async for t in client.generate_stream("x").texts()] == ["Hel", "lo"]
        assert (await client.validate_constraints([c.regex("a")])).ok
        assert (await client.model_info()).model_id == "fake/model"
        assert (await client.server_stats()).active_generations == 1
        assert await client.health() == "SERVING"
    assert all(call.metadata["authorization"] == "Bearer k" for call in fake_server.fake.calls)


async def test_async_stream_close_cancels(fake_server) -> None:
    fake_server.fake.stream_hang_after = 1
    async with AsyncAnankeClient(fake_server.address) as client:
        async with client.generate_stream("x") as stream:
            async for event in stream:
                if isinstance(event, TokenChunk):
                    break
        assert stream.text == "Hel"
        assert fake_server.fake.cancelled.wait(5)
        fake_server.fake.stream_hang_after = None
        assert (await client.generate("again")).text == "Hello"


async def test_async_deadline(fake_server) -> None:
    fake_server.fake.stream_hang_after = 0
    async with AsyncAnankeClient(fake_server.address) as client:
        with pytest.raises(AnankeError) as info:
            await client.generate_stream("x", timeout=0.3).collect()
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        AnankeClient("localhost:1", timeout=0)
