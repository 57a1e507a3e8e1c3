"""Ananke on Modal: the `ananke-server` gRPC service (vLLM + llguidance) on one or
more A100/H100 GPUs per container as the chosen profile says, scaling to zero,
reachable over HTTP/2 at a stable Modal URL.

HTTP/2 exposure: `@app.server(port=..., h2_enabled=True)` (modal 1.6.4). Modal
terminates TLS at its edge and forwards cleartext HTTP/2 (h2c) to the port, which
is exactly what the server's `add_insecure_port` speaks, so gRPC (trailers,
streaming) works end to end. It is also the only option that fits scale to zero:
the URL is stable and an incoming request starts a container, and Modal balances
requests across containers. The alternatives, `modal.forward(port,
h2_enabled=True)` (experimental TLS tunnel) and `modal.forward(port,
unencrypted=True)` (raw TCP, API keys in clear text), exist only while some
container runs, give each container its own random address, and cannot wake a
scaled-down app. `@modal.web_server` has no HTTP/2 option.

Authentication: the server's own API keys (`ANANKE_API_KEYS`, `authorization:
Bearer <key>`) from the Modal secret `ananke-api-keys`; the container refuses to
start without keys unless deployed with `ANANKE_MODAL_AUTH=disabled`. Modal's
proxy tokens (`Modal-Key`/`Modal-Secret`) are off unless `ANANKE_MODAL_PROXY_AUTH=1`.

Deploy-time environment (read here, forwarded to the container so it sees the same):
  ANANKE_MODAL_PROFILE          a key of PROFILES (default llama-3.1-8b-instruct): model,
                                pinned revision, GPU type and count, engine flags
  ANANKE_MODAL_REVISION         pin (or re-pin) the profile's model to this commit sha
  ANANKE_MODAL_GPU              override the profile's GPU type (A100, A100-80GB, H100, ...);
                                the count always follows the profile (= tensor parallel size)
  ANANKE_MODAL_CONCURRENCY      generations per container (default 10): the server's
                                --max-concurrent-requests and Modal's target concurrency
  ANANKE_MODAL_MIN_CONTAINERS   containers kept warm (default 0: scale to zero)
  ANANKE_MODAL_MAX_CONTAINERS   upper bound on containers (default 10)
  ANANKE_MODAL_BUFFER_CONTAINERS  idle containers kept beyond demand under load (default 0)
  ANANKE_MODAL_SCALEDOWN_WINDOW_S idle seconds before a container stops (default 60)
  ANANKE_MODAL_APP_NAME         Modal app name (default ananke-inference; one per profile
                                to serve several side by side)
  ANANKE_MODAL_SERVER_ARGS      extra `ananke-server` flags, e.g. "--max-model-len 16384"
  ANANKE_MODAL_AUTH             required (default) | disabled
  ANANKE_MODAL_PROXY_AUTH       0 (default) | 1

Deploy: `modal deploy modal_deploy/app.py`; smoke test: `modal run modal_deploy/app.py`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import ananke_server
import modal
from ananke_server.settings import Settings, load_settings

log = logging.getLogger("ananke.modal")

APP_NAME = "ananke-inference"  # the name users of the older HTTP service know
ROOT = Path(__file__).resolve().parent.parent
SERVICE_REQUIREMENTS = ROOT / "requirements" / "service.txt"  # read by uv at image build
VLLM_PIN = "vllm==0.32.0"  # the CUDA build; pyproject.toml names this file for it
CUDA_BASE_IMAGE = "nvidia/cuda:12.8.0-devel-ubuntu22.04"  # nvcc + gcc for vLLM/Triton JIT
PYTHON_VERSION = "3.11"
LOCAL_PACKAGES = ("ananke_server", "ananke")  # service/ and clients/python/src/

GRPC_PORT = 50051
SERVER_MODULE = "ananke_server.cli"  # the `ananke-server` entry point, also used by the tests
STARTUP_TIMEOUT_S = 30 * 60  # the first start of a 70B profile downloads ~40-140 GB
CONTROL_HEADROOM = 16  # health, reflection and validation calls beside generations
GPUS = ("A100", "A100-40GB", "A100-80GB", "H100", "H200", "B200")
# The seeds' service: 10 concurrent requests per container, scale to zero after 60 s,
# up to 10 containers.
DEFAULT_CONCURRENCY = 10
DEFAULT_MIN_CONTAINERS = 0
DEFAULT_MAX_CONTAINERS = 10
DEFAULT_BUFFER_CONTAINERS = 0
SCALEDOWN_WINDOW_S = 60

HF_CACHE_DIR = "/root/.cache/huggingface"
VLLM_CACHE_DIR = "/root/.cache/vllm"
# Compiled constraints (the server's compile_disk_cache_dir), kept across scale-to-zero.
COMPILE_CACHE_DIR = "/root/.cache/ananke-compile"
MODEL_LINK_DIR = "/root/ananke-models"
HF_SECRET_NAME = "huggingface-secret"  # holds HF_TOKEN (or the older HUGGING_FACE_HUB_TOKEN)
API_KEYS_SECRET_NAME = "ananke-api-keys"  # holds ANANKE_API_KEYS=key1,key2
# gRPC metadata for Modal's proxy tokens (only with ANANKE_MODAL_PROXY_AUTH=1), from env.
PROXY_HEADERS = (("modal-key", "MODAL_PROXY_KEY"), ("modal-secret", "MODAL_PROXY_SECRET"))
UNPINNED = "UNPINNED"  # a profile without a known commit: the deployer must pin it
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class ModelSpec:
    """A Hugging Face model pinned to one commit."""

    repo_id: str
    revision: str  # a commit sha, or UNPINNED
    gated: bool = False  # needs the license accepted with the token in HF_SECRET_NAME
    ignore: tuple[str, ...] = ()  # this repo's duplicate weight files, not downloaded

    @property
    def served_name(self) -> str:
        """The folder name the server reports as model_id."""
        return self.repo_id.rsplit("/", 1)[-1]

    @property
    def pinned(self) -> bool:
        """Whether the revision is a full commit sha."""
        return COMMIT_SHA.fullmatch(self.revision) is not None


@dataclass(frozen=True)
class Profile:
    """A model and what it runs on: the GPU type, how many (the tensor parallel
    size) and the engine flags it needs (quantization, context length)."""

    model: ModelSpec
    gpu: str
    gpu_count: int = 1
    engine_args: tuple[str, ...] = ()

    @property
    def tensor_parallel_size(self) -> int:
        """One model split across all the container's GPUs."""
        return self.gpu_count


