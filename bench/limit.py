"""The physical limit: a roofline for decoding the default model on this CPU.

A decode step reads every weight once (plus each stream's KV cache) and does
2 FLOPs per parameter per stream, so tokens/s at B streams is at most
B / max(bytes per step / memory bandwidth, B * 2 * params / peak FLOP/s).
Read bandwidth and bf16 matmul peak are measured here with torch (best of
3 x 5 runs), on one thread (vLLM's CPU worker runs on one core and leaves the
other to the EngineCore) and on all threads. Run as a script it prints its
JSON (own process, so torch threads do not disturb the caller)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import BENCH, model_dir, subprocess_env


def _best_of(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(threads: int) -> dict[str, float]:
    """Read bandwidth (GB/s) and bf16 matmul peak (GFLOP/s) on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    data = torch.ones(128 << 20, dtype=torch.float32)  # 512 MiB, far past any cache
    data.sum()
    seconds = _best_of(data.sum, 5)
    bandwidth = data.numel() * 4 / seconds / 1e9
    data = torch.empty(0)
    n = 2048
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    seconds = _best_of(lambda: a @ b, 5)
    return {"read_gbs": bandwidth, "bf16_gflops": 2 * n**3 / seconds / 1e9}


def model_facts(path: Path) -> dict[str, float]:
    """Parameter count, weight bytes and KV bytes per token of context."""
    from safetensors import safe_open

    params = 0
    weight_bytes = 0
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
            tensor = handle.get_slice(name)
            count = 1
            for dim in tensor.get_shape():
                count *= dim
            params += count
            weight_bytes += count * 2  # served in bf16
    config = json.loads((path / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 2
    return {"params": params, "weight_bytes": weight_bytes, "kv_bytes_per_token": kv_per_token}


def roofline(
    facts: dict[str, float], hw: dict[str, float], streams: int, context: float
) -> dict[str, float]:
    """Upper bounds on total tokens/s at `streams` concurrent streams."""
    step_bytes = facts["weight_bytes"] + streams * context * facts["kv_bytes_per_token"]
    memory_s = step_bytes / (hw["read_gbs"] * 1e9)
    compute_s = streams * 2 * facts["params"] / (hw["bf16_gflops"] * 1e9)
    step = max(memory_s, compute_s)
    return {
        "total_tps": streams / step,
        "stream_tps": 1 / step,
        "itl_ms": 1000 * step,
        "bound": "memory" if memory_s >= compute_s else "compute",
    }


def run_limit(context: float, concurrencies: tuple[int, ...]) -> dict[str, Any]:
    """Measures the hardware in a subprocess and returns the roofline per concurrency."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "limit.py")],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    measured = json.loads(out.strip().splitlines()[-1])
    facts = model_facts(model_dir())
    result: dict[str, Any] = {"hardware": measured, "model": facts, "context_tokens": context}
    for label, hw in measured.items():
        result[f"roofline_{label}"] = {
            str(c): roofline(facts, hw, c, context) for c in concurrencies
        }
    return result


def _main() -> None:
    threads = {"1_thread": 1, "all_threads": os.cpu_count() or 1}
    runs = {label: [measure(n) for _ in range(3)] for label, n in threads.items()}
    # The limit is what the hardware can do: the best of the runs (load only lowers it).
    best = {
        label: {key: max(r[key] for r in values) for key in values[0]}
        for label, values in runs.items()
    }
    print(json.dumps(best))


if __name__ == "__main__":
    _main()
