"""Where the front end's CPU goes: samples the main process of `ananke-server`
(and of vLLM's OpenAI server, for comparison) with py-spy while the serving
workload runs, then prints CPU per output token and the functions that use it.
`--process engine` samples the vLLM engine core instead (scheduler, grammars,
steering, fast-forward proposer and, on CPU, the model itself).

    flock /tmp/ananke-engine.lock .venv/bin/python bench/profile_front.py \
        --systems grpc,peer --streams 1,16 --workload json --seconds 20 --gil

py-spy is not a project dependency: install it anywhere (`pip install --target
DIR py-spy`) and pass `--py-spy DIR/bin/py-spy`, or have it on PATH. Writes the
raw collapsed stacks (flamegraph input) to bench/results/profile-<time>/.
Not a test: nothing here asserts on timings."""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import servers
import serving
import systems
from common import RESULTS, log, median, model_dir
from workload import BY_NAME

# Where a sampled frame belongs, by the file it runs in (first match wins).
CATEGORIES = (
    ("ananke steering (search, guide)", ("ananke_server/steering/",)),
    ("ananke service", ("ananke_server/",)),
    ("llguidance", ("llguidance",)),
    ("vllm structured output", ("vllm/v1/structured_output",)),
    ("vllm spec decode", ("vllm/v1/spec_decode",)),
    ("vllm scheduler", ("vllm/v1/core/",)),
    ("vllm model runner", ("vllm/v1/worker", "vllm/model_executor", "vllm/v1/sample")),
    ("torch", ("torch/",)),
    ("grpc", ("grpc/", "grpc_", "cygrpc", "_cython")),
    ("protobuf", ("google/protobuf",)),
    ("vllm output processing", ("vllm/v1/engine/output_processor", "vllm/v1/engine/detokenizer")),
    ("vllm engine client", ("vllm/v1/engine/", "vllm/v1/metrics", "vllm/outputs")),
    ("vllm openai server", ("vllm/entrypoints",)),
    ("http (uvicorn, starlette, fastapi)", ("uvicorn", "starlette", "fastapi", "h11", "httptools")),
    ("pydantic", ("pydantic",)),
    ("tokenizers / transformers", ("tokenizers", "transformers")),
    ("zmq / msgpack", ("zmq", "msgspec", "msgpack")),
    ("prometheus", ("prometheus_client",)),
    ("asyncio / uvloop", ("asyncio/", "uvloop")),
    ("logging", ("logging/",)),
)


def _category(frame: str) -> str:
    for name, needles in CATEGORIES:
        if any(n in frame for n in needles):
            return name
    return "other"


def summarize(raw: Path, top: int) -> dict[str, Any]:
    """Self samples per category (by the innermost Python frame) and the top
    functions by self and by inclusive samples."""
    by_self: collections.Counter[str] = collections.Counter()
    by_total: collections.Counter[str] = collections.Counter()
    by_category: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        by_self[leaf] += count
        by_category[_category(leaf)] += count
        for frame in set(frames[1:]):  # the first is the thread
            by_total[frame] += count
    return {
        "samples": total,
        "categories": by_category.most_common(),
        "self": by_self.most_common(top),
        "total": by_total.most_common(top),
    }


def _print(name: str, summary: dict[str, Any], cpu_ms_per_token: float) -> None:
    total = max(1, summary["samples"])
    print(f"\n## {name}: {summary['samples']} samples, {cpu_ms_per_token:.3f} ms CPU per token")
    print("\n### by category (innermost frame)")
    for category, count in summary["categories"]:
        print(f"{100 * count / total:6.1f}%  {category}")
    for key, title in (("self", "self"), ("total", "inclusive")):
        print(f"\n### top functions, {title}")
        for frame, count in summary[key]:
            print(f"{100 * count / total:6.1f}%  {frame}")


async def _load(
    system: Any, streams: int, args: argparse.Namespace, seconds: float
) -> tuple[int, float, float]:
    """Runs cells back to back for `seconds`; returns (tokens, wall seconds,
    median time to first token in ms)."""
    workload = BY_NAME[args.workload]
    constrained = workload.constrained and not args.free
    tokens = 0
    ttfts: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        run = await serving.run_cell(system, workload, constrained, streams, args.max_tokens, 0)
        tokens += run.tokens
        ttfts += [s.ttft_s for s in run.samples]
    return tokens, time.perf_counter() - started, 1000 * median(ttfts)


