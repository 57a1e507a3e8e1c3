"""Offline checks of modal_deploy/app.py (no Modal account needed), and the
server entry point it runs, answering a constrained call on CPU."""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import sys
import tomllib
import types
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("modal")

from ananke_server.settings import Settings, load_settings
from modal._functions import _Function
from modal._utils.async_utils import synchronizer

ROOT = Path(__file__).resolve().parent.parent
APP_PATH = ROOT / "modal_deploy" / "app.py"
DEPLOY_VARS = (
    "ANANKE_MODAL_PROFILE",
    "ANANKE_MODAL_REVISION",
    "ANANKE_MODAL_GPU",
    "ANANKE_MODAL_MODEL",
    "ANANKE_MODAL_CONCURRENCY",
    "ANANKE_MODAL_MIN_CONTAINERS",
    "ANANKE_MODAL_MAX_CONTAINERS",
    "ANANKE_MODAL_BUFFER_CONTAINERS",
    "ANANKE_MODAL_SCALEDOWN_WINDOW_S",
    "ANANKE_MODAL_APP_NAME",
    "ANANKE_MODAL_SERVER_ARGS",
    "ANANKE_MODAL_AUTH",
    "ANANKE_MODAL_PROXY_AUTH",
)


def _load_app(monkeypatch: pytest.MonkeyPatch, **env: str) -> types.ModuleType:
    """Imports a fresh copy of the app file with the given deploy-time variables."""
    for name in DEPLOY_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    name = f"ananke_modal_app_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, APP_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def _spy_function_kwargs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Records the keyword arguments Modal's decorators give `_Function._from_local`."""
    calls: list[dict[str, Any]] = []
    original: Callable[..., Any] = _Function._from_local

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(_Function, "_from_local", staticmethod(spy))
    return calls


@pytest.fixture
def app_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The app as deployed with no ANANKE_MODAL_* variables set."""
    return _load_app(monkeypatch)


def _info(module: types.ModuleType) -> Any:
    return module.InferenceServer.info()


def _closure(fn: Callable[..., Any]) -> dict[str, Any]:
    cells = fn.__closure__ or ()
    return dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in cells), strict=True))


def _dockerfile_commands(image: Any) -> tuple[list[str], dict[str, str]]:
    """Dockerfile commands and context files of an image's layers, base first."""
    layer = synchronizer._translate_in(image)
    commands: list[list[str]] = []
    context: dict[str, str] = {}
    while layer is not None:
        cells = _closure(layer._load)
        if "base_image" in cells:  # a mount layer (add_local_python_source)
            layer = cells["base_image"]
            continue
        build = cells.get("dockerfile_function")
        if build is not None:
            spec = build("2025.06")
            commands.append(list(spec.commands))
            context.update(spec.context_files)
        layer = (cells.get("base_images") or {}).get("base")
    return [c for layer_commands in reversed(commands) for c in layer_commands], context


def test_server_speaks_http2_on_the_grpc_port(app_module: types.ModuleType) -> None:
    info = _info(app_module)
    assert info.port == app_module.GRPC_PORT == 50051
    assert info.h2_enabled is True
    assert info.unauthenticated is True  # Modal's proxy tokens off; the server's API keys on


