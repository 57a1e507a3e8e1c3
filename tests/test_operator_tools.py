"""The operator tools work against the real server: grpc_health_probe saw
NOT_SERVING then SERVING while it started, and grpcurl lists, describes and
calls the service through reflection (v1, with v1alpha beside it)."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import LiveServer, tool_path

pytestmark = pytest.mark.tools


def _tool(name: str) -> str:
    path = tool_path(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make tools` (scripts/install_tools.sh)")
    return path


def _grpcurl(server: LiveServer, *args: str, data: str | None = None) -> str:
    command = [_tool("grpcurl"), "-plaintext", "-max-time", "120"]
    if data is not None:
        command += ["-d", data]
    command += [server.address, *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=180)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_health_probe_saw_not_serving_then_serving(live_server: LiveServer) -> None:
    _tool("grpc_health_probe")
    codes = live_server.startup_probe_codes
    assert codes, "the probe never ran"
    assert codes[-1] == 0, codes  # SERVING
    assert 4 in codes, codes  # NOT_SERVING while the model loaded
    assert codes.index(4) < len(codes) - 1
    now = subprocess.run(
        [_tool("grpc_health_probe"), f"-addr={live_server.address}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert now.returncode == 0, now.stderr
    by_name = subprocess.run(
        [
            _tool("grpc_health_probe"),
            f"-addr={live_server.address}",
            "-service=ananke.v1.InferenceService",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert by_name.returncode == 0, by_name.stderr


def test_grpcurl_lists_and_describes(live_server: LiveServer) -> None:
    services = _grpcurl(live_server, "list").split()
    assert {
        "ananke.v1.InferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(services)
    methods = _grpcurl(live_server, "list", "ananke.v1.InferenceService").split()
    assert "ananke.v1.InferenceService.GenerateStream" in methods
    description = _grpcurl(live_server, "describe", "ananke.v1.GenerationRequest")
    assert "repeated .ananke.v1.ConstraintIR constraints" in description
    assert "rpc GenerateStream" in _grpcurl(live_server, "describe", "ananke.v1.InferenceService")


def test_grpcurl_streams_a_constrained_generation(live_server: LiveServer) -> None:
    schema = {
        "type": "object",
        "properties": {"language": {"enum": ["rust", "zig"]}, "lines": {"type": "integer"}},
        "required": ["language", "lines"],
        "additionalProperties": False,
    }
    body = {
        "request": {
            "messages": [{"role": "CHAT_ROLE_USER", "content": "Describe a source file as JSON."}],
            "constraints": [{"name": "file", "jsonSchema": {"schema": json.dumps(schema)}}],
            "sampling": {"maxTokens": 48},
        }
    }
    out = _grpcurl(live_server, "ananke.v1.InferenceService/GenerateStream", data=json.dumps(body))
    events = [json.loads(chunk) for chunk in _split_json_stream(out)]
    assert "started" in events[0]
    text = "".join(e["chunk"].get("text", "") for e in events if "chunk" in e)
    document = json.loads(text)
    assert document["language"] in ("rust", "zig")
    finished = events[-1]["finished"]
    assert finished["provenance"]["check"]["verdict"] == "CHECK_VERDICT_SATISFIED"


def test_grpcurl_shows_error_details(live_server: LiveServer) -> None:
    body = {"request": {"prompt": "x", "constraints": [{"regex": {"pattern": "a(?=b)"}}]}}
    result = subprocess.run(
        [
            _tool("grpcurl"),
            "-plaintext",
            "-d",
            json.dumps(body),
            live_server.address,
            "ananke.v1.InferenceService/Generate",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert "REGEX_INVALID" in result.stderr
    assert "google.rpc.ErrorInfo" in result.stderr


def _split_json_stream(text: str) -> list[str]:
    """grpcurl prints one pretty JSON object per message, back to back."""
    decoder = json.JSONDecoder()
    objects, index = [], 0
    while index < len(text):
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            break
        _, end = decoder.raw_decode(text, index)
        objects.append(text[index:end])
        index = end
    return objects
