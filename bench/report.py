"""Turns the raw results into a markdown report and PNG plots (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import report_serving
from common import Spread, fmt, fmt_spread

COLORS = {"limit": "#7f7f7f"}


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
        f"- Model: SmolLM2-135M-Instruct ({info.get('model_dtype', 'bf16')}, enforce_eager), "
        "greedy; command: "
        f"`{results['command']}`; took {results['elapsed_s'] / 60:.1f} min",
        f"- Load average (1/5/15 min) at start {results['load_start']}, at end "
        f"{results['load_end']}. The machine is shared: other jobs ran meanwhile, so wall "
        "times are noisy; CPU-time columns are steadier. Figures are the median of the runs "
        "with [min, max] beside it.",
    ]
    serving = results.get("serving")
    limit = results.get("limit")
    if serving and "workloads" in serving.get("settings", {}):
        lines += ["", *report_serving.serving_section(serving)]
    elif serving:
        lines += ["", "(Serving results in an older format: re-run the benchmark.)"]
    steering_result = results.get("steering")
    if steering_result:
        import steering

        st = steering_result["settings"]
        lines += [
            "",
            "## Budget-aware completion: outputs cut by max_tokens",
            "",
            "The JSON workload's prompts and schemas, sampled (temperature 0.8, fixed seeds), "
            f"{st['rounds']} passes, {st['streams']} concurrent requests, against a server with "
            "budget-aware completion (the default) and one with `--steer-budget false`. "
            "INCOMPLETE: the independent re-check found a valid prefix that max_tokens cut.",
            "",
            *steering.steering_table(steering_result),
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
    if serving and "workloads" in serving.get("settings", {}):
        report_serving.serving_plots(serving, save, plt)
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
