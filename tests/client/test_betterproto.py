"""The betterproto2 dataclass stubs, through the example and the asyncio stub."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("betterproto2")

from ananke.betterproto_aio import AsyncInferenceServiceStub
from ananke_betterproto.ananke import v1

EXAMPLE = Path(__file__).parents[2] / "clients/python/examples/betterproto_stream.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("betterproto_stream", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", [[], ["--async"]])
def test_example_streams(fake_server, capsys, mode: list[str]) -> None:
    code = _example().main(["--address", fake_server.address, "--regex", "H.*", "Hi", *mode])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out == "Hello\n"
    assert "END_OF_SEQUENCE" in captured.err
    req = fake_server.fake.calls_to("GenerateStream")[0].request.request
    assert req.constraints[0].regex.pattern == "H.*"


def test_example_reports_errors(fake_server, capsys) -> None:
    import grpc

    fake_server.fake.fail_next("GenerateStream", grpc.StatusCode.INVALID_ARGUMENT, "PROMPT_EMPTY")
    assert _example().main(["--address", fake_server.address, ""]) == 1
    assert "PROMPT_EMPTY" in capsys.readouterr().err


async def test_async_stub_unary_calls(fake_server) -> None:
    import grpc

    async with grpc.aio.insecure_channel(fake_server.address) as channel:
        stub = AsyncInferenceServiceStub(channel)
        info = await stub.get_model_info(timeout=5)
        assert isinstance(info, v1.GetModelInfoResponse)
        assert info.model_id == "fake/model"
        response = await stub.generate(
            v1.GenerateRequest(request=v1.GenerationRequest(prompt="x")),
            metadata=[("authorization", "Bearer k")],
        )
        assert response.text == "Hello"
        assert response.finish_reason == v1.FinishReason.END_OF_SEQUENCE
        verdicts = await stub.validate_constraints(
            v1.ValidateConstraintsRequest(
                constraints=[v1.ConstraintIr(json_schema=v1.JsonSchemaConstraint(schema="{}"))]
            )
        )
        assert verdicts.ok
    assert fake_server.fake.calls_to("Generate")[0].metadata["authorization"] == "Bearer k"
