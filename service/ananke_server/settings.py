"""The one settings object, built once at startup from flags, environment
variables (ANANKE_*), an optional YAML file and defaults, in that order."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .lora_settings import lora_checks

DEFAULT_MODEL = "default"  # SmolLM2-135M-Instruct, prepared from PyPI (model_prep)
ENV_PREFIX = "ANANKE_"
# vLLM 0.32's names, copied so that settings need no vllm import; a test compares
# them with vllm/config/model.py ModelDType, vllm/config/cache.py CacheDType and
# vllm/model_executor/layers/quantization QuantizationMethods (less the deprecated).
MODEL_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
KV_CACHE_DTYPES = (
    "auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla",
    "nvfp4_ds_mla", "turboquant_k8v4", "turboquant_4bit_nc", "turboquant_k3v4_nc",
    "turboquant_3bit_nc", "ultraquant_4bit", "int4_per_token_head", "int8_per_token_head",
    "fp8_per_token_head", "nvfp4", "nvfp4_4over6",
)  # fmt: skip
QUANTIZATION_METHODS = (
    "awq", "auto_awq", "fp8", "modelopt", "modelopt_fp4", "modelopt_mxfp8", "modelopt_mixed",
    "auto_gptq", "gptq", "gptq_marlin", "awq_marlin", "humming", "compressed-tensors",
    "experts_int8", "quark", "moe_wna16", "torchao", "inc", "mxfp4", "gpt_oss_mxfp4",
    "deepseek_v4_fp8", "online", "fp8_per_tensor", "fp8_per_block", "fp8_per_channel",
    "int8_per_channel_weight_only", "nvfp4_per_token", "mxfp8",
)  # fmt: skip
EXECUTOR_BACKENDS = ("mp", "ray")
# Services callable without an API key unless configured otherwise.
AUTH_EXEMPT_DEFAULT = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)


@dataclass(frozen=True)
class Settings:
    """Everything the server reads at startup. Besides it, only the model and
    compile cache location (ANANKE_HOME, model_prep.py) and Modal's placement variables
    (provenance.py) come from the environment."""

    host: str = "127.0.0.1"
    port: int = 50051
    model: str = DEFAULT_MODEL
    model_cache_dir: str = ""  # default: $ANANKE_HOME/models
    max_concurrent_requests: int = 16
    max_queued_requests: int = 64
    max_tokens_cap: int = 2048
    default_max_tokens: int = 256
    max_model_len: int = 4096
    max_candidates: int = 16
    max_logprobs: int = 20
    logprobs_mode: str = "processed"
    max_constraint_bytes: int = 1 << 20
    max_message_bytes: int = 8 << 20
    compile_cache_size: int = 512
    compile_timeout_s: float = 10.0
    compile_workers: int = 2
    schema_max_attempts: int = 3
    schema_retry_temperature: float = 0.7
    compile_disk_cache_dir: str = ""  # default: $ANANKE_HOME/compile-cache
    compile_disk_cache_bytes: int = 256 << 20  # 0: no disk cache
    shutdown_grace_s: float = 30.0
    log_level: str = "INFO"
    log_prompts: bool = False
    log_format: str = "json"
    kv_cache_bytes: int = 256 << 20
    enforce_eager: bool = True
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    quantization: str = ""  # "": none, or what the checkpoint's config declares
    max_num_batched_tokens: int = 0  # 0: vLLM's default for the model and hardware
    max_num_seqs: int = 0  # 0: max_concurrent_requests
    enable_prefix_caching: bool = True
    kv_cache_dtype: str = "auto"
    distributed_executor_backend: str = "mp"
    fast_forward: bool = True
    fast_forward_tokens: int = 8
    enable_lora: bool = False  # off: vLLM reserves LoRA buffers and wraps layers when on
    max_loras: int = 4
    max_lora_rank: int = 16
    lora_adapters: tuple[str, ...] = ()  # "name=/path" loaded at startup
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_keys_file: str = ""
    admin_api_keys: tuple[str, ...] = field(default=(), repr=False)
    auth_exempt_services: tuple[str, ...] = AUTH_EXEMPT_DEFAULT
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    metrics_port: int = 0  # 0: no metrics endpoint
    port_file: str = ""  # write the bound port here once listening
    event_loop: str = "uvloop"  # or "asyncio"
    steer_budget: bool = True  # budget-aware completion (steering.guide)
    steer_margin_tokens: int = 4
    steer_check_every_tokens: int = 16
    steer_search_nodes: int = 400
    steer_dead_end_retries: int = 8  # candidates checked per token at a possible dead end
    reasoning_tags: str = ""  # "": off; "think"; or "START END"
    reasoning_default: bool = True
    reasoning_max_chars: int = 2000
    reasoning_open_prompt: bool = False

    @property
    def address(self) -> str:
        """host:port to bind."""
        return f"{self.host}:{self.port}"


_HELP: dict[str, str] = {
    "host": "address to bind",
    "port": "port to bind (0 picks a free port)",
    "model": "'default' (SmolLM2-135M-Instruct from PyPI), a local HF folder, or a hub id",
    "model_cache_dir": "where the default model is prepared (default $ANANKE_HOME/models)",
    "max_concurrent_requests": "generations running in the engine at once",
    "max_queued_requests": "generations waiting for a slot before RESOURCE_EXHAUSTED",
    "max_tokens_cap": "largest max_tokens a request may ask for",
    "default_max_tokens": "max_tokens when a request leaves it unset",
    "max_model_len": "context length given to the engine (prompt + output tokens)",
    "max_candidates": "largest SamplingParams.n (candidates per call) a request may ask for",
    "max_logprobs": "most log-probability alternatives per token a request may ask for",
    "logprobs_mode": "processed (after constraint masks, penalties, temperature: the "
    "distribution sampled from) or raw (the model's own, before token masks)",
    "max_constraint_bytes": "largest constraint text accepted",
    "max_message_bytes": "largest request message accepted",
    "compile_cache_size": "compiled constraint sets kept (LRU)",
    "compile_timeout_s": "longest a constraint compile may take",
    "compile_workers": "threads compiling constraints",
    "schema_retry_temperature": "temperature of a retry of a greedy request (greedy would "
    "repeat the rejected output); other requests keep theirs",
    "schema_max_attempts": "generations per output when a JSON schema's grammar over-approximates "
    "it and the output fails validation (1: no retry)",
    "compile_disk_cache_dir": "folder of compiled constraints kept across restarts "
    "(default $ANANKE_HOME/compile-cache; on Modal a Volume)",
    "compile_disk_cache_bytes": "most bytes the compile cache folder may hold, least "
    "recently used files deleted first (0: no disk cache)",
    "shutdown_grace_s": "how long in-flight streams may finish on SIGTERM",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_prompts": "log prompt text (off: only sizes)",
    "log_format": "json (one object per line, with the request id) or text",
    "kv_cache_bytes": "KV cache size for the CPU engine, in bytes",
    "enforce_eager": "skip graph compilation (faster start on CPU)",
    "dtype": "model weights and activations dtype (auto, half, float16, bfloat16, float, "
    "float32); auto: the model's, float32 on an x86 CPU without native bf16",
    "tensor_parallel_size": "GPUs one model is split across (vLLM tensor parallelism)",
    "gpu_memory_utilization": "fraction of each GPU's memory vLLM may use (0 < x <= 1; not on CPU)",
    "quantization": "vLLM quantization method, e.g. awq, gptq, fp8, compressed-tensors "
    "(empty: as the checkpoint declares, else none)",
    "max_num_batched_tokens": "most tokens the engine schedules in one step (0: vLLM's default)",
    "max_num_seqs": "sequences the engine batches at once (0: max_concurrent_requests)",
    "enable_prefix_caching": "reuse the KV cache of shared prompt prefixes",
    "kv_cache_dtype": "KV cache dtype as vLLM names it: auto (the model's), bfloat16, fp8, ...",
    "distributed_executor_backend": "how vLLM runs the workers of tensor_parallel_size > 1: "
    "mp (multiprocessing) or ray",
    "fast_forward": "append the grammar's forced tokens without a model step each "
    "(speculative drafts verified in one pass); --no-fast-forward: one step per token",
    "fast_forward_tokens": "most forced tokens appended per model step (the draft length)",
    "api_keys": "comma-separated API keys; empty (and no api_keys_file) disables authentication",
    "api_keys_file": "file with one API key per line (# comments), added to api_keys",
    "admin_api_keys": "comma-separated admin keys: also valid API keys, and the only keys "
    "LoadAdapter/UnloadAdapter accept while authentication is on",
    "enable_lora": "serve LoRA adapters (GenerationRequest.adapter, LoadAdapter)",
    "max_loras": "most LoRA adapters loaded at once (vLLM max_loras and max_cpu_loras)",
    "max_lora_rank": "largest LoRA rank accepted (vLLM max_lora_rank: 1, 8, 16, 32, 64, 128, "
    "256, 320 or 512)",
    "lora_adapters": "comma-separated name=/abs/folder LoRA adapters loaded at startup",
    "auth_exempt_services": "comma-separated gRPC services callable without a key",
    "tls_cert_file": "PEM server certificate chain; set with tls_key_file to serve TLS",
    "tls_key_file": "PEM private key of tls_cert_file",
    "tls_client_ca_file": "PEM CA bundle; when set, clients must present a certificate it signed",
    "keepalive_time_s": "seconds between server keepalive pings on idle long streams",
    "keepalive_timeout_s": "seconds to wait for a keepalive ack before closing the connection",
    "metrics_port": "Prometheus metrics HTTP port (0: off)",
    "port_file": "write the bound port to this file once listening (useful with --port 0)",
    "event_loop": "uvloop (less CPU per streamed token) or asyncio (the standard loop)",
    "steer_budget": "steer grammar-constrained outputs to a complete end when the tokens left "
    "under max_tokens come close to what the constraints still need; refuse a max_tokens below "
    "the shortest completion",
    "steer_margin_tokens": "tokens kept in hand beyond the known completion before steering",
    "steer_check_every_tokens": "most tokens between two checks of the remaining completion",
    "steer_search_nodes": "states one completion search may expand",
    "steer_dead_end_retries": "candidate tokens checked for a common completion per sampled "
    "token of an intersection (0: off, masking alone)",
    "reasoning_tags": "reasoning format: 'think' (<think> </think>) or 'START END'; constraints "
    "then apply to the answer after the end tag ('': off)",
    "reasoning_default": "with reasoning_tags, whether requests reason unless they say otherwise",
    "reasoning_max_chars": "most reasoning characters before the end tag is forced (and cap)",
    "reasoning_open_prompt": "append the start tag to chat prompts (the model starts reasoning)",
}


def _fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(Settings))


def _coerce(name: str, raw: Any) -> Any:
    """Turns a raw flag, environment or YAML value into the field's type."""
    default = getattr(Settings(), name)
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, tuple):
        items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
        return tuple(str(item).strip() for item in items if str(item).strip())
    return str(raw)