# Revisions: commit shas of each repo's main branch as found in public pins and Hugging
# Face cache snapshot paths; snapshot_download fails loudly if one is wrong.
LLAMA_8B = ModelSpec(
    "meta-llama/Llama-3.1-8B-Instruct", "0e9e39f249a16976918f6564b8830bc894c89659", gated=True
)
LLAMA_70B = ModelSpec(
    "meta-llama/Llama-3.1-70B-Instruct", "1605565b47bb9346c5515c34102e054115b4f98b", gated=True
)
# Every GPU profile: 8k context and CUDA graphs (the server's CPU default is eager mode).
CONTEXT = ("--max-model-len", "8192", "--enforce-eager", "false")
PROFILES: dict[str, Profile] = {
    # 16 GB of bf16 weights: one A100 40 GB leaves ~15 GB of KV cache (~120k tokens).
    "llama-3.1-8b-instruct": Profile(LLAMA_8B, "A100", engine_args=CONTEXT),
    "mistral-7b-instruct-v0.3": Profile(
        ModelSpec(
            "mistralai/Mistral-7B-Instruct-v0.3",
            "c170c708c41dac9275d15a8fff4eca08d52bab71",
            gated=True,
            ignore=("consolidated.safetensors",),  # the same weights in Mistral's format
        ),
        "A100",
        engine_args=CONTEXT,
    ),
    "deepseek-coder-6.7b-instruct": Profile(
        ModelSpec(
            "deepseek-ai/deepseek-coder-6.7b-instruct", "e5d64addd26a6a1db0f9b863abf6ee3141936807"
        ),
        "A100",
        engine_args=CONTEXT,
    ),
    "qwen2.5-coder-7b-instruct": Profile(
        ModelSpec("Qwen/Qwen2.5-Coder-7B-Instruct", "c03e6d358207e414f1eca0bb1891e29f1db0e242"),
        "A100",
        engine_args=CONTEXT,
    ),
    # 70B as 4-bit AWQ (~40 GB): one A100 80 GB, ~28 GB left for the KV cache.
    "llama-3.1-70b-instruct-awq": Profile(
        ModelSpec(
            "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
            "2123003760781134cfc31124aa6560a45b491fdf",
            gated=True,
        ),
        "A100-80GB",
        engine_args=(*CONTEXT, "--quantization", "awq"),
    ),
    # 70B bf16 weights quantized to FP8 at load (~70 GB; FP8 Marlin kernels on an
    # A100, native FP8 on an H100): two GPUs, tensor parallel.
    "llama-3.1-70b-instruct-fp8": Profile(
        LLAMA_70B, "A100-80GB", gpu_count=2, engine_args=(*CONTEXT, "--quantization", "fp8")
    ),
    # 70B in bf16 (~141 GB): four A100 80 GB, tensor parallel.
    "llama-3.1-70b-instruct": Profile(LLAMA_70B, "A100-80GB", gpu_count=4, engine_args=CONTEXT),
}
MODELS: dict[str, ModelSpec] = {key: profile.model for key, profile in PROFILES.items()}
DEFAULT_PROFILE = "llama-3.1-8b-instruct"
DEFAULT_MODEL_KEY = DEFAULT_PROFILE
# Skipped at download: duplicate original checkpoints and non-safetensors formats.
IGNORE_PATTERNS = ("original/*", "*.pth", "*.bin", "*.gguf", "*.onnx", "*.h5", "*.msgpack")


