"""The servicer over a real grpc.aio server on port 0, with a fake engine
that streams fixed deltas (no model): readiness, rich error statuses,
Generate vs GenerateStream, model info and stats, ValidateConstraints,
cancellation, admission control, health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import grpc
import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import generation_pb2 as g
from ananke.v1 import inference_service_pb2 as s
from ananke.v1 import inference_service_pb2_grpc, provenance_pb2
from ananke_server.constraints import constraint_digest
from ananke_server.engine_api import EngineDelta, EngineInfo, EngineParams, PromptTokens
from ananke_server.errors import EngineDeadError
from ananke_server.provenance import fast_forward_mode
from ananke_server.server import SERVICE_NAME, RunningServer, build_server
from ananke_server.settings import Settings
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from llguidance import LLTokenizer

EOS = 0
HELLO: tuple[EngineDelta, ...] = (
    EngineDelta(tuple(b"He"), "He"),
    EngineDelta(tuple(b"llo"), "llo"),
    EngineDelta(tuple(b" world"), " world"),
    EngineDelta((EOS,), "", finished=True, finish_reason="stop", stop_reason=EOS),
)
HELLO_REGEX = c.ConstraintIR(name="greeting", regex=c.RegexConstraint(pattern="Hel+o wor.d"))
SETTINGS = Settings(
    host="127.0.0.1",
    port=0,
    max_tokens_cap=512,
    compile_cache_size=8,
    compile_disk_cache_bytes=0,  # no disk cache but where a test asks for one
)


class FakeEngine:
    """Implements the Engine protocol: streams `script`, optionally pausing
    before its second delta until `gate` is set."""

    def __init__(self) -> None:
        self.info = EngineInfo(
            model_id="fake/model",
            model_revision="rev-1",
            engine_name="fake",
            engine_version="0.0.1",
            context_length=4096,
            vocab_size=256,
            eos_token_ids=(EOS,),
            accelerator="cpu",
        )
        self.script: Sequence[EngineDelta] = HELLO
        self.fail_with: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.blocked = asyncio.Event()
        self.params: list[EngineParams] = []
        self.prompts: list[PromptTokens] = []
        self.started: list[str] = []
        self.closed: list[str] = []
        self.running = 0
        self.encode_threads: list[int] = []
        self.encode_delay_s = 0.0

    async def start(self) -> None:
        return None

    def llg_tokenizer(self) -> Any:
        return LLTokenizer("byte")

    def encode_prompt(self, prompt: str) -> PromptTokens:
        self.encode_threads.append(threading.get_ident())
        time.sleep(self.encode_delay_s)
        return PromptTokens(token_ids=list(prompt.encode()), text=prompt)

    def encode_chat(self, messages: Sequence[tuple[str, str]], suffix: str = "") -> PromptTokens:
        text = "".join(f"<{role}>{content}" for role, content in messages) + "<assistant>" + suffix
        return PromptTokens(token_ids=list(text.encode()), text=text)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool) -> str:
        kept = [t for t in token_ids if not (skip_special_tokens and t == EOS)]
        return bytes(kept).decode(errors="replace")

    async def generate(
        self, request_id: str, prompt: PromptTokens, params: EngineParams
    ) -> AsyncIterator[EngineDelta]:
        self.params.append(params)
        self.prompts.append(prompt)
        self.started.append(request_id)
        self.running += 1
        try:
            for index, delta in enumerate(self.script):
                if index == 1 and self.gate is not None:
                    self.blocked.set()
                    await self.gate.wait()
                if index == 1 and self.fail_with is not None:
                    raise self.fail_with
                yield delta
        finally:
            self.running -= 1
            self.closed.append(request_id)

    async def abort(self, request_id: str) -> None:
        return None

    def unfinished_requests(self) -> int:
        return self.running

    async def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


@dataclass
class Served:
    running: RunningServer
    engine: FakeEngine
    channel: grpc.aio.Channel
    stub: inference_service_pb2_grpc.InferenceServiceStub

    @property
    def counters(self) -> Any:
        return self.running.servicer.counters


@contextlib.asynccontextmanager
async def serving(settings: Settings = SETTINGS, *, ready: bool = True) -> AsyncIterator[Served]:
    """A started server on a free port with a fake engine (ready unless told otherwise)."""
    engine = FakeEngine()
    running = build_server(settings, engine)
    await running.state.publish()
    await running.server.start()
    if ready:
        running.servicer.engine_ready()
        await running.state.serve()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield Served(
            running, engine, channel, inference_service_pb2_grpc.InferenceServiceStub(channel)
        )
    finally:
        await channel.close()
        await running.server.stop(0)
        running.servicer.close()


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[Served]:
    async with serving() as value:
        yield value


@pytest.fixture
def engine(served: Served) -> FakeEngine:
    """The shared fake engine, reset to its default script."""
    served.engine.script = HELLO
    served.engine.fail_with = None
    served.engine.gate = None
    served.engine.blocked = asyncio.Event()
    return served.engine


def gen_request(**fields: Any) -> g.GenerationRequest:
    fields.setdefault("prompt", "Say hello")
    return g.GenerationRequest(**fields)


@dataclass
class Rich:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    fields: list[str]
    retry_delay_s: float | None


def rich(error: grpc.aio.AioRpcError) -> Rich:
    """The AIP-193 details of a failed call; asserts exactly one ErrorInfo."""
    status = rpc_status.from_call(error)
    assert isinstance(status, status_pb2.Status), (
        f"no rich status: {error.code()} {error.details()}"
    )
    infos, fields, retry = [], [], None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info_retry = error_details_pb2.RetryInfo()
            detail.Unpack(info_retry)
            retry = info_retry.retry_delay.ToMilliseconds() / 1000
    assert len(infos) == 1
    assert infos[0].domain == "ananke.dev"
    return Rich(error.code(), infos[0].reason, dict(infos[0].metadata), fields, retry)


async def stream_events(
    served: Served, request: g.GenerationRequest, **kw: Any
) -> list[s.GenerateStreamResponse]:
    call = served.stub.GenerateStream(s.GenerateStreamRequest(request=request), timeout=10, **kw)
    return [event async for event in call]


async def read_rest(call: Any) -> list[s.GenerateStreamResponse]:
    """The remaining events of a stream already read with call.read()."""
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


async def generate(served: Served, request: g.GenerationRequest, **kw: Any) -> s.GenerateResponse:
    return await served.stub.Generate(s.GenerateRequest(request=request), timeout=5, **kw)


async def call_rpc(served: Served, rpc: str, request: g.GenerationRequest) -> object:
    if rpc == "Generate":
        return await generate(served, request)
    return await stream_events(served, request)


async def wait_for(predicate: Any, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# -- readiness -------------------------------------------------------------------------------------


async def test_not_ready_before_engine_ready() -> None:
    async with serving(ready=False) as served:
        health = health_pb2_grpc.HealthStub(served.channel)
        for name in ("", SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        calls = [
            served.stub.Generate(s.GenerateRequest(request=gen_request()), timeout=5),
            served.stub.ValidateConstraints(
                s.ValidateConstraintsRequest(constraints=[HELLO_REGEX]), timeout=5
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            details = rich(raised.value)
            assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "NOT_READY")
            assert details.retry_delay_s == 1.0
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stream_events(served, gen_request())
        assert rich(raised.value).reason == "NOT_READY"
        assert served.engine.started == []
        # Model info needs no compiler.
        info = await served.stub.GetModelInfo(s.GetModelInfoRequest(), timeout=5)
        assert info.model_id == "fake/model"
        served.running.servicer.engine_ready()
        await served.running.state.serve()
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert (
            await served.stub.Generate(s.GenerateRequest(request=gen_request()), timeout=5)
        ).text


async def test_shutting_down_refuses_new_calls() -> None:
    async with serving() as served:
        await served.running.state.drain()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await served.stub.Generate(s.GenerateRequest(request=gen_request()), timeout=5)
        details = rich(raised.value)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")


# -- errors through the wire -----------------------------------------------------------------------

BAD = [
    (
        "no-prompt",
        g.GenerationRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PROMPT_EMPTY",
        "request.prompt",
    ),
    (
        "top-p",
        gen_request(sampling=g.SamplingParams(top_p=1.5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "SAMPLING_PARAM_INVALID",
        "request.sampling.top_p",
    ),
    (
        "max-tokens-cap",
        gen_request(sampling=g.SamplingParams(max_tokens=513)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MAX_TOKENS_OUT_OF_RANGE",
        "request.sampling.max_tokens",
    ),
    (
        "bad-role",
        g.GenerationRequest(messages=[g.ChatMessage(content="x")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PROMPT_INVALID",
        "request.messages[0].role",
    ),
    (
        "bad-regex",
        gen_request(constraints=[c.ConstraintIR(regex=c.RegexConstraint(pattern="(?=x)"))]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REGEX_INVALID",
        "request.constraints[0].regex.pattern",
    ),
    (
        "mask-out-of-vocab",
        gen_request(
            constraints=[c.ConstraintIR(token_mask=c.TokenMaskConstraint(allowed_token_ids=[256]))]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TOKEN_MASK_INVALID",
        "request.constraints[0].token_mask.allowed_token_ids[0]",
    ),
    (
        "empty-intersection",
        gen_request(
            constraints=[
                c.ConstraintIR(regex=c.RegexConstraint(pattern="a")),
                c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema='{"type":"integer"}')),
            ]
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CONSTRAINT_UNSATISFIABLE",
        "request.constraints",
    ),
    (
        "mask-inside-sequence",
        gen_request(
            constraints=[
                c.ConstraintIR(
                    composite=c.CompositeConstraint(
                        combinator=c.COMBINATOR_SEQUENCE,
                        parts=[
                            c.ConstraintIR(regex=c.RegexConstraint(pattern="a")),
                            c.ConstraintIR(
                                token_mask=c.TokenMaskConstraint(forbidden_token_ids=[1])
                            ),
                        ],
                    )
                )
            ]
        ),
        grpc.StatusCode.UNIMPLEMENTED,
        "CONSTRAINT_UNSUPPORTED",
        "request.constraints[0].composite.parts[1]",
    ),
    (
        "prompt-too-long",
        gen_request(prompt="x" * 3900, sampling=g.SamplingParams(max_tokens=500)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PROMPT_TOO_LONG",
        "request.prompt",
    ),
]


@pytest.mark.parametrize("rpc", ["Generate", "GenerateStream"])
@pytest.mark.parametrize(
    ("name", "request_", "code", "reason", "field"), BAD, ids=[b[0] for b in BAD]
)
async def test_bad_input_is_a_rich_status(
    served: Served,
    engine: FakeEngine,
    rpc: str,
    name: str,
    request_: g.GenerationRequest,
    code: grpc.StatusCode,
    reason: str,
    field: str,
) -> None:
    failed_before = served.counters.failed
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call_rpc(served, rpc, request_)
    details = rich(raised.value)
    assert (details.code, details.reason) == (code, reason)
    assert details.metadata["field"] == field
    assert details.fields in ([field], [])
    assert served.counters.failed == failed_before + 1
    assert engine.started == [] or all(p.max_tokens <= 512 for p in engine.params)


async def test_validate_constraints_needs_a_constraint(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.stub.ValidateConstraints(s.ValidateConstraintsRequest(), timeout=5)
    details = rich(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CONSTRAINT_EMPTY")


async def test_engine_death_is_unavailable() -> None:
    async with serving() as served:
        served.engine.fail_with = EngineDeadError("core died")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stream_events(served, gen_request())
        details = rich(raised.value)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "ENGINE_UNAVAILABLE")
        assert details.retry_delay_s == 5.0
        assert served.running.state.failed.is_set()


async def test_unexpected_engine_error_is_internal(served: Served, engine: FakeEngine) -> None:
    engine.fail_with = RuntimeError("secret internals")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.stub.Generate(s.GenerateRequest(request=gen_request()), timeout=5)
    details = rich(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL_ERROR")
    assert "secret" not in raised.value.details()
    assert engine.closed[-1] == engine.started[-1]


async def test_top_k_above_vocab_rejected(served: Served, engine: FakeEngine) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.stub.Generate(
            s.GenerateRequest(request=gen_request(sampling=g.SamplingParams(top_k=100_000))),
            timeout=5,
        )
    details = rich(raised.value)
    assert (details.reason, details.metadata["field"]) == (
        "SAMPLING_PARAM_INVALID",
        "request.sampling.top_k",
    )


async def test_cached_error_field_path_over_the_wire(served: Served, engine: FakeEngine) -> None:
    items = [
        c.ConstraintIR(regex=c.RegexConstraint(pattern="b+")),
        c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema='{"type":"boolean"}')),
    ]
    verdicts = await served.stub.ValidateConstraints(
        s.ValidateConstraintsRequest(constraints=items), timeout=5
    )
    assert verdicts.combined_error.field == "constraints"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.stub.Generate(
            s.GenerateRequest(request=gen_request(constraints=items)), timeout=5
        )
    assert rich(raised.value).metadata["field"] == "request.constraints"


# -- generation ------------------------------------------------------------------------------------


async def test_generate_equals_stream(served: Served, engine: FakeEngine) -> None:
    request = gen_request(
        request_id="req-same",
        constraints=[HELLO_REGEX],
        sampling=g.SamplingParams(seed=7, temperature=0.5, stop=["\n\n"]),
        context=g.GenerationContext(language="text", current_file="a.txt"),
        metadata={"k": "v"},
    )
    events = await stream_events(served, request)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started"
    assert kinds[-1] == "finished"
    assert set(kinds[1:-1]) == {"chunk"}
    started, finished = events[0].started, events[-1].finished
    chunks = [e.chunk for e in events[1:-1]]
    assert started.request_id == "req-same"
    assert started.model_id == "fake/model"
    assert started.constraint_digest == constraint_digest([HELLO_REGEX])

    response = await served.stub.Generate(s.GenerateRequest(request=request), timeout=10)
    assert response.request_id == "req-same"
    assert response.text == "".join(ch.text for ch in chunks) == "Hello world"
    assert list(response.token_ids) == [t for ch in chunks for t in ch.token_ids]
    assert list(response.token_ids) == list(b"Hello world")  # EOS is not output
    assert response.finish_reason == finished.finish_reason == g.FINISH_REASON_CONSTRAINT_COMPLETE
    assert response.usage == finished.usage
    assert response.usage.prompt_tokens == len(b"Say hello")

    for provenance, cache in (
        (finished.provenance, provenance_pb2.CACHE_OUTCOME_MISS),
        (response.provenance, provenance_pb2.CACHE_OUTCOME_HIT),
    ):
        assert provenance.request_id == "req-same"
        assert provenance.model_id == "fake/model"
        assert provenance.model_revision == "rev-1"
        assert provenance.engine_name == "fake"
        assert provenance.llguidance_version == version("llguidance")
        assert provenance.constraints.digest == started.constraint_digest
        assert provenance.constraints.cache == cache
        assert provenance.constraints.enforcement == "grammar"
        assert [(i.name, i.kind) for i in provenance.constraints.items] == [
            ("greeting", c.CONSTRAINT_KIND_REGEX)
        ]
        assert provenance.sampling.seed == 7
        assert provenance.sampling.temperature == 0.5
        assert list(provenance.sampling.stop) == ["\n\n"]
        assert provenance.check.verdict == provenance_pb2.CHECK_VERDICT_SATISFIED
        assert provenance.finish_reason == g.FINISH_REASON_CONSTRAINT_COMPLETE
        assert dict(provenance.client_metadata) == {"k": "v"}
        assert provenance.context.current_file == "a.txt"
        assert provenance.placement.accelerator == "cpu"
        assert provenance.placement.host
        stamps = provenance.timestamps
        assert stamps.received_at.ToNanoseconds() <= stamps.first_token_at.ToNanoseconds()
        assert stamps.first_token_at.ToNanoseconds() <= stamps.finished_at.ToNanoseconds()
        assert (
            provenance.timings.total.ToNanoseconds()
            >= provenance.timings.time_to_first_token.ToNanoseconds()
        )
    params = engine.params[-1]
    assert params.grammar is not None
    assert "Hel+o wor.d" in params.grammar
    assert (params.seed, params.stop, params.max_tokens) == (7, ("\n\n",), 256)
    # Each call gets its own engine request id, and every generator was closed.
    assert len(set(engine.started[-2:])) == 2
    assert engine.closed[-2:] == engine.started[-2:]


async def test_concurrent_prompts_tokenize_on_one_thread(
    served: Served, engine: FakeEngine
) -> None:
    """vLLM's tokenizer deep-copies itself when more threads use it at once than
    it has copies: every prompt is tokenized on the same single thread."""
    engine.encode_threads.clear()
    engine.encode_delay_s = 0.02  # long enough that a pool would use several threads
    registry = served.running.metrics.registry
    tokens_before = registry.get_sample_value("ananke_generated_tokens_total") or 0.0
    try:
        await asyncio.gather(*(stream_events(served, gen_request()) for _ in range(6)))
    finally:
        engine.encode_delay_s = 0.0
    assert len(engine.encode_threads) == 6
    assert len(set(engine.encode_threads)) == 1
    assert engine.encode_threads[0] != threading.get_ident()  # off the event loop
    # Every engine token is counted once (EOS included), at the end of each generation.
    per_call = sum(len(d.token_ids) for d in HELLO)
    tokens_after = registry.get_sample_value("ananke_generated_tokens_total") or 0.0
    assert tokens_after - tokens_before == 6 * per_call


async def test_unconstrained_and_header_request_id(served: Served, engine: FakeEngine) -> None:
    response = await served.stub.Generate(
        s.GenerateRequest(request=gen_request()),
        timeout=5,
        metadata=(("x-request-id", "from-header"),),
    )
    assert response.request_id == "from-header"
    assert response.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_UNCONSTRAINED
    assert response.provenance.constraints.cache == provenance_pb2.CACHE_OUTCOME_UNSPECIFIED
    assert response.finish_reason == g.FINISH_REASON_END_OF_SEQUENCE
    assert engine.params[-1].grammar is None


async def test_chat_messages_use_the_template(served: Served, engine: FakeEngine) -> None:
    request = g.GenerationRequest(
        messages=[
            g.ChatMessage(role=g.CHAT_ROLE_SYSTEM, content="terse"),
            g.ChatMessage(role=g.CHAT_ROLE_USER, content="hi"),
        ]
    )
    response = await served.stub.Generate(s.GenerateRequest(request=request), timeout=5)
    assert engine.prompts[-1].text == "<system>terse<user>hi<assistant>"
    assert response.usage.prompt_tokens == len(engine.prompts[-1].token_ids)


async def test_token_mask_reaches_the_engine(served: Served, engine: FakeEngine) -> None:
    mask = c.ConstraintIR(token_mask=c.TokenMaskConstraint(forbidden_token_ids=[ord("z")]))
    response = await served.stub.Generate(
        s.GenerateRequest(request=gen_request(constraints=[HELLO_REGEX, mask])), timeout=5
    )
    params = engine.params[-1]
    assert params.forbidden_token_ids == frozenset({ord("z")})
    # A grammar with a mask goes through the intersection processor, not the built-in path.
    assert params.grammar is None
    assert len(params.intersection) == 1
    assert response.provenance.constraints.enforcement == "logits_processor(1 grammars)+token_mask"
    assert response.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_SATISFIED
    assert response.finish_reason == g.FINISH_REASON_CONSTRAINT_COMPLETE


async def test_token_mask_alone_reaches_the_engine(served: Served, engine: FakeEngine) -> None:
    mask = c.ConstraintIR(token_mask=c.TokenMaskConstraint(allowed_token_ids=list(b"Helo wrd")))
    response = await generate(served, gen_request(constraints=[mask]))
    params = engine.params[-1]
    assert (params.grammar, params.intersection) == (None, ())
    assert params.allowed_token_ids == frozenset(b"Helo wrd")
    assert response.provenance.constraints.enforcement == "token_mask"
    assert response.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_SATISFIED
    assert response.finish_reason == g.FINISH_REASON_END_OF_SEQUENCE


async def test_dead_end_during_generation_is_unsatisfiable(
    served: Served, engine: FakeEngine
) -> None:
    # The processor forces EOS when nothing is allowed: after "Hello" only " " fits
    # the regex, and the mask forbids it ("Help" would have satisfied both).
    engine.script = (*HELLO[:2], HELLO[-1])
    mask = c.ConstraintIR(token_mask=c.TokenMaskConstraint(forbidden_token_ids=[ord(" ")]))
    regex = c.ConstraintIR(regex=c.RegexConstraint(pattern="Hello world|Help"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await generate(served, gen_request(constraints=[regex, mask]))
    details = rich(raised.value)
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CONSTRAINT_UNSATISFIABLE",
    )
    assert details.metadata["field"] == "request.constraints"
    assert details.metadata["tokens"] == "5"
    assert details.metadata["cause"] == "proved"


FINISHES = [
    ("eos", HELLO, g.FINISH_REASON_END_OF_SEQUENCE, provenance_pb2.CHECK_VERDICT_UNCONSTRAINED),
    (
        "length",
        (EngineDelta(tuple(b"Hel"), "Hel", finished=True, finish_reason="length"),),
        g.FINISH_REASON_MAX_TOKENS,
        provenance_pb2.CHECK_VERDICT_UNCONSTRAINED,
    ),
    (
        "stop-string",
        (EngineDelta(tuple(b"Hi"), "Hi", finished=True, finish_reason="stop", stop_reason="\n"),),
        g.FINISH_REASON_STOP_SEQUENCE,
        provenance_pb2.CHECK_VERDICT_UNCONSTRAINED,
    ),
]


@pytest.mark.parametrize(
    ("name", "script", "finish", "verdict"), FINISHES, ids=[f[0] for f in FINISHES]
)
async def test_finish_reasons(
    served: Served, engine: FakeEngine, name: str, script: Any, finish: int, verdict: int
) -> None:
    engine.script = script
    response = await served.stub.Generate(s.GenerateRequest(request=gen_request()), timeout=5)
    assert response.finish_reason == finish
    assert response.provenance.check.verdict == verdict


async def test_incomplete_output_is_reported(served: Served, engine: FakeEngine) -> None:
    engine.script = (EngineDelta(tuple(b"Hel"), "Hel", finished=True, finish_reason="length"),)
    response = await served.stub.Generate(
        s.GenerateRequest(request=gen_request(constraints=[HELLO_REGEX])), timeout=5
    )
    assert response.finish_reason == g.FINISH_REASON_MAX_TOKENS
    assert response.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_INCOMPLETE
    assert "greeting" in response.provenance.check.detail


async def test_violating_output_is_reported(served: Served, engine: FakeEngine) -> None:
    engine.script = (EngineDelta(tuple(b"Bye"), "Bye", finished=True, finish_reason="stop"),)
    response = await served.stub.Generate(
        s.GenerateRequest(request=gen_request(constraints=[HELLO_REGEX])), timeout=5
    )
    assert response.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_VIOLATED
    assert response.finish_reason == g.FINISH_REASON_END_OF_SEQUENCE


async def test_engine_abort_is_not_a_success(served: Served, engine: FakeEngine) -> None:
    engine.script = (EngineDelta(tuple(b"He"), "He", finished=True, finish_reason="abort"),)
    with pytest.raises(grpc.aio.AioRpcError):
        await served.stub.Generate(s.GenerateRequest(request=gen_request()), timeout=5)


# -- model info and stats --------------------------------------------------------------------------


async def test_get_model_info(served: Served) -> None:
    info = await served.stub.GetModelInfo(s.GetModelInfoRequest(), timeout=5)
    assert info.model_id == "fake/model"
    assert info.model_revision == "rev-1"
    assert (info.engine_name, info.engine_version) == ("fake", "0.0.1")
    assert info.llguidance_version == version("llguidance")
    assert info.service_version
    assert info.context_length == 4096
    assert info.vocab_size == 256
    assert list(info.eos_token_ids) == [EOS]
    assert set(info.supported_constraint_kinds) == set(c.ConstraintKind.values()) - {
        c.CONSTRAINT_KIND_UNSPECIFIED
    }
    assert info.max_tokens_limit == 512
    assert info.max_constraint_bytes == SETTINGS.max_constraint_bytes


async def test_get_model_info_reports_the_engine_settings(
    served: Served, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from ananke_server.engine_api import EngineSettingsInfo

    settings = EngineSettingsInfo(
        tensor_parallel_size=4,
        gpu_memory_utilization=0.85,
        dtype="bfloat16",
        quantization="auto_awq",
        max_num_batched_tokens=8192,
        max_num_seqs=10,
        enable_prefix_caching=True,
        kv_cache_dtype="fp8",
        distributed_executor_backend="mp",
        enforce_eager=False,
    )
    monkeypatch.setattr(engine, "info", dataclasses.replace(engine.info, engine_settings=settings))
    info = await served.stub.GetModelInfo(s.GetModelInfoRequest(), timeout=5)
    reported = info.engine_settings
    assert (reported.tensor_parallel_size, reported.quantization) == (4, "auto_awq")
    assert reported.gpu_memory_utilization == pytest.approx(0.85)
    assert (reported.dtype, reported.kv_cache_dtype) == ("bfloat16", "fp8")
    assert (reported.max_num_batched_tokens, reported.max_num_seqs) == (8192, 10)
    assert reported.enable_prefix_caching is True
    assert reported.distributed_executor_backend == "mp"
    assert reported.enforce_eager is False


async def test_get_server_stats(served: Served, engine: FakeEngine) -> None:
    before = await served.stub.GetServerStats(s.GetServerStatsRequest(), timeout=5)
    await served.stub.Generate(
        s.GenerateRequest(request=gen_request(constraints=[HELLO_REGEX])), timeout=5
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await served.stub.Generate(s.GenerateRequest(request=g.GenerationRequest()), timeout=5)
    after = await served.stub.GetServerStats(s.GetServerStatsRequest(), timeout=5)
    assert after.generations.completed == before.generations.completed + 1
    assert after.generations.failed == before.generations.failed + 1
    assert after.active_generations == after.queued_generations == 0
    assert after.engine_unfinished_requests == 0
    assert after.compile_cache.capacity == SETTINGS.compile_cache_size
    assert after.compile_cache.hits + after.compile_cache.misses == (
        before.compile_cache.hits + before.compile_cache.misses + 1
    )
    assert 1 <= after.compile_cache.size <= SETTINGS.compile_cache_size
    assert after.uptime.ToNanoseconds() > before.uptime.ToNanoseconds() > 0


async def test_compiled_constraints_survive_a_restart(tmp_path: Path) -> None:
    """A second server on the same compile cache folder loads what the first compiled."""
    settings = dataclasses.replace(
        SETTINGS, compile_disk_cache_dir=str(tmp_path), compile_disk_cache_bytes=1 << 20
    )
    request = s.GenerateRequest(request=gen_request(constraints=[HELLO_REGEX]))
    outcomes = []
    for _ in range(2):
        async with serving(settings) as server:
            response = await server.stub.Generate(request, timeout=5)
            outcomes.append(response.provenance.constraints.cache)
            stats = await server.stub.GetServerStats(s.GetServerStatsRequest(), timeout=5)
            registry = server.running.metrics.registry
            lookups = {
                result: registry.get_sample_value(
                    "ananke_constraint_cache_lookups_total", {"result": result}
                )
                for result in ("hit", "miss", "disk")
            }
    assert lookups == {"hit": 0.0, "miss": 0.0, "disk": 1.0}  # the second server's
    assert outcomes == [provenance_pb2.CACHE_OUTCOME_MISS, provenance_pb2.CACHE_OUTCOME_DISK_HIT]
    cache = stats.compile_cache
    assert (cache.misses, cache.disk_hits, cache.disk_misses, cache.disk_writes) == (1, 1, 0, 0)
    assert (cache.disk_entries, cache.disk_max_bytes) == (1, settings.compile_disk_cache_bytes)
    assert cache.disk_bytes > 0
    assert cache.disk_discarded == 0


# -- ValidateConstraints ---------------------------------------------------------------------------


async def test_validate_constraints_ok(served: Served) -> None:
    items = [HELLO_REGEX, c.ConstraintIR(token_mask=c.TokenMaskConstraint(forbidden_token_ids=[1]))]
    reply = await served.stub.ValidateConstraints(
        s.ValidateConstraintsRequest(constraints=items), timeout=5
    )
    assert reply.ok
    assert reply.digest == constraint_digest(items)
    assert not reply.HasField("combined_error")
    assert [(v.index, v.name, v.kind, v.ok) for v in reply.verdicts] == [
        (0, "greeting", c.CONSTRAINT_KIND_REGEX, True),
        (1, "", c.CONSTRAINT_KIND_TOKEN_MASK, True),
    ]
    assert not any(v.HasField("error") for v in reply.verdicts)


async def test_validate_constraints_errors_with_positions(served: Served) -> None:
    items = [
        HELLO_REGEX,
        c.ConstraintIR(
            name="lark",
            grammar=c.GrammarConstraint(
                syntax=c.GRAMMAR_SYNTAX_LARK, text='start: "a" b\nb: "x" | c\n'
            ),
        ),
        c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema='{\n "type": }')),
        c.ConstraintIR(
            json_schema=c.JsonSchemaConstraint(
                schema='{"type":"string","format":"bogus"}',
                options=c.JsonSchemaOptions(lenient=True),
            )
        ),
    ]
    reply = await served.stub.ValidateConstraints(
        s.ValidateConstraintsRequest(constraints=items), timeout=5
    )
    assert not reply.ok
    assert reply.digest == ""
    assert not reply.HasField("combined_error")
    ok, lark, json_bad, lenient = reply.verdicts
    assert ok.ok
    assert not lark.ok
    assert (lark.error.reason, lark.error.field, lark.error.line, lark.error.column) == (
        "GRAMMAR_INVALID",
        "constraints[1].grammar.text",
        2,
        4,
    )
    assert "unknown name" in lark.error.message
    assert (json_bad.error.reason, json_bad.error.line, json_bad.error.column) == (
        "JSON_SCHEMA_INVALID",
        2,
        10,
    )
    assert lenient.ok
    assert any("bogus" in w for w in lenient.warnings)


async def test_validate_constraints_combined_error(served: Served) -> None:
    items = [
        c.ConstraintIR(regex=c.RegexConstraint(pattern="[a-z]+")),
        c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema='{"type":"integer"}')),
    ]
    reply = await served.stub.ValidateConstraints(
        s.ValidateConstraintsRequest(constraints=items), timeout=5
    )
    assert all(v.ok for v in reply.verdicts)
    assert not reply.ok
    assert reply.digest == ""
    assert reply.HasField("combined_error")
    assert reply.combined_error.reason == "CONSTRAINT_UNSATISFIABLE"
    assert reply.combined_error.field == "constraints"


async def test_validate_constraints_intersection_ok(served: Served) -> None:
    items = [
        c.ConstraintIR(regex=c.RegexConstraint(pattern="[0-9]+")),
        c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema='{"type":"integer"}')),
    ]
    reply = await served.stub.ValidateConstraints(
        s.ValidateConstraintsRequest(constraints=items), timeout=5
    )
    assert reply.ok
    assert reply.digest == constraint_digest(items)
    assert not reply.HasField("combined_error")


async def test_validate_constraints_timeout_is_rich() -> None:
    settings = Settings(host="127.0.0.1", port=0, compile_timeout_s=1e-6)
    big = c.ConstraintIR(choice=c.ChoiceConstraint(options=[f"option-{i}" for i in range(3000)]))
    async with serving(settings) as served:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await served.stub.ValidateConstraints(
                s.ValidateConstraintsRequest(constraints=[big]), timeout=5
            )
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rich(raised.value).reason == "CONSTRAINT_COMPILE_TIMEOUT"


# -- cancellation, deadlines and admission ---------------------------------------------------------


async def test_cancelled_stream_is_counted_and_closes_the_engine(
    served: Served, engine: FakeEngine
) -> None:
    engine.gate = asyncio.Event()
    cancelled_before = served.counters.cancelled
    completed_before = served.counters.completed
    call = served.stub.GenerateStream(s.GenerateStreamRequest(request=gen_request()), timeout=10)
    first = await call.read()
    assert first.WhichOneof("event") == "started"
    chunk = await call.read()
    assert chunk.chunk.text == "He"
    await asyncio.wait_for(engine.blocked.wait(), 5)
    request_id = engine.started[-1]
    assert request_id not in engine.closed
    assert call.cancel()
    await wait_for(lambda: request_id in engine.closed)
    await wait_for(lambda: served.counters.cancelled == cancelled_before + 1)
    assert served.counters.completed == completed_before
    assert engine.running == 0
    stats = await served.stub.GetServerStats(s.GetServerStatsRequest(), timeout=5)
    assert stats.active_generations == 0


async def test_deadline_aborts_generation(served: Served, engine: FakeEngine) -> None:
    engine.gate = asyncio.Event()
    before = served.counters.deadline_exceeded + served.counters.cancelled
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.stub.Generate(s.GenerateRequest(request=gen_request()), timeout=0.3)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    request_id = engine.started[-1]
    await wait_for(lambda: request_id in engine.closed)
    await wait_for(
        lambda: served.counters.deadline_exceeded + served.counters.cancelled == before + 1
    )


async def test_overloaded_with_retry_info() -> None:
    settings = Settings(host="127.0.0.1", port=0, max_concurrent_requests=1, max_queued_requests=0)
    async with serving(settings) as served:
        served.engine.gate = asyncio.Event()
        first = served.stub.GenerateStream(
            s.GenerateStreamRequest(request=gen_request()), timeout=10
        )
        assert (await first.read()).WhichOneof("event") == "started"
        await asyncio.wait_for(served.engine.blocked.wait(), 5)
        stats = await served.stub.GetServerStats(s.GetServerStatsRequest(), timeout=5)
        assert (stats.active_generations, stats.queued_generations) == (1, 0)
        assert stats.engine_unfinished_requests == 1
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await served.stub.Generate(s.GenerateRequest(request=gen_request()), timeout=5)
        details = rich(raised.value)
        assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
        assert details.retry_delay_s == 1.0
        assert details.metadata == {"running": "1", "waiting": "0"}
        assert len(served.engine.started) == 1  # the refused call never reached the engine
        served.engine.gate.set()
        events = await read_rest(first)
        assert events[-1].WhichOneof("event") == "finished"
        # The slot is free again.
        served.engine.gate = None
        assert (
            await served.stub.Generate(s.GenerateRequest(request=gen_request()), timeout=5)
        ).text


async def test_queued_call_waits_for_a_slot() -> None:
    settings = Settings(host="127.0.0.1", port=0, max_concurrent_requests=1, max_queued_requests=1)
    async with serving(settings) as served:
        served.engine.gate = asyncio.Event()
        first = served.stub.GenerateStream(
            s.GenerateStreamRequest(request=gen_request()), timeout=10
        )
        await first.read()
        await asyncio.wait_for(served.engine.blocked.wait(), 5)
        second = asyncio.ensure_future(
            served.stub.Generate(s.GenerateRequest(request=gen_request()), timeout=10)
        )
        await wait_for(lambda: served.running.servicer.active_generations == 2)
        stats = await served.stub.GetServerStats(s.GetServerStatsRequest(), timeout=5)
        assert (stats.active_generations, stats.queued_generations) == (1, 1)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await served.stub.Generate(s.GenerateRequest(request=gen_request()), timeout=5)
        assert rich(raised.value).reason == "OVERLOADED"
        served.engine.gate.set()
        assert (await read_rest(first))[-1].WhichOneof("event") == "finished"
        assert (await second).text == "Hello world"


class _DirectContext:
    """Just enough of a ServicerContext to drive the servicer without a server."""

    def __init__(self) -> None:
        self.aborted: list[tuple[grpc.StatusCode, str]] = []

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> None:
        return None

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        self.aborted.append((code, details))
        raise grpc.aio.AbortError()


async def test_stream_closed_at_yield_counts_as_cancelled() -> None:
    engine = FakeEngine()
    running = build_server(SETTINGS, engine)
    running.servicer.engine_ready()
    await running.state.serve()
    try:
        context = _DirectContext()
        stream = running.servicer.GenerateStream(
            s.GenerateStreamRequest(request=gen_request()),
            context,  # type: ignore[arg-type]
        )
        assert (await stream.__anext__()).WhichOneof("event") == "started"
        assert (await stream.__anext__()).WhichOneof("event") == "chunk"
        with contextlib.suppress(grpc.aio.AbortError):
            await stream.aclose()
        counters = running.servicer.counters
        assert context.aborted == []
        assert (counters.cancelled, counters.failed) == (1, 0)
    finally:
        running.servicer.close()
        await running.server.stop(0)


# -- health and reflection -------------------------------------------------------------------------


async def test_health_serving(served: Served) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)
    for name in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


REFLECTED = {
    "ananke.v1.InferenceService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
}


def _reflection_requests() -> list[reflection_pb2.ServerReflectionRequest]:
    return [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="ananke.v1.InferenceService"),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection"
        ),
    ]


def _check_reflection(responses: list[reflection_pb2.ServerReflectionResponse]) -> None:
    listed, service_file, v1_file = responses
    assert {svc.name for svc in listed.list_services_response.service} == REFLECTED
    assert service_file.WhichOneof("message_response") == "file_descriptor_response"
    assert service_file.file_descriptor_response.file_descriptor_proto
    assert v1_file.WhichOneof("message_response") == "file_descriptor_response"


async def test_reflection_v1alpha(served: Served) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    call = stub.ServerReflectionInfo(iter(_reflection_requests()), timeout=5)
    _check_reflection([r async for r in call])


async def test_reflection_v1(served: Served) -> None:
    method = served.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = method(iter(_reflection_requests()), timeout=5)
    _check_reflection([r async for r in call])


async def test_forced_tokens_and_fast_forward_in_provenance(
    served: Served, engine: FakeEngine
) -> None:
    """The engine's forced-token count reaches provenance; without a grammar
    fast-forward does not apply, with one it is the engine's mode."""
    engine.script = (
        EngineDelta(tuple(b"Hello"), "Hello"),
        EngineDelta((*b" world", EOS), " world", True, "stop", EOS, forced_tokens=4),
    )
    constrained = gen_request(constraints=[HELLO_REGEX])
    response = await served.stub.Generate(s.GenerateRequest(request=constrained), timeout=10)
    assert response.provenance.forced_tokens == 4
    assert response.provenance.fast_forward == provenance_pb2.FAST_FORWARD_OFF  # fake's mode
    free = await served.stub.Generate(s.GenerateRequest(request=gen_request()), timeout=10)
    assert free.provenance.fast_forward == provenance_pb2.FAST_FORWARD_NOT_APPLICABLE
    assert fast_forward_mode("on", True) == provenance_pb2.FAST_FORWARD_ON
    assert fast_forward_mode("unavailable", True) == (provenance_pb2.FAST_FORWARD_UNAVAILABLE)
