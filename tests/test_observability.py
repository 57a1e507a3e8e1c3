"""Observability on a real server (`guarded_server`): the x-request-id header
is the id in the stream, the provenance and the JSON log lines; prompt text is
not logged; /metrics exports calls by method and code, latency histograms,
tokens, compile cache lookups and the admission gauges."""

from __future__ import annotations

import json
import urllib.request

import grpc
import pytest
from ananke.v1 import constraints_pb2, generation_pb2, inference_service_pb2
from conftest import GuardedServer

CANARY = "zebra-canary-prompt-5521"


def _metrics(server: GuardedServer) -> dict[str, float]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_request_id_in_stream_provenance_and_logs(guarded_server: GuardedServer) -> None:
    request = inference_service_pb2.GenerateStreamRequest(
        request=generation_pb2.GenerationRequest(
            prompt=f"{CANARY}: say hi",
            constraints=[
                constraints_pb2.ConstraintIR(
                    choice=constraints_pb2.ChoiceConstraint(options=["hi", "hello"])
                )
            ],
            sampling=generation_pb2.SamplingParams(max_tokens=8),
        )
    )
    metadata = (*guarded_server.auth(), ("x-request-id", "obs-req-0001"))
    events = list(guarded_server.stub().GenerateStream(request, metadata=metadata, timeout=60))
    assert events[0].started.request_id == "obs-req-0001"
    assert events[-1].finished.provenance.request_id == "obs-req-0001"

    lines = guarded_server.server.log_path.read_text(errors="replace").splitlines()
    records = []
    for line in lines:
        if line.startswith("{"):
            records.append(json.loads(line))  # JSON is the default log format
    mine = [r for r in records if r.get("request_id") == "obs-req-0001"]
    messages = {r["msg"] for r in mine}
    assert "generation finished" in messages
    assert any(
        r["msg"].startswith("call /ananke.v1.InferenceService/GenerateStream OK") for r in mine
    )
    finished = next(r for r in mine if r["msg"] == "generation finished")
    assert finished["prompt_chars"] == len(request.request.prompt)
    assert "prompt" not in finished
    assert CANARY not in "\n".join(lines)  # log_prompts is off


def test_metrics_endpoint(guarded_server: GuardedServer) -> None:
    stub = guarded_server.stub()
    with pytest.raises(grpc.RpcError):
        stub.GetModelInfo(inference_service_pb2.GetModelInfoRequest(), timeout=10)
    list(
        stub.GenerateStream(
            inference_service_pb2.GenerateStreamRequest(
                request=generation_pb2.GenerationRequest(
                    prompt="Hello", sampling=generation_pb2.SamplingParams(max_tokens=4)
                )
            ),
            metadata=guarded_server.auth(),
            timeout=60,
        )
    )
    samples = _metrics(guarded_server)
    stream = 'method="/ananke.v1.InferenceService/GenerateStream"'
    assert samples[f'ananke_requests_total{{code="OK",{stream}}}'] >= 1
    unauthenticated = 'code="UNAUTHENTICATED",method="/ananke.v1.InferenceService/GetModelInfo"'
    assert samples[f"ananke_requests_total{{{unauthenticated}}}"] >= 1
    assert samples["ananke_time_to_first_token_seconds_count"] >= 1
    assert samples["ananke_time_per_output_token_seconds_count"] >= 1
    assert samples["ananke_generated_tokens_total"] >= 4
    assert samples["ananke_constraint_compile_seconds_count"] >= 1
    lookups = [
        v for k, v in samples.items() if k.startswith("ananke_constraint_cache_lookups_total")
    ]
    assert sum(lookups) >= 1
    assert samples["ananke_running_generations"] == 0
    assert samples["ananke_queued_generations"] == 0
    assert samples[f"ananke_in_flight_requests{{{stream}}}"] == 0
