"""Time to SERVING: `ananke-server` cold (the default model prepared from its
GGUF into an empty model cache) and warm (model already prepared), and vLLM's
own OpenAI server to ready, for comparison."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import servers
from common import Spread, load_average, log, model_dir, tree_rss_bytes


def _grpc_once(log_dir: Path, extra: list[str]) -> dict[str, float]:
    handle = servers.launch_grpc(log_dir, extra)
    try:
        servers.wait_grpc_serving(handle)
        rss = tree_rss_bytes(handle.pid)
    finally:
        servers.stop(handle)
    return {
        "serving_s": handle.ready_s,
        "port_bound_s": handle.extra.get("bound_s", float("nan")),
        "rss_mib": rss / 2**20,
    }


def run_startup(out_dir: Path, *, cold_runs: int, warm_runs: int, peer_runs: int) -> dict[str, Any]:
    """Cold and warm runs alternate; one server at a time."""
    samples: dict[str, list[dict[str, float]]] = {"cold": [], "warm": [], "peer": []}
    plan = []
    for index in range(max(cold_runs, warm_runs)):
        if index < cold_runs:
            plan.append("cold")
        if index < warm_runs:
            plan.append("warm")
    plan += ["peer"] * peer_runs
    loads = [load_average()]
    for index, kind in enumerate(plan):
        log_dir = out_dir / f"startup-{index}-{kind}"
        if kind == "cold":
            cache = Path(tempfile.mkdtemp(prefix="ananke-bench-models-"))
            try:
                sample = _grpc_once(log_dir, ["--model-cache-dir", str(cache)])
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        elif kind == "warm":
            sample = _grpc_once(log_dir, [])
        else:
            handle = servers.launch_peer(log_dir, model_dir(), 2048)
            try:
                servers.wait_peer_ready(handle)
                rss = tree_rss_bytes(handle.pid)
            finally:
                servers.stop(handle)
            sample = {"serving_s": handle.ready_s, "rss_mib": rss / 2**20}
        samples[kind].append(sample)
        loads.append(load_average())
        log(f"startup: {kind} {sample['serving_s']:.1f} s to ready")
        time.sleep(1.0)
    summary: dict[str, Any] = {"samples": samples, "load": loads}
    for kind, values in samples.items():
        if values:
            summary[kind] = {
                key: Spread.of([v[key] for v in values]).as_dict() for key in values[0]
            }
    return summary
