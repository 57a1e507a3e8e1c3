"""The retry loop of validated JSON schemas through the real gRPC servicer
with a fake engine that answers each attempt from its own script: a rejected
output is generated again with a new seed (greedy becomes sampled), a stream
sends only the accepted attempt, the last rejection is ABORTED
CONSTRAINT_NOT_SATISFIED_AFTER_RETRIES, and lenient returns it flagged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import generation_pb2 as g
from ananke.v1 import inference_service_pb2 as s
from ananke.v1 import provenance_pb2
from ananke_server.engine_api import EngineDelta, EngineParams, PromptTokens
from test_servicer_unit import EOS, SETTINGS, FakeEngine, rich, serving

UNIQUE = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}


def doc(text: str) -> tuple[EngineDelta, ...]:
    return (
        EngineDelta(tuple(text.encode()), text),
        EngineDelta((EOS,), "", finished=True, finish_reason="stop", stop_reason=EOS),
    )


class ScriptedEngine(FakeEngine):
    """A fake engine whose successive calls play successive scripts."""

    def __init__(self, scripts: Sequence[Sequence[EngineDelta]]) -> None:
        super().__init__()
        self.scripts = list(scripts)

    async def generate(
        self, request_id: str, prompt: PromptTokens, params: EngineParams
    ) -> AsyncIterator[EngineDelta]:
        self.script = self.scripts.pop(0) if len(self.scripts) > 1 else self.scripts[0]
        async for delta in super().generate(request_id, prompt, params):
            yield delta


def request(**options: bool) -> g.GenerationRequest:
    schema = c.JsonSchemaConstraint(
        schema=json.dumps(UNIQUE), options=c.JsonSchemaOptions(**options)
    )
    return g.GenerationRequest(
        prompt="numbers",
        constraints=[c.ConstraintIR(json_schema=schema)],
        sampling=g.SamplingParams(max_tokens=16, temperature=0.0, seed=11),
    )


async def test_rejected_output_is_generated_again_and_only_the_accepted_one_streams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = ScriptedEngine([doc("[1,1]"), doc("[2,2]"), doc("[1,2]")])
    monkeypatch.setattr("test_servicer_unit.FakeEngine", lambda: engine)
    async with serving(SETTINGS) as served:
        events = [
            e async for e in served.stub.GenerateStream(s.GenerateStreamRequest(request=request()))
        ]
    chunks = "".join(e.chunk.text for e in events if e.WhichOneof("event") == "chunk")
    assert chunks == "[1,2]"
    finished = events[-1].finished
    assert finished.provenance.constraints.enforcement_mode == (
        provenance_pb2.ENFORCEMENT_GRAMMAR_AND_VALIDATION
    )
    (item,) = finished.provenance.constraints.items
    assert item.attempts == 3
    assert item.validation.verdict == provenance_pb2.SCHEMA_VERDICT_VALID
    assert item.schema_keywords[0].pointer == "/uniqueItems"
    assert item.schema_keywords[0].enforcement == c.KEYWORD_ENFORCEMENT_VALIDATION
    seeds = [p.seed for p in engine.params]
    assert len(set(seeds)) == 3  # a new seed per attempt
    assert [p.temperature for p in engine.params] == [0.0, 0.7, 0.7]  # greedy would repeat
    assert finished.provenance.sampling.seed == seeds[-1]


async def test_last_rejection_fails_with_the_validator_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = ScriptedEngine([doc("[1,1]")])
    monkeypatch.setattr("test_servicer_unit.FakeEngine", lambda: engine)
    async with serving(SETTINGS) as served:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await served.stub.Generate(s.GenerateRequest(request=request()))
        details = rich(raised.value)
        assert details.code == grpc.StatusCode.ABORTED
        assert details.reason == "CONSTRAINT_NOT_SATISFIED_AFTER_RETRIES"
        assert details.metadata["attempts"] == str(SETTINGS.schema_max_attempts)
        assert details.metadata["schema_pointer"] == "/uniqueItems"
        assert "non-unique" in details.metadata["message"]
        assert len(engine.params) == SETTINGS.schema_max_attempts
        engine.scripts = [doc("[3]")]  # and the server keeps serving
        reply = await served.stub.Generate(s.GenerateRequest(request=request()))
        assert reply.text == "[3]"


async def test_lenient_returns_the_violation_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = ScriptedEngine([doc("[1,1]")])
    monkeypatch.setattr("test_servicer_unit.FakeEngine", lambda: engine)
    async with serving(SETTINGS) as served:
        reply = await served.stub.Generate(s.GenerateRequest(request=request(lenient=True)))
    assert reply.text == "[1,1]"
    assert reply.provenance.constraints.enforcement_mode == provenance_pb2.ENFORCEMENT_GRAMMAR
    (item,) = reply.provenance.constraints.items
    assert item.attempts == 1
    assert item.validation.verdict == provenance_pb2.SCHEMA_VERDICT_INVALID
    assert item.validation.schema_pointer == "/uniqueItems"
    assert item.schema_keywords[0].enforcement == c.KEYWORD_ENFORCEMENT_IGNORED
    assert len(engine.params) == 1
