"""A capacity MODEL (not a measurement) of the Modal profiles in modal_deploy/app.py:
decode tokens/s per container, containers for N concurrent Maze sessions, cold
start and cost per 1,000 generations.

No GPU or Modal account was available, so every GPU figure below is predicted
from a memory-bandwidth roofline calibrated on one published vLLM measurement,
plus this service's own CPU-side costs as measured on this machine
(bench/figures/latest.md, the `make bench` report). Each constant names its
source; the ones marked ASSUMPTION have none and are the first to replace with
a measurement once a GPU is lent (run the real service there with
`bench/run.py`, then put the measured tokens/s beside these).

    python bench/capacity.py [--sessions 10 50 200] [--prompt-tokens 1024]
        [--output-tokens 256] [--figures bench/figures/latest.md] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "bench" / "figures" / "latest.md"
GIB = 1 << 30


@dataclass(frozen=True)
class Gpu:
    """One GPU type as Modal rents it."""

    name: str
    bandwidth_gbs: float  # HBM bandwidth, GB/s
    bf16_tflops: float  # dense bf16 tensor-core peak
    memory_gib: float
    usd_per_s: float  # Modal's price per GPU-second


# Bandwidth and bf16 peak: NVIDIA A100 datasheet (nvidia.com, "NVIDIA A100 Tensor Core
# GPU" datasheet: 1,555 GB/s for 40 GB SXM, 2,039 GB/s for 80 GB SXM, 312 TFLOPS bf16
# dense) and H100 datasheet (3.35 TB/s, 989 TFLOPS bf16 dense, SXM). That Modal's cards
# are the SXM parts is an ASSUMPTION. Prices: modal.com/pricing as quoted by
# techbytes.app "Serverless GPU Pricing Matrix" (verified there 2026-05-07): H100
# $0.001097/s, A100 80 GB $2.4984/h; A100 40 GB $0.000583/s is modal.com/pricing as
# remembered, not re-checked here (no network).
GPUS: dict[str, Gpu] = {
    "A100": Gpu("A100 40GB", 1555, 312, 40, 0.000583),
    "A100-80GB": Gpu("A100 80GB", 2039, 312, 80, 2.4984 / 3600),
    "H100": Gpu("H100 80GB", 3350, 989, 80, 0.001097),
}


@dataclass(frozen=True)
class Model:
    """What a decode step reads: weights once, plus each sequence's KV cache."""

    name: str
    params_b: float  # parameters, billions
    weight_gb: float  # bytes read per decode step, GB (10^9)
    kv_bytes_per_token: int  # 2 (K, V) x layers x KV heads x head dim x 2 bytes (bf16)


def _kv(layers: int, kv_heads: int, head_dim: int = 128) -> int:
    return 2 * layers * kv_heads * head_dim * 2


# Layers, KV heads and parameter counts: each repository's config.json and model
# card on Hugging Face (at the revisions pinned in modal_deploy/app.py). bf16 weights =
# 2 bytes/parameter; AWQ INT4 (group 128) = 4.25 bits/parameter for the quantized
# linear layers plus the bf16 embedding and LM head (2 x 128,256 x 8,192), computed;
# FP8 = 1 byte/parameter (vLLM keeps the embedding and LM head in bf16).
LLAMA_70B_EMBED_B = 2 * 128_256 * 8_192 / 1e9
MODELS: dict[str, Model] = {
    "llama-3.1-8b": Model("Llama 3.1 8B", 8.03, 16.06, _kv(32, 8)),
    "mistral-7b": Model("Mistral 7B v0.3", 7.25, 14.50, _kv(32, 8)),
    "deepseek-coder-6.7b": Model("DeepSeek Coder 6.7B", 6.74, 13.48, _kv(32, 32)),
    "qwen2.5-coder-7b": Model("Qwen2.5 Coder 7B", 7.62, 15.23, _kv(28, 4)),
    "llama-3.1-70b-awq": Model(
        "Llama 3.1 70B AWQ",
        70.55,
        (70.55 - LLAMA_70B_EMBED_B) * 4.25 / 8 + LLAMA_70B_EMBED_B * 2,
        _kv(80, 8),
    ),
    "llama-3.1-70b-fp8": Model(
        "Llama 3.1 70B FP8", 70.55, (70.55 - LLAMA_70B_EMBED_B) + LLAMA_70B_EMBED_B * 2, _kv(80, 8)
    ),
    "llama-3.1-70b": Model("Llama 3.1 70B bf16", 70.55, 141.1, _kv(80, 8)),
}

