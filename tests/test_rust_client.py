"""The Rust client (clients/rust): cargo tests and the C ABI test against the live server."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from ananke import AnankeClient
from ananke import constraints as c
from ananke.v1 import constraints_pb2, generation_pb2, inference_service_pb2, provenance_pb2
from ananke_server.server import build_server
from ananke_server.settings import Settings
from pki import Pki

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


def _run(args: list[str], env: dict[str, str]) -> str:
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
    return proc.stdout


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


def test_one_digest_and_one_cache_entry_from_every_client(
    cargo_env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    """The same constraint from the Python client, a raw request that spells the
    default options out, the Rust client and the C ABI: one digest, one compile."""
    live_server: Any = request.getfixturevalue("live_server")
    schema = json.dumps(
        {
            "title": f"digest-{uuid.uuid4().hex[:8]}",  # new to this server's cache
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "required": ["n"],
        }
    )
    stub = live_server.stub()
    before = stub.GetServerStats(inference_service_pb2.GetServerStatsRequest()).compile_cache
    outcomes: list[tuple[str, str, int]] = []
    with AnankeClient(live_server.address, timeout=300) as client:
        result = client.generate(
            "A JSON object: ", constraints=[c.json_schema(schema)], max_tokens=8
        )
    outcomes.append(
        ("python", result.provenance.constraints.digest, result.provenance.constraints.cache)
    )
    spelled = constraints_pb2.ConstraintIR(
        json_schema=constraints_pb2.JsonSchemaConstraint(
            schema=schema,
            options=constraints_pb2.JsonSchemaOptions(lenient=False, whitespace_flexible=False),
        )
    )
    raw = stub.Generate(
        inference_service_pb2.GenerateRequest(
            request=generation_pb2.GenerationRequest(
                prompt="A JSON object: ",
                constraints=[spelled],
                sampling=generation_pb2.SamplingParams(max_tokens=8),
            )
        ),
        timeout=300,
    )
    outcomes.append(("raw", raw.provenance.constraints.digest, raw.provenance.constraints.cache))
    printed = _run(
        ["cargo", "run", "--features", "ffi", "--example", "constraint_digest", "--",
         cargo_env["ANANKE_ADDR"], schema],
        cargo_env,
    )  # fmt: skip
    for line in printed.splitlines():
        if line.startswith(("rust ", "c ")):
            name, digest, cache = line.split()
            outcomes.append((name, digest, provenance_pb2.CacheOutcome.Value(cache)))
    assert [name for name, _, _ in outcomes] == ["python", "raw", "rust", "c"], printed
    assert len({digest for _, digest, _ in outcomes}) == 1, outcomes
    assert [cache for _, _, cache in outcomes] == [
        provenance_pb2.CACHE_OUTCOME_MISS,
        *[provenance_pb2.CACHE_OUTCOME_HIT] * 3,
    ], outcomes
    after = stub.GetServerStats(inference_service_pb2.GetServerStatsRequest()).compile_cache
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 3)


def test_c_abi_under_valgrind(cargo_env: dict[str, str]) -> None:
    """The C program calls the live server through the C ABI and leaks nothing."""
    _run(["./run_c_test.sh"], {**cargo_env, "RUN_VALGRIND": "1"})


async def _health_runs(pki: Pki, binary: str, runs: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Runs the `health` example once per entry of `runs` (extra environment)
    against an in-process server with mTLS and an API key (no engine: health
    answers, other calls get past authentication and then fail)."""
    settings = dataclasses.replace(
        Settings(),
        host="127.0.0.1",
        port=0,
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca),
        api_keys=("rust-key-1",),
    )
    running = build_server(settings, engine=None)  # type: ignore[arg-type]  # health only
    await running.state.serve()
    await running.server.start()
    outcomes: dict[str, Any] = {}
    try:
        for name, extra in runs.items():
            env = {**os.environ, "ANANKE_ROOT_CERTIFICATES": str(pki.ca), **extra}
            outcomes[name] = await asyncio.to_thread(
                subprocess.run,
                [binary, f"https://127.0.0.1:{running.port}"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
    finally:
        await running.server.stop(0)
    return outcomes


def test_rust_client_mtls_and_api_key(test_pki: Pki) -> None:
    """The Rust client trusts a custom CA, presents a client certificate, and its
    channel interceptor sends the API key on every call."""
    if shutil.which("cargo") is None:
        pytest.skip("cargo is not on PATH")
    env = _env("127.0.0.1:1")
    _run(["cargo", "build", "--features", "tls", "--example", "health"], env)
    binary = str(Path(env["CARGO_TARGET_DIR"]) / "debug" / "examples" / "health")
    identity = {
        "ANANKE_CLIENT_CERTIFICATE": str(test_pki.client_cert),
        "ANANKE_CLIENT_KEY": str(test_pki.client_key),
    }
    outcomes = asyncio.run(
        _health_runs(
            test_pki,
            binary,
            {
                "mtls+key": {**identity, "ANANKE_API_KEY": "rust-key-1"},
                "mtls": identity,
                "no client certificate": {},
            },
        )
    )
    authed = outcomes["mtls+key"]
    assert authed.returncode == 0, authed.stdout + authed.stderr
    assert "health: SERVING" in authed.stdout
    assert "API_KEY" not in authed.stdout  # GetModelInfo got past authentication
    keyless = outcomes["mtls"]
    assert "health: SERVING" in keyless.stdout  # health is exempt
    assert "API_KEY_MISSING" in keyless.stdout
    refused = outcomes["no client certificate"]  # the server ends the handshake
    assert refused.returncode == 1, refused.stdout
    assert "SERVING" not in refused.stdout
    assert refused.stderr.startswith("error: Unavailable"), refused.stderr


def test_zig_program_against_live_server(cargo_env: dict[str, str]) -> None:
    """A Zig program includes ananke.h, builds Maze-shaped constraints (JSON
    schema, regex list, token masks from Tokenize, priorities, names), calls
    the live server through the C ABI, checks the result and frees it."""
    if importlib.util.find_spec("ziglang") is None:
        pytest.skip("the ziglang package (requirements/dev.txt) is not installed")
    _run(["./run_zig_test.sh"], {**cargo_env, "ZIG": f"{sys.executable} -m ziglang"})
