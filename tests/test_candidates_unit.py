"""The servicer's issue-13 paths over a real grpc.aio server with the fake
engine of test_servicer_unit: several candidates (interleaved chunks, one
finished event each, Generate's candidates), log probabilities on the wire,
stop tokens, sampling controls reaching the engine, Tokenize / Detokenize."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import generation_pb2 as g
from ananke.v1 import inference_service_pb2 as s
from ananke.v1 import provenance_pb2
from ananke_server.engine_api import EngineDelta, PositionLogprobs, TokenLogprob
from test_servicer_unit import (
    EOS,
    HELLO_REGEX,
    FakeEngine,
    Served,
    gen_request,
    generate,
    rich,
    serving,
    stream_events,
)


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[Served]:
    async with serving() as value:
        yield value


@pytest.fixture
def engine(served: Served) -> FakeEngine:
    served.engine.gate = None
    served.engine.fail_with = None
    return served.engine


def lp(token: int, value: float, *alternatives: tuple[int, float]) -> PositionLogprobs:
    top = tuple(TokenLogprob(t, v, rank) for rank, (t, v) in enumerate(alternatives, start=1))
    return PositionLogprobs(TokenLogprob(token, value, 1), top)


# Candidate 1 finishes first; its chunks interleave with candidate 0's.
TWO = (
    EngineDelta(tuple(b"He"), "He", index=0, cached_tokens=0),
    EngineDelta(tuple(b"Hel"), "Hel", index=1),
    EngineDelta((EOS,), "", finished=True, finish_reason="stop", stop_reason=EOS, index=1),
    EngineDelta(tuple(b"llo world"), "llo world", index=0),
    EngineDelta((EOS,), "", finished=True, finish_reason="stop", stop_reason=EOS, index=0),
)


async def test_candidates_stream_and_unary(served: Served, engine: FakeEngine) -> None:
    engine.script = TWO
    request = gen_request(
        constraints=[HELLO_REGEX], sampling=g.SamplingParams(n=2, temperature=1.0)
    )
    events = await stream_events(served, request)
    assert events[0].started.candidates == 2
    kinds = [(e.WhichOneof("event"), e.chunk.candidate_index) for e in events[1:]]
    assert kinds[:2] == [("chunk", 0), ("chunk", 1)]
    finals = [e.finished for e in events if e.WhichOneof("event") == "finished"]
    assert [f.candidate_index for f in finals] == [1, 0]
    by_index = {f.candidate_index: f for f in finals}
    assert by_index[0].provenance.check.verdict == provenance_pb2.CHECK_VERDICT_SATISFIED
    assert by_index[1].provenance.check.verdict == provenance_pb2.CHECK_VERDICT_INCOMPLETE
    assert by_index[1].provenance.candidate_index == 1
    assert engine.params[-1].n == 2

    response = await generate(served, request)
    assert [(x.index, x.text) for x in response.candidates] == [(0, "Hello world"), (1, "Hel")]
    assert response.text == "Hello world"
    assert response.provenance.candidate_index == 0
    assert response.candidates[1].usage.completion_tokens == 4  # "Hel" plus EOS
    assert response.candidates[1].finish_reason == g.FINISH_REASON_END_OF_SEQUENCE


async def test_logprobs_and_cached_tokens_on_the_wire(served: Served, engine: FakeEngine) -> None:
    h, i = ord("H"), ord("i")
    engine.script = (
        EngineDelta(
            (h, i),
            "Hi",
            logprobs=(lp(h, -0.5, (h, -0.5), (ord("Y"), -1.5)), lp(i, -0.25)),
            prompt_logprobs=(lp(ord("a"), -3.0),),
            cached_tokens=128,
        ),
        EngineDelta(
            (EOS,),
            "",
            finished=True,
            finish_reason="stop",
            stop_reason=EOS,
            logprobs=(lp(EOS, -0.1),),
        ),
    )
    response = await generate(
        served, gen_request(sampling=g.SamplingParams(logprobs=2, prompt_logprobs=0))
    )
    assert [p.token.token_id for p in response.logprobs] == [h, i]  # EOS left out, as in token_ids
    first = response.logprobs[0]
    assert (first.token.text, first.token.token_bytes, first.token.rank) == ("H", b"H", 1)
    assert first.token.logprob == pytest.approx(-0.5)
    assert [t.text for t in first.top] == ["H", "Y"]
    assert response.candidates[0].logprobs == response.logprobs
    assert [p.token.text for p in response.prompt_logprobs] == ["a"]
    assert response.usage.cached_prompt_tokens == len(b"Say hello")  # capped at the prompt
    assert response.provenance.cached_prompt_tokens == response.usage.cached_prompt_tokens
    assert response.provenance.sampling.logprobs == 2
    assert response.provenance.sampling.logprobs_mode == g.LOGPROBS_MODE_PROCESSED


async def test_stop_token_ends_with_stop_sequence(served: Served, engine: FakeEngine) -> None:
    stop = ord("!")
    engine.script = (
        EngineDelta(tuple(b"Hello world"), "Hello world"),
        EngineDelta((stop,), "", finished=True, finish_reason="stop", stop_reason=stop),
    )
    response = await generate(
        served,
        gen_request(constraints=[HELLO_REGEX], sampling=g.SamplingParams(stop_token_ids=[stop])),
    )
    assert response.finish_reason == g.FINISH_REASON_STOP_SEQUENCE
    assert bytes(response.token_ids) == b"Hello world"  # the stop token is left out
    # The check sees the output without the stop token: the regex is complete.
    assert response.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_SATISFIED


async def test_sampling_controls_reach_the_engine(served: Served, engine: FakeEngine) -> None:
    engine.script = (EngineDelta((EOS,), "", finished=True, finish_reason="stop"),)
    sampling = g.SamplingParams(
        min_tokens=2,
        stop_token_ids=[5, 6],
        repetition_penalty=1.5,
        presence_penalty=-1.0,
        frequency_penalty=0.5,
        logit_bias={7: -3.0, 3: 2.0},
        ignore_eos=True,
        logprobs=1,
    )
    await generate(served, gen_request(sampling=sampling))
    params = engine.params[-1]
    assert (params.min_tokens, params.stop_token_ids) == (2, (5, 6))
    assert params.repetition_penalty == pytest.approx(1.5)
    assert (params.presence_penalty, params.frequency_penalty) == (-1.0, 0.5)
    assert params.logit_bias == ((3, 2.0), (7, -3.0))
    assert params.ignore_eos is True
    assert (params.logprobs, params.prompt_logprobs) == (1, None)


@pytest.mark.parametrize("field", ["min_tokens", "ignore_eos"])
async def test_grammar_refuses_min_tokens_and_ignore_eos(served: Served, field: str) -> None:
    sampling = g.SamplingParams(**{field: 1 if field == "min_tokens" else True})
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await generate(served, gen_request(constraints=[HELLO_REGEX], sampling=sampling))
    error = rich(raised.value)
    assert (error.code, error.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "SAMPLING_PARAM_INVALID",
    )
    assert error.fields == [f"request.sampling.{field}"]


async def test_token_mask_only_allows_min_tokens(served: Served, engine: FakeEngine) -> None:
    engine.script = (EngineDelta((EOS,), "", finished=True, finish_reason="stop"),)
    mask = c.ConstraintIR(token_mask=c.TokenMaskConstraint(forbidden_token_ids=[9]))
    await generate(served, gen_request(constraints=[mask], sampling=g.SamplingParams(min_tokens=1)))
    assert engine.params[-1].min_tokens == 1


async def test_tokenize_and_detokenize(served: Served) -> None:
    tokens = await served.stub.Tokenize(s.TokenizeRequest(text="Hé", return_tokens=True))
    assert list(tokens.token_ids) == list("Hé".encode())
    assert tokens.count == 3
    assert tokens.context_length == 4096
    assert b"".join(t.token_bytes for t in tokens.tokens) == "Hé".encode()
    chat = await served.stub.Tokenize(
        s.TokenizeRequest(messages=[g.ChatMessage(role=g.CHAT_ROLE_USER, content="hi")])
    )
    assert chat.rendered_text == "<user>hi<assistant>"
    assert chat.count == len(chat.rendered_text)
    text = await served.stub.Detokenize(s.DetokenizeRequest(token_ids=list(b"ok")))
    assert text.text == "ok"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.stub.Detokenize(s.DetokenizeRequest(token_ids=[1, 256]))
    error = rich(raised.value)
    assert (error.reason, error.fields) == ("TOKEN_ID_INVALID", ["token_ids[1]"])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.stub.Tokenize(s.TokenizeRequest())
    assert rich(raised.value).reason == "PROMPT_EMPTY"


async def test_model_info_limits(served: Served) -> None:
    info = await served.stub.GetModelInfo(s.GetModelInfoRequest())
    assert (info.max_candidates, info.max_logprobs) == (16, 20)
    assert info.logprobs_mode == g.LOGPROBS_MODE_PROCESSED
