"""Constrained regions in free text against the real engine over gRPC: prose,
then a fenced block that must be JSON valid against a schema, then prose."""

from __future__ import annotations

import json
import re

import grpc
import jsonschema
import pytest
from ananke import constraints as c
from ananke.v1 import constraints_pb2, generation_pb2, inference_service_pb2, provenance_pb2
from conftest import LiveServer
from google.rpc import error_details_pb2
from grpc_status import rpc_status

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def _request(**structural: int) -> generation_pb2.GenerationRequest:
    block = c.region(
        "```json\n", c.json_schema(SCHEMA), trigger="```", end="\n```", name="json block"
    )
    return generation_pb2.GenerationRequest(
        messages=[
            generation_pb2.ChatMessage(
                role=generation_pb2.CHAT_ROLE_USER,
                content="Describe a cat in one sentence, then give it as JSON in a "
                "```json code block.",
            )
        ],
        constraints=[c.structural(block, name="answer", **structural)],
        sampling=generation_pb2.SamplingParams(max_tokens=160),
    )


def test_region_inside_free_text_is_constrained(live_server: LiveServer) -> None:
    response = live_server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=_request(min_regions=1, max_regions=1)),
        timeout=300,
    )
    text = response.text
    blocks = re.findall(r"```json\n(.*?)\n```", text, flags=re.S)
    assert blocks, text  # the model opened a fence: the region followed
    for block in blocks:
        jsonschema.validate(json.loads(block), SCHEMA)
    assert text.count("```") == 2  # max_regions=1: no second fence, not even as text
    provenance = response.provenance
    assert [i.kind for i in provenance.constraints.items] == [
        constraints_pb2.CONSTRAINT_KIND_STRUCTURAL
    ]
    assert provenance.check.verdict in (
        provenance_pb2.CHECK_VERDICT_SATISFIED,
        provenance_pb2.CHECK_VERDICT_INCOMPLETE,  # prose after the block hit max_tokens
    )
    assert provenance.constraints.enforcement_mode == provenance_pb2.ENFORCEMENT_GRAMMAR


def test_bad_structural_constraint_is_invalid_argument(live_server: LiveServer) -> None:
    request = _request()
    request.constraints[0].structural.regions[0].trigger = "~~~"
    with pytest.raises(grpc.RpcError) as raised:
        live_server.stub().Generate(
            inference_service_pb2.GenerateRequest(request=request), timeout=60
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(raised.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert info.reason == "STRUCTURAL_INVALID"
    assert info.metadata["field"] == "request.constraints[0].structural.regions[0].trigger"
