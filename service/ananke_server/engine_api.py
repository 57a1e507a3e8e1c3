"""What the service needs from an engine: the `Engine` protocol and the data
that crosses it. Nothing here imports vllm (see vllm_engine.py)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from .steering import SteerConfig


@dataclass(frozen=True)
class EngineSettingsInfo:
    """The engine settings in effect, as GetModelInfo reports them: the requested
    values until the engine has started, then what vLLM resolved (dtype "auto"
    becomes the model's dtype, a checkpoint's quantization is named, ...)."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.0
    dtype: str = ""
    quantization: str = ""
    max_num_batched_tokens: int = 0
    max_num_seqs: int = 0
    enable_prefix_caching: bool = False
    kv_cache_dtype: str = ""
    distributed_executor_backend: str = ""
    enforce_eager: bool = False


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
    engine_settings: EngineSettingsInfo = field(default_factory=EngineSettingsInfo)
    # "on": forced tokens are fast-forwarded; "off": by setting; "unavailable":
    # the engine cannot (one step per token).
    fast_forward: str = "off"
    logprobs_mode: str = "processed"  # "processed" (after masks and sampling knobs) or "raw"


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter as the engine knows it: the service's name, the engine's
    integer id (never reused while the server runs) and its local folder."""

    name: str
    lora_id: int
    path: str


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
    # Grammars to intersect (all enforced together with the token masks, as one
    # product grammar in the engine); when set, `grammar` is None.
    intersection: tuple[str, ...] = ()
    # Budget-aware completion and dead-end search (steering/); None: off.
    steer: SteerConfig | None = None
    n: int = 1
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # alternatives per output token; None: no logprobs
    prompt_logprobs: int | None = None
    adapter: LoraAdapter | None = None  # None: the base model


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log probability at a position, and its rank there (from 1)."""

    token_id: int
    logprob: float
    rank: int


@dataclass(frozen=True)
class PositionLogprobs:
    """The log probabilities at one position: the token there and the most
    likely alternatives, most likely first."""

    token: TokenLogprob
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class SteeringReport:
    """The engine's word on budget steering for one finished generation."""

    from_token: int | None  # the output index where it began; None: it never did


@dataclass(frozen=True)
class EngineDelta:
    """New tokens of one generation; the last one has `finished` set."""

    token_ids: tuple[int, ...]
    text: str
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: str | int | None = None  # the stop string or token that ended it
    # On the last delta: output tokens appended without a model step of their own.
    forced_tokens: int = 0
    index: int = 0  # the candidate, 0 to n - 1
    logprobs: tuple[PositionLogprobs, ...] = ()  # one per id in token_ids, when asked
    prompt_logprobs: tuple[PositionLogprobs, ...] = ()  # on a candidate's first delta
    cached_tokens: int = 0  # prompt tokens the prefix cache served
    # On the last delta, when the engine reported it (else None): where budget
    # steering began.
    steering: SteeringReport | None = None


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

    def encode_chat(self, messages: Sequence[tuple[str, str]], suffix: str = "") -> PromptTokens:
        """Renders chat messages with the model's chat template (then `suffix`,
        after the opened assistant turn) and tokenizes."""

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool) -> str:
        """The text of token ids."""

    def generate(
        self, request_id: str, prompt: PromptTokens, params: EngineParams
    ) -> AsyncGenerator[EngineDelta, None]:
        """Streams the generation; closing the iterator or cancelling aborts it."""

    def unfinished_requests(self) -> int:
        """Generations the engine still holds."""

    async def load_adapter(self, adapter: LoraAdapter) -> None:
        """Loads a LoRA adapter (EngineRejectedError when the engine refuses it)."""

    async def unload_adapter(self, adapter: LoraAdapter) -> None:
        """Drops a loaded LoRA adapter."""

    async def check_health(self) -> None:
        """Raises EngineDeadError when the engine is not usable."""

    def shutdown(self) -> None:
        """Stops the engine process."""


def package_version(*names: str) -> str:
    """The installed version of the first distribution found among `names`."""
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown"


def model_revision(model_path: str) -> str:
    """The revision served, as Provenance.model_revision documents it:
    - a Hugging Face cache snapshot folder (`.../snapshots/<commit>`, also
      through a symlink, as modal_deploy links its pinned download): the commit;
    - another local folder: "sha256:" and the first 16 hex digits of a sha256
      over its *.json, *.safetensors and *.jinja files in name order, each as
      "name:size" followed by its bytes when under 16 MiB;
    - a hub id: the commit its cached `main` snapshot holds (what vLLM loads),
      or "hub:<id>" before it is downloaded."""
    path = Path(model_path)
    if not path.is_dir():
        return _hub_commit(model_path) or "hub:" + model_path
    resolved = path.resolve()
    if resolved.parent.name == "snapshots" and _COMMIT.fullmatch(resolved.name):
        return resolved.name
    hasher = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        item = path / name
        if item.is_file() and name.endswith((".json", ".safetensors", ".jinja")):
            size = item.stat().st_size
            hasher.update(f"{name}:{size}".encode())
            if size < (16 << 20):
                hasher.update(item.read_bytes())
    return "sha256:" + hasher.hexdigest()[:16]


_COMMIT = re.compile(r"[0-9a-f]{40}")


def _hub_commit(repo_id: str) -> str | None:
    """The commit of the cached snapshot of `repo_id`'s main ref, if any."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id, or no hub library: no revision known
        return None
    if not isinstance(found, str):
        return None
    commit = Path(found).parent.name
    return commit if _COMMIT.fullmatch(commit) else None
