"""Issue 13 end to end, over real gRPC with the real vLLM engine and default
model: log probabilities (after the constraint masks), n candidates per call,
Tokenize / Detokenize, the sampling controls, and prefix-cached prompt tokens."""

from __future__ import annotations

import json
import math
import re
import uuid

import grpc
import jsonschema
import pytest
from ananke.v1 import (
    constraints_pb2,
    generation_pb2,
    inference_service_pb2,
    provenance_pb2,
)
from conftest import LiveServer
from grpc_status import rpc_status

pytestmark = pytest.mark.engine

S = generation_pb2.SamplingParams
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
    "x-guidance": {"whitespace_flexible": False},
}
OK_VERDICTS = (provenance_pb2.CHECK_VERDICT_SATISFIED, provenance_pb2.CHECK_VERDICT_INCOMPLETE)


def _chat(text: str) -> list[generation_pb2.ChatMessage]:
    return [generation_pb2.ChatMessage(role=generation_pb2.CHAT_ROLE_USER, content=text)]


def _generate(server: LiveServer, **fields: object) -> inference_service_pb2.GenerateResponse:
    request = generation_pb2.GenerationRequest(**fields)  # type: ignore[arg-type]
    return server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=request), timeout=180
    )


def _stream(
    server: LiveServer, **fields: object
) -> list[inference_service_pb2.GenerateStreamResponse]:
    request = generation_pb2.GenerationRequest(**fields)  # type: ignore[arg-type]
    return list(
        server.stub().GenerateStream(
            inference_service_pb2.GenerateStreamRequest(request=request), timeout=180
        )
    )


def _error(call: object) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    error = raised.value
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, error
    from google.rpc import error_details_pb2

    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return error.code(), info.reason, dict(info.metadata)  # type: ignore[attr-defined]
    raise AssertionError("no ErrorInfo")


def _schema(name: str = "person") -> constraints_pb2.ConstraintIR:
    return constraints_pb2.ConstraintIR(
        name=name, json_schema=constraints_pb2.JsonSchemaConstraint(schema=json.dumps(PERSON))
    )


# -- model info ------------------------------------------------------------------------


def test_model_info_reports_the_new_limits(live_server: LiveServer) -> None:
    info = live_server.stub().GetModelInfo(inference_service_pb2.GetModelInfoRequest(), timeout=30)
    assert info.max_candidates >= 2
    assert info.max_logprobs >= 5
    assert info.logprobs_mode == generation_pb2.LOGPROBS_MODE_PROCESSED
    assert info.engine_settings.enable_prefix_caching is True


# -- log probabilities -----------------------------------------------------------------


def test_logprobs_per_output_token_with_alternatives(live_server: LiveServer) -> None:
    response = _generate(
        live_server,
        prompt="def fibonacci(n):\n",
        sampling=S(max_tokens=12, logprobs=3),
    )
    assert len(response.logprobs) == len(response.token_ids) > 0
    joined = b""
    for position, token_id in zip(response.logprobs, response.token_ids, strict=True):
        token = position.token
        assert token.token_id == token_id
        assert math.isfinite(token.logprob)
        assert token.logprob <= 0.0
        joined += token.token_bytes
        assert 1 <= len(position.top) <= 3
        values = [t.logprob for t in position.top]
        assert values == sorted(values, reverse=True)
        assert [t.rank for t in position.top] == list(range(1, len(position.top) + 1))
        # Greedy: the sampled token is the most likely one.
        assert token.rank == 1
        assert position.top[0].token_id == token_id
        assert position.top[0].logprob == pytest.approx(token.logprob)
    assert joined.decode() == response.text
    assert response.provenance.sampling.logprobs == 3
    assert response.provenance.sampling.logprobs_mode == generation_pb2.LOGPROBS_MODE_PROCESSED


def test_logprobs_are_taken_after_the_constraint_mask(live_server: LiveServer) -> None:
    """Under a choice constraint only tokens that start an option may appear
    among the alternatives, and their probabilities sum to 1: the distribution
    is renormalized over what the constraint allows."""
    options = ["yes", "no"]
    response = _generate(
        live_server,
        messages=_chat("Is the sky blue? Answer yes or no."),
        constraints=[
            constraints_pb2.ConstraintIR(choice=constraints_pb2.ChoiceConstraint(options=options))
        ],
        sampling=S(max_tokens=4, logprobs=20),
    )
    assert response.text in options
    first = response.logprobs[0]
    assert first.top, "alternatives at the first position"
    for alternative in first.top:
        text = alternative.token_bytes.decode(errors="replace")
        assert any(o.startswith(text) for o in options), f"forbidden alternative {text!r}"
    total = sum(math.exp(t.logprob) for t in first.top)
    assert total == pytest.approx(1.0, abs=1e-3)