def _target_pid(server_pid: int, process: str) -> int:
    """The server's main process, or its vLLM engine core (the child that
    runs the scheduler, the structured-output grammars and, on CPU, the model)."""
    if process == "main":
        return server_pid
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    raise SystemExit(f"no engine core process under pid {server_pid}")


async def profile(args: argparse.Namespace, out_dir: Path) -> None:
    """Starts the servers named, then profiles each at each stream count."""
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    handles: dict[str, servers.ServerHandle] = {}
    running: dict[str, Any] = {}
    try:
        if "grpc" in names:
            handles["grpc"] = servers.launch_grpc(out_dir / "grpc", args.server_arg)
        if args.compare_root:
            handles["base"] = servers.launch_grpc(
                out_dir / "base", args.server_arg, args.compare_root
            )
        if "peer" in names:
            handles["peer"] = servers.launch_peer(out_dir / "peer", model_dir(), 2048)
        for name in ("grpc", "base"):
            if name in handles:
                await asyncio.to_thread(servers.wait_grpc_serving, handles[name])
                running[name] = systems.GrpcSystem(name, handles[name])
        if "peer" in handles:
            await asyncio.to_thread(servers.wait_peer_ready, handles["peer"])
            running["peer"] = systems.PeerSystem(handles["peer"])
        workload = BY_NAME[args.workload]
        for system in running.values():
            # Warm: every prompt once (grammars compiled, caches filled), long
            # enough for a schema's shortest document (shorter is refused).
            warm_tokens = workload.quick_max_tokens if workload.constrained else 8
            await serving.run_cell(system, workload, workload.constrained, 16, warm_tokens, -1)
        plan = [int(s) for s in args.streams.split(",")] * args.rounds
        for streams in plan:
            for name, system in running.items():
                pid = _target_pid(handles[name].pid, args.process)
                raw = out_dir / f"{name}-{args.workload}-{streams}.txt"
                command = [
                    args.py_spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--duration",
                    str(int(args.seconds) + 2),
                    *(["--native"] if args.native else []),
                    *(["--gil"] if args.gil else []),
                    *([] if args.blocking else ["--nonblocking"]),
                ]
                spy = None
                if not args.no_spy:
                    spy = subprocess.Popen(  # noqa: ASYNC220
                        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                await asyncio.sleep(0.0 if spy is None else 1.0)
                cpu0 = psutil.Process(pid).cpu_times()
                client0 = psutil.Process().cpu_times()
                tokens, wall, ttft = await _load(system, streams, args, args.seconds)
                cpu1 = psutil.Process(pid).cpu_times()
                client1 = psutil.Process().cpu_times()
                if spy is not None:
                    await asyncio.to_thread(spy.wait)
                server_ms = 1000 * (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / tokens
                client_ms = (
                    1000 * (client1.user + client1.system - client0.user - client0.system) / tokens
                )
                log(
                    f"{name} {args.workload} x{streams}: {tokens} tokens in {wall:.1f}s "
                    f"({tokens / wall:.1f} tok/s, TTFT {ttft:.1f} ms); "
                    f"server {server_ms:.3f} ms/token, client {client_ms:.3f} ms/token"
                )
                if spy is not None:
                    title = f"{name} {args.workload} x{streams}"
                    _print(title, summarize(raw, args.top), server_ms)
    finally:
        for system in running.values():
            await system.close()
        for handle in handles.values():
            servers.stop(handle)


def main() -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="grpc,peer", help="grpc, peer or both")
    parser.add_argument(
        "--compare-root",
        default="",
        help="also serve the service code of this other checkout (system 'base'), e.g. /work/main",
    )
    parser.add_argument(
        "--process", choices=("main", "engine"), default="main", help="which process to sample"
    )
    parser.add_argument("--rounds", type=int, default=1, help="measurements per system and count")
    parser.add_argument("--streams", default="1,16", help="comma-separated stream counts")
    parser.add_argument("--workload", choices=sorted(BY_NAME), default="code")
    parser.add_argument("--free", action="store_true", help="a JSON workload, unconstrained")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=20.0, help="load per measurement")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames)")
    parser.add_argument("--gil", action="store_true", help="py-spy --gil (GIL holder only)")
    parser.add_argument(
        "--blocking", action="store_true", help="let py-spy pause the process per sample"
    )
    parser.add_argument(
        "--no-spy", action="store_true", help="measure CPU per token without sampling"
    )
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra ananke-server argument"
    )
    args = parser.parse_args()
    args.compare_root = Path(args.compare_root).resolve() if args.compare_root else None
    out_dir = RESULTS / f"profile-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(profile(args, out_dir))
    log(f"raw stacks in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