def _shown(default: Any) -> str:
    if isinstance(default, tuple):
        return repr(",".join(default))
    return repr(default)


def build_parser() -> argparse.ArgumentParser:
    """The `ananke-server` flags; each falls back to ANANKE_<NAME>, then the YAML file."""
    parser = argparse.ArgumentParser(
        prog="ananke-server",
        description="Ananke inference service: constrained generation over gRPC.",
        epilog="Each flag falls back to the environment variable shown, then to the "
        "same key in the --config YAML file, then to the default.",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML file with the same keys (env ANANKE_CONFIG)"
    )
    for f in _fields():
        env = ENV_PREFIX + f.name.upper()
        default = getattr(Settings(), f.name)
        shown = "" if f.name.endswith("api_keys") else f" (default {_shown(default)})"
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            # `--name`, `--name VALUE` and `--no-name` all work for booleans.
            parser.add_argument(
                flag,
                dest=f.name,
                default=None,
                nargs="?",
                const="true",
                help=f"{_HELP[f.name]}; env {env}{shown}",
            )
            parser.add_argument(
                "--no-" + f.name.replace("_", "-"),
                dest=f.name,
                action="store_const",
                const="false",
                help=f"same as {flag} false",
            )
            continue
        parser.add_argument(
            flag, dest=f.name, default=None, help=f"{_HELP[f.name]}; env {env}{shown}"
        )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Flags beat environment variables, which beat the YAML file, which beats defaults."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    config_path = args.config or (Path(env["ANANKE_CONFIG"]) if env.get("ANANKE_CONFIG") else None)
    from_file: dict[str, Any] = {}
    if config_path is not None:
        loaded = yaml.safe_load(config_path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_path}: expected a mapping of settings")
        known = {f.name for f in _fields()}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ValueError(f"{config_path}: unknown settings {unknown}")
        from_file = loaded
    values: dict[str, Any] = {}
    for f in _fields():
        env_name = ENV_PREFIX + f.name.upper()
        sources = (
            ("--" + f.name.replace("_", "-"), getattr(args, f.name)),
            (env_name, env.get(env_name)),
            (f"{config_path}: {f.name}", from_file.get(f.name)),
        )
        source, raw = next(
            ((name, value) for name, value in sources if value is not None), ("", None)
        )
        if raw is not None:
            try:
                values[f.name] = _coerce(f.name, raw)
            except ValueError as error:
                raise ValueError(f"{source}: invalid value {raw!r} ({error})") from None
    settings = Settings(**values)
    validate_settings(settings)
    return settings