def test_logprobs_in_the_stream_match_chunks(live_server: LiveServer) -> None:
    events = _stream(
        live_server,
        prompt="The capital of France is",
        sampling=S(max_tokens=6, logprobs=0),
    )
    chunks = [e.chunk for e in events if e.WhichOneof("event") == "chunk"]
    assert chunks
    for chunk in chunks:
        assert [p.token.token_id for p in chunk.logprobs] == list(chunk.token_ids)
        assert all(not p.top for p in chunk.logprobs)  # 0 alternatives asked


def test_prompt_logprobs_cover_the_prompt(live_server: LiveServer) -> None:
    prompt = "import numpy as np\nimport pandas as pd\n"
    tokens = live_server.stub().Tokenize(
        inference_service_pb2.TokenizeRequest(text=prompt), timeout=30
    )
    response = _generate(live_server, prompt=prompt, sampling=S(max_tokens=2, prompt_logprobs=2))
    got = [p.token.token_id for p in response.prompt_logprobs]
    assert got == list(tokens.token_ids[1:])
    for position in response.prompt_logprobs:
        assert position.token.logprob <= 0.0
        assert position.token.rank >= 1
        assert 1 <= len(position.top) <= 2
    # Without the option there are none.
    plain = _generate(live_server, prompt=prompt, sampling=S(max_tokens=2))
    assert not plain.prompt_logprobs
    assert not plain.logprobs


# -- n candidates ----------------------------------------------------------------------


def test_n_candidates_each_checked(live_server: LiveServer) -> None:
    fields = {
        "messages": _chat("Describe a person as JSON with name and age."),
        "constraints": [_schema()],
        "sampling": S(max_tokens=40, n=3, temperature=1.0, seed=5, logprobs=0),
    }
    response = _generate(live_server, **fields)
    assert [c.index for c in response.candidates] == [0, 1, 2]
    prompt_tokens = {c.usage.prompt_tokens for c in response.candidates}
    assert len(prompt_tokens) == 1
    for candidate in response.candidates:
        assert candidate.provenance.candidate_index == candidate.index
        assert candidate.provenance.sampling.n == 3
        assert candidate.provenance.check.verdict in OK_VERDICTS
        assert len(candidate.logprobs) == len(candidate.token_ids)
        assert candidate.usage.completion_tokens >= len(candidate.token_ids) > 0
        if candidate.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_SATISFIED:
            jsonschema.validate(json.loads(candidate.text), PERSON)
    # The single-candidate fields are candidate 0, for old clients.
    first = response.candidates[0]
    assert (response.text, list(response.token_ids)) == (first.text, list(first.token_ids))
    assert response.provenance.candidate_index == 0
    assert len({c.text for c in response.candidates}) >= 2, "sampled candidates differ"

    events = _stream(live_server, **fields)
    assert events[0].started.candidates == 3
    chunks = [e.chunk for e in events if e.WhichOneof("event") == "chunk"]
    finals = [e.finished for e in events if e.WhichOneof("event") == "finished"]
    assert sorted(f.candidate_index for f in finals) == [0, 1, 2]
    assert events[-1].WhichOneof("event") == "finished"
    if response.provenance.fast_forward == provenance_pb2.FAST_FORWARD_ON:
        return  # multi-token steps consume randomness differently: seeds do not replay
    for candidate in response.candidates:
        text = "".join(c.text for c in chunks if c.candidate_index == candidate.index)
        assert text == candidate.text, "seeded candidates are reproducible"


# -- Tokenize / Detokenize -------------------------------------------------------------


def test_tokenize_counts_what_generate_sends(live_server: LiveServer) -> None:
    stub = live_server.stub()
    text = 'fn main() { println!("hi"); }'
    tokens = stub.Tokenize(
        inference_service_pb2.TokenizeRequest(text=text, return_tokens=True), timeout=30
    )
    assert tokens.count == len(tokens.token_ids) > 3
    assert tokens.context_length > tokens.count
    assert [t.token_id for t in tokens.tokens] == list(tokens.token_ids)
    assert b"".join(t.token_bytes for t in tokens.tokens).decode() == text
    generated = _generate(live_server, prompt=text, sampling=S(max_tokens=1))
    assert generated.usage.prompt_tokens == tokens.count

    chat = stub.Tokenize(
        inference_service_pb2.TokenizeRequest(messages=_chat("Write a haiku.")), timeout=30
    )
    assert "<|im_start|>" in chat.rendered_text
    assert "Write a haiku." in chat.rendered_text
    generated = _generate(live_server, messages=_chat("Write a haiku."), sampling=S(max_tokens=1))
    assert generated.usage.prompt_tokens == chat.count

    back = stub.Detokenize(
        inference_service_pb2.DetokenizeRequest(token_ids=tokens.token_ids), timeout=30
    )
    assert back.text == text
    special = stub.Detokenize(
        inference_service_pb2.DetokenizeRequest(token_ids=chat.token_ids), timeout=30
    )
    skipped = stub.Detokenize(
        inference_service_pb2.DetokenizeRequest(token_ids=chat.token_ids, skip_special_tokens=True),
        timeout=30,
    )
    assert "<|im_start|>" in special.text
    assert "<|im_start|>" not in skipped.text


