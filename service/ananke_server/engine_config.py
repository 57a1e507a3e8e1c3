"""The engine's deployment settings and their mapping to vLLM's AsyncEngineArgs,
as pure functions (no vllm import), so tests can check the arguments without
starting an engine."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine_api import EngineSettingsInfo
from .settings import Settings

GUIDANCE_BACKEND = "guidance"  # vLLM's structured-output backend name for llguidance
SINGLE_PROCESS_EXECUTOR = "uni"  # vLLM's executor when one GPU (or the CPU) runs the model
# x86 flags of native bf16 arithmetic (AVX-512 BF16, AMX); without them bf16 is emulated.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class EngineConfig:
    """What the engine is started with, taken from Settings once the model is resolved."""

    model_path: str
    model_id: str
    max_model_len: int = 4096
    max_num_seqs: int = 16
    kv_cache_bytes: int = 256 << 20  # CPU only: vLLM sizes the GPU cache from utilisation
    enforce_eager: bool = True
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    quantization: str = ""  # "": as the checkpoint declares, else none
    max_num_batched_tokens: int = 0  # 0: vLLM's default
    enable_prefix_caching: bool = True
    kv_cache_dtype: str = "auto"
    distributed_executor_backend: str = "mp"
    fast_forward: bool = True
    fast_forward_tokens: int = 8
    max_logprobs: int = 20
    logprobs_mode: str = "processed"  # or "raw"
    enable_lora: bool = False
    max_loras: int = 4
    max_lora_rank: int = 16

    @classmethod
    def from_settings(cls, settings: Settings, model_path: str, model_id: str) -> EngineConfig:
        """The engine part of the settings; max_num_seqs 0 follows max_concurrent_requests."""
        return cls(
            model_path=model_path,
            model_id=model_id,
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_num_seqs or settings.max_concurrent_requests,
            kv_cache_bytes=settings.kv_cache_bytes,
            enforce_eager=settings.enforce_eager,
            dtype=settings.dtype,
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            quantization=settings.quantization,
            max_num_batched_tokens=settings.max_num_batched_tokens,
            enable_prefix_caching=settings.enable_prefix_caching,
            kv_cache_dtype=settings.kv_cache_dtype,
            distributed_executor_backend=settings.distributed_executor_backend,
            fast_forward=settings.fast_forward,
            fast_forward_tokens=settings.fast_forward_tokens,
            max_logprobs=settings.max_logprobs,
            logprobs_mode=settings.logprobs_mode,
            enable_lora=settings.enable_lora,
            max_loras=settings.max_loras,
            max_lora_rank=settings.max_lora_rank,
        )

    @property
    def executor_backend(self) -> str | None:
        """The backend given to vLLM: only past one GPU; one GPU runs in the engine process."""
        return self.distributed_executor_backend if self.tensor_parallel_size > 1 else None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return None


def engine_dtype(
    requested: str, *, on_cpu: bool, machine: str, flags: frozenset[str] | None
) -> str:
    """The dtype given to vLLM. "auto" on an x86 CPU without native bf16 becomes
    float32: vLLM's CPU platform assumes every x86 CPU has bf16 and picks it, and
    there it is emulated (on a 2-core AVX2 EPYC with the default model, float32
    served 16 streams 3-4x faster, with first tokens 3-6x sooner; one stream
    decodes ~25% slower, as it reads twice the bytes). Every explicit choice is
    left alone, and so is "auto" where the flags are unknown (None)."""
    if requested != "auto" or not on_cpu or machine.lower() not in ("x86_64", "amd64"):
        return requested
    if flags is None or flags & NATIVE_BF16_FLAGS:
        return requested
    return "float32"


def host_dtype(requested: str, *, on_cpu: bool) -> str:
    """`engine_dtype` for this machine (its architecture and CPU flags)."""
    return engine_dtype(requested, on_cpu=on_cpu, machine=platform.machine(), flags=cpu_flags())


def engine_args_kwargs(
    config: EngineConfig, *, on_cpu: bool, fast_forward_proposer: str | None = None
) -> dict[str, Any]:
    """Keyword arguments of vLLM's AsyncEngineArgs for `config`. None leaves vLLM's default.
    With `fast_forward_proposer` (the plugin's proposer class, given when the plugin can
    fast-forward) the engine runs speculative decoding with it."""
    speculative: dict[str, Any] = {}
    if fast_forward_proposer is not None:
        speculative = {
            "speculative_config": {
                "method": "custom_class",
                "model": fast_forward_proposer,
                "num_speculative_tokens": config.fast_forward_tokens,
            },
            # Per-request accepted-draft counts (the forced tokens in provenance).
            "per_request_spec_decode_metrics": "summary",
            # Drafts must be computed after the step's sampled token reached the
            # grammar; the synchronous scheduler guarantees it (CPU forces it anyway).
            "async_scheduling": False,
        }
    lora: dict[str, Any] = {}
    if config.enable_lora:
        lora = {
            "enable_lora": True,
            "max_loras": config.max_loras,
            "max_lora_rank": config.max_lora_rank,
            # As many kept in memory as may be loaded: vLLM would otherwise evict
            # adapters the service still lists (the service refuses loads past it).
            "max_cpu_loras": config.max_loras,
        }
    return {
        "model": config.model_path,
        "served_model_name": [config.model_id],
        "max_model_len": config.max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "max_num_batched_tokens": config.max_num_batched_tokens or None,
        "enforce_eager": config.enforce_eager,
        "dtype": host_dtype(config.dtype, on_cpu=on_cpu),
        "quantization": config.quantization or None,
        "tensor_parallel_size": config.tensor_parallel_size,
        "distributed_executor_backend": config.executor_backend,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        # On CPU the KV cache has a fixed size; on a GPU it is what the utilisation leaves.
        "kv_cache_memory_bytes": config.kv_cache_bytes if on_cpu else None,
        "kv_cache_dtype": config.kv_cache_dtype,
        "enable_prefix_caching": config.enable_prefix_caching,
        "structured_outputs_config": {"backend": GUIDANCE_BACKEND},
        "enable_log_requests": False,
        **speculative,
        **lora,
        "max_logprobs": config.max_logprobs,
        # "processed": after every mask (grammar, intersection, token masks,
        # logit_bias), penalties, temperature and top-k/p; "raw": before the
        # sampler's processors (the engine's grammar mask is already applied).
        "logprobs_mode": f"{config.logprobs_mode}_logprobs",
    }


def requested_settings(config: EngineConfig) -> EngineSettingsInfo:
    """The values asked for, before vLLM resolves its defaults."""
    return EngineSettingsInfo(
        tensor_parallel_size=config.tensor_parallel_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        dtype=config.dtype,
        quantization=config.quantization,
        max_num_batched_tokens=config.max_num_batched_tokens,
        max_num_seqs=config.max_num_seqs,
        enable_prefix_caching=config.enable_prefix_caching,
        kv_cache_dtype=config.kv_cache_dtype,
        distributed_executor_backend=config.executor_backend or SINGLE_PROCESS_EXECUTOR,
        enforce_eager=config.enforce_eager,
    )


def resolved_settings(vllm_config: Any) -> EngineSettingsInfo:
    """The values in a started engine's VllmConfig (read by attribute: no vllm import)."""
    model = vllm_config.model_config
    cache = vllm_config.cache_config
    parallel = vllm_config.parallel_config
    scheduler = vllm_config.scheduler_config
    backend = parallel.distributed_executor_backend
    if isinstance(backend, type):  # vLLM also accepts an Executor class
        backend = backend.__name__
    return EngineSettingsInfo(
        tensor_parallel_size=int(parallel.tensor_parallel_size),
        gpu_memory_utilization=float(cache.gpu_memory_utilization),
        dtype=str(model.dtype).removeprefix("torch."),
        quantization=str(model.quantization or ""),
        max_num_batched_tokens=int(scheduler.max_num_batched_tokens or 0),
        max_num_seqs=int(scheduler.max_num_seqs or 0),
        enable_prefix_caching=bool(cache.enable_prefix_caching),
        kv_cache_dtype=str(cache.cache_dtype),
        distributed_executor_backend=str(backend or SINGLE_PROCESS_EXECUTOR),
        enforce_eager=bool(model.enforce_eager),
    )


def check_runtime(config: EngineConfig) -> None:
    """Fails early, and clearly, where vLLM would fail deep in its start."""
    import importlib.util

    if config.executor_backend == "ray" and importlib.util.find_spec("ray") is None:
        raise RuntimeError(
            "distributed_executor_backend is ray but ray is not installed "
            "(pip install 'ray[default]'), or use mp"
        )