def _count(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name, "")
    try:
        value = int(raw) if raw.strip() else default
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected an integer") from None
    if not low <= value <= high:
        raise ValueError(f"{name}={value}: expected {low}..{high}")
    return value


@dataclass(frozen=True)
class DeployConfig:
    """What the deployer chooses through ANANKE_MODAL_* variables."""

    profile_key: str = DEFAULT_PROFILE
    revision: str = ""  # "": the profile's own
    gpu: str = ""  # "": the profile's own
    concurrency: int = DEFAULT_CONCURRENCY
    min_containers: int = DEFAULT_MIN_CONTAINERS
    max_containers: int = DEFAULT_MAX_CONTAINERS
    buffer_containers: int = DEFAULT_BUFFER_CONTAINERS
    scaledown_window_s: int = SCALEDOWN_WINDOW_S
    app_name: str = APP_NAME
    server_args: tuple[str, ...] = ()
    auth_required: bool = True
    proxy_auth: bool = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> DeployConfig:
        """Parses ANANKE_MODAL_*; unknown profiles, GPUs or auth modes, bad counts
        and unpinned models are errors."""
        # ANANKE_MODAL_MODEL: the older name, from when a profile was only a model.
        variable = next(
            (v for v in ("ANANKE_MODAL_PROFILE", "ANANKE_MODAL_MODEL") if environ.get(v)),
            "ANANKE_MODAL_PROFILE",
        )
        key = environ.get(variable) or DEFAULT_PROFILE
        if key not in PROFILES:
            raise ValueError(f"{variable}={key!r}: expected one of {sorted(PROFILES)}")
        gpu = environ.get("ANANKE_MODAL_GPU", "")
        if gpu and gpu not in GPUS:
            raise ValueError(f"ANANKE_MODAL_GPU={gpu!r}: expected one of {GPUS}")
        revision = environ.get("ANANKE_MODAL_REVISION", "")
        if revision and not COMMIT_SHA.fullmatch(revision):
            raise ValueError(f"ANANKE_MODAL_REVISION={revision!r}: expected a 40-hex commit sha")
        auth = environ.get("ANANKE_MODAL_AUTH", "required")
        if auth not in {"required", "disabled"}:
            raise ValueError(f"ANANKE_MODAL_AUTH={auth!r}: expected 'required' or 'disabled'")
        config = cls(
            profile_key=key,
            revision=revision,
            gpu=gpu,
            concurrency=_count(environ, "ANANKE_MODAL_CONCURRENCY", DEFAULT_CONCURRENCY, 1, 1024),
            min_containers=_count(environ, "ANANKE_MODAL_MIN_CONTAINERS", 0, 0, 1000),
            max_containers=_count(
                environ, "ANANKE_MODAL_MAX_CONTAINERS", DEFAULT_MAX_CONTAINERS, 1, 1000
            ),
            buffer_containers=_count(environ, "ANANKE_MODAL_BUFFER_CONTAINERS", 0, 0, 1000),
            # Modal accepts 2..3600 s.
            scaledown_window_s=_count(
                environ, "ANANKE_MODAL_SCALEDOWN_WINDOW_S", SCALEDOWN_WINDOW_S, 2, 3600
            ),
            app_name=environ.get("ANANKE_MODAL_APP_NAME") or APP_NAME,
            server_args=tuple(shlex.split(environ.get("ANANKE_MODAL_SERVER_ARGS", ""))),
            auth_required=auth == "required",
            proxy_auth=environ.get("ANANKE_MODAL_PROXY_AUTH", "0") == "1",
        )
        if config.min_containers > config.max_containers:
            raise ValueError(
                f"ANANKE_MODAL_MIN_CONTAINERS={config.min_containers} exceeds "
                f"ANANKE_MODAL_MAX_CONTAINERS={config.max_containers}"
            )
        if not config.model.pinned:
            raise ValueError(
                f"profile {key!r} ({config.model.repo_id}) is not pinned to a revision: "
                "set ANANKE_MODAL_REVISION to the commit sha to deploy"
            )
        return config

    @property
    def profile(self) -> Profile:
        """The chosen profile."""
        return PROFILES[self.profile_key]

    @property
    def model_key(self) -> str:
        """The profile key (profiles are named after their models)."""
        return self.profile_key

    @property
    def model(self) -> ModelSpec:
        """The profile's model, with ANANKE_MODAL_REVISION applied."""
        spec = self.profile.model
        return dataclasses.replace(spec, revision=self.revision) if self.revision else spec

    @property
    def gpu_type(self) -> str:
        """The GPU type: the deployer's override, else the profile's."""
        return self.gpu or self.profile.gpu

    @property
    def gpu_spec(self) -> str:
        """Modal's GPU string: "A100-80GB:2" for two."""
        count = self.profile.gpu_count
        return self.gpu_type if count == 1 else f"{self.gpu_type}:{count}"

    def container_env(self) -> dict[str, str | None]:
        """The same choices as variables, so the container's import sees them too."""
        return {
            "ANANKE_MODAL_PROFILE": self.profile_key,
            "ANANKE_MODAL_REVISION": self.revision,
            "ANANKE_MODAL_GPU": self.gpu,
            "ANANKE_MODAL_CONCURRENCY": str(self.concurrency),
            "ANANKE_MODAL_MIN_CONTAINERS": str(self.min_containers),
            "ANANKE_MODAL_MAX_CONTAINERS": str(self.max_containers),
            "ANANKE_MODAL_BUFFER_CONTAINERS": str(self.buffer_containers),
            "ANANKE_MODAL_SCALEDOWN_WINDOW_S": str(self.scaledown_window_s),
            "ANANKE_MODAL_APP_NAME": self.app_name,
            "ANANKE_MODAL_SERVER_ARGS": shlex.join(self.server_args),
            "ANANKE_MODAL_AUTH": "required" if self.auth_required else "disabled",
            "ANANKE_MODAL_PROXY_AUTH": "1" if self.proxy_auth else "0",
        }

    def secret_names(self) -> list[str]:
        """Modal secrets the container needs (missing ones fail `modal deploy`)."""
        names = [HF_SECRET_NAME]
        if self.auth_required:
            names.append(API_KEYS_SECRET_NAME)
        return names


