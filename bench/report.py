"""Turns the raw results into a markdown report and PNG plots (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import Spread, fmt, fmt_spread

SYSTEM_LABELS = {
    "grpc": "this service (gRPC)",
    "peer": "vLLM OpenAI server",
    "inproc": "in process",
}
HEADER = (
    "| mode | streams | this service | vLLM server | in process | this/vLLM | this/in-process |"
)
COLORS = {"grpc": "#1f77b4", "peer": "#ff7f0e", "inproc": "#2ca02c", "limit": "#7f7f7f"}


def _every(stride: int) -> str:
    if stride == 1:
        return "every file"
    suffix = {2: "nd", 3: "rd"}.get(stride, "th")
    return f"every {stride}{suffix} file"


def _spread(data: dict[str, float] | None) -> Spread:
    if not data:
        return Spread(float("nan"), float("nan"), float("nan"), 0)
    return Spread(data["median"], data["min"], data["max"], int(data["runs"]))


def _s(data: dict[str, float] | None, digits: int = 1) -> str:
    return fmt_spread(_spread(data), digits)


def _cells(serving: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cells = serving["summary"]["cells"]
    return sorted(cells.items(), key=lambda kv: (kv[1]["constrained"], kv[1]["concurrency"]))


def _mode(cell: dict[str, Any]) -> str:
    return "JSON schema" if cell["constrained"] else "unconstrained"


def serving_tables(serving: dict[str, Any], limit: dict[str, Any] | None) -> list[str]:
    """Throughput, latency and CPU tables of the serving benchmark."""
    roof = (limit or {}).get("roofline_1_thread", {})
    lines = [
        "### Tokens/s, total over all streams (higher is better)",
        "",
        "| mode | streams | this service | vLLM server | in process | physical limit "
        "| this/vLLM | this/in-process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _, cell in _cells(serving):
        sy, ra = cell["systems"], cell["ratios"]
        c = cell["concurrency"]
        lim = roof.get(str(c), {}).get("total_tps", float("nan"))
        lines.append(
            f"| {_mode(cell)} | {c} | {_s(sy['grpc']['total_tps'])} "
            f"| {_s(sy['peer']['total_tps'])} | {_s(sy['inproc']['total_tps'])} | {fmt(lim, 0)} "
            f"| {_s(ra['grpc/peer:total_tps'], 2)} | {_s(ra['grpc/inproc:total_tps'], 2)} |"
        )
    lines += [
        "",
        "### Tokens/s per stream (higher is better)",
        "",
        HEADER,
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for _, cell in _cells(serving):
        sy, ra = cell["systems"], cell["ratios"]
        lines.append(
            f"| {_mode(cell)} | {cell['concurrency']} | {_s(sy['grpc']['stream_tps'])} "
            f"| {_s(sy['peer']['stream_tps'])} | {_s(sy['inproc']['stream_tps'])} "
            f"| {_s(ra['grpc/peer:stream_tps'], 2)} | {_s(ra['grpc/inproc:stream_tps'], 2)} |"
        )
    for metric, title in (
        ("ttft_ms", "Time to first token, ms (lower is better)"),
        ("itl_ms", "Inter-token latency, ms (lower is better)"),
    ):
        lines += [
            "",
            f"### {title}",
            "",
            HEADER,
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for _, cell in _cells(serving):
            sy, ra = cell["systems"], cell["ratios"]
            lines.append(
                f"| {_mode(cell)} | {cell['concurrency']} | {_s(sy['grpc'][metric])} "
                f"| {_s(sy['peer'][metric])} | {_s(sy['inproc'][metric])} "
                f"| {_s(ra['grpc/peer:' + metric], 2)} | {_s(ra['grpc/inproc:' + metric], 2)} |"
            )
    lines += [
        "",
        "### CPU per generated token, ms (front end = server main process + client; "
        "engine = EngineCore + worker)",
        "",
        "| mode | streams | front end: this | vLLM server | in process "
        "| engine: this | vLLM server | in process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _, cell in _cells(serving):
        sy = cell["systems"]
        front = " | ".join(_s(sy[n]["front_cpu_ms_per_token"], 2) for n in SYSTEM_LABELS)
        engine = " | ".join(_s(sy[n]["engine_cpu_ms_per_token"], 1) for n in SYSTEM_LABELS)
        lines.append(f"| {_mode(cell)} | {cell['concurrency']} | {front} | {engine} |")
    cost = serving["summary"]["constraint_cost"]
    concurrencies = sorted({cell["concurrency"] for _, cell in _cells(serving)})
    lines += [
        "",
        "### Constraint cost: JSON-schema / unconstrained total tokens/s, same engine",
        "",
        "| streams | " + " | ".join(SYSTEM_LABELS.values()) + " |",
        "|---:|" + "---:|" * len(SYSTEM_LABELS),
    ]
    for c in concurrencies:
        row = " | ".join(_s(cost.get(f"{n}@{c}"), 2) for n in SYSTEM_LABELS)
        lines.append(f"| {c} | {row} |")
    return lines


def masking_table(masking: dict[str, Any]) -> list[str]:
    """Per-token mask time, project grammar vs llguidance directly."""
    lines = [
        "| tokenizer | vocab | side | p50 µs | p99 µs | max µs | mean µs |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, tok in masking["tokenizers"].items():
        for side, label in (("project", "Ananke grammar"), ("direct", "llguidance direct")):
            data = tok[side]
            lines.append(
                f"| {name} | {tok['vocab']} | {label} | {_s(data['p50_us'])} "
                f"| {_s(data['p99_us'])} | {_s(data['max_us'], 0)} | {_s(data['mean_us'])} |"
            )
    lines += ["", "| tokenizer | schemas | documents | tokens | fully accepted | mask mismatches "]
    lines[-1] += "| refused (Ananke / llguidance) | p50 ratio Ananke/direct |"
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, tok in masking["tokenizers"].items():
        n = tok["counts"]
        ratio = tok["project"]["p50_us"]["median"] / tok["direct"]["p50_us"]["median"]
        lines.append(
            f"| {name} | {n['schemas']} | {n['documents']} | {n['tokens']} "
            f"| {n['documents_fully_accepted']} | {n['mask_mismatches']} "
            f"| {n['refused_project']} / {n['refused_direct']} | {ratio:.2f} |"
        )
    return lines


def compile_table(compile_: dict[str, Any]) -> list[str]:
    """Compile time per schema and cache-hit cost."""
    rows = (
        ("miss_ms", "Ananke compile, cache miss (wall, ms)", 2),
        ("miss_cpu_ms", "Ananke compile, cache miss (CPU, ms)", 2),
        ("direct_ms", "llguidance direct: grammar + validate + matcher (wall, ms)", 2),
        ("direct_cpu_ms", "llguidance direct (CPU, ms)", 2),
        ("matcher_build_ms", "matcher build from the compiled grammar (per request, ms)", 2),
        ("hit_us", "Ananke compile, cache hit (µs)", 1),
        ("disk_write_ms", "Ananke compile + disk cache write (wall, ms)", 2),
        ("disk_load_ms", "disk cache load, nothing in memory (wall, ms)", 3),
        ("disk_load_cpu_ms", "disk cache load (CPU, ms)", 3),
    )
    lines = ["| what | p50 | p99 | max |", "|---|---:|---:|---:|"]
    for key, label, digits in rows:
        if key not in compile_:
            continue  # results of a run before the row existed (--report-only)
        data = compile_[key]
        lines.append(
            f"| {label} | {_s(data['p50'], digits)} | {_s(data['p99'], digits)} "
            f"| {_s(data['max'], digits)} |"
        )
    return lines


def startup_table(startup: dict[str, Any]) -> list[str]:
    """Time to SERVING, cold and warm."""
    rows = (
        ("cold", "this service, cold (model prepared from GGUF first)"),
        ("warm", "this service, warm (model cached)"),
        ("peer", "vLLM OpenAI server (model cached)"),
    )
    lines = ["| start | to ready, s | port bound, s | RSS after, MiB |", "|---|---:|---:|---:|"]
    for key, label in rows:
        data = startup.get(key)
        if not data:
            lines.append(f"| {label} | not measured | | |")
            continue
        lines.append(
            f"| {label} | {_s(data['serving_s'])} | {_s(data.get('port_bound_s'))} "
            f"| {_s(data['rss_mib'], 0)} |"
        )
    return lines


def limit_table(limit: dict[str, Any]) -> list[str]:
    """Hardware figures and the roofline."""
    hw, model = limit["hardware"], limit["model"]
    lines = [
        f"Model: {model['params'] / 1e6:.1f} M parameters, {model['weight_bytes'] / 2**20:.0f} MiB "
        f"of bf16 weights read per decode step, {model['kv_bytes_per_token'] / 1024:.1f} KiB "
        f"of KV cache per token of context (context taken as {limit['context_tokens']:.0f}).",
        "",
        "| threads | read bandwidth GB/s | bf16 matmul GFLOP/s "
        "| limit tok/s @1 | @4 | @16 | bound |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label in hw:
        roof = limit[f"roofline_{label}"]
        keys = sorted(roof, key=int)
        cells = " | ".join(fmt(roof[k]["total_tps"], 0) for k in keys)
        lines.append(
            f"| {label.replace('_', ' ')} | {fmt(hw[label]['read_gbs'])} "
            f"| {fmt(hw[label]['bf16_gflops'], 0)} | {cells} | {roof[keys[-1]]['bound']} |"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole report."""
    info = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    lines = [
        f"# Ananke benchmarks ({results['mode']} run, {results['started']})",
        "",
        f"- Machine: {info['nproc']} CPUs, {info['cpu_model']} ({info['cpu_flags']}), "
        f"{info['ram_gib']} GiB RAM, {info['os']}",
        f"- Python {info['python']}; {versions}; project commit {info['git_commit']}",
        f"- Model: SmolLM2-135M-Instruct (bf16, enforce_eager), greedy; command: "
        f"`{results['command']}`; took {results['elapsed_s'] / 60:.1f} min",
        f"- Load average (1/5/15 min) at start {results['load_start']}, at end "
        f"{results['load_end']}. The machine is shared: other jobs ran meanwhile, so wall "
        "times are noisy; CPU-time columns are steadier. Figures are the median of the runs "
        "with [min, max] beside it.",
    ]
    serving = results.get("serving")
    limit = results.get("limit")
    if serving:
        st = serving["settings"]
        cons = serving["consistency"]
        lines += [
            "",
            "## Serving: this service vs vLLM's OpenAI server vs the engine in process",
            "",
            f"Same {st['prompts']} chat prompts ({st['schemas']} JSON schemas), max_tokens "
            f"{st['max_tokens']}, temperature 0, seed 0; engine settings on every side: "
            f"max_num_seqs {st['max_num_seqs']}, max_num_batched_tokens "
            f"{st['max_num_batched_tokens']}, max_model_len {st['max_model_len']}, KV cache "
            f"{st['kv_cache_bytes'] >> 20} MiB, guidance backend. {st['rounds']} rounds; in each "
            "round every cell runs on the three systems back to back in rotating order. "
            "The ratios are medians of the per-round ratios.",
            f"Greedy outputs (first 200 characters) identical on all three systems in "
            f"{cons['identical_text_all_systems']} of {cons['comparisons']} same-prompt "
            "comparisons (same cell and round; bf16 batching can flip a near-tie); prompt "
            f"token counts identical in {cons['identical_prompt_tokens']} of "
            f"{cons['prompt_comparisons']}; median tokens per stream: "
            f"{fmt(cons['p50_tokens_free'], 0)} unconstrained, {fmt(cons['p50_tokens_json'], 0)} "
            f"JSON; {cons['constrained_outputs_valid_json']} of {cons['constrained_outputs']} "
            "JSON outputs parse. Load during serving: "
            f"{serving['load_start']} -> {serving['load_end']}; idle CPU (cores) "
            + ", ".join(f"{k} {v:.2f}" for k, v in serving["idle_cpu_cores"].items())
            + ".",
            "",
            "![throughput](serving_throughput.png)",
            "![latency](serving_latency.png)",
            "",
            *serving_tables(serving, limit),
        ]
    if limit:
        lines += [
            "",
            "## Physical limit (roofline)",
            "",
            "Decode tokens/s cannot exceed streams / max(bytes read per step / memory "
            "bandwidth, streams x 2 x parameters / peak FLOP/s). vLLM's CPU worker runs on one "
            "core, so the one-thread row is the limit quoted in the serving table.",
            "",
            *limit_table(limit),
        ]
    masking = results.get("masking")
    if masking:
        ms = masking["settings"]
        lines += [
            "",
            "## Per-token mask time (CPU time per mask, µs)",
            "",
            f"MaskBench schemas ({_every(ms['stride'])}, {ms['docs_per_schema']} valid document "
            "each, serialized "
            "compactly and tokenized): the grammar Ananke compiles (ConstraintCompiler's Lark "
            "text, as vLLM receives it) against llguidance's own grammar for the same schema, "
            "both built like vLLM's guidance backend builds them and walked in lockstep over "
            f"the same tokens. {ms['runs']} runs.",
            "",
            "![masking](masking.png)",
            "",
            *masking_table(masking),
        ]
    compile_ = results.get("compile")
    if compile_:
        cs = compile_["settings"]
        lines += [
            "",
            "## Constraint compile",
            "",
            f"{cs['schemas']} distinct MaskBench schemas ({_every(cs['stride'])}), "
            f"{compile_['tokenizer']} tokenizer, {cs['runs']} passes with a fresh compiler; "
            "figures over the schemas both sides accept (refused: Ananke "
            f"{compile_['refused']['project']}, llguidance {compile_['refused']['direct']}). "
            "A miss goes through `ConstraintCompiler.compile` (thread pool); a hit is the "
            "digest + LRU lookup.",
            "",
            "![compile](compile.png)",
            "",
            *compile_table(compile_),
        ]
        if "cold_disk_load_s" in compile_:
            compile_s, load_s = compile_["cold_compile_s"], compile_["cold_disk_load_s"]
            lines += [
                "",
                "Disk cache (`compile_disk_cache_dir`): a cold start that meets every timed "
                f"schema compiles them in {compile_s['median']:.2f} s; loading them from the "
                f"disk cache instead takes {load_s['median']:.2f} s "
                f"({compile_['disk_bytes']['median'] / 1e6:.1f} MB of entries).",
            ]
    startup = results.get("startup")
    if startup:
        lines += [
            "",
            "## Startup: time to SERVING",
            "",
            "From process start to the first health check answering SERVING (gRPC) or "
            "`/v1/models` answering 200 (vLLM), one server at a time.",
            "",
            "![startup](startup.png)",
            "",
            *startup_table(startup),
        ]
    for section, error in results.get("errors", {}).items():
        last = error.strip().splitlines()[-1]
        lines += ["", f"**Section {section} failed**: `{last}` (traceback in results.json)."]
    if results.get("serving_other_pass"):
        other = results["serving_other_pass"]
        lines += [
            "",
            f"Serving was run twice (load {other['load_start']} -> {other['load_end']} in the "
            "other pass); the table shows the pass with the lower load. Both are in results.json.",
        ]
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Writes the PNG plots; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    serving = results.get("serving")
    limit = results.get("limit") or {}
    if serving:
        cells = _cells(serving)
        labels = [
            f"{'JSON' if cell['constrained'] else 'free'}\n{cell['concurrency']} str."
            for _, cell in cells
        ]
        fig, ax = plt.subplots(figsize=(10, 4.5))
        _grouped(ax, cells, "total_tps", labels)
        roof = limit.get("roofline_1_thread", {})
        for i, (_, cell) in enumerate(cells):
            value = roof.get(str(cell["concurrency"]), {}).get("total_tps")
            if value:
                ax.hlines(value, i - 0.4, i + 0.4, colors=COLORS["limit"], linestyles="dashed")
        ax.plot([], [], color=COLORS["limit"], linestyle="dashed", label="physical limit (1 core)")
        ax.set_ylabel("tokens/s, all streams")
        ax.set_title("Throughput (median, bars = min/max over rounds)")
        ax.legend(fontsize=8)
        save(fig, "serving_throughput.png")
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, metric, title in (
            (axes[0], "ttft_ms", "Time to first token, ms"),
            (axes[1], "itl_ms", "Inter-token latency, ms"),
        ):
            _grouped(ax, cells, metric, labels)
            ax.set_title(title)
        axes[0].legend(fontsize=8)
        save(fig, "serving_latency.png")
    masking = results.get("masking")
    if masking:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        names = list(masking["tokenizers"])
        stats = ("p50_us", "p99_us", "max_us")
        width = 0.8 / (len(names) * 2)
        for t_index, name in enumerate(names):
            for s_index, side in enumerate(("project", "direct")):
                offset = (t_index * 2 + s_index) * width - 0.4 + width / 2
                data = [masking["tokenizers"][name][side][s] for s in stats]
                xs = [i + offset for i in range(len(stats))]
                ys = [d["median"] for d in data]
                err = [
                    [d["median"] - d["min"] for d in data],
                    [d["max"] - d["median"] for d in data],
                ]
                label = f"{name}: {'Ananke' if side == 'project' else 'llguidance'}"
                hatch = "" if side == "project" else "//"
                ax.bar(xs, ys, width, yerr=err, label=label, hatch=hatch, capsize=2)
        ax.set_xticks(range(len(stats)), ["p50", "p99", "max"])
        ax.set_yscale("log")
        ax.set_ylabel("µs CPU per mask")
        ax.set_title("Per-token mask time, MaskBench schemas")
        ax.legend(fontsize=8)
        save(fig, "masking.png")
    compile_ = results.get("compile")
    if compile_:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        keys = (
            ("miss_ms", "Ananke miss (wall)"),
            ("miss_cpu_ms", "Ananke miss (CPU)"),
            ("direct_ms", "llguidance (wall)"),
            ("matcher_build_ms", "matcher build"),
            ("hit_us", "Ananke hit"),
        )
        for s_index, stat in enumerate(("p50", "p99")):
            ys = []
            for key, _ in keys:
                value = compile_[key][stat]["median"]
                ys.append(value / 1000 if key == "hit_us" else value)
            xs = [i + (s_index - 0.5) * 0.38 for i in range(len(keys))]
            ax.bar(xs, ys, 0.38, label=stat)
        ax.set_xticks(range(len(keys)), [label for _, label in keys], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms per schema")
        ax.set_title("Constraint compile per schema")
        ax.legend()
        save(fig, "compile.png")
    startup = results.get("startup")
    if startup:
        fig, ax = plt.subplots(figsize=(7, 4))
        kinds = [k for k in ("cold", "warm", "peer") if startup.get(k)]
        ys = [startup[k]["serving_s"]["median"] for k in kinds]
        err = [
            [startup[k]["serving_s"]["median"] - startup[k]["serving_s"]["min"] for k in kinds],
            [startup[k]["serving_s"]["max"] - startup[k]["serving_s"]["median"] for k in kinds],
        ]
        names = {"cold": "Ananke cold", "warm": "Ananke warm", "peer": "vLLM server"}
        ax.bar([names[k] for k in kinds], ys, yerr=err, capsize=4, color="#1f77b4")
        ax.set_ylabel("seconds to ready")
        ax.set_title("Startup (median, bars = min/max)")
        save(fig, "startup.png")
    return written


def _grouped(
    ax: Any, cells: list[tuple[str, dict[str, Any]]], metric: str, labels: list[str]
) -> None:
    width = 0.27
    for s_index, name in enumerate(SYSTEM_LABELS):
        data = [cell["systems"][name][metric] for _, cell in cells]
        xs = [i + (s_index - 1) * width for i in range(len(cells))]
        ys = [d["median"] for d in data]
        err = [[d["median"] - d["min"] for d in data], [d["max"] - d["median"] for d in data]]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=SYSTEM_LABELS[name], color=COLORS[name])
    ax.set_xticks(range(len(cells)), labels, fontsize=8)