# Profile key (modal_deploy/app.py PROFILES) -> (model, Modal GPU type, GPU count).
PROFILES: dict[str, tuple[str, str, int]] = {
    "llama-3.1-8b-instruct": ("llama-3.1-8b", "A100", 1),
    "mistral-7b-instruct-v0.3": ("mistral-7b", "A100", 1),
    "deepseek-coder-6.7b-instruct": ("deepseek-coder-6.7b", "A100", 1),
    "qwen2.5-coder-7b-instruct": ("qwen2.5-coder-7b", "A100", 1),
    "llama-3.1-70b-instruct-awq": ("llama-3.1-70b-awq", "A100-80GB", 1),
    "llama-3.1-70b-instruct-fp8": ("llama-3.1-70b-fp8", "A100-80GB", 2),
    "llama-3.1-70b-instruct": ("llama-3.1-70b", "A100-80GB", 4),
}

# Calibration: johnmusgrave.com "vLLM throughput-latency sweep on NVIDIA A100"
# (Llama-3.1-8B-Instruct bf16, vLLM 0.23, one A100 40 GB, 1024 in / 128 out):
# ~75 tokens/s at 1 request (~77% of the bandwidth roofline) and 6.6x that at 8.
BANDWIDTH_EFFICIENCY = 0.77
CALIBRATION_TOKENS_S_1, CALIBRATION_SPEEDUP_8 = 75.0, 6.6
# Prefill runs compute-bound; 50% of the bf16 peak is an ASSUMPTION.
PREFILL_EFFICIENCY = 0.5
# Tensor parallelism: all-reduce per layer on NVLink; 10% off per doubling is an
# ASSUMPTION (a public TP=8 A100 70B run reports 81% bandwidth use, evokernel.dev
# case-llama33-a100x8-vllm-001, so TP does not collapse efficiency).
TP_EFFICIENCY_PER_DOUBLING = 0.9
# Cold start pieces without a source here: container + GPU attach, Modal Volume read
# rate, CUDA graph capture with a warm vLLM compile cache (ASSUMPTIONS).
CONTAINER_START_S = 10.0
VOLUME_READ_GBS = 1.0
GRAPH_CAPTURE_S = 20.0


@dataclass(frozen=True)
class Measured:
    """This service's CPU-side costs measured on this machine (bench/figures/latest.md)."""

    frontend_ms_per_token: dict[int, float]  # streams -> gRPC server + client CPU ms/token
    mask_us_mean: float  # llguidance mask per token, 128k vocabulary, mean
    compile_ms_p50: float  # constraint compile, cache miss
    matcher_ms_p50: float  # per-request matcher build
    warm_start_s: float  # process start to SERVING with the model cached (CPU, 135M model)


def _row(text: str, label: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells
    raise ValueError(f"no table row {label!r} in the figures")


def _num(cell: str) -> float:
    match = re.match(r"[-\d.]+", cell.replace(",", ""))
    if match is None:
        raise ValueError(f"not a number: {cell!r}")
    return float(match.group())


def read_measured(path: Path) -> Measured:
    """Parses the tables of a `make bench` report."""
    text = path.read_text()
    frontend: dict[int, float] = {}
    # The report names the table and its JSON rows one of two ways (before and
    # after the serving benchmark gained workloads and fast-forward arms); the
    # first number column is this service with a JSON schema either way.
    for title, label in (
        ("### Front-end CPU per output token", "short JSON"),
        ("### CPU per generated token", "JSON schema"),
    ):
        if title not in text:
            continue
        section = text.split(title, 1)[1].split("###", 1)[0]
        in_table = False
        for line in section.splitlines():
            if not line.startswith("|"):
                if in_table:
                    break  # only the first table under the title
                continue
            in_table = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) > 2 and cells[0] == label and cells[2] not in ("", "n/a"):
                frontend[int(cells[1])] = _num(cells[2])
        break
    if not frontend:
        raise ValueError(f"{path}: no JSON-schema rows in the CPU per token table")
    mask = [c for c in text.splitlines() if c.startswith("| llama3-128k |") and "Ananke" in c]
    if not mask:
        raise ValueError(f"{path}: no llama3-128k mask-time row")
    mask_cells = [c.strip() for c in mask[0].strip().strip("|").split("|")]
    return Measured(
        frontend_ms_per_token=frontend,
        mask_us_mean=_num(mask_cells[6]),
        compile_ms_p50=_num(_row(text, "Ananke compile, cache miss (wall, ms)")[1]),
        matcher_ms_p50=_num(
            _row(text, "matcher build from the compiled grammar (per request, ms)")[1]
        ),
        warm_start_s=_num(_row(text, "this service, warm (model cached)")[1]),
    )


