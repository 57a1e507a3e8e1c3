"""Engine settings for deployments: each flag, variable and YAML key reaches vLLM's
AsyncEngineArgs through the pure `engine_args_kwargs`; bad values are clear errors."""

from __future__ import annotations

import tempfile
import typing
from pathlib import Path
from typing import Any

import pytest
from ananke_server import settings as settings_module
from ananke_server.engine_config import (
    EngineConfig,
    check_runtime,
    cpu_flags,
    engine_args_kwargs,
    engine_dtype,
    requested_settings,
    resolved_settings,
)
from ananke_server.settings import Settings, build_parser, load_settings

vllm_arg_utils = pytest.importorskip("vllm.engine.arg_utils")
AsyncEngineArgs = vllm_arg_utils.AsyncEngineArgs
PROPOSER = "ananke_server.vllm_plugin.ForcedTokenProposer"


def _speculative(tokens: int) -> dict[str, Any]:
    return {"method": "custom_class", "model": PROPOSER, "num_speculative_tokens": tokens}


# (setting, raw value as a flag/env/YAML string, AsyncEngineArgs attribute, expected value)
ENGINE_SETTINGS: list[tuple[str, str, str, Any]] = [
    ("tensor_parallel_size", "4", "tensor_parallel_size", 4),
    ("gpu_memory_utilization", "0.85", "gpu_memory_utilization", 0.85),
    ("dtype", "bfloat16", "dtype", "bfloat16"),
    ("quantization", "awq_marlin", "quantization", "awq_marlin"),
    ("max_num_batched_tokens", "8192", "max_num_batched_tokens", 8192),
    ("max_num_seqs", "48", "max_num_seqs", 48),
    ("enable_prefix_caching", "false", "enable_prefix_caching", False),
    ("kv_cache_dtype", "fp8_e5m2", "kv_cache_dtype", "fp8_e5m2"),
    ("enforce_eager", "false", "enforce_eager", False),
]


# An existing folder: with HF_HUB_OFFLINE=1 (as `make test` runs) vLLM's engine
# args treat a missing path as a hub repo id and refuse it.
MODEL_DIR = tempfile.mkdtemp(prefix="ananke-engine-config-")


def _vllm_args(settings: Settings, *, on_cpu: bool = False) -> Any:
    config = EngineConfig.from_settings(settings, MODEL_DIR, "m")
    proposer = PROPOSER if config.fast_forward else None
    return AsyncEngineArgs(
        **engine_args_kwargs(config, on_cpu=on_cpu, fast_forward_proposer=proposer)
    )


def _load(source: str, name: str, raw: str, tmp_path: Path, *extra: str) -> Settings:
    if source == "flag":
        return load_settings(["--" + name.replace("_", "-"), raw, *extra], environ={})
    if source == "env":
        return load_settings(list(extra), environ={"ANANKE_" + name.upper(): raw})
    config = tmp_path / "config.yaml"
    config.write_text(f"{name}: {raw}\n")
    return load_settings(["--config", str(config), *extra], environ={})


@pytest.mark.parametrize("source", ["flag", "env", "yaml"])
@pytest.mark.parametrize(("name", "raw", "attribute", "expected"), ENGINE_SETTINGS)
def test_each_engine_setting_reaches_vllm_engine_args(
    source: str, name: str, raw: str, attribute: str, expected: Any, tmp_path: Path
) -> None:
    settings = _load(source, name, raw, tmp_path)
    assert getattr(settings, name) == expected
    args = _vllm_args(settings)
    assert getattr(args, attribute) == expected
    # Only that argument moved away from what the defaults give vLLM.
    baseline = _vllm_args(Settings())
    assert getattr(baseline, attribute) != expected


@pytest.mark.parametrize("source", ["flag", "env", "yaml"])
@pytest.mark.parametrize("backend", ["mp", "ray"])
def test_executor_backend_reaches_vllm_past_one_gpu(
    source: str, backend: str, tmp_path: Path
) -> None:
    settings = _load(
        source, "distributed_executor_backend", backend, tmp_path, "--tensor-parallel-size", "2"
    )
    args = _vllm_args(settings)
    assert (args.tensor_parallel_size, args.distributed_executor_backend) == (2, backend)
    # One GPU: vLLM runs the model in its engine process, whatever the backend says.
    one = _vllm_args(Settings(distributed_executor_backend=backend))
    assert one.distributed_executor_backend is None
    requested = requested_settings(EngineConfig.from_settings(settings, "/m", "m"))
    assert requested.distributed_executor_backend == backend
    assert requested_settings(EngineConfig("/m", "m")).distributed_executor_backend == "uni"