def server_argv(config: DeployConfig, model_path: str) -> list[str]:
    """`ananke-server` flags: Modal's overrides, the profile's engine flags, then the
    deployer's extra flags (which may change the engine flags, not the GPU count)."""
    overrides = ["--host", "0.0.0.0", "--port", str(GRPC_PORT), "--model", model_path]
    profile = config.profile
    sizing = [
        "--max-concurrent-requests",
        str(config.concurrency),
        "--tensor-parallel-size",
        str(profile.tensor_parallel_size),
    ]
    return [*overrides, *sizing, *profile.engine_args, *config.server_args]


def server_settings(config: DeployConfig, model_path: str, environ: Mapping[str, str]) -> Settings:
    """The server's Settings through the one `load_settings` (flags > ANANKE_* > defaults)."""
    settings = load_settings(server_argv(config, model_path), environ)
    if (settings.host, settings.port) != ("0.0.0.0", GRPC_PORT):
        raise ValueError(f"ANANKE_MODAL_SERVER_ARGS must not change --host/--port ({GRPC_PORT})")
    if settings.tensor_parallel_size != config.profile.gpu_count:
        raise ValueError(
            f"ANANKE_MODAL_SERVER_ARGS must not change --tensor-parallel-size: profile "
            f"{config.profile_key!r} has {config.profile.gpu_count} GPU(s)"
        )
    if settings.max_concurrent_requests != config.concurrency:
        raise ValueError(
            "set ANANKE_MODAL_CONCURRENCY, not --max-concurrent-requests, so that Modal's "
            "autoscaling and the server agree"
        )
    return settings


