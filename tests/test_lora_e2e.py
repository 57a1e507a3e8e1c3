"""LoRA adapters with the real engine over real gRPC.

The test makes a real LoRA adapter for the default model with peft (rank 8,
random non-zero A and B, so its outputs differ from the base model's), saves
it to a temporary folder and starts one server of its own with --enable-lora,
fast-forward on (the default), API keys and an admin key, and the same
folder preloaded under another name. Over RPC: admin-only loading, the
folder checks, load, list, greedy generation (differs from the base model,
equals the preloaded copy's), a constrained generation with the adapter
(still satisfies its constraint), provenance, unload, and NOT_FOUND after."""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import generation_pb2, inference_service_pb2, provenance_pb2
from conftest import LiveServer, start_server, stop_server
from google.rpc import error_details_pb2
from grpc_status import rpc_status

pytestmark = pytest.mark.engine

MODEL = Path.home() / ".cache" / "ananke" / "models" / "SmolLM2-135M-Instruct"
ADMIN_KEY = "ak-admin-lora-51e"
USER_KEY = "ak-user-lora-9d2"
ADMIN = (("authorization", f"Bearer {ADMIN_KEY}"),)
USER = (("authorization", f"Bearer {USER_KEY}"),)
PROMPT = "The capital of France is"
MAX_RANK = 16


def make_adapter(folder: Path, rank: int = 8) -> None:
    """A real PEFT LoRA adapter over the default model with random weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(17)
    model = AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,  # random B as well as A: the adapter changes outputs
    )
    get_peft_model(model, config).save_pretrained(str(folder))


@pytest.fixture(scope="module")
def adapter_dir() -> Iterator[Path]:
    """The adapter folder (and its parent, removed at the end)."""
    if not MODEL.is_dir():
        pytest.skip(f"the default model is not prepared at {MODEL} (make model)")
    parent = Path(tempfile.mkdtemp(prefix="ananke-lora-"))
    folder = parent / "style-adapter"
    make_adapter(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def lora_server(adapter_dir: Path) -> Iterator[LiveServer]:
    """This module's server: LoRA on, keys on, the adapter preloaded as "pre"."""
    log_dir = Path(tempfile.mkdtemp(prefix="ananke-lora-server-"))
    server = start_server(
        [
            "--max-tokens-cap", "256",
            "--max-concurrent-requests", "4",
            "--enable-lora",
            "--max-loras", "2",
            "--max-lora-rank", str(MAX_RANK),
            "--lora-adapters", f"pre={adapter_dir}",
            "--api-keys", USER_KEY,
            "--admin-api-keys", ADMIN_KEY,
        ],
        log_dir,
    )  # fmt: skip
    try:
        yield server
    finally:
        code = stop_server(server)
        if code != 0:
            print(f"lora server exited with {code}:\n{server.log_tail()}", file=sys.stderr)