def test_defaults_leave_vllm_its_own_choices() -> None:
    args = _vllm_args(Settings())
    assert args.quantization is None
    assert args.max_num_batched_tokens is None
    assert args.max_num_seqs == Settings().max_concurrent_requests  # max_num_seqs 0 follows it
    assert args.enable_prefix_caching is True
    assert (args.kv_cache_dtype, args.dtype) == ("auto", "auto")
    assert args.tensor_parallel_size == 1
    assert args.gpu_memory_utilization == 0.9
    assert args.kv_cache_memory_bytes is None  # on a GPU the utilisation sizes the cache
    assert _vllm_args(Settings(), on_cpu=True).kv_cache_memory_bytes == Settings().kv_cache_bytes
    assert args.structured_outputs_config == {"backend": "guidance"}
    assert not args.logits_processors  # vLLM refuses them with speculative decoding
    # Fast-forward on by default: the plugin's proposer, per-request draft counts, sync scheduling.
    assert args.speculative_config == _speculative(8)
    assert args.per_request_spec_decode_metrics == "summary"
    assert args.async_scheduling is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tensor-parallel-size", "0"], "tensor_parallel_size must be >= 1"),
        (["--gpu-memory-utilization", "0"], "gpu_memory_utilization must be > 0 and <= 1"),
        (["--gpu-memory-utilization", "1.5"], "gpu_memory_utilization must be > 0 and <= 1"),
        (["--dtype", "int3"], "dtype must be one of auto, half"),
        (["--quantization", "awq4"], "quantization must be empty or one of vLLM's methods"),
        (["--kv-cache-dtype", "fp4"], "kv_cache_dtype must be one of auto"),
        (["--distributed-executor-backend", "slurm"], "distributed_executor_backend must be"),
        (["--max-num-seqs", "4"], r"max_num_seqs \(4\) must be 0 .* >= max_concurrent_requests"),
        (
            ["--max-num-batched-tokens", "8"],
            r"max_num_batched_tokens \(8\) must be 0 .* max_num_seqs \(16\)",
        ),
        (["--tensor-parallel-size", "two"], "--tensor-parallel-size: invalid value 'two'"),
        (["--enable-prefix-caching", "maybe"], "expected a boolean"),
    ],
)
def test_bad_engine_settings_are_clear_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings(argv, environ={})


def test_bad_engine_setting_from_env_names_the_variable() -> None:
    with pytest.raises(ValueError, match="ANANKE_TENSOR_PARALLEL_SIZE: invalid value"):
        load_settings([], environ={"ANANKE_TENSOR_PARALLEL_SIZE": "x"})


def test_help_lists_every_engine_setting() -> None:
    text = build_parser().format_help()
    for flag in (
        "--tensor-parallel-size",
        "--gpu-memory-utilization",
        "--dtype",
        "--quantization",
        "--max-num-batched-tokens",
        "--max-num-seqs",
        "--enable-prefix-caching",
        "--kv-cache-dtype",
        "--distributed-executor-backend",
    ):
        assert flag in text
        env = "ANANKE_" + flag.removeprefix("--").replace("-", "_").upper()
        assert env in text


def test_accepted_names_are_vllms() -> None:
    """The copies in settings.py (kept so settings import no vllm) match vLLM 0.32."""
    from vllm.config.cache import CacheDType
    from vllm.config.model import ModelDType
    from vllm.config.parallel import DistributedExecutorBackend
    from vllm.model_executor.layers import quantization

    assert set(settings_module.MODEL_DTYPES) == set(typing.get_args(ModelDType))
    assert set(settings_module.KV_CACHE_DTYPES) == set(typing.get_args(CacheDType))
    assert set(settings_module.QUANTIZATION_METHODS) == set(
        quantization.QUANTIZATION_METHODS
    ) - set(quantization.DEPRECATED_QUANTIZATION_METHODS)
    assert set(settings_module.EXECUTOR_BACKENDS) <= set(
        typing.get_args(DistributedExecutorBackend)
    )