def check_auth(settings: Settings, config: DeployConfig) -> None:
    """Refuses to serve without API keys unless authentication was explicitly disabled."""
    if config.auth_required and not settings.api_keys:
        raise RuntimeError(
            f"ANANKE_API_KEYS is empty: set it in the Modal secret '{API_KEYS_SECRET_NAME}', "
            "or deploy with ANANKE_MODAL_AUTH=disabled to serve without authentication"
        )
    if not config.auth_required:
        log.warning("authentication disabled (ANANKE_MODAL_AUTH=disabled)")


def server_command(argv: Sequence[str]) -> list[str]:
    """The exact process Modal runs: `python -m ananke_server.cli ARGV`."""
    return [sys.executable, "-m", SERVER_MODULE, *argv]


def wait_until_serving(
    address: str, process: subprocess.Popen[bytes] | None, timeout_s: float
) -> None:
    """Polls grpc.health.v1 Check("") until SERVING; fails if the process exits first."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    request = health_pb2.HealthCheckRequest(service="")
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"ananke-server exited with {process.returncode} before SERVING")
            try:
                status = stub.Check(request, timeout=2).status
            except grpc.RpcError:
                status = health_pb2.HealthCheckResponse.UNKNOWN
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"ananke-server not SERVING on {address} after {timeout_s:g}s")
            time.sleep(1.0)


def stop_server(process: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM (the server drains in-flight calls), then SIGKILL after `grace_s`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def model_link(spec: ModelSpec) -> str:
    """The folder given to `--model`: named after the model, so model_id reads well."""
    return f"{MODEL_LINK_DIR}/{spec.served_name}"


def prepare_model(spec: ModelSpec) -> str:
    """Downloads the pinned revision into the HF cache volume (once) and links it
    at `model_link(spec)`."""
    from huggingface_hub import snapshot_download

    if not spec.pinned:  # never download whatever `main` is today
        raise RuntimeError(f"{spec.repo_id}: revision {spec.revision!r} is not a commit sha")
    snapshot = snapshot_download(
        spec.repo_id, revision=spec.revision, ignore_patterns=[*IGNORE_PATTERNS, *spec.ignore]
    )
    link = Path(model_link(spec))
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(snapshot, target_is_directory=True)
    return str(link)


def smoke_call(
    address: str,
    *,
    api_key: str | None = None,
    call_metadata: Sequence[tuple[str, str]] = (),
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """One JSON-schema-constrained Generate through the project's Python client."""
    from ananke import AnankeClient
    from ananke import constraints as c

    schema = {
        "type": "object",
        "properties": {
            "function_name": {"type": "string", "pattern": "^[a-z_][a-z0-9_]{0,30}$"},
            "parameters": {
                "type": "array",
                "items": {"type": "string", "maxLength": 24},
                "maxItems": 4,
            },
        },
        "required": ["function_name", "parameters"],
        "additionalProperties": False,
    }
    # wait_for_ready: a cold start holds the first call until the container is up.
    with AnankeClient(
        address, api_key=api_key, call_metadata=call_metadata, wait_for_ready=True
    ) as client:
        result = client.generate(
            messages=[("user", "Name a Python function that validates an email address.")],
            constraints=[c.json_schema(schema)],
            max_tokens=200,
            temperature=0.0,
            request_id="modal-smoke",
            timeout=timeout_s,
        )
    return {
        "json": result.json(),
        "check": result.check_verdict,
        "finish_reason": result.finish_reason_name,
        "model_id": result.model_id,
        "modal_task_id": result.provenance.placement.modal_task_id,
        "accelerator": result.provenance.placement.accelerator,
    }


def grpc_address(url: str) -> str:
    """A Modal server URL as a TLS gRPC target ("https://host:443"); "host:port" as is."""
    if not url.startswith(("https://", "http://")):
        return url
    host = url.split("://", 1)[1].rstrip("/")
    return f"https://{host}" if ":" in host else f"https://{host}:443"


# ---- Modal objects -------------------------------------------------------------

CONFIG = DeployConfig.from_environ(os.environ)
# Settings as deployed, for sizing Modal's concurrency; defaults come from Settings.
DEPLOY_SETTINGS = server_settings(CONFIG, model_link(CONFIG.model), {})

