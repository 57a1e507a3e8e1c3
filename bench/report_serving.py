"""The serving part of the report: targets, decode and total tokens/s,
latency, CPU per token, forced-token shares and output lengths."""

from __future__ import annotations

from typing import Any

from common import Spread, fmt, fmt_spread

ARM_LABELS = {
    "grpc:json": "this service, constrained + fast-forward",
    "grpc_noff:json": "this service, constrained, no fast-forward",
    "peer:json": "vLLM server, constrained",
    "inproc:json": "in process, constrained",
    "grpc:free": "this service, unconstrained",
    "grpc_noff:free": "this service (no-ff server), unconstrained",
    "peer:free": "vLLM server, unconstrained",
    "inproc:free": "in process, unconstrained",
}
SHORT = {
    "grpc:json": "ff",
    "grpc_noff:json": "no ff",
    "peer:json": "vLLM",
    "inproc:json": "in proc.",
    "grpc:free": "free",
    "grpc_noff:free": "free (no-ff srv)",
    "peer:free": "vLLM free",
    "inproc:free": "in proc. free",
}
COLORS = {
    "grpc:json": "#1f77b4",
    "grpc_noff:json": "#aec7e8",
    "peer:json": "#ff7f0e",
    "inproc:json": "#2ca02c",
    "grpc:free": "#9467bd",
    "grpc_noff:free": "#c5b0d5",
    "peer:free": "#ffbb78",
    "inproc:free": "#98df8a",
}


def _spread(data: dict[str, float] | None) -> Spread:
    if not data:
        return Spread(float("nan"), float("nan"), float("nan"), 0)
    return Spread(data["median"], data["min"], data["max"], int(data["runs"]))


def _s(data: dict[str, float] | None, digits: int = 1) -> str:
    return fmt_spread(_spread(data), digits)


def cells(serving: dict[str, Any]) -> list[dict[str, Any]]:
    """Cells ordered by workload (as configured), then streams."""
    order = list(serving["settings"]["workloads"])
    found = serving["summary"]["cells"].values()
    return sorted(found, key=lambda c: (order.index(c["workload"]), c["concurrency"]))


def arms_present(serving: dict[str, Any]) -> list[str]:
    """Arms with data, in ARM_LABELS order."""
    seen = {arm for cell in serving["summary"]["cells"].values() for arm in cell["arms"]}
    return [arm for arm in ARM_LABELS if arm in seen]


def arm_label(serving: dict[str, Any], arm: str) -> str:
    """The arm's name; 'grpc:json' says so when the build has no fast-forward."""
    if arm == "grpc:json" and not serving["settings"]["fast_forward"]["two_arms"]:
        return "this service, constrained (this build: no fast-forward)"
    return ARM_LABELS[arm]


def _label(serving: dict[str, Any], workload: str) -> str:
    return str(serving["settings"]["workloads"][workload]["label"])


def _metric_table(
    serving: dict[str, Any], metric: str, digits: int, ratios: tuple[tuple[str, str], ...]
) -> list[str]:
    arms = arms_present(serving)
    head = "| workload | streams | " + " | ".join(SHORT[a] for a in arms)
    head += "".join(f" | {label}" for label, _ in ratios) + " |"
    lines = [head, "|---|---:|" + "---:|" * (len(arms) + len(ratios))]
    for cell in cells(serving):
        row = [_s(cell["arms"].get(a, {}).get(metric), digits) for a in arms]
        row += [_s(cell["ratios"].get(name), 2) for _, name in ratios]
        lines.append(
            f"| {_label(serving, cell['workload'])} | {cell['concurrency']} | "
            + " | ".join(row)
            + " |"
        )
    return lines