def frontend_ms(measured: Measured, streams: int) -> float:
    """Front-end CPU per token at `streams`, log-log interpolated between measured points."""
    points = sorted(measured.frontend_ms_per_token.items())
    if streams <= points[0][0]:
        return points[0][1]
    for (s0, v0), (s1, v1) in itertools.pairwise(points):
        if streams <= s1:
            t = math.log(streams / s0) / math.log(s1 / s0)
            return math.exp(math.log(v0) + t * math.log(v1 / v0))
    return points[-1][1]


def _per_sequence_step_s() -> float:
    """Extra step time per added sequence (attention, sampling, scheduling), fitted so
    that the roofline reproduces the calibration run's 6.6x at 8 requests; used as is
    for every GPU (an ASSUMPTION: an H100 likely needs less)."""
    llama, a100 = MODELS["llama-3.1-8b"], GPUS["A100"]
    context = 1024 + 64
    bandwidth = a100.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY
    step8_measured = 8 / (CALIBRATION_TOKENS_S_1 * CALIBRATION_SPEEDUP_8)
    step8_roofline = (llama.weight_gb * 1e9 + 8 * context * llama.kv_bytes_per_token) / bandwidth
    return max(0.0, (step8_measured - step8_roofline) / 7)


@dataclass(frozen=True)
class Prediction:
    """One profile at one concurrency: what the model predicts."""

    profile: str
    gpus: str
    concurrency: int
    step_ms: float
    tokens_s_container: float
    tokens_s_stream: float
    frontend_cpu_cores: float
    ttft_ms: float
    generation_s: float
    cold_start_s: float
    usd_per_1000: float
    usd_per_idle_tail: float  # one container's scale-down window after its last call
    kv_capacity_tokens: int