image = (
    modal.Image.from_registry(CUDA_BASE_IMAGE, add_python=PYTHON_VERSION)
    .uv_pip_install(VLLM_PIN, requirements=[str(SERVICE_REQUIREMENTS)])
    .env(
        {
            "HF_HOME": HF_CACHE_DIR,
            "VLLM_CACHE_ROOT": VLLM_CACHE_DIR,
            "ANANKE_COMPILE_DISK_CACHE_DIR": COMPILE_CACHE_DIR,
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
    )
    .add_local_python_source(*LOCAL_PACKAGES)
)
hf_cache = modal.Volume.from_name("huggingface-cache", create_if_missing=True)
vllm_cache = modal.Volume.from_name("vllm-cache", create_if_missing=True)
compile_cache = modal.Volume.from_name("ananke-compile-cache", create_if_missing=True)

app = modal.App(CONFIG.app_name)


@app.server(
    image=image,
    gpu=CONFIG.gpu_spec,
    volumes={HF_CACHE_DIR: hf_cache, VLLM_CACHE_DIR: vllm_cache, COMPILE_CACHE_DIR: compile_cache},
    secrets=[modal.Secret.from_name(name) for name in CONFIG.secret_names()],
    env=CONFIG.container_env(),
    port=GRPC_PORT,
    h2_enabled=True,
    unauthenticated=not CONFIG.proxy_auth,
    startup_timeout=STARTUP_TIMEOUT_S,
    exit_grace_period=int(DEPLOY_SETTINGS.shutdown_grace_s) + 10,
    scaledown_window=CONFIG.scaledown_window_s,
    min_containers=CONFIG.min_containers,
    max_containers=CONFIG.max_containers,
    buffer_containers=CONFIG.buffer_containers,
    # @modal.concurrent is refused on servers; these are its equivalents. Scale up
    # once the engine's slots are full; Modal's 429 only past the server's own queue.
    target_concurrency=CONFIG.concurrency,
    max_concurrency=DEPLOY_SETTINGS.max_concurrent_requests
    + DEPLOY_SETTINGS.max_queued_requests
    + CONTROL_HEADROOM,
)
class InferenceServer:
    """`ananke-server` as a subprocess; Modal routes traffic once `start` returns."""

    process: subprocess.Popen[bytes] | None = None
    grace_s: float = DEPLOY_SETTINGS.shutdown_grace_s

    @modal.enter()
    def start(self) -> None:
        """Downloads the pinned model, starts the server and waits for SERVING."""
        logging.basicConfig(level=logging.INFO)
        if "HF_TOKEN" not in os.environ and "HUGGING_FACE_HUB_TOKEN" in os.environ:
            os.environ["HF_TOKEN"] = os.environ["HUGGING_FACE_HUB_TOKEN"]  # older secret key
        env = dict(os.environ)
        settings = server_settings(CONFIG, model_link(CONFIG.model), env)
        check_auth(settings, CONFIG)  # before any download
        self.grace_s = settings.shutdown_grace_s
        model_path = prepare_model(CONFIG.model)
        hf_cache.commit()
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        package_root = str(Path(ananke_server.__file__).parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(server_command(server_argv(CONFIG, model_path)), env=env)
        wait_until_serving(f"127.0.0.1:{GRPC_PORT}", self.process, STARTUP_TIMEOUT_S)
        log.info("SERVING %s on :%d", CONFIG.model.repo_id, GRPC_PORT)

    @modal.exit()
    def stop(self) -> None:
        """SIGTERM: health NOT_SERVING, in-flight calls drain, the engine stops."""
        if self.process is not None:
            code = stop_server(self.process, self.grace_s + 5)
            log.info("ananke-server exited with %s", code)
        compile_cache.commit()  # what this container compiled, for the next cold start


@app.local_entrypoint()
def smoke(address: str = "", timeout: float = 900.0) -> None:
    """`modal run modal_deploy/app.py [--address URL]`: one constrained call.

    Without --address it calls this run's (ephemeral) server. Reads ANANKE_API_KEY,
    and MODAL_PROXY_KEY / MODAL_PROXY_SECRET when proxy auth is on.
    """
    server = cast(modal.Server, InferenceServer)  # what @app.server returned
    target = grpc_address(address or server.get_url() or "")
    metadata = [(h, os.environ[name]) for h, name in PROXY_HEADERS if os.environ.get(name)]
    print(f"calling {target} (a cold start can take minutes)")
    result = smoke_call(
        target,
        api_key=os.environ.get("ANANKE_API_KEY") or None,
        call_metadata=metadata,
        timeout_s=timeout,
    )
    print(json.dumps(result, indent=2))
