"""The shipped config.example.yaml loads, and every key in it is a real setting."""

from __future__ import annotations

from pathlib import Path

from ananke_server.settings import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


def test_example_config_loads_with_documented_values() -> None:
    settings = load_settings(["--config", str(EXAMPLE)], environ={})
    assert settings.port == 50051
    assert settings.model == "default"
    assert settings.max_tokens_cap == 2048
    assert settings.log_format == "json"
    assert settings.api_keys == ()


def test_example_config_values_equal_the_defaults() -> None:
    """The example documents the defaults; it must not drift from them."""
    assert load_settings(["--config", str(EXAMPLE)], environ={}) == Settings()


def test_example_config_lists_the_engine_settings() -> None:
    import yaml

    keys = set(yaml.safe_load(EXAMPLE.read_text()))
    engine = {
        "dtype",
        "tensor_parallel_size",
        "distributed_executor_backend",
        "gpu_memory_utilization",
        "quantization",
        "max_num_batched_tokens",
        "max_num_seqs",
        "enable_prefix_caching",
        "kv_cache_dtype",
    }
    assert engine <= keys
    assert keys <= set(Settings.__dataclass_fields__)
