"""The Rust client (clients/rust): cargo tests and the C ABI test against the live server."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.engine

RUST_DIR = Path(__file__).resolve().parent.parent / "clients" / "rust"
# First builds compile tonic and friends on few cores; later runs reuse them.
TIMEOUT_S = 1800


def _env(address: str) -> dict[str, str]:
    """The environment for cargo: a build cache shared by every checkout."""
    home = os.environ.get("ANANKE_HOME") or str(Path.home() / ".cache" / "ananke")
    env = dict(os.environ)
    env["CARGO_TARGET_DIR"] = str(Path(home) / "cargo-target")
    env.setdefault("CARGO_BUILD_JOBS", "2")
    env["ANANKE_ADDR"] = f"http://{address}"
    return env


def _run(args: list[str], env: dict[str, str]) -> None:
    """Runs `args` in clients/rust and fails with its output unless it exits 0."""
    proc = subprocess.run(
        args,
        cwd=RUST_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        print(proc.stdout)
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-20000:]}")


@pytest.fixture(scope="module")
def cargo_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Skips without cargo; otherwise the environment pointing at the live server."""
    if shutil.which("cargo") is None:
        pytest.skip("cargo is not on PATH")
    live_server: Any = request.getfixturevalue("live_server")
    return _env(live_server.address)


def test_cargo_test_against_live_server(cargo_env: dict[str, str]) -> None:
    """The crate's unit tests, FFI unit tests and live integration tests pass."""
    _run(["cargo", "test", "--features", "ffi"], cargo_env)


def test_c_abi_under_valgrind(cargo_env: dict[str, str]) -> None:
    """The C program calls the live server through the C ABI and leaks nothing."""
    _run(["./run_c_test.sh"], {**cargo_env, "RUN_VALGRIND": "1"})