def test_proxy_auth_can_be_turned_on(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load_app(monkeypatch, ANANKE_MODAL_PROXY_AUTH="1")
    assert _info(module).unauthenticated is False


def test_gpu_defaults_to_a100_40gb(app_module: types.ModuleType) -> None:
    assert _info(app_module).gpus == [("A100", 1)]


def test_gpu_80gb_is_selectable_at_deploy_time(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load_app(monkeypatch, ANANKE_MODAL_GPU="A100-80GB")
    assert _info(module).gpus == [("A100-80GB", 1)]
    assert module.CONFIG.container_env()["ANANKE_MODAL_GPU"] == "A100-80GB"


def test_unknown_gpu_or_model_is_refused(app_module: types.ModuleType) -> None:
    with pytest.raises(ValueError, match="ANANKE_MODAL_GPU"):
        app_module.DeployConfig.from_environ({"ANANKE_MODAL_GPU": "A10G"})
    with pytest.raises(ValueError, match="ANANKE_MODAL_MODEL"):
        app_module.DeployConfig.from_environ({"ANANKE_MODAL_MODEL": "gpt-5"})


def test_timeouts_cover_model_download_and_drain(app_module: types.ModuleType) -> None:
    info = _info(app_module)
    assert info.startup_timeout == app_module.STARTUP_TIMEOUT_S == 1800
    assert info.exit_grace_period >= Settings().shutdown_grace_s + 5


def test_scale_to_zero_concurrency_and_bounded_containers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _spy_function_kwargs(monkeypatch)
    module = _load_app(monkeypatch, ANANKE_MODAL_MAX_CONTAINERS="3")
    (server,) = [c for c in calls if c.get("is_server")]
    defaults = Settings()
    assert server["scaledown_window"] == 60
    assert server["min_containers"] == 0
    assert server["max_containers"] == 3
    assert server["buffer_containers"] == 0
    # The seeds' 10 generations per container, running in the engine at once.
    assert server["target_concurrent_inputs"] == 10
    assert module.DEPLOY_SETTINGS.max_concurrent_requests == 10
    assert server["max_concurrent_inputs"] == (
        10 + defaults.max_queued_requests + module.CONTROL_HEADROOM
    )
    assert server["http_config"].h2_enabled is True


def test_autoscaling_settings_reach_modal(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_function_kwargs(monkeypatch)
    module = _load_app(
        monkeypatch,
        ANANKE_MODAL_CONCURRENCY="24",
        ANANKE_MODAL_MIN_CONTAINERS="1",
        ANANKE_MODAL_MAX_CONTAINERS="6",
        ANANKE_MODAL_BUFFER_CONTAINERS="2",
        ANANKE_MODAL_SCALEDOWN_WINDOW_S="300",
        ANANKE_MODAL_APP_NAME="ananke-llama8b",
    )
    (server,) = [c for c in calls if c.get("is_server")]
    assert (server["min_containers"], server["max_containers"]) == (1, 6)
    assert (server["buffer_containers"], server["scaledown_window"]) == (2, 300)
    assert server["target_concurrent_inputs"] == 24
    assert module.DEPLOY_SETTINGS.max_concurrent_requests == 24
    assert module.app.name == "ananke-llama8b"
    assert module.DeployConfig.from_environ(module.CONFIG.container_env()) == module.CONFIG


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ANANKE_MODAL_CONCURRENCY", "0", "ANANKE_MODAL_CONCURRENCY=0: expected 1..1024"),
        ("ANANKE_MODAL_MAX_CONTAINERS", "0", "expected 1..1000"),
        ("ANANKE_MODAL_MIN_CONTAINERS", "-1", "expected 0..1000"),
        ("ANANKE_MODAL_BUFFER_CONTAINERS", "many", "expected an integer"),
        ("ANANKE_MODAL_SCALEDOWN_WINDOW_S", "1", "expected 2..3600"),
        ("ANANKE_MODAL_MIN_CONTAINERS", "20", "exceeds ANANKE_MODAL_MAX_CONTAINERS=10"),
        ("ANANKE_MODAL_PROFILE", "llama-4", "ANANKE_MODAL_PROFILE='llama-4'"),
        ("ANANKE_MODAL_REVISION", "main", "expected a 40-hex commit sha"),
    ],
)
def test_bad_deploy_settings_are_refused(
    app_module: types.ModuleType, name: str, value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        app_module.DeployConfig.from_environ({name: value})


def test_default_max_containers_is_bounded(app_module: types.ModuleType) -> None:
    assert app_module.CONFIG.max_containers == 10


def test_weights_and_vllm_caches_on_volumes(app_module: types.ModuleType) -> None:
    volumes = _info(app_module).volumes
    assert {path: v.name for path, v in volumes.items()} == {
        "/root/.cache/huggingface": "huggingface-cache",
        "/root/.cache/vllm": "vllm-cache",
        "/root/.cache/ananke-compile": "ananke-compile-cache",
    }
    commands, _ = _dockerfile_commands(app_module.image)
    assert "ENV HF_HOME=/root/.cache/huggingface" in commands
    assert "ENV VLLM_CACHE_ROOT=/root/.cache/vllm" in commands
    # The server's compile cache folder is the volume (settings read ANANKE_* env).
    assert "ENV ANANKE_COMPILE_DISK_CACHE_DIR=/root/.cache/ananke-compile" in commands


def test_secrets_by_name(app_module: types.ModuleType) -> None:
    secrets = _info(app_module).secrets
    assert "modal.Secret.from_name('huggingface-secret')" in secrets
    assert "modal.Secret.from_name('ananke-api-keys')" in secrets
    no_auth = app_module.DeployConfig.from_environ({"ANANKE_MODAL_AUTH": "disabled"})
    assert no_auth.secret_names() == ["huggingface-secret"]


def test_image_pins_vllm_and_the_service_requirements(app_module: types.ModuleType) -> None:
    commands, context = _dockerfile_commands(app_module.image)
    (install,) = [c for c in commands if "uv pip install" in c]
    assert "vllm==0.32.0" in install.split()
    (requirements,) = [dest for dest in install.split() if dest.endswith("service.txt")]
    local = next(src for ctx, src in context.items() if requirements.endswith(ctx.split("_", 1)[1]))
    assert Path(local) == ROOT / "requirements" / "service.txt"
    pinned = {line.strip() for line in Path(local).read_text().splitlines() if "==" in line}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # Every exact pin of the service (but the client, shipped as source) is in the image.
    assert {d for d in project if "==" in d and not d.startswith("ananke-client")} <= pinned
    layer = synchronizer._translate_in(app_module.image)
    assert {"ananke", "ananke_server"} <= set(layer._added_python_source_set)


def test_model_registry_pins_coding_models(app_module: types.ModuleType) -> None:
    models = app_module.MODELS
    assert app_module.CONFIG.model.repo_id == "meta-llama/Llama-3.1-8B-Instruct"
    assert {m.repo_id for m in models.values()} >= {
        "Qwen/Qwen2.5-Coder-7B-Instruct",
        "deepseek-ai/deepseek-coder-6.7b-instruct",
    }
    for spec in models.values():
        assert re.fullmatch(r"[0-9a-f]{40}", spec.revision) or spec.revision == "TODO pin"


def test_prepare_model_links_the_pinned_snapshot(
    app_module: types.ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub
    from ananke_server.server import resolve_model

    snapshot = tmp_path / "snapshots" / "0e9e39f"
    snapshot.mkdir(parents=True)
    asked: list[tuple[str, dict[str, Any]]] = []

    def fake_download(repo_id: str, **kwargs: Any) -> str:
        asked.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.setattr(app_module, "MODEL_LINK_DIR", str(tmp_path / "models"))
    spec = app_module.MODELS["llama-3.1-8b-instruct"]
    path = app_module.prepare_model(spec)
    assert app_module.prepare_model(spec) == path  # a restart relinks
    assert Path(path).resolve() == snapshot.resolve()
    assert asked[0][0] == spec.repo_id
    assert asked[0][1]["revision"] == spec.revision
    assert "original/*" in asked[0][1]["ignore_patterns"]
    assert resolve_model(Settings(model=path)) == (path, "Llama-3.1-8B-Instruct")


def test_settings_come_from_load_settings(
    app_module: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = app_module.DeployConfig(server_args=("--max-model-len", "8192"))
    environ = {"ANANKE_API_KEYS": "k1,k2", "ANANKE_LOG_LEVEL": "DEBUG"}
    argv = app_module.server_argv(config, "/models/Llama")
    expected = load_settings(argv, environ)
    seen: list[tuple[list[str], dict[str, str]]] = []

    def spy(argv: list[str], environ: dict[str, str]) -> Settings:
        seen.append((argv, environ))
        return load_settings(argv, environ)

    monkeypatch.setattr(app_module, "load_settings", spy)
    settings = app_module.server_settings(config, "/models/Llama", environ)
    assert seen == [(argv, environ)]
    assert settings == expected
    assert settings.api_keys == ("k1", "k2")
    assert (settings.host, settings.port, settings.model) == ("0.0.0.0", 50051, "/models/Llama")
    assert settings.max_model_len == 8192
    assert settings.log_level == "DEBUG"


def test_deploy_settings_differ_from_defaults_only_where_modal_needs(
    app_module: types.ModuleType,
) -> None:
    deployed = app_module.DEPLOY_SETTINGS
    model = f"{app_module.MODEL_LINK_DIR}/Llama-3.1-8B-Instruct"
    assert deployed == Settings(
        host="0.0.0.0",
        port=50051,
        model=model,
        max_concurrent_requests=10,
        max_model_len=8192,
        enforce_eager=False,
    )


def test_server_args_cannot_move_the_port(app_module: types.ModuleType) -> None:
    config = app_module.DeployConfig(server_args=("--port", "8080"))
    with pytest.raises(ValueError, match="--host/--port"):
        app_module.server_settings(config, "/m", {})


def test_refuses_to_start_without_api_keys(app_module: types.ModuleType) -> None:
    required = app_module.DeployConfig()
    with pytest.raises(RuntimeError, match="ANANKE_API_KEYS"):
        app_module.check_auth(Settings(), required)
    app_module.check_auth(Settings(api_keys=("k",)), required)
    app_module.check_auth(Settings(), app_module.DeployConfig(auth_required=False))


def test_container_sees_the_deploy_choices(app_module: types.ModuleType) -> None:
    config = app_module.DeployConfig(
        gpu="A100-80GB",
        profile_key="qwen2.5-coder-7b-instruct",
        server_args=("--enforce-eager", "false"),
        auth_required=False,
    )
    assert app_module.DeployConfig.from_environ(config.container_env()) == config


def test_modal_runs_the_same_entry_point_as_the_tests(app_module: types.ModuleType) -> None:
    command = app_module.server_command(["--port", "1"])
    assert command[1:] == ["-m", "ananke_server.cli", "--port", "1"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ananke-server"] == "ananke_server.cli:main"
    # The live_server fixture starts the same module (tests/conftest.py: start_server).
    assert '"-m",\n        "ananke_server.cli",' in (ROOT / "tests" / "conftest.py").read_text()


def test_grpc_address(app_module: types.ModuleType) -> None:
    url = "https://ws--ananke-inference-inferenceserver.modal.run"
    assert app_module.grpc_address(url) == f"{url}:443"
    assert app_module.grpc_address("localhost:50051") == "localhost:50051"


def test_stop_server_sends_sigterm(app_module: types.ModuleType) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert app_module.stop_server(sleeper, 10.0) == -signal.SIGTERM


def test_wait_until_serving_fails_when_the_server_exits(app_module: types.ModuleType) -> None:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    with pytest.raises(RuntimeError, match="exited"):
        app_module.wait_until_serving("127.0.0.1:1", done, 5.0)


def test_modal_entry_point_answers_a_constrained_call(
    app_module: types.ModuleType, live_server: Any
) -> None:
    """The Modal container runs `python -m ananke_server.cli` (server_command), the
    same entry point the session's `live_server` runs on CPU with the default model;
    so this drives the Modal readiness wait and smoke call against that server."""
    app_module.wait_until_serving(live_server.address, live_server.process, 30.0)
    result = app_module.smoke_call(live_server.address, timeout_s=300.0)
    assert result["check"] == "SATISFIED", result
    assert re.fullmatch(r"[a-z_][a-z0-9_]{0,30}", result["json"]["function_name"])
    assert isinstance(result["json"]["parameters"], list)
    assert result["model_id"] == "SmolLM2-135M-Instruct"


# (profile, Modal GPU spec, tensor parallel size, --quantization or "")
PROFILE_TABLE = [
    ("llama-3.1-8b-instruct", ("A100", 1), ""),
    ("mistral-7b-instruct-v0.3", ("A100", 1), ""),
    ("deepseek-coder-6.7b-instruct", ("A100", 1), ""),
    ("qwen2.5-coder-7b-instruct", ("A100", 1), ""),
    ("llama-3.1-70b-instruct-awq", ("A100-80GB", 1), "awq"),
    ("llama-3.1-70b-instruct-fp8", ("A100-80GB", 2), "fp8"),
    ("llama-3.1-70b-instruct", ("A100-80GB", 4), ""),
]


def test_profile_table_covers_every_profile(app_module: types.ModuleType) -> None:
    assert {row[0] for row in PROFILE_TABLE} == set(app_module.PROFILES)


@pytest.mark.parametrize(("key", "gpus", "quantization"), PROFILE_TABLE)
def test_every_profile_builds_offline(
    monkeypatch: pytest.MonkeyPatch, key: str, gpus: tuple[str, int], quantization: str
) -> None:
    calls = _spy_function_kwargs(monkeypatch)
    module = _load_app(monkeypatch, ANANKE_MODAL_PROFILE=key)
    info = _info(module)
    profile = module.PROFILES[key]
    assert info.gpus == [gpus]
    assert module.CONFIG.gpu_spec == (gpus[0] if gpus[1] == 1 else f"{gpus[0]}:{gpus[1]}")
    # The GPU count is the tensor parallel size the server is started with.
    settings = module.DEPLOY_SETTINGS
    assert settings.tensor_parallel_size == gpus[1]
    assert settings.quantization == quantization
    assert settings.max_concurrent_requests == 10
    assert settings.enforce_eager is False  # CUDA graphs on a GPU
    assert settings.model == f"{module.MODEL_LINK_DIR}/{profile.model.served_name}"
    assert re.fullmatch(r"[0-9a-f]{40}", profile.model.revision)
    # Image, volumes, secrets and environment are the same for every profile.
    commands, _ = _dockerfile_commands(module.image)
    assert any("vllm==0.32.0" in c for c in commands)
    assert {path: v.name for path, v in info.volumes.items()} == {
        "/root/.cache/huggingface": "huggingface-cache",
        "/root/.cache/vllm": "vllm-cache",
        "/root/.cache/ananke-compile": "ananke-compile-cache",
    }
    assert "modal.Secret.from_name('huggingface-secret')" in info.secrets
    (server,) = [c for c in calls if c.get("is_server")]
    env = module.CONFIG.container_env()
    assert env["ANANKE_MODAL_PROFILE"] == key
    assert module.DeployConfig.from_environ(env) == module.CONFIG
    assert server["target_concurrent_inputs"] == 10
    assert server["scaledown_window"] == 60
    assert server["min_containers"] == 0


def test_gpu_type_override_keeps_the_profiles_count(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load_app(
        monkeypatch, ANANKE_MODAL_PROFILE="llama-3.1-70b-instruct-fp8", ANANKE_MODAL_GPU="H100"
    )
    assert _info(module).gpus == [("H100", 2)]
    assert module.DEPLOY_SETTINGS.tensor_parallel_size == 2


def test_server_args_cannot_change_gpu_count_or_concurrency(app_module: types.ModuleType) -> None:
    config = app_module.DeployConfig(server_args=("--tensor-parallel-size", "2"))
    with pytest.raises(ValueError, match="--tensor-parallel-size"):
        app_module.server_settings(config, "/m", {})
    config = app_module.DeployConfig(server_args=("--max-concurrent-requests", "32"))
    with pytest.raises(ValueError, match="ANANKE_MODAL_CONCURRENCY"):
        app_module.server_settings(config, "/m", {})
    # Engine flags of the profile may be changed.
    config = app_module.DeployConfig(server_args=("--max-model-len", "16384"))
    assert app_module.server_settings(config, "/m", {}).max_model_len == 16384


def test_unpinned_profile_is_refused_until_the_deployer_pins_it(
    app_module: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    unpinned = app_module.Profile(
        app_module.ModelSpec("org/new-model", app_module.UNPINNED), "A100-80GB"
    )
    monkeypatch.setitem(app_module.PROFILES, "new-model", unpinned)
    with pytest.raises(ValueError, match="not pinned to a revision: set ANANKE_MODAL_REVISION"):
        app_module.DeployConfig.from_environ({"ANANKE_MODAL_PROFILE": "new-model"})
    sha = "0123456789abcdef0123456789abcdef01234567"
    config = app_module.DeployConfig.from_environ(
        {"ANANKE_MODAL_PROFILE": "new-model", "ANANKE_MODAL_REVISION": sha}
    )
    assert config.model.revision == sha
    assert config.container_env()["ANANKE_MODAL_REVISION"] == sha
    with pytest.raises(RuntimeError, match="not a commit sha"):
        app_module.prepare_model(unpinned.model)


def test_duplicate_weights_are_not_downloaded(
    app_module: types.ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub

    asked: list[dict[str, Any]] = []
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda repo, **kw: asked.append(kw) or str(tmp_path)
    )
    monkeypatch.setattr(app_module, "MODEL_LINK_DIR", str(tmp_path / "models"))
    app_module.prepare_model(app_module.MODELS["mistral-7b-instruct-v0.3"])
    assert "consolidated.safetensors" in asked[0]["ignore_patterns"]
    assert "*.bin" in asked[0]["ignore_patterns"]
