"""Shared fixtures. One real server (vLLM engine + default model) per test
session, started as a subprocess on a free port and stopped at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import pytest
from ananke.v1 import inference_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import Pki, make_pki

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 300.0
# The session's servers share one compile cache folder (not the user's
# $ANANKE_HOME one): what one compiled, another loads as after a restart.
COMPILE_CACHE_DIR = Path(tempfile.mkdtemp(prefix="ananke-compile-cache-"))


@dataclass
class LiveServer:
    """A running `ananke-server` with the real engine and default model."""

    address: str
    process: subprocess.Popen[bytes]
    log_path: Path
    # Exit codes grpc_health_probe returned while the server started (4: NOT_SERVING, 0: SERVING).
    startup_probe_codes: list[int] = field(default_factory=list)
    # TLS credentials for channel(); None: plaintext.
    credentials: grpc.ChannelCredentials | None = None

    def channel(self) -> grpc.Channel:
        """A new channel to the server (TLS when the server was started with credentials)."""
        if self.credentials is not None:
            return grpc.secure_channel(self.address, self.credentials)
        return grpc.insecure_channel(self.address)

    def stub(self) -> inference_service_pb2_grpc.InferenceServiceStub:
        """A stub on a new channel."""
        return inference_service_pb2_grpc.InferenceServiceStub(self.channel())

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server's log, for failure messages."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def tool_path(name: str) -> str | None:
    """Where grpcurl / grpc_health_probe are (PATH, then $ANANKE_HOME/bin)."""
    found = shutil.which(name)
    if found:
        return found
    home = Path(os.environ.get("ANANKE_HOME", Path.home() / ".cache" / "ananke"))
    candidate = home / "bin" / name
    return str(candidate) if candidate.exists() else None


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        VLLM_HOST_IP="127.0.0.1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def start_server(
    extra_args: list[str],
    log_dir: Path,
    credentials: grpc.ChannelCredentials | None = None,
) -> LiveServer:
    """Starts `ananke-server` on a free port and waits until it is SERVING
    (checked over TLS with `credentials` when given)."""
    port_file = log_dir / "port"
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
        "--shutdown-grace-s",
        "10",
        "--compile-disk-cache-dir",
        str(COMPILE_CACHE_DIR),
        *extra_args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=_server_env(), stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not port_file.exists() or not port_file.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("server did not bind:\n" + log_path.read_text(errors="replace"))
        time.sleep(0.2)
    server = LiveServer(
        f"127.0.0.1:{port_file.read_text().strip()}", process, log_path, credentials=credentials
    )
    probe = tool_path("grpc_health_probe") if credentials is None else None
    with server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_server(server)
                raise RuntimeError("server did not become SERVING:\n" + server.log_tail())
            if probe:
                code = subprocess.run(
                    [probe, f"-addr={server.address}", "-connect-timeout=2s", "-rpc-timeout=2s"],
                    capture_output=True,
                    check=False,
                ).returncode
                server.startup_probe_codes.append(code)
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
            except grpc.RpcError:
                status = health_pb2.HealthCheckResponse.UNKNOWN
            if status == health_pb2.HealthCheckResponse.SERVING:
                if probe and server.startup_probe_codes[-1] != 0:
                    continue  # let the probe see SERVING too
                return server
            time.sleep(0.5)


def stop_server(server: LiveServer, timeout_s: float = 60.0) -> int:
    """SIGTERM, then wait; returns the exit code."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    """The session's one real server."""
    log_dir = Path(tempfile.mkdtemp(prefix="ananke-test-"))
    server = start_server(["--max-tokens-cap", "512", "--max-concurrent-requests", "8"], log_dir)
    try:
        yield server
    finally:
        code = stop_server(server)
        if code != 0:
            print(f"server exited with {code}:\n{server.log_tail()}", file=sys.stderr)


def free_port() -> int:
    """A port free right now (for servers that cannot report theirs, e.g. /metrics)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def test_pki() -> Pki:
    """A throwaway CA with server and client certificates."""
    return make_pki(Path(tempfile.mkdtemp(prefix="ananke-pki-")))


@dataclass
class GuardedServer:
    """A second real server with API keys, mTLS, small admission limits
    (2 running, 0 queued), a /metrics endpoint and --no-fast-forward (so tests
    compare both engine modes without a third engine)."""

    server: LiveServer
    api_key: str
    pki: Pki
    metrics_url: str
    max_running: int = 2

    def auth(self, key: str | None = None) -> tuple[tuple[str, str], ...]:
        """Call metadata with `authorization: Bearer <key>` (the valid key by default)."""
        return (("authorization", f"Bearer {key or self.api_key}"),)

    def stub(self) -> inference_service_pb2_grpc.InferenceServiceStub:
        """A stub on a new mTLS channel (client certificate from the test CA)."""
        return self.server.stub()


GUARDED_KEY = "ak-test-7f3c9a"


def _start_guarded(pki: Pki) -> GuardedServer:
    log_dir = Path(tempfile.mkdtemp(prefix="ananke-guarded-"))
    keys_file = log_dir / "keys.txt"
    keys_file.write_text(f"# test keys\n{GUARDED_KEY}\n")
    metrics_port = free_port()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )
    server = start_server(
        [
            "--max-tokens-cap", "512",
            "--max-concurrent-requests", "2",
            "--max-queued-requests", "0",
            "--api-keys", "ak-other-key",
            "--api-keys-file", str(keys_file),
            "--tls-cert-file", str(pki.server_cert),
            "--tls-key-file", str(pki.server_key),
            "--tls-client-ca-file", str(pki.ca),
            "--metrics-port", str(metrics_port),
            "--no-fast-forward",
        ],
        log_dir,
        credentials=credentials,
    )  # fmt: skip
    return GuardedServer(server, GUARDED_KEY, pki, f"http://127.0.0.1:{metrics_port}/metrics")


@dataclass
class _GuardedSlot:
    current: GuardedServer | None = None


@pytest.fixture(scope="session")
def _guarded_slot() -> Iterator[_GuardedSlot]:
    slot = _GuardedSlot()
    try:
        yield slot
    finally:
        if slot.current is not None:
            server = slot.current.server
            code = stop_server(server)
            if code != 0:
                print(f"guarded server exited with {code}:\n{server.log_tail()}", file=sys.stderr)


@pytest.fixture
def guarded_server(test_pki: Pki, _guarded_slot: _GuardedSlot) -> GuardedServer:
    """Started on first use and shared by the auth/TLS, overload, observability and
    SIGTERM tests; the SIGTERM test ends it, so a later user gets a fresh one."""
    current = _guarded_slot.current
    if current is None or current.server.process.poll() is not None:
        current = _guarded_slot.current = _start_guarded(test_pki)
    return current


def server_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its children (the EngineCore)."""
    parent = psutil.Process(pid)
    total = parent.memory_info().rss
    for child in parent.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return int(total)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the live server are marked `engine` automatically."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "live_server" in names or "guarded_server" in names:
            item.add_marker(pytest.mark.engine)
