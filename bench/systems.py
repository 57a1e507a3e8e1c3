"""The ways of generating that the serving benchmark compares: this service
over gRPC (with fast-forward on, and a second server with it off), vLLM's own
OpenAI server (the peer), and optionally the same vLLM engine in process."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import psutil
import servers
from common import MODEL_NAME, model_dir, tree_cpu_seconds
from workload import TASKS, WORKLOADS, Workload

LABELS = {
    "grpc": "this service",
    "grpc_noff": "this service, no fast-forward",
    "peer": "vLLM OpenAI server",
    "inproc": "engine in process",
}


@dataclass
class StreamSample:
    """One generation as the caller saw it (times from perf_counter)."""

    prompt: int
    ttft_s: float
    duration_s: float
    tokens: int
    prompt_tokens: int
    text: str = field(repr=False)
    started_at: float = 0.0
    finish: str = ""
    # Output tokens the server reported as forced (fast-forward), when it reports them.
    forced_reported: int | None = None
    chunks: int = 0  # stream messages that carried output (one per engine delta)
    token_ids: list[int] = field(default_factory=list, repr=False)

    @property
    def itl_s(self) -> float:
        """Mean inter-token latency after the first token."""
        return (self.duration_s - self.ttft_s) / max(1, self.tokens - 1)

    @property
    def first_at(self) -> float:
        """When the first token arrived."""
        return self.started_at + self.ttft_s

    @property
    def end_at(self) -> float:
        """When the last event arrived."""
        return self.started_at + self.duration_s


class System(Protocol):
    """One way of generating."""

    name: str

    async def stream(
        self,
        workload: Workload,
        prompt: int,
        constrained: bool,
        max_tokens: int,
        min_tokens: int = 0,
    ) -> StreamSample:
        """Runs one greedy generation and times it."""

    def cpu_seconds(self) -> tuple[float, float]:
        """(server front-end process CPU, engine CPU) seconds so far."""

    async def close(self) -> None:
        """Releases connections (servers are stopped by their owner)."""


def split_cpu(pid: int) -> tuple[float, float]:
    """(main process CPU, descendants' CPU) seconds."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    main = times.user + times.system
    return main, tree_cpu_seconds(pid) - main


def _forced_field(message: Any) -> int | None:
    """The value of a field named like `*forced*` in a usage or provenance
    message (fast-forward reports it there), or None when there is none."""
    for holder in (getattr(message, "usage", None), getattr(message, "provenance", None)):
        if holder is None:
            continue
        for descriptor in holder.DESCRIPTOR.fields:
            if "forced" in descriptor.name and descriptor.type in (
                descriptor.TYPE_INT32,
                descriptor.TYPE_INT64,
                descriptor.TYPE_UINT32,
                descriptor.TYPE_UINT64,
            ):
                return int(getattr(holder, descriptor.name))
    return None


class GrpcSystem:
    """This service, through the project's asyncio client."""

    def __init__(self, name: str, handle: servers.ServerHandle) -> None:
        from ananke.aio import AsyncAnankeClient

        self.name = name
        self.handle = handle
        self.client = AsyncAnankeClient(handle.address, timeout=600)

    async def stream(
        self,
        workload: Workload,
        prompt: int,
        constrained: bool,
        max_tokens: int,
        min_tokens: int = 0,
    ) -> StreamSample:
        """One GenerateStream call."""
        from ananke import constraints as c
        from ananke.results import GenerationFinished, TokenChunk
        from ananke.v1 import generation_pb2

        constraint = [c.json_schema(workload.schema(prompt))] if constrained else []
        started = time.perf_counter()
        first = 0.0
        texts: list[str] = []
        ids: list[int] = []
        chunks = 0
        finished: Any = None
        stream = self.client.generate_stream(
            messages=workload.messages(prompt),  # type: ignore[arg-type]
            constraints=constraint,
            max_tokens=max_tokens,
            min_tokens=min_tokens or None,
            temperature=0.0,
            seed=0,
        )
        async for event in stream:
            if isinstance(event, TokenChunk):
                if not first and (event.token_ids or event.text):
                    first = time.perf_counter()
                texts.append(event.text)
                ids.extend(event.token_ids)
                chunks += 1
            elif isinstance(event, GenerationFinished):
                finished = event
        end = time.perf_counter()
        usage = finished.usage
        return StreamSample(
            prompt,
            (first or end) - started,
            end - started,
            int(usage.completion_tokens),
            int(usage.prompt_tokens),
            "".join(texts),
            started_at=started,
            finish=generation_pb2.FinishReason.Name(finished.finish_reason),
            forced_reported=_forced_field(finished),
            chunks=chunks,
            token_ids=ids,
        )

    def cpu_seconds(self) -> tuple[float, float]:
        """Server main process vs its engine processes."""
        return split_cpu(self.handle.pid)

    async def close(self) -> None:
        """Closes the channel."""
        await self.client.close()


class PeerSystem:
    """vLLM's OpenAI-compatible server, streaming chat completions over HTTP."""

    name = "peer"

    def __init__(self, handle: servers.ServerHandle) -> None:
        self.handle = handle
        self.url = f"http://{handle.address}/v1/chat/completions"
        self.session: aiohttp.ClientSession | None = None

    async def stream(
        self,
        workload: Workload,
        prompt: int,
        constrained: bool,
        max_tokens: int,
        min_tokens: int = 0,
    ) -> StreamSample:
        """One streaming chat completion (SSE)."""
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64),
                timeout=aiohttp.ClientTimeout(total=600),
            )
        body: dict[str, Any] = {
            "model": MODEL_NAME,
            "messages": [
                {"role": role, "content": text} for role, text in workload.messages(prompt)
            ],
            "max_tokens": max_tokens,
            "min_tokens": min_tokens,
            "temperature": 0.0,
            "seed": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if constrained:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": workload.schema(prompt)},
            }
        started = time.perf_counter()
        first = 0.0
        end = 0.0
        finish = ""
        chunks = 0
        texts: list[str] = []
        usage: dict[str, int] = {}
        async with self.session.post(self.url, json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"peer answered {response.status}: {await response.text()}")
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                for choice in event.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content") or ""
                    if content and not first:
                        first = time.perf_counter()
                    texts.append(content)
                    chunks += bool(content)
                    if choice.get("finish_reason"):
                        end = time.perf_counter()
                        finish = str(choice["finish_reason"])
                if event.get("usage"):
                    usage = event["usage"]
        end = end or time.perf_counter()
        return StreamSample(
            prompt,
            (first or end) - started,
            end - started,
            int(usage.get("completion_tokens", 0)),
            int(usage.get("prompt_tokens", 0)),
            "".join(texts),
            started_at=started,
            finish=finish,
            chunks=chunks,
        )

    def cpu_seconds(self) -> tuple[float, float]:
        """API server process vs its engine processes."""
        return split_cpu(self.handle.pid)

    async def close(self) -> None:
        """Closes the HTTP session."""
        if self.session is not None:
            await self.session.close()


