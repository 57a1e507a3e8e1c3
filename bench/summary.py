"""Turns serving runs into figures: per cell and arm medians, per-round
ratios, the targets of issue 11 with how far each is from being met, output
consistency, and the fraction of output tokens the grammar forces."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from common import Spread, percentile

METRICS = (
    "ttft_ms",
    "itl_ms",
    "stream_tps",
    "total_tps",
    "decode_tps",
    "stream_decode_tps",
    "front_cpu_ms_per_token",
    "server_cpu_ms_per_token",
    "client_cpu_ms_per_token",
    "engine_cpu_ms_per_token",
    "tokens_per_stream",
    "tokens_per_chunk",
)


def arm_key(system: str, constrained: bool) -> str:
    """'grpc:json', 'peer:free', ..."""
    return f"{system}:{'json' if constrained else 'free'}"


def cell_key(workload: str, concurrency: int) -> str:
    """'json_long@16'."""
    return f"{workload}@{concurrency}"


# Ratios taken per round (a / b of the same metric), then the median over rounds.
# (name, numerator arm, denominator arm, metric)
RATIOS = (
    ("ff_vs_free:decode_tps", "grpc:json", "grpc:free", "decode_tps"),
    ("ff_vs_free:total_tps", "grpc:json", "grpc:free", "total_tps"),
    ("noff_vs_free:decode_tps", "grpc_noff:json", "grpc:free", "decode_tps"),
    ("ff_vs_noff:decode_tps", "grpc:json", "grpc_noff:json", "decode_tps"),
    ("ff_vs_noff:total_tps", "grpc:json", "grpc_noff:json", "total_tps"),
    ("peer_json_vs_free:decode_tps", "peer:json", "peer:free", "decode_tps"),
    ("json_vs_peer:total_tps", "grpc:json", "peer:json", "total_tps"),
    ("json_vs_peer:decode_tps", "grpc:json", "peer:json", "decode_tps"),
    ("noff_vs_peer:total_tps", "grpc_noff:json", "peer:json", "total_tps"),
    ("free_vs_peer:total_tps", "grpc:free", "peer:free", "total_tps"),
    ("free_vs_peer:decode_tps", "grpc:free", "peer:free", "decode_tps"),
    # Time to first token as a speed: the peer's TTFT / ours (>= 1: ours is no slower).
    ("json_vs_peer:ttft_speed", "peer:json", "grpc:json", "ttft_ms"),
    ("noff_vs_peer:ttft_speed", "peer:json", "grpc_noff:json", "ttft_ms"),
    ("free_vs_peer:ttft_speed", "peer:free", "grpc:free", "ttft_ms"),
    ("json_vs_peer:front_cpu", "grpc:json", "peer:json", "front_cpu_ms_per_token"),
    ("free_vs_peer:front_cpu", "grpc:free", "peer:free", "front_cpu_ms_per_token"),
    ("json_vs_peer:server_cpu", "grpc:json", "peer:json", "server_cpu_ms_per_token"),
    ("free_vs_peer:server_cpu", "grpc:free", "peer:free", "server_cpu_ms_per_token"),
    ("grpc_vs_inproc:total_tps", "grpc:free", "inproc:free", "total_tps"),
    ("grpc_json_vs_inproc:total_tps", "grpc:json", "inproc:json", "total_tps"),
)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per cell and arm: median [min, max] over rounds of each metric; per cell,
    the ratios of RATIOS (median over rounds of the per-round ratio)."""
    counted = [r for r in runs if r["round"] >= 0]
    cells: dict[str, Any] = {}
    for workload, concurrency in sorted({(r["workload"], r["concurrency"]) for r in counted}):
        mine = [r for r in counted if (r["workload"], r["concurrency"]) == (workload, concurrency)]
        by_arm: dict[str, Any] = {}
        for arm in sorted({arm_key(r["system"], r["constrained"]) for r in mine}):
            values = [r["metrics"] for r in mine if arm_key(r["system"], r["constrained"]) == arm]
            by_arm[arm] = {m: Spread.of([v[m] for v in values]).as_dict() for m in METRICS}
        ratios: dict[str, Any] = {}
        for name, top, bottom, metric in RATIOS:
            values = []
            for round_index in sorted({r["round"] for r in mine}):
                a = _pick(mine, round_index, top)
                b = _pick(mine, round_index, bottom)
                if a and b and b["metrics"][metric]:
                    values.append(a["metrics"][metric] / b["metrics"][metric])
            if values:
                ratios[name] = Spread.of(values).as_dict()
        cells[cell_key(workload, concurrency)] = {
            "workload": workload,
            "concurrency": concurrency,
            "arms": by_arm,
            "ratios": ratios,
        }
    return {"cells": cells, "targets": targets(cells)}


def _pick(runs: list[dict[str, Any]], round_index: int, arm: str) -> dict[str, Any] | None:
    for run in runs:
        if run["round"] == round_index and arm_key(run["system"], run["constrained"]) == arm:
            return run
    return None


