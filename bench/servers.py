"""Starting and stopping the servers under test: `ananke-server` (gRPC) and
vLLM's own OpenAI-compatible server (`vllm serve`, the peer)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from ananke_server.engine_config import host_dtype
from common import BENCH, MODEL_NAME, ROOT, free_port, subprocess_env
from grpc_health.v1 import health_pb2, health_pb2_grpc

STARTUP_TIMEOUT_S = 600.0

# Engine settings given to every side, so that like is compared with like.
MAX_NUM_SEQS = 16
MAX_MODEL_LEN = 4096
KV_CACHE_BYTES = 256 << 20
# The scheduler budget vLLM resolves for this model on CPU (given to the peer explicitly).
DEFAULT_BATCHED_TOKENS = 2048
# The dtype this service resolves "auto" to on this machine (float32 on an x86 CPU
# without native bf16): the peer gets the same, explicitly.
PEER_DTYPE = host_dtype("auto", on_cpu=True)


@dataclass
class ServerHandle:
    """A server process and when it became ready."""

    name: str
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path
    launched_at: float
    ready_at: float = 0.0
    port_file: Path | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The server's main process id."""
        return self.process.pid

    @property
    def ready_s(self) -> float:
        """Seconds from launch to ready (SERVING / HTTP 200)."""
        return self.ready_at - self.launched_at

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def launch_grpc(
    log_dir: Path, extra_args: list[str] | None = None, root: Path = ROOT
) -> ServerHandle:
    """Starts `ananke-server` on a free port (not waiting for SERVING), with the
    service code of the checkout at `root` (another one to compare against)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port_file = log_dir / "port"
    port_file.unlink(missing_ok=True)
    log_path = log_dir / "server.log"
    command = [
        sys.executable,
        "-m",
        "ananke_server.cli",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--max-concurrent-requests",
        str(MAX_NUM_SEQS),
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--kv-cache-bytes",
        str(KV_CACHE_BYTES),
        "--max-tokens-cap",
        "1024",
        "--log-level",
        "WARNING",
        "--shutdown-grace-s",
        "5",
        *(extra_args or []),
    ]
    with log_path.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=root, env=subprocess_env(root), stdout=out, stderr=subprocess.STDOUT
        )
    return ServerHandle("grpc", process, "", log_path, started, port_file=port_file)


def wait_grpc_serving(handle: ServerHandle, poll_s: float = 0.1) -> ServerHandle:
    """Waits for the port file, then for health SERVING; sets `ready_at`."""
    port_file = handle.port_file
    assert port_file is not None
    deadline = handle.launched_at + STARTUP_TIMEOUT_S
    while not port_file.exists() or not port_file.read_text().strip():
        _check_alive(handle, deadline)
        time.sleep(poll_s)
    handle.extra["bound_s"] = time.perf_counter() - handle.launched_at
    handle.address = f"127.0.0.1:{port_file.read_text().strip()}"
    with grpc.insecure_channel(handle.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            _check_alive(handle, deadline)
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
            except grpc.RpcError:
                status = health_pb2.HealthCheckResponse.UNKNOWN
            if status == health_pb2.HealthCheckResponse.SERVING:
                handle.ready_at = time.perf_counter()
                return handle
            time.sleep(poll_s)


def launch_peer(log_dir: Path, model_path: Path, max_num_batched_tokens: int) -> ServerHandle:
    """Starts `vllm serve` (through bench/vllm_peer.py) on a free port."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "peer.log"
    port = free_port()
    command = [
        sys.executable,
        str(BENCH / "vllm_peer.py"),
        "serve",
        str(model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        MODEL_NAME,
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--max-num-seqs",
        str(MAX_NUM_SEQS),
        "--max-num-batched-tokens",
        str(max_num_batched_tokens),
        "--kv-cache-memory-bytes",
        str(KV_CACHE_BYTES),
        "--enforce-eager",
        "--dtype",
        PEER_DTYPE,
        "--generation-config",
        "vllm",
        "--structured-outputs-config",
        json.dumps({"backend": "guidance"}),
        "--uvicorn-log-level",
        "warning",
        "--disable-uvicorn-access-log",
    ]
    env = subprocess_env()
    # vLLM as shipped: this project's vLLM plugin (installed in the same
    # environment) is not loaded into the peer.
    env["VLLM_PLUGINS"] = ""
    with log_path.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return ServerHandle("peer", process, f"127.0.0.1:{port}", log_path, started)


def wait_peer_ready(handle: ServerHandle, poll_s: float = 0.2) -> ServerHandle:
    """Waits until `GET /v1/models` answers 200; sets `ready_at`."""
    deadline = handle.launched_at + STARTUP_TIMEOUT_S
    url = f"http://{handle.address}/v1/models"
    while True:
        _check_alive(handle, deadline)
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    handle.ready_at = time.perf_counter()
                    return handle
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(poll_s)


def _check_alive(handle: ServerHandle, deadline: float) -> None:
    if handle.process.poll() is not None:
        raise RuntimeError(f"{handle.name} server exited:\n{handle.log_tail()}")
    if time.perf_counter() > deadline:
        stop(handle)
        raise RuntimeError(f"{handle.name} server not ready in time:\n{handle.log_tail()}")


def stop(handle: ServerHandle, timeout_s: float = 60.0) -> int:
    """SIGTERM (SIGINT for the peer), wait, then SIGKILL; returns the exit code."""
    if handle.process.poll() is None:
        handle.process.send_signal(signal.SIGINT if handle.name == "peer" else signal.SIGTERM)
        try:
            handle.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _kill_tree(handle.process.pid)
            handle.process.wait()
    return int(handle.process.returncode)


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants (engine processes included)."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