def _reason(error: grpc.RpcError) -> tuple[str, dict[str, str]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    raise AssertionError("no ErrorInfo")


def _generate(
    server: LiveServer, adapter: str = "", constraints: list[c.ConstraintIR] | None = None
) -> inference_service_pb2.GenerateResponse:
    request = generation_pb2.GenerationRequest(
        prompt=PROMPT,
        adapter=adapter,
        constraints=constraints or [],
        sampling=generation_pb2.SamplingParams(max_tokens=24, temperature=0.0),
    )
    response: inference_service_pb2.GenerateResponse = server.stub().Generate(
        inference_service_pb2.GenerateRequest(request=request), metadata=USER, timeout=120
    )
    return response


def _load(server: LiveServer, name: str, path: str, metadata: object = ADMIN) -> object:
    return server.stub().LoadAdapter(
        inference_service_pb2.LoadAdapterRequest(name=name, path=path),
        metadata=metadata,
        timeout=120,
    )


def test_loading_is_admin_only(lora_server: LiveServer, adapter_dir: Path) -> None:
    with pytest.raises(grpc.RpcError) as denied:
        _load(lora_server, "style", str(adapter_dir), metadata=USER)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(denied.value)[0] == "ADMIN_KEY_REQUIRED"
    with pytest.raises(grpc.RpcError) as anonymous:
        _load(lora_server, "style", str(adapter_dir), metadata=())
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Listing is open to any valid key; nothing was loaded by the refused calls.
    listed = lora_server.stub().ListAdapters(
        inference_service_pb2.ListAdaptersRequest(), metadata=USER, timeout=10
    )
    assert [a.name for a in listed.adapters] == ["pre"]
    assert (listed.lora_enabled, listed.max_adapters, listed.max_rank) == (True, 2, MAX_RANK)


def test_bad_folders_are_refused(lora_server: LiveServer, adapter_dir: Path) -> None:
    not_adapter = adapter_dir.parent / "empty"
    not_adapter.mkdir(exist_ok=True)
    too_big = adapter_dir.parent / "rank64"
    shutil.copytree(adapter_dir, too_big, dirs_exist_ok=True)
    config = json.loads((too_big / "adapter_config.json").read_text())
    (too_big / "adapter_config.json").write_text(json.dumps({**config, "r": 64}))
    cases = {
        "relative/path": "absolute",
        str(adapter_dir.parent / "missing"): "not a folder",
        str(not_adapter): "adapter_config.json",
        str(too_big): "max_lora_rank",
    }
    for path, words in cases.items():
        with pytest.raises(grpc.RpcError) as refused:
            _load(lora_server, "bad", path)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, path
        reason, metadata = _reason(refused.value)
        assert reason == "ADAPTER_INVALID", path
        assert words in (refused.value.details() or ""), (path, refused.value.details())
        assert metadata["field"] == "path"
    assert _reason(refused.value)[1]["rank"] == "64"
    with pytest.raises(grpc.RpcError) as bad_name:
        _load(lora_server, "no spaces allowed", str(adapter_dir))
    assert _reason(bad_name.value)[0] == "ADAPTER_INVALID"


def test_adapter_lifecycle(lora_server: LiveServer, adapter_dir: Path) -> None:
    stub = lora_server.stub()
    base = _generate(lora_server)
    loaded = _load(lora_server, "style", str(adapter_dir))
    assert isinstance(loaded, inference_service_pb2.LoadAdapterResponse)
    info = loaded.adapter
    assert (info.name, info.rank, info.alpha) == ("style", 8, 16.0)
    assert sorted(info.target_modules) == ["q_proj", "v_proj"]
    assert info.revision.startswith("sha256:")

    listed = stub.ListAdapters(inference_service_pb2.ListAdaptersRequest(), metadata=USER)
    assert [a.name for a in listed.adapters] == ["pre", "style"]
    model_info = stub.GetModelInfo(inference_service_pb2.GetModelInfoRequest(), metadata=USER)
    assert model_info.lora_enabled
    assert [a.name for a in model_info.adapters] == ["pre", "style"]

    with pytest.raises(grpc.RpcError) as again:
        _load(lora_server, "style", str(adapter_dir))
    assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert _reason(again.value)[0] == "ADAPTER_EXISTS"
    with pytest.raises(grpc.RpcError) as full:  # max_loras is 2: "pre" and "style"
        _load(lora_server, "third", str(adapter_dir))
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _reason(full.value)[0] == "ADAPTER_LIMIT_REACHED"

    tuned = _generate(lora_server, "style")
    assert tuned.text != base.text, "the adapter did not change the greedy output"
    assert _generate(lora_server, "pre").text == tuned.text  # same weights, same output
    assert _generate(lora_server).text == base.text  # the base model is untouched
    assert (tuned.provenance.adapter, tuned.provenance.adapter_revision) == (
        "style",
        info.revision,
    )
    assert (base.provenance.adapter, base.provenance.adapter_revision) == ("", "")

    pattern = r"[A-Z][a-z]+ is a (city|country|river)\."
    constrained = _generate(
        lora_server, "style", [c.ConstraintIR(regex=c.RegexConstraint(pattern=pattern))]
    )
    assert re.fullmatch(pattern, constrained.text), constrained.text
    assert constrained.provenance.check.verdict == provenance_pb2.CHECK_VERDICT_SATISFIED
    assert constrained.provenance.adapter == "style"

    unloaded = stub.UnloadAdapter(
        inference_service_pb2.UnloadAdapterRequest(name="style"), metadata=ADMIN
    )
    assert unloaded.adapter.name == "style"
    listed = stub.ListAdapters(inference_service_pb2.ListAdaptersRequest(), metadata=USER)
    assert [a.name for a in listed.adapters] == ["pre"]
    with pytest.raises(grpc.RpcError) as gone:
        _generate(lora_server, "style")
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    reason, metadata = _reason(gone.value)
    assert (reason, metadata["adapter"], metadata["field"]) == (
        "ADAPTER_NOT_FOUND",
        "style",
        "request.adapter",
    )
    with pytest.raises(grpc.RpcError) as twice:
        stub.UnloadAdapter(inference_service_pb2.UnloadAdapterRequest(name="style"), metadata=ADMIN)
    assert twice.value.code() == grpc.StatusCode.NOT_FOUND
    # The name is free again, and loading it back gives the same outputs.
    _load(lora_server, "style", str(adapter_dir))
    assert _generate(lora_server, "style").text == tuned.text


async def test_python_clients(lora_server: LiveServer, adapter_dir: Path) -> None:
    """The sync and async Python clients wrap the adapter calls and field."""
    from ananke import AnankeClient, AsyncAnankeClient
    from ananke.errors import AnankeError

    with AnankeClient(lora_server.address, api_key=ADMIN_KEY, timeout=120) as client:
        names = [a.name for a in client.list_adapters().adapters]
        if "style" in names:  # left loaded by the lifecycle test
            assert client.unload_adapter("style").name == "style"
        base = client.generate(PROMPT, max_tokens=24, temperature=0.0)
        tuned = client.generate(PROMPT, max_tokens=24, temperature=0.0, adapter="pre")
        assert tuned.text != base.text
        assert tuned.provenance.adapter == "pre"
        with pytest.raises(AnankeError) as missing:
            client.generate(PROMPT, max_tokens=4, adapter="style")
        assert (missing.value.code, missing.value.reason) == (
            grpc.StatusCode.NOT_FOUND,
            "ADAPTER_NOT_FOUND",
        )
    async with AsyncAnankeClient(lora_server.address, api_key=ADMIN_KEY, timeout=120) as aio:
        info = await aio.load_adapter("style", str(adapter_dir))
        assert info.rank == 8
        listed = await aio.list_adapters()
        assert [a.name for a in listed.adapters] == ["pre", "style"]
        again = await aio.generate(PROMPT, max_tokens=24, temperature=0.0, adapter="style")
        assert again.text == tuned.text
        assert (await aio.unload_adapter("style")).name == "style"
