"""LoRA without the engine: the settings and their vLLM arguments, the folder
checks, the adapter registry (with a recording engine) and the admin-key
check of the interceptor over real gRPC on localhost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from ananke.v1 import inference_service_pb2, inference_service_pb2_grpc
from ananke_server.adapter_rpcs import ADMIN_METHODS
from ananke_server.adapters import Adapters, inspect_folder
from ananke_server.auth import ApiKeys, load_api_keys
from ananke_server.engine_api import LoraAdapter
from ananke_server.engine_config import EngineConfig, engine_args_kwargs
from ananke_server.errors import EngineRejectedError, ServiceError
from ananke_server.interceptors import interceptors
from ananke_server.metrics import Metrics
from ananke_server.settings import Settings, load_settings
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def _adapter_folder(root: Path, name: str = "a", rank: int = 8, **config: Any) -> Path:
    folder = root / name
    folder.mkdir()
    body = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": ["q_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps({**body, **config}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


class RecordingEngine:
    """Records adapter loads and unloads; refuses folders named 'refused'."""

    def __init__(self) -> None:
        self.loaded: list[LoraAdapter] = []
        self.unloaded: list[LoraAdapter] = []

    async def load_adapter(self, adapter: LoraAdapter) -> None:
        if adapter.path.endswith("refused"):
            raise EngineRejectedError("unsupported target module")
        self.loaded.append(adapter)

    async def unload_adapter(self, adapter: LoraAdapter) -> None:
        self.unloaded.append(adapter)


def test_lora_settings_from_flags_env_and_yaml(tmp_path: Path) -> None:
    settings = load_settings(
        ["--enable-lora", "--max-loras", "2", "--lora-adapters", "a=/x,b=/y"], environ={}
    )
    assert (settings.enable_lora, settings.max_loras, settings.lora_adapters) == (
        True,
        2,
        ("a=/x", "b=/y"),
    )
    env = {"ANANKE_ENABLE_LORA": "1", "ANANKE_MAX_LORA_RANK": "64"}
    assert load_settings([], environ=env).max_lora_rank == 64
    config = tmp_path / "c.yaml"
    config.write_text("enable_lora: true\nadmin_api_keys: [adm]\n")
    from_yaml = load_settings(["--config", str(config)], environ={})
    assert from_yaml.enable_lora
    assert from_yaml.admin_api_keys == ("adm",)
    assert not Settings().enable_lora  # off by default
    bad = {
        ("--max-lora-rank", "12"): "max_lora_rank must be one of",
        ("--max-loras", "0"): "max_loras",
        ("--lora-adapters", "a=/x"): "needs enable_lora",
        ("--enable-lora", "--lora-adapters", "noequals"): "not name=/path",
        ("--enable-lora", "--lora-adapters", "a=/x,a=/y"): "twice",
        ("--enable-lora", "--max-loras", "1", "--lora-adapters", "a=/x,b=/y"): "above max_loras",
    }
    for argv, words in bad.items():
        with pytest.raises(ValueError, match=words):
            load_settings(list(argv), environ={})


def test_engine_arguments_carry_lora_only_when_enabled() -> None:
    off = engine_args_kwargs(EngineConfig("m", "m"), on_cpu=True)
    assert "enable_lora" not in off
    settings = Settings(enable_lora=True, max_loras=3, max_lora_rank=32)
    on = engine_args_kwargs(EngineConfig.from_settings(settings, "m", "m"), on_cpu=True)
    assert (on["enable_lora"], on["max_loras"], on["max_cpu_loras"], on["max_lora_rank"]) == (
        True,
        3,
        3,
        32,
    )


def test_folder_checks(tmp_path: Path) -> None:
    good = _adapter_folder(tmp_path)
    assert inspect_folder(str(good), 16, "path")["r"] == 8
    (tmp_path / "empty").mkdir()
    no_weights = _adapter_folder(tmp_path, "noweights")
    (no_weights / "adapter_model.safetensors").unlink()
    cases = {
        "rel/path": "absolute",
        str(tmp_path / "missing"): "not a folder",
        str(tmp_path / "empty"): "adapter_config.json",
        str(_adapter_folder(tmp_path, "big", rank=32)): "above this server's max_lora_rank",
        str(_adapter_folder(tmp_path, "ia3", peft_type="IA3")): "not LoRA",
        str(_adapter_folder(tmp_path, "norank", rank=0)): "rank",
        str(no_weights): "adapter_model",
    }
    for path, words in cases.items():
        with pytest.raises(ServiceError) as refused:
            inspect_folder(path, 16, "path")
        assert refused.value.reason == "ADAPTER_INVALID", path
        assert words in refused.value.message, (path, refused.value.message)
    with pytest.raises(ServiceError) as big:
        inspect_folder(str(tmp_path / "big"), 16, "path")
    assert (big.value.metadata["rank"], big.value.metadata["limit"]) == ("32", "16")


async def test_registry(tmp_path: Path) -> None:
    engine = RecordingEngine()
    adapters = Adapters(Settings(enable_lora=True, max_loras=2), engine)  # type: ignore[arg-type]
    first = await adapters.load("one", str(_adapter_folder(tmp_path, "one")))
    assert first.to_proto().rank == 8
    assert first.revision.startswith("sha256:")
    assert adapters.resolve("", "request.adapter") is None
    assert adapters.resolve("one", "request.adapter") is first
    expected = {
        ("one", "one"): "ADAPTER_EXISTS",
        ("bad name!", "one"): "ADAPTER_INVALID",
        ("x", "refused"): "ADAPTER_INVALID",
    }
    _adapter_folder(tmp_path, "refused")
    for (name, folder), reason in expected.items():
        with pytest.raises(ServiceError) as refused:
            await adapters.load(name, str(tmp_path / folder))
        assert refused.value.reason == reason, name
    await adapters.load("two", str(_adapter_folder(tmp_path, "two")))
    with pytest.raises(ServiceError) as full:
        await adapters.load("three", str(_adapter_folder(tmp_path, "three")))
    assert full.value.reason == "ADAPTER_LIMIT_REACHED"
    async with adapters.using(first):
        with pytest.raises(ServiceError) as busy:
            await adapters.unload("one")
        assert busy.value.reason == "ADAPTER_IN_USE"
    assert (await adapters.unload("one")).engine == first.engine
    assert engine.unloaded == [first.engine]
    with pytest.raises(ServiceError) as gone:
        adapters.resolve("one", "request.adapter")
    assert gone.value.reason == "ADAPTER_NOT_FOUND"
    assert gone.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ServiceError) as stale:  # resolved before the unload
        async with adapters.using(first):
            pass
    assert stale.value.reason == "ADAPTER_NOT_FOUND"
    again = await adapters.load("one", str(tmp_path / "one"))
    assert again.engine.lora_id not in {a.lora_id for a in engine.loaded[:-1]}  # ids never reused
    assert [a.engine.name for a in adapters.listed()] == ["two", "one"]


async def test_lora_disabled() -> None:
    adapters = Adapters(Settings(), RecordingEngine())  # type: ignore[arg-type]
    with pytest.raises(ServiceError) as off:
        adapters.resolve("any", "request.adapter")
    assert off.value.reason == "LORA_DISABLED"
    assert off.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert adapters.resolve("", "request.adapter") is None  # the base model needs no LoRA
    with pytest.raises(ServiceError):
        await adapters.load("a", "/x")


class _Lora(inference_service_pb2_grpc.InferenceServiceServicer):
    async def LoadAdapter(self, request: Any, context: Any) -> Any:
        return inference_service_pb2.LoadAdapterResponse()

    async def ListAdapters(self, request: Any, context: Any) -> Any:
        return inference_service_pb2.ListAdaptersResponse(lora_enabled=True)


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    raise AssertionError("no ErrorInfo")


@pytest.mark.parametrize("admin_configured", [True, False])
async def test_admin_calls_need_an_admin_key(admin_configured: bool) -> None:
    settings = Settings(api_keys=("user",), admin_api_keys=("adm",) if admin_configured else ())
    keys = load_api_keys(settings)
    admin = ApiKeys(settings.admin_api_keys) if settings.admin_api_keys else None
    chain = interceptors(Metrics(), ApiKeys(keys), (), admin, ADMIN_METHODS)
    server = grpc.aio.server(interceptors=chain)
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(_Lora(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
            load = inference_service_pb2.LoadAdapterRequest(name="a", path="/x")
            listing = inference_service_pb2.ListAdaptersRequest()
            user = (("authorization", "Bearer user"),)
            adm = (("authorization", "Bearer adm"),)
            assert (await stub.ListAdapters(listing, metadata=user)).lora_enabled
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.LoadAdapter(load, metadata=user)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert _reason(denied.value) == "ADMIN_KEY_REQUIRED"
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await stub.LoadAdapter(load)
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
            if admin_configured:
                await stub.LoadAdapter(load, metadata=adm)  # admin keys are valid keys too
                assert (await stub.ListAdapters(listing, metadata=adm)).lora_enabled
            else:
                with pytest.raises(grpc.aio.AioRpcError) as nobody:
                    await stub.LoadAdapter(load, metadata=adm)
                assert nobody.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)