def predict(
    key: str,
    measured: Measured,
    *,
    concurrency: int = 10,
    prompt_tokens: int = 1024,
    output_tokens: int = 256,
    constrained: bool = True,
    scaledown_window_s: int = 60,
    gpu_type: str | None = None,
) -> Prediction:
    """Predicts one profile (on `gpu_type` instead of its own GPU, same count):
    decode step time from the roofline, then the service's costs."""
    model_key, gpu_key, count = PROFILES[key]
    gpu_key = gpu_type or gpu_key
    model, gpu = MODELS[model_key], GPUS[gpu_key]
    tp_efficiency = TP_EFFICIENCY_PER_DOUBLING ** math.log2(count)
    bandwidth = gpu.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY * count * tp_efficiency
    context = prompt_tokens + output_tokens / 2  # mean context over the generation
    read = model.weight_gb * 1e9 + concurrency * context * model.kv_bytes_per_token
    step = read / bandwidth + (concurrency - 1) * _per_sequence_step_s()
    if constrained:  # masks computed on the CPU for every constrained row, not overlapped
        step += concurrency * measured.mask_us_mean * 1e-6
    tokens_s = concurrency / step
    frontend_cores = tokens_s * frontend_ms(measured, concurrency) / 1e3
    flops = gpu.bf16_tflops * 1e12 * PREFILL_EFFICIENCY * count * tp_efficiency
    prefill_s = prompt_tokens * 2 * model.params_b * 1e9 / flops
    ttft = prefill_s + step + (measured.compile_ms_p50 + measured.matcher_ms_p50) / 1e3
    generation_s = ttft + output_tokens * step
    load_s = model.weight_gb / VOLUME_READ_GBS
    cold = CONTAINER_START_S + measured.warm_start_s + load_s + GRAPH_CAPTURE_S
    # At full load every generation holds 1/concurrency of the container for generation_s.
    usd_per_generation = generation_s / concurrency * gpu.usd_per_s * count
    # KV room: 90% of memory (gpu_memory_utilization) less weights and ~2 GiB per GPU of
    # activations and CUDA graphs (ASSUMPTION).
    usable = gpu.memory_gib * GIB * count * 0.9 - model.weight_gb * 1e9 - 2 * GIB * count
    return Prediction(
        profile=key,
        gpus=f"{count} x {gpu.name}",
        concurrency=concurrency,
        step_ms=step * 1e3,
        tokens_s_container=tokens_s,
        tokens_s_stream=tokens_s / concurrency,
        frontend_cpu_cores=frontend_cores,
        ttft_ms=ttft * 1e3,
        generation_s=generation_s,
        cold_start_s=cold,
        usd_per_1000=usd_per_generation * 1000,
        usd_per_idle_tail=scaledown_window_s * gpu.usd_per_s * count,
        kv_capacity_tokens=max(0, int(usable / model.kv_bytes_per_token)),
    )


def containers_for(sessions: int, concurrency: int) -> int:
    """Each Maze session keeps one generation in flight (ASSUMPTION: Maze calls in turn)."""
    return math.ceil(sessions / concurrency)


def markdown(predictions: list[Prediction], sessions: list[int], output_tokens: int) -> str:
    """The README table."""
    head = (
        "| profile | GPUs | tok/s per container | tok/s per stream | front-end CPU cores "
        f"| {output_tokens}-token generation, s | cold start, s | $ per 1,000 generations "
        "| $ per idle 60 s tail | KV cache, k tokens | "
        + " | ".join(f"containers for {n} sessions" for n in sessions)
        + " |"
    )
    lines = [head, "|" + "---|" * 2 + "---:|" * (8 + len(sessions))]
    for p in predictions:
        lines.append(
            f"| {p.profile} | {p.gpus} | {p.tokens_s_container:.0f} | {p.tokens_s_stream:.0f} "
            f"| {p.frontend_cpu_cores:.2f} | {p.generation_s:.1f} | {p.cold_start_s:.0f} "
            f"| {p.usd_per_1000:.2f} | {p.usd_per_idle_tail:.3f} "
            f"| {p.kv_capacity_tokens / 1000:.0f} | "
            + " | ".join(str(containers_for(n, p.concurrency)) for n in sessions)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Prints the model's table (markdown) or its figures (JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figures", type=Path, default=FIGURES)
    parser.add_argument("--concurrency", type=int, default=10, help="per container (the seeds')")
    parser.add_argument("--sessions", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--output-tokens", type=int, default=256)
    parser.add_argument("--unconstrained", action="store_true", help="no mask cost per token")
    parser.add_argument(
        "--gpu", choices=sorted(GPUS), default=None, help="every profile on this GPU type"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    measured = read_measured(args.figures)
    predictions = [
        predict(
            key,
            measured,
            concurrency=args.concurrency,
            prompt_tokens=args.prompt_tokens,
            output_tokens=args.output_tokens,
            constrained=not args.unconstrained,
            gpu_type=args.gpu,
        )
        for key in PROFILES
    ]
    if args.json:
        print(json.dumps({"measured": asdict(measured), "model": [asdict(p) for p in predictions]}))
        return 0
    print(
        f"MODEL, not a measurement: {args.concurrency} concurrent generations per container, "
        f"{args.prompt_tokens}-token prompts, {args.output_tokens} output tokens, "
        f"{'unconstrained' if args.unconstrained else 'JSON-schema constrained'}; "
        f"CPU-side costs measured on this machine ({args.figures.name}).\n"
    )
    print(markdown(predictions, args.sessions, args.output_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