def test_resolved_settings_read_a_real_vllm_config() -> None:
    """vLLM resolves the arguments into its VllmConfig (no engine started); the
    values GetModelInfo reports are read back from it."""
    model = Path.home() / ".cache" / "ananke" / "models" / "SmolLM2-135M-Instruct"
    if not (model / "config.json").is_file():
        pytest.skip("default model not prepared (make model)")
    settings = load_settings(
        [
            "--max-num-batched-tokens",
            "2048",
            "--enable-prefix-caching",
            "false",
            "--dtype",
            "bfloat16",
            "--kv-cache-dtype",
            "bfloat16",
            "--max-num-seqs",
            "24",
        ],
        environ={},
    )
    config = EngineConfig.from_settings(settings, str(model), "SmolLM2-135M-Instruct")
    args = AsyncEngineArgs(**engine_args_kwargs(config, on_cpu=True))
    info = resolved_settings(args.create_engine_config())
    assert info.max_num_batched_tokens == 2048
    assert info.max_num_seqs == 24
    assert info.enable_prefix_caching is False
    assert (info.dtype, info.kv_cache_dtype, info.quantization) == ("bfloat16", "bfloat16", "")
    assert info.tensor_parallel_size == 1
    assert info.gpu_memory_utilization == pytest.approx(0.9)
    assert info.enforce_eager is True
    assert info.distributed_executor_backend  # what vLLM chose for this platform


def test_ray_without_ray_installed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    config = EngineConfig("/m", "m", tensor_parallel_size=2, distributed_executor_backend="ray")
    with pytest.raises(RuntimeError, match="ray is not installed"):
        check_runtime(config)
    check_runtime(EngineConfig("/m", "m", tensor_parallel_size=2))  # mp needs nothing
    check_runtime(EngineConfig("/m", "m", distributed_executor_backend="ray"))  # one GPU


@pytest.mark.parametrize("source", ["flag", "env", "yaml"])
def test_fast_forward_settings_reach_vllm_engine_args(source: str, tmp_path: Path) -> None:
    assert _vllm_args(_load(source, "fast_forward_tokens", "3", tmp_path)).speculative_config == (
        _speculative(3)
    )
    off = _vllm_args(_load(source, "fast_forward", "false", tmp_path))
    assert off.speculative_config is None
    assert off.per_request_spec_decode_metrics == "none"
    assert off.async_scheduling is None  # vLLM's own choice


@pytest.mark.parametrize(
    ("requested", "on_cpu", "machine", "flags", "expected"),
    [
        # vLLM would pick bf16 on any x86 CPU; without native bf16 it is emulated.
        ("auto", True, "x86_64", frozenset({"avx2", "fma"}), "float32"),
        ("auto", True, "x86_64", frozenset({"avx512f", "avx512_bf16"}), "auto"),
        ("auto", True, "x86_64", frozenset({"amx_bf16", "amx_tile"}), "auto"),
        ("auto", True, "aarch64", frozenset({"asimd"}), "auto"),
        ("auto", True, "x86_64", None, "auto"),  # flags unreadable: vLLM decides
        ("auto", False, "x86_64", frozenset({"avx2"}), "auto"),  # a GPU: vLLM decides
        ("bfloat16", True, "x86_64", frozenset({"avx2"}), "bfloat16"),  # asked for: kept
    ],
)
def test_auto_dtype_on_a_cpu_without_native_bf16_is_float32(
    requested: str, on_cpu: bool, machine: str, flags: frozenset[str] | None, expected: str
) -> None:
    assert engine_dtype(requested, on_cpu=on_cpu, machine=machine, flags=flags) == expected


def test_cpu_flags_reads_the_flags_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "avx2", "avx512_bf16"})
    cpuinfo.write_text("processor\t: 0\n")
    assert cpu_flags(cpuinfo) is None
    assert cpu_flags(tmp_path / "missing") is None
