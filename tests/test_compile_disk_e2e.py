"""Compiled constraints survive a cold start, against the real engine: what the
session server compiled, another server process (the guarded one, started
with the same compile cache folder) loads from disk instead of compiling."""

from __future__ import annotations

import json
import uuid

from ananke.v1 import constraints_pb2, generation_pb2, inference_service_pb2, provenance_pb2
from conftest import COMPILE_CACHE_DIR, GuardedServer, LiveServer

STATS = inference_service_pb2.GetServerStatsRequest()


def _request() -> generation_pb2.GenerationRequest:
    # A description the grammar ignores makes the constraint (and its cache key) new.
    schema = {
        "type": "object",
        "description": f"run {uuid.uuid4()}",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
    }
    return generation_pb2.GenerationRequest(
        prompt="A JSON object with a number n: ",
        constraints=[
            constraints_pb2.ConstraintIR(
                name="n",
                json_schema=constraints_pb2.JsonSchemaConstraint(schema=json.dumps(schema)),
            )
        ],
        sampling=generation_pb2.SamplingParams(max_tokens=24),
    )


def test_second_server_loads_compiled_constraints_from_disk(
    live_server: LiveServer, guarded_server: GuardedServer
) -> None:
    request = inference_service_pb2.GenerateRequest(request=_request())
    files_before = set(COMPILE_CACHE_DIR.glob("*.entry"))

    first = live_server.stub().Generate(request, timeout=120)
    assert first.provenance.constraints.cache == provenance_pb2.CACHE_OUTCOME_MISS
    written = set(COMPILE_CACHE_DIR.glob("*.entry")) - files_before
    assert len(written) == 1  # one entry, written whole

    stub = guarded_server.stub()
    before = stub.GetServerStats(STATS, metadata=guarded_server.auth(), timeout=10).compile_cache
    second = stub.Generate(request, metadata=guarded_server.auth(), timeout=120)
    after = stub.GetServerStats(STATS, metadata=guarded_server.auth(), timeout=10).compile_cache
    assert second.provenance.constraints.cache == provenance_pb2.CACHE_OUTCOME_DISK_HIT
    assert second.provenance.constraints.digest == first.provenance.constraints.digest
    assert second.provenance.check.verdict == first.provenance.check.verdict
    assert second.text == first.text  # greedy, same grammar: same output
    assert after.disk_hits == before.disk_hits + 1
    assert after.disk_writes == before.disk_writes  # nothing compiled, nothing written
    assert after.disk_max_bytes > 0

    # In the second server's memory now: a plain hit.
    third = stub.Generate(request, metadata=guarded_server.auth(), timeout=120)
    assert third.provenance.constraints.cache == provenance_pb2.CACHE_OUTCOME_HIT
