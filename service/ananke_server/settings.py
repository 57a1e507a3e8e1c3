"""The one settings object, built once at startup from flags, environment
variables (ANANKE_*), an optional YAML file and defaults, in that order."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_MODEL = "default"  # SmolLM2-135M-Instruct, prepared from PyPI (model_prep)
ENV_PREFIX = "ANANKE_"
# Services callable without an API key unless configured otherwise.
AUTH_EXEMPT_DEFAULT = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)


@dataclass(frozen=True)
class Settings:
    """Everything the server reads at startup. Besides it, only the model cache
    location (ANANKE_HOME, model_prep.py) and Modal's placement variables
    (provenance.py) come from the environment."""

    host: str = "127.0.0.1"
    port: int = 50051
    model: str = DEFAULT_MODEL
    model_cache_dir: str = ""  # default: $ANANKE_HOME/models
    max_concurrent_requests: int = 16
    max_queued_requests: int = 64
    max_tokens_cap: int = 2048
    default_max_tokens: int = 256
    max_model_len: int = 4096
    max_constraint_bytes: int = 1 << 20
    max_message_bytes: int = 8 << 20
    compile_cache_size: int = 512
    compile_timeout_s: float = 10.0
    compile_workers: int = 2
    shutdown_grace_s: float = 30.0
    log_level: str = "INFO"
    log_prompts: bool = False
    log_format: str = "json"
    kv_cache_bytes: int = 256 << 20
    enforce_eager: bool = True
    dtype: str = "auto"
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_keys_file: str = ""
    auth_exempt_services: tuple[str, ...] = AUTH_EXEMPT_DEFAULT
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    metrics_port: int = 0  # 0: no metrics endpoint
    port_file: str = ""  # write the bound port here once listening

    @property
    def address(self) -> str:
        """host:port to bind."""
        return f"{self.host}:{self.port}"


_HELP: dict[str, str] = {
    "host": "address to bind",
    "port": "port to bind (0 picks a free port)",
    "model": "'default' (SmolLM2-135M-Instruct from PyPI), a local HF folder, or a hub id",
    "model_cache_dir": "where the default model is prepared (default $ANANKE_HOME/models)",
    "max_concurrent_requests": "generations running in the engine at once",
    "max_queued_requests": "generations waiting for a slot before RESOURCE_EXHAUSTED",
    "max_tokens_cap": "largest max_tokens a request may ask for",
    "default_max_tokens": "max_tokens when a request leaves it unset",
    "max_model_len": "context length given to the engine (prompt + output tokens)",
    "max_constraint_bytes": "largest constraint text accepted",
    "max_message_bytes": "largest request message accepted",
    "compile_cache_size": "compiled constraint sets kept (LRU)",
    "compile_timeout_s": "longest a constraint compile may take",
    "compile_workers": "threads compiling constraints",
    "shutdown_grace_s": "how long in-flight streams may finish on SIGTERM",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_prompts": "log prompt text (off: only sizes)",
    "log_format": "json (one object per line, with the request id) or text",
    "kv_cache_bytes": "KV cache size for the CPU engine, in bytes",
    "enforce_eager": "skip graph compilation (faster start on CPU)",
    "dtype": "model dtype for the engine (auto, bfloat16, float16, float32)",
    "api_keys": "comma-separated API keys; empty (and no api_keys_file) disables authentication",
    "api_keys_file": "file with one API key per line (# comments), added to api_keys",
    "auth_exempt_services": "comma-separated gRPC services callable without a key",
    "tls_cert_file": "PEM server certificate chain; set with tls_key_file to serve TLS",
    "tls_key_file": "PEM private key of tls_cert_file",
    "tls_client_ca_file": "PEM CA bundle; when set, clients must present a certificate it signed",
    "keepalive_time_s": "seconds between server keepalive pings on idle long streams",
    "keepalive_timeout_s": "seconds to wait for a keepalive ack before closing the connection",
    "metrics_port": "Prometheus metrics HTTP port (0: off)",
    "port_file": "write the bound port to this file once listening (useful with --port 0)",
}


def _fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(Settings))


def _coerce(name: str, raw: Any) -> Any:
    """Turns a raw flag, environment or YAML value into the field's type."""
    default = getattr(Settings(), name)
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, tuple):
        items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
        return tuple(str(item).strip() for item in items if str(item).strip())
    return str(raw)