def validate_settings(settings: Settings) -> None:
    """Rejects settings that cannot work, with a message naming the setting."""
    checks = [
        (0 <= settings.port <= 65535, "port must be 0..65535"),
        (settings.max_concurrent_requests >= 1, "max_concurrent_requests must be >= 1"),
        (settings.max_queued_requests >= 0, "max_queued_requests must be >= 0"),
        (settings.max_tokens_cap >= 1, "max_tokens_cap must be >= 1"),
        (settings.default_max_tokens >= 1, "default_max_tokens must be >= 1"),
        (settings.max_model_len >= 16, "max_model_len must be >= 16"),
        (settings.max_candidates >= 1, "max_candidates must be >= 1"),
        (settings.max_logprobs >= 0, "max_logprobs must be >= 0"),
        (
            settings.logprobs_mode in {"processed", "raw"},
            "logprobs_mode must be processed or raw",
        ),
        (settings.compile_cache_size >= 0, "compile_cache_size must be >= 0"),
        (settings.compile_timeout_s > 0, "compile_timeout_s must be > 0"),
        (settings.compile_workers >= 1, "compile_workers must be >= 1"),
        (settings.schema_max_attempts >= 1, "schema_max_attempts must be >= 1"),
        (settings.schema_retry_temperature > 0, "schema_retry_temperature must be > 0"),
        (settings.compile_disk_cache_bytes >= 0, "compile_disk_cache_bytes must be >= 0"),
        (
            1 <= settings.fast_forward_tokens <= 64,
            "fast_forward_tokens must be 1..64",
        ),
        (settings.shutdown_grace_s >= 0, "shutdown_grace_s must be >= 0"),
        (
            settings.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"},
            "log_level must be DEBUG, INFO, WARNING or ERROR",
        ),
        (settings.log_format in {"json", "text"}, "log_format must be json or text"),
        (
            bool(settings.tls_cert_file) == bool(settings.tls_key_file),
            "tls_cert_file and tls_key_file must be set together",
        ),
        (
            not settings.tls_client_ca_file or bool(settings.tls_cert_file),
            "tls_client_ca_file needs tls_cert_file and tls_key_file",
        ),
        (settings.keepalive_time_s > 0, "keepalive_time_s must be > 0"),
        (settings.keepalive_timeout_s > 0, "keepalive_timeout_s must be > 0"),
        (0 <= settings.metrics_port <= 65535, "metrics_port must be 0..65535"),
        (settings.event_loop in {"uvloop", "asyncio"}, "event_loop must be uvloop or asyncio"),
        *_engine_checks(settings),
        *lora_checks(settings),
        (settings.steer_margin_tokens >= 0, "steer_margin_tokens must be >= 0"),
        (settings.steer_check_every_tokens >= 1, "steer_check_every_tokens must be >= 1"),
        (settings.steer_search_nodes >= 1, "steer_search_nodes must be >= 1"),
        (settings.steer_dead_end_retries >= 0, "steer_dead_end_retries must be >= 0"),
        (
            settings.reasoning_tags in ("", "think") or len(settings.reasoning_tags.split()) == 2,
            "reasoning_tags must be '', 'think' or two tags separated by a space",
        ),
        (settings.reasoning_max_chars >= 1, "reasoning_max_chars must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def _engine_checks(settings: Settings) -> list[tuple[bool, str]]:
    """The engine settings' checks (vLLM would fail later, with a less clear message)."""
    seqs = settings.max_num_seqs or settings.max_concurrent_requests
    return [
        (
            settings.dtype in MODEL_DTYPES,
            f"dtype must be one of {', '.join(MODEL_DTYPES)} (got {settings.dtype!r})",
        ),
        (settings.tensor_parallel_size >= 1, "tensor_parallel_size must be >= 1"),
        (
            0 < settings.gpu_memory_utilization <= 1,
            f"gpu_memory_utilization must be > 0 and <= 1 (got {settings.gpu_memory_utilization})",
        ),
        (
            settings.quantization in ("", *QUANTIZATION_METHODS),
            f"quantization must be empty or one of vLLM's methods: "
            f"{', '.join(QUANTIZATION_METHODS)} "
            f"(got {settings.quantization!r})",
        ),
        (
            settings.kv_cache_dtype in KV_CACHE_DTYPES,
            f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)} "
            f"(got {settings.kv_cache_dtype!r})",
        ),
        (
            settings.distributed_executor_backend in EXECUTOR_BACKENDS,
            f"distributed_executor_backend must be mp or ray "
            f"(got {settings.distributed_executor_backend!r})",
        ),
        (
            settings.max_num_seqs == 0 or settings.max_num_seqs >= settings.max_concurrent_requests,
            f"max_num_seqs ({settings.max_num_seqs}) must be 0 (follow "
            f"max_concurrent_requests) or >= max_concurrent_requests "
            f"({settings.max_concurrent_requests}): fewer would queue admitted "
            "generations inside the engine",
        ),
        (
            settings.max_num_batched_tokens == 0 or settings.max_num_batched_tokens >= seqs,
            f"max_num_batched_tokens ({settings.max_num_batched_tokens}) must be 0 "
            f"(vLLM's default) or >= the engine's max_num_seqs ({seqs})",
        ),
    ]