def test_tokenize_and_detokenize_bad_input(live_server: LiveServer) -> None:
    stub = live_server.stub()
    code, reason, _ = _error(
        lambda: stub.Tokenize(inference_service_pb2.TokenizeRequest(), timeout=30)
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PROMPT_EMPTY")
    info = stub.GetModelInfo(inference_service_pb2.GetModelInfoRequest(), timeout=30)
    code, reason, metadata = _error(
        lambda: stub.Detokenize(
            inference_service_pb2.DetokenizeRequest(token_ids=[1, info.vocab_size]), timeout=30
        )
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "TOKEN_ID_INVALID")
    assert metadata["field"] == "token_ids[1]"


# -- sampling controls -----------------------------------------------------------------


def test_stop_token_ids_end_generation(live_server: LiveServer) -> None:
    prompt = "for i in range(10):\n    print(i)\n"
    baseline = _generate(live_server, prompt=prompt, sampling=S(max_tokens=12, ignore_eos=True))
    ids = list(baseline.token_ids)
    # The first token that does not occur earlier in the output.
    cut = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])
    stopped = _generate(
        live_server, prompt=prompt, sampling=S(max_tokens=12, stop_token_ids=[ids[cut]])
    )
    assert list(stopped.token_ids) == ids[:cut]
    assert stopped.finish_reason == generation_pb2.FINISH_REASON_STOP_SEQUENCE
    assert list(stopped.provenance.sampling.stop_token_ids) == [ids[cut]]


def test_ignore_eos_and_min_tokens(live_server: LiveServer) -> None:
    """A +100 bias on the end-of-sequence tokens ends the output at once;
    min_tokens holds it off for that many tokens, ignore_eos until max_tokens."""
    info = live_server.stub().GetModelInfo(inference_service_pb2.GetModelInfoRequest(), timeout=30)
    to_eos = dict.fromkeys(info.eos_token_ids, 100.0)
    prompt = "def main():\n"
    short = _generate(live_server, prompt=prompt, sampling=S(max_tokens=16, logit_bias=to_eos))
    assert short.finish_reason == generation_pb2.FINISH_REASON_END_OF_SEQUENCE
    assert short.usage.completion_tokens == 1
    held = _generate(
        live_server, prompt=prompt, sampling=S(max_tokens=16, logit_bias=to_eos, min_tokens=5)
    )
    assert held.finish_reason == generation_pb2.FINISH_REASON_END_OF_SEQUENCE
    assert held.usage.completion_tokens == 6  # five tokens, then end-of-sequence
    assert len(held.token_ids) == 5
    assert held.provenance.sampling.min_tokens == 5
    full = _generate(
        live_server, prompt=prompt, sampling=S(max_tokens=8, logit_bias=to_eos, ignore_eos=True)
    )
    assert full.usage.completion_tokens == 8
    assert full.finish_reason == generation_pb2.FINISH_REASON_MAX_TOKENS
    assert full.provenance.sampling.ignore_eos is True


def test_logit_bias_moves_the_choice_but_not_past_the_constraint(live_server: LiveServer) -> None:
    stub = live_server.stub()

    def first_id(text: str) -> int:
        return int(
            stub.Tokenize(inference_service_pb2.TokenizeRequest(text=text), timeout=30).token_ids[0]
        )

    prompt = "The best programming language is"
    baseline = _generate(live_server, prompt=prompt, sampling=S(max_tokens=1))
    banned = baseline.token_ids[0]
    moved = _generate(
        live_server, prompt=prompt, sampling=S(max_tokens=1, logit_bias={banned: -100.0})
    )
    assert moved.token_ids[0] != banned
    forced_id = first_id(" Zig")
    forced = _generate(
        live_server, prompt=prompt, sampling=S(max_tokens=1, logit_bias={forced_id: 100.0})
    )
    assert list(forced.token_ids) == [forced_id]
    # Under a regex, a +100 bias on a token the regex forbids changes nothing.
    regex = constraints_pb2.ConstraintIR(regex=constraints_pb2.RegexConstraint(pattern="(yes|no)"))
    biased = _generate(
        live_server,
        prompt=prompt,
        constraints=[regex],
        sampling=S(max_tokens=4, logit_bias={forced_id: 100.0, first_id("no"): 20.0}),
    )
    assert biased.text == "no"
    assert biased.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_SATISFIED
    assert dict(biased.provenance.sampling.logit_bias) == {forced_id: 100.0, first_id("no"): 20.0}
    # With a forced tail (fast-forwarded as drafts when the server does), the
    # bias still decides the sampled token and the forced text follows intact.
    tail = constraints_pb2.ConstraintIR(
        regex=constraints_pb2.RegexConstraint(pattern="(yes|no), without a doubt")
    )
    drafted = _generate(
        live_server,
        prompt=prompt,
        constraints=[tail],
        sampling=S(max_tokens=16, logit_bias={first_id("no"): 30.0}),
    )
    assert drafted.text == "no, without a doubt"
    assert drafted.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_SATISFIED
    if drafted.provenance.fast_forward == provenance_pb2.FAST_FORWARD_ON:
        assert drafted.provenance.forced_tokens > 0