# (target, ratio name, bound, the side it must be on, which cells)
TARGETS = (
    ("constrained + fast-forward / unconstrained, decode tok/s", "ff_vs_free:decode_tps",
     1.3, ">=", "json-1-16"),
    ("this service / vLLM server, total tok/s, constrained", "json_vs_peer:total_tps",
     1.0, ">=", "all-json"),
    ("this service / vLLM server, total tok/s, unconstrained", "free_vs_peer:total_tps",
     1.0, ">=", "all"),
    ("vLLM server TTFT / this service's TTFT, constrained", "json_vs_peer:ttft_speed",
     1.0, ">=", "all-json"),
    ("vLLM server TTFT / this service's TTFT, unconstrained", "free_vs_peer:ttft_speed",
     1.0, ">=", "all"),
    ("front-end CPU per token, this service / vLLM server, constrained", "json_vs_peer:front_cpu",
     1.0, "<=", "all-json"),
    ("front-end CPU per token, this service / vLLM server, unconstrained",
     "free_vs_peer:front_cpu", 1.0, "<=", "all"),
)  # fmt: skip


def targets(cells: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target in each cell it applies to: the measured ratio, met or not,
    and by how much it is missed (as a fraction of the bound)."""
    result = []
    for label, ratio, bound, side, scope in TARGETS:
        for key, cell in cells.items():
            is_json = cell["workload"] != "code"
            if scope.startswith("json") and not (is_json and cell["concurrency"] in (1, 16)):
                continue
            if scope == "all-json" and not is_json:
                continue
            value = cell["ratios"].get(ratio)
            if value is None:
                continue
            median = value["median"]
            met = median >= bound if side == ">=" else median <= bound
            gap = (bound - median) / bound if side == ">=" else (median - bound) / bound
            result.append(
                {
                    "target": label,
                    "ratio": ratio,
                    "cell": key,
                    "bound": bound,
                    "side": side,
                    "value": value,
                    "met": met,
                    "missed_by": 0.0 if met else gap,
                }
            )
    return result


def consistency(runs: list[dict[str, Any]], systems: Iterable[str]) -> dict[str, Any]:
    """Same-prompt comparisons (first 200 characters of text and prompt length)
    across systems in the same cell, arm mode and round; JSON validity; lengths."""
    names = set(systems)
    texts: dict[tuple[Any, ...], dict[str, str]] = {}
    prompts: dict[tuple[Any, ...], set[int]] = {}
    for run in runs:
        for s in run["samples"]:
            key = (run["workload"], run["constrained"], run["concurrency"], run["round"])
            key += (s["prompt"],)
            texts.setdefault(key, {})[run["system"]] = s["text"]
            prompts.setdefault(key, set()).add(s["prompt_tokens"])
    complete = [per for per in texts.values() if len(per) > 1]
    counted = [run for run in runs if run["round"] >= 0]
    per_workload: dict[str, Any] = {}
    for workload in sorted({r["workload"] for r in counted}):
        mine = [r for r in counted if r["workload"] == workload]
        by_system = [(r["system"], s) for r in mine if r["constrained"] for s in r["samples"]]
        outputs = [s for _, s in by_system]
        # Judged on the whole text when the run recorded it (its saved text is cut at 200
        # characters); runs from before that are not judged.
        valid = {name: 0 for name, s in by_system if "json_valid" in s}
        cut = {name: 0 for name, _ in by_system}
        for name, sample in by_system:
            if "json_valid" in sample:
                valid[name] += bool(sample["json_valid"])
            cut[name] += sample["finish"] in ("FINISH_REASON_MAX_TOKENS", "length")
        per_workload[workload] = {
            "p50_tokens_free": percentile(
                [s["tokens"] for r in mine if not r["constrained"] for s in r["samples"]], 50
            ),
            "p50_tokens_json": percentile([s["tokens"] for s in outputs], 50),
            "min_tokens_json": min((s["tokens"] for s in outputs), default=0),
            "constrained_outputs": len(outputs),
            "constrained_outputs_valid_json": valid,
            "constrained_outputs_cut_by_max_tokens": cut,
        }
    return {
        "systems": sorted(names),
        "comparisons": len(complete),
        "identical_text": sum(1 for per in complete if len(set(per.values())) == 1),
        "identical_prompt_tokens": sum(1 for v in prompts.values() if len(v) == 1),
        "prompt_comparisons": len(prompts),
        "workloads": per_workload,
    }


def forced_fractions(runs: list[Any], workloads: list[Any]) -> dict[str, Any]:
    """Per JSON workload: the share of output tokens that the grammar forces,
    found by walking an llguidance matcher over this service's real outputs
    (token ids) and asking compute_ff_tokens at each step; beside it, what the
    server itself reported as forced, when it reports it."""
    import forced

    result: dict[str, Any] = {}
    for workload in workloads:
        if not workload.constrained:
            continue
        samples = [
            (run.system, s)
            for run in runs
            if run.round >= 0
            and run.workload == workload.name
            and run.constrained
            and run.system.startswith("grpc")
            for s in run.samples
        ]
        result[workload.name] = forced.measure(workload, samples)
    return result