def targets_table(serving: dict[str, Any]) -> list[str]:
    """One row per target, one column per cell: the measured ratio (median over
    rounds), and for a miss, by how much (as a share of the bound)."""
    found = serving["summary"]["targets"]
    order = [f"{c['workload']}@{c['concurrency']}" for c in cells(serving)]
    columns = [key for key in order if any(t["cell"] == key for t in found)]
    names = {key: f"{key.split('@')[0]} @{key.split('@')[1]}" for key in columns}
    lines = [
        "| target | bound | " + " | ".join(names[k] for k in columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for label in dict.fromkeys(t["target"] for t in found):
        mine = {t["cell"]: t for t in found if t["target"] == label}
        first = next(iter(mine.values()))
        row = []
        for key in columns:
            t = mine.get(key)
            if t is None:
                row.append("")
            elif t["met"]:
                row.append(f"{fmt(t['value']['median'], 2)} ok")
            else:
                row.append(f"**{fmt(t['value']['median'], 2)}** (-{100 * t['missed_by']:.0f}%)")
        lines.append(
            f"| {label} | {first['side']} {first['bound']:.1f} | " + " | ".join(row) + " |"
        )
    met = sum(1 for t in found if t["met"])
    lines += [
        "",
        f"{met} of {len(found)} target cells met. Bold: missed, with the shortfall as a share "
        "of the bound. Spreads over rounds are in results.json.",
    ]
    return lines


def forced_table(serving: dict[str, Any]) -> list[str]:
    """Forced-token shares per JSON workload."""
    lines = [
        "| workload | outputs | tokens walked | forced | share | median per output "
        "| mean run | longest | tokens per step (ceiling) | reported by the server |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, f in serving.get("forced", {}).items():
        if not isinstance(f, dict):
            lines.append(f"| {_label(serving, name)} | {f} |||||||||")
            continue
        walked = f["forced"] + f["sampled"]
        reported = (
            ", ".join(
                f"{system}: {100 * share:.1f}%" for system, share in f["reported_share"].items()
            )
            or "not reported"
        )
        lines.append(
            f"| {_label(serving, name)} | {f['outputs']} | {walked} | {f['forced']} "
            f"| {100 * f['share']:.1f}% | {100 * f['median_share']:.1f}% | {f['mean_run']:.1f} "
            f"| {f['longest']} | {f['step_ceiling']:.2f} | {reported} |"
        )
    return lines


def lengths_table(serving: dict[str, Any]) -> list[str]:
    """Output lengths and JSON validity per workload."""
    lines = [
        "| workload | median tokens, unconstrained | median tokens, constrained "
        "| shortest constrained | constrained outputs | parse as JSON, per system "
        "| cut by max_tokens, per system |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name, w in serving["consistency"]["workloads"].items():
        lines.append(
            f"| {_label(serving, name)} | {fmt(w['p50_tokens_free'], 0)} "
            f"| {fmt(w['p50_tokens_json'], 0)} | {w['min_tokens_json'] or 'n/a'} "
            f"| {w['constrained_outputs']} | {_per_system(w['constrained_outputs_valid_json'])} "
            f"| {_per_system(w['constrained_outputs_cut_by_max_tokens'])} |"
        )
    return lines


def _per_system(counts: Any) -> str:
    """`grpc 21, peer 7` from {system: count}; a bare number from older results."""
    if isinstance(counts, dict):
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "n/a"
    return str(counts)


def serving_section(serving: dict[str, Any]) -> list[str]:
    """The whole serving section."""
    st = serving["settings"]
    cons = serving["consistency"]
    ff = st["fast_forward"]
    if ff["two_arms"]:
        ff_text = (
            "Two gRPC servers run side by side, one with `--fast-forward`, one with "
            "`--no-fast-forward`; unconstrained arms run on the first."
        )
    else:
        ff_text = (
            "**Fast-forward is not in this build** (the server has no `--no-fast-forward` "
            "setting), so the 'ff' column is this service without fast-forward and the "
            "'no ff' arm was not run."
        )
    workloads = "; ".join(
        f"{w['label']} (`{name}`, max_tokens {w['max_tokens']}"
        + (f", {w['schemas']} schemas)" if w["schemas"] else ")")
        for name, w in st["workloads"].items()
    )
    return [
        "## Serving: this service vs vLLM's OpenAI server",
        "",
        f"Workloads: {workloads}. {st['prompts']} chat prompts, one per stream; a JSON "
        "workload runs constrained on every system, and unconstrained on this service with "
        "the same prompt (which shows the schema)"
        + (
            ", each stream held to exactly as many tokens as that prompt's constrained "
            "output (min_tokens = max_tokens = the length of one constrained greedy run "
            "before the rounds), so both sides decode the same number of tokens"
            if st.get("unconstrained_lengths")
            else ""
        )
        + ": the baseline of the fast-forward ratio; "
        "free generation against vLLM's server is the code workload. Greedy (temperature 0, "
        "seed 0). Engine settings on every side: max_num_seqs "
        f"{st['max_num_seqs']}, max_num_batched_tokens {st['max_num_batched_tokens']}, "
        f"max_model_len {st['max_model_len']}, KV cache {st['kv_cache_bytes'] >> 20} MiB, "
        f"guidance backend. {ff_text} {st['rounds']} rounds; in each round every cell runs on "
        "every arm back to back in rotating order; ratios are medians of per-round ratios. "
        "Decode tokens/s counts the tokens after each stream's first one over the time from "
        "the earliest first token to the last end (all streams together).",
        f"Same-prompt outputs (first 200 characters) identical across systems in "
        f"{cons['identical_text']} of {cons['comparisons']} comparisons (bf16 batching can "
        f"flip near-ties; a forced run changes the batch shape); prompt token counts identical "
        f"in {cons['identical_prompt_tokens']} of {cons['prompt_comparisons']}. Load during "
        f"serving: {serving['load_start']} -> {serving['load_end']}; idle CPU (cores) "
        + ", ".join(f"{k} {v:.2f}" for k, v in serving["idle_cpu_cores"].items())
        + ".",
        "",
        "![throughput](serving_throughput.png)",
        "![latency](serving_latency.png)",
        "",
        "### Targets (ratios in this run)",
        "",
        "TTFT is compared as a speed (vLLM's TTFT / ours: at least 1.0 means ours is no "
        "slower); front-end CPU = the server's main process + the benchmark client.",
        "",
        *targets_table(serving),
        "",
        "### Fraction of output tokens forced by the grammar",
        "",
        "An llguidance matcher of the grammar this service compiles walks this service's "
        "real constrained outputs; at each step `compute_ff_tokens` gives the tokens that "
        "follow whatever the model says. 'Tokens per step (ceiling)' = output tokens / "
        "sampled tokens: the most fast-forward can gain in model steps.",
        "",
        *forced_table(serving),
        "",
        "### Output lengths",
        "",
        *lengths_table(serving),
        "",
        "### Decode tokens/s after the first token, all streams (higher is better)",
        "",
        *_metric_table(
            serving,
            "decode_tps",
            1,
            (
                ("ff/free", "ff_vs_free:decode_tps"),
                ("no ff/free", "noff_vs_free:decode_tps"),
                ("ff/no ff", "ff_vs_noff:decode_tps"),
                ("vLLM json/free", "peer_json_vs_free:decode_tps"),
            ),
        ),
        "",
        "### Tokens/s, total over all streams, first token included (higher is better)",
        "",
        *_metric_table(
            serving,
            "total_tps",
            1,
            (
                ("ff/vLLM", "json_vs_peer:total_tps"),
                ("no ff/vLLM", "noff_vs_peer:total_tps"),
                ("free/vLLM free", "free_vs_peer:total_tps"),
            ),
        ),
        "",
        "### Time to first token, ms (lower is better)",
        "",
        *_metric_table(
            serving,
            "ttft_ms",
            1,
            (
                ("vLLM/ff", "json_vs_peer:ttft_speed"),
                ("vLLM/no ff", "noff_vs_peer:ttft_speed"),
                ("vLLM free/free", "free_vs_peer:ttft_speed"),
            ),
        ),
        "",
        "### Inter-token latency after the first token, ms per token (lower is better)",
        "",
        *_metric_table(serving, "itl_ms", 1, ()),
        "",
        "### Front-end CPU per output token, ms (server main process + client)",
        "",
        *_metric_table(
            serving,
            "front_cpu_ms_per_token",
            2,
            (("ff/vLLM", "json_vs_peer:front_cpu"), ("free/vLLM free", "free_vs_peer:front_cpu")),
        ),
        "",
        "Of which the server's main process alone (the client's share is the rest):",
        "",
        *_metric_table(
            serving,
            "server_cpu_ms_per_token",
            2,
            (
                ("ff/vLLM", "json_vs_peer:server_cpu"),
                ("free/vLLM free", "free_vs_peer:server_cpu"),
            ),
        ),
        "",
        "### Output tokens per stream message (deltas merged while a stream is behind)",
        "",
        *_metric_table(serving, "tokens_per_chunk", 2, ()),
        "",
        "### Engine CPU per output token, ms (EngineCore + worker)",
        "",
        *_metric_table(serving, "engine_cpu_ms_per_token", 1, ()),
    ]


def serving_plots(serving: dict[str, Any], save: Any, plt: Any) -> None:
    """Decode and total tokens/s, TTFT and ITL per cell and arm."""
    arms = arms_present(serving)
    ordered = cells(serving)
    ticks = [f"{c['workload']}\n{c['concurrency']} str." for c in ordered]
    names = {arm: arm_label(serving, arm) for arm in arms}
    fig, axes = plt.subplots(2, 1, figsize=(12, 8))
    for ax, metric, title in (
        (axes[0], "decode_tps", "Decode tokens/s after the first token, all streams"),
        (axes[1], "total_tps", "Total tokens/s, all streams"),
    ):
        _grouped(ax, ordered, arms, metric, ticks, names)
        ax.set_yscale("log")  # 1 and 16 streams differ by 10x
        ax.set_title(title + " (log scale)")
    axes[0].legend(fontsize=7, ncol=2)
    save(fig, "serving_throughput.png")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, metric, title in (
        (axes[0], "ttft_ms", "Time to first token, ms"),
        (axes[1], "itl_ms", "Inter-token latency, ms"),
    ):
        _grouped(ax, ordered, arms, metric, ticks, names)
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    save(fig, "serving_latency.png")


def _grouped(
    ax: Any,
    ordered: list[dict[str, Any]],
    arms: list[str],
    metric: str,
    ticks: list[str],
    labels: dict[str, str],
) -> None:
    width = 0.85 / max(1, len(arms))
    for a_index, arm in enumerate(arms):
        data = [cell["arms"].get(arm, {}).get(metric) for cell in ordered]
        xs = [i + (a_index - (len(arms) - 1) / 2) * width for i in range(len(ordered))]
        ys = [d["median"] if d else float("nan") for d in data]
        err = [
            [d["median"] - d["min"] if d else 0.0 for d in data],
            [d["max"] - d["median"] if d else 0.0 for d in data],
        ]
        ax.bar(xs, ys, width, yerr=err, capsize=1.5, label=labels[arm], color=COLORS[arm])
    ax.set_xticks(range(len(ordered)), ticks, fontsize=7)


def readme_table(serving: dict[str, Any]) -> list[str]:
    """The short table for the README: total and decode tokens/s per arm."""
    ordered = cells(serving)
    streams = sorted({c["concurrency"] for c in ordered})
    head = " | ".join(f"{n} str. total / decode" for n in streams)
    lines = [f"| workload | arm | {head} |", "|---|---|" + "---:|" * len(streams)]
    for workload in serving["settings"]["workloads"]:
        mine = {c["concurrency"]: c for c in ordered if c["workload"] == workload}
        arms = [a for a in arms_present(serving) if any(a in c["arms"] for c in mine.values())]
        for arm in arms:
            row = []
            for n in streams:
                data = mine.get(n, {}).get("arms", {}).get(arm)
                if data is None:
                    row.append("")
                    continue
                total = fmt(data["total_tps"]["median"], 1)
                row.append(f"{total} / {fmt(data['decode_tps']['median'], 1)}")
            lines.append(
                f"| {_label(serving, workload)} | {arm_label(serving, arm)} | "
                + " | ".join(row)
                + " |"
            )
    return lines