def test_penalties_lower_repeated_tokens(live_server: LiveServer) -> None:
    """Each penalty either changes the continuation or, where the same tokens
    still win, lowers the (processed) log probability of a repeated token."""
    prompt = "1, 1, 1, 1, 1, 1, 1, 1, 1, 1,"
    baseline = _generate(live_server, prompt=prompt, sampling=S(max_tokens=10, logprobs=0))
    for name in ("repetition_penalty", "presence_penalty", "frequency_penalty"):
        value = 2.0
        response = _generate(
            live_server, prompt=prompt, sampling=S(max_tokens=10, logprobs=0, **{name: value})
        )
        assert getattr(response.provenance.sampling, name) == pytest.approx(value)
        if list(response.token_ids) != list(baseline.token_ids):
            continue
        ids = list(baseline.token_ids)
        lowered = [
            i
            for i in range(1, len(ids))
            if ids[i] in ids[:i]
            and response.logprobs[i].token.logprob < baseline.logprobs[i].token.logprob - 1e-3
        ]
        assert lowered, f"{name} changed nothing"


@pytest.mark.parametrize(
    ("sampling", "constraints", "reason", "field"),
    [
        (S(n=0), [], "CANDIDATES_OUT_OF_RANGE", "request.sampling.n"),
        (S(logprobs=10_000), [], "LOGPROBS_OUT_OF_RANGE", "request.sampling.logprobs"),
        (
            S(presence_penalty=3.0),
            [],
            "SAMPLING_PARAM_INVALID",
            "request.sampling.presence_penalty",
        ),
        (
            S(logit_bias={10**7: 1.0}),
            [],
            "TOKEN_ID_INVALID",
            "request.sampling.logit_bias[10000000]",
        ),
        (S(min_tokens=3), [_schema()], "SAMPLING_PARAM_INVALID", "request.sampling.min_tokens"),
        (S(ignore_eos=True), [_schema()], "SAMPLING_PARAM_INVALID", "request.sampling.ignore_eos"),
    ],
    ids=["n=0", "logprobs", "presence", "bias id", "min_tokens+grammar", "ignore_eos+grammar"],
)
def test_bad_sampling_controls(
    live_server: LiveServer,
    sampling: generation_pb2.SamplingParams,
    constraints: list[constraints_pb2.ConstraintIR],
    reason: str,
    field: str,
) -> None:
    code, got, metadata = _error(
        lambda: _generate(live_server, prompt="x", constraints=constraints, sampling=sampling)
    )
    assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert metadata["field"] == field


# -- prefix caching --------------------------------------------------------------------


def test_repeated_long_prompt_is_served_from_the_prefix_cache(live_server: LiveServer) -> None:
    """Maze sends the same file context again and again: the second call with a
    prompt longer than a few KV blocks (128 tokens on CPU) reuses them."""
    lines = [f"def helper_{i}(x):\n    return x * {i} + {i * 7 % 13}\n" for i in range(40)]
    prompt = f"# session {uuid.uuid4()}\n" + "".join(lines) + "\ndef main():\n"
    first = _generate(live_server, prompt=prompt, sampling=S(max_tokens=4))
    second = _generate(live_server, prompt=prompt, sampling=S(max_tokens=4))
    assert first.usage.prompt_tokens > 3 * 128
    assert first.usage.cached_prompt_tokens < 128
    cached = second.usage.cached_prompt_tokens
    assert cached >= first.usage.prompt_tokens - 128, (cached, first.usage.prompt_tokens)
    assert cached <= second.usage.prompt_tokens
    assert second.provenance.cached_prompt_tokens == cached
    assert re.sub(r"\s", "", second.text) == re.sub(r"\s", "", first.text)