class InProcessSystem:
    """The service's own VllmEngine, called directly (no gRPC layer)."""

    name = "inproc"

    def __init__(self) -> None:
        from ananke_server.engine_config import EngineConfig
        from ananke_server.vllm_engine import VllmEngine

        self.engine = VllmEngine(
            EngineConfig(
                str(model_dir()),
                MODEL_NAME,
                max_model_len=servers.MAX_MODEL_LEN,
                max_num_seqs=servers.MAX_NUM_SEQS,
                kv_cache_bytes=servers.KV_CACHE_BYTES,
                enforce_eager=True,
                dtype="auto",
            )
        )
        self.server_pids: set[int] = set()  # bench children that are not this engine
        self.grammars: dict[tuple[str, int], str] = {}
        self.prompts: dict[tuple[str, int], Any] = {}

    async def start(self) -> float:
        """Starts the engine; compiles the schemas with the project's compiler."""
        started = time.perf_counter()
        await self.engine.start()
        ready = time.perf_counter() - started
        from ananke import constraints as c
        from ananke_server.constraints import ConstraintCompiler

        compiler = ConstraintCompiler(
            self.engine.llg_tokenizer(),
            vocab_size=self.engine.info.vocab_size,
            tokenizer_id=MODEL_NAME,
            max_constraint_bytes=1 << 20,
            cache_size=64,
            timeout_s=60,
            workers=1,
        )
        for workload in WORKLOADS:
            for index in range(len(TASKS)):
                if workload.constrained:
                    compiled, _ = await compiler.compile(
                        [c.json_schema(workload.schema(index))], "c"
                    )
                    assert compiled.grammar is not None
                    self.grammars[workload.name, index] = compiled.grammar
                self.prompts[workload.name, index] = self.engine.encode_chat(
                    workload.messages(index)
                )
        compiler.close()
        return ready

    def max_num_batched_tokens(self) -> int:
        """The engine's resolved scheduler budget."""
        llm: Any = self.engine._llm
        return int(llm.vllm_config.scheduler_config.max_num_batched_tokens)

    async def stream(
        self,
        workload: Workload,
        prompt: int,
        constrained: bool,
        max_tokens: int,
        min_tokens: int = 0,
    ) -> StreamSample:
        """One generation through VllmEngine.generate."""
        from ananke_server.engine_api import EngineParams

        params = EngineParams(
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            temperature=0.0,
            top_p=1.0,
            top_k=0,
            seed=0,
            grammar=self.grammars[workload.name, prompt] if constrained else None,
        )
        tokens = self.prompts[workload.name, prompt]
        started = time.perf_counter()
        first = 0.0
        ids: list[int] = []
        texts: list[str] = []
        finish = ""
        chunks = 0
        async for delta in self.engine.generate(uuid.uuid4().hex, tokens, params):
            if delta.token_ids and not first:
                first = time.perf_counter()
            ids.extend(delta.token_ids)
            chunks += bool(delta.token_ids)
            texts.append(delta.text)
            finish = delta.finish_reason or finish
        end = time.perf_counter()
        return StreamSample(
            prompt,
            (first or end) - started,
            end - started,
            len(ids),
            len(tokens.token_ids),
            "".join(texts),
            started_at=started,
            finish=finish,
            chunks=chunks,
        )

    def cpu_seconds(self) -> tuple[float, float]:
        """The front end runs in the benchmark process (counted as client CPU);
        the engine is the benchmark's children other than the servers."""
        engine = 0.0
        for child in psutil.Process().children():
            if child.pid not in self.server_pids:
                engine += tree_cpu_seconds(child.pid)
        return 0.0, engine

    async def close(self) -> None:
        """Stops the engine."""
        self.engine.shutdown()