def _shown(default: Any) -> str:
    if isinstance(default, tuple):
        return repr(",".join(default))
    return repr(default)


def build_parser() -> argparse.ArgumentParser:
    """The `ananke-server` flags; each falls back to ANANKE_<NAME>, then the YAML file."""
    parser = argparse.ArgumentParser(
        prog="ananke-server",
        description="Ananke inference service: constrained generation over gRPC.",
        epilog="Each flag falls back to the environment variable shown, then to the "
        "same key in the --config YAML file, then to the default.",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML file with the same keys (env ANANKE_CONFIG)"
    )
    for f in _fields():
        env = ENV_PREFIX + f.name.upper()
        default = getattr(Settings(), f.name)
        shown = "" if f.name == "api_keys" else f" (default {_shown(default)})"
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(
            flag, dest=f.name, default=None, help=f"{_HELP[f.name]}; env {env}{shown}"
        )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Flags beat environment variables, which beat the YAML file, which beats defaults."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    config_path = args.config or (Path(env["ANANKE_CONFIG"]) if env.get("ANANKE_CONFIG") else None)
    from_file: dict[str, Any] = {}
    if config_path is not None:
        loaded = yaml.safe_load(config_path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_path}: expected a mapping of settings")
        known = {f.name for f in _fields()}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ValueError(f"{config_path}: unknown settings {unknown}")
        from_file = loaded
    values: dict[str, Any] = {}
    for f in _fields():
        env_name = ENV_PREFIX + f.name.upper()
        sources = (
            ("--" + f.name.replace("_", "-"), getattr(args, f.name)),
            (env_name, env.get(env_name)),
            (f"{config_path}: {f.name}", from_file.get(f.name)),
        )
        source, raw = next(
            ((name, value) for name, value in sources if value is not None), ("", None)
        )
        if raw is not None:
            try:
                values[f.name] = _coerce(f.name, raw)
            except ValueError as error:
                raise ValueError(f"{source}: invalid value {raw!r} ({error})") from None
    settings = Settings(**values)
    validate_settings(settings)
    return settings


def validate_settings(settings: Settings) -> None:
    """Rejects settings that cannot work, with a message naming the setting."""
    checks = [
        (0 <= settings.port <= 65535, "port must be 0..65535"),
        (settings.max_concurrent_requests >= 1, "max_concurrent_requests must be >= 1"),
        (settings.max_queued_requests >= 0, "max_queued_requests must be >= 0"),
        (settings.max_tokens_cap >= 1, "max_tokens_cap must be >= 1"),
        (settings.default_max_tokens >= 1, "default_max_tokens must be >= 1"),
        (settings.max_model_len >= 16, "max_model_len must be >= 16"),
        (settings.compile_cache_size >= 0, "compile_cache_size must be >= 0"),
        (settings.compile_timeout_s > 0, "compile_timeout_s must be > 0"),
        (settings.compile_workers >= 1, "compile_workers must be >= 1"),
        (settings.shutdown_grace_s >= 0, "shutdown_grace_s must be >= 0"),
        (
            settings.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"},
            "log_level must be DEBUG, INFO, WARNING or ERROR",
        ),
        (settings.log_format in {"json", "text"}, "log_format must be json or text"),
        (
            bool(settings.tls_cert_file) == bool(settings.tls_key_file),
            "tls_cert_file and tls_key_file must be set together",
        ),
        (
            not settings.tls_client_ca_file or bool(settings.tls_cert_file),
            "tls_client_ca_file needs tls_cert_file and tls_key_file",
        ),
        (settings.keepalive_time_s > 0, "keepalive_time_s must be > 0"),
        (settings.keepalive_timeout_s > 0, "keepalive_timeout_s must be > 0"),
        (0 <= settings.metrics_port <= 65535, "metrics_port must be 0..65535"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
