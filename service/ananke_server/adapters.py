"""LoRA adapters: the registry of loaded adapters (name -> engine id, folder,
config), the checks of a folder before the engine sees it, and the count of
running generations per adapter (an adapter in use is not unloaded). No vllm
import: the engine loads and drops adapters behind the Engine protocol."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ananke.v1 import inference_service_pb2

from .engine_api import Engine, LoraAdapter, model_revision
from .errors import EngineRejectedError, ServiceError, invalid
from .lora_settings import ADAPTER_NAME, parse_adapter_specs
from .settings import Settings

log = logging.getLogger("ananke.adapters")

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class LoadedAdapter:
    """A loaded adapter: what the engine uses and what ListAdapters reports."""

    engine: LoraAdapter
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model: str
    revision: str

    def to_proto(self) -> inference_service_pb2.AdapterInfo:
        """The AdapterInfo message."""
        return inference_service_pb2.AdapterInfo(
            name=self.engine.name,
            path=self.engine.path,
            rank=self.rank,
            alpha=self.alpha,
            target_modules=self.target_modules,
            base_model=self.base_model,
            revision=self.revision,
        )


def _disabled() -> ServiceError:
    return ServiceError(
        "LORA_DISABLED", "this server was started without LoRA (start it with --enable-lora)"
    )


def _bad(message: str, field_path: str, **metadata: str) -> ServiceError:
    return invalid("ADAPTER_INVALID", message, field_path, **metadata)


def inspect_folder(path: str, max_rank: int, field_path: str) -> dict[str, Any]:
    """The adapter_config.json of a local PEFT LoRA folder, after the checks
    the engine would otherwise fail later (or less clearly) on."""
    folder = Path(path)
    if not folder.is_absolute():
        raise _bad(f"the adapter path must be an absolute local folder (got {path!r})", field_path)
    if not folder.is_dir():
        raise _bad(f"{path} is not a folder on the server", field_path)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise _bad(f"{path} has no adapter_config.json (not a PEFT adapter folder)", field_path)
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise _bad(f"{config_file} is not valid JSON: {error}", field_path) from error
    if not isinstance(config, dict):
        raise _bad(f"{config_file} is not a JSON object", field_path)
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise _bad(f"the adapter is {peft_type}, not LoRA", field_path, peft_type=peft_type)
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise _bad(f"{config_file} has no positive integer rank 'r'", field_path)
    if rank > max_rank:
        raise _bad(
            f"the adapter's rank {rank} is above this server's max_lora_rank {max_rank}",
            field_path,
            rank=str(rank),
            limit=str(max_rank),
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise _bad(f"{path} has none of {', '.join(WEIGHT_FILES)}", field_path)
    return config


class Adapters:
    """The loaded adapters of one server; loads and unloads one at a time."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.enabled = settings.enable_lora
        self.max_adapters = settings.max_loras
        self.max_rank = settings.max_lora_rank
        self._preload = settings.lora_adapters
        self._engine = engine
        self._loaded: dict[str, LoadedAdapter] = {}
        self._running: dict[str, int] = {}
        self._next_id = 1
        self._lock = asyncio.Lock()

    def listed(self) -> list[LoadedAdapter]:
        """The loaded adapters, in load order."""
        return list(self._loaded.values())

    def resolve(self, name: str, field_path: str) -> LoadedAdapter | None:
        """The adapter a request names; None for the base model (empty name)."""
        if not name:
            return None
        if not self.enabled:
            raise _disabled()
        found = self._loaded.get(name)
        if found is None:
            raise ServiceError(
                "ADAPTER_NOT_FOUND",
                f"no LoRA adapter named {name!r} is loaded (see ListAdapters)",
                metadata={"field": field_path, "adapter": name},
            )
        return found

    @asynccontextmanager
    async def using(self, adapter: LoadedAdapter | None) -> AsyncIterator[None]:
        """Counts a generation with `adapter` as running while inside."""
        if adapter is None:
            yield
            return
        name = adapter.engine.name
        if self._loaded.get(name) is not adapter:  # unloaded while the call waited
            raise ServiceError(
                "ADAPTER_NOT_FOUND",
                f"the LoRA adapter {name!r} was unloaded",
                metadata={"field": "request.adapter", "adapter": name},
            )
        self._running[name] = self._running.get(name, 0) + 1
        try:
            yield
        finally:
            self._running[name] -= 1

    async def load(self, name: str, path: str) -> LoadedAdapter:
        """Checks and loads an adapter under `name`."""
        if not self.enabled:
            raise _disabled()
        if not ADAPTER_NAME.fullmatch(name):
            raise _bad(
                "the adapter name must be 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
                "name",
            )
        async with self._lock:
            if name in self._loaded:
                raise ServiceError(
                    "ADAPTER_EXISTS",
                    f"an adapter named {name!r} is loaded already (unload it first)",
                    metadata={"adapter": name},
                )
            if len(self._loaded) >= self.max_adapters:
                raise ServiceError(
                    "ADAPTER_LIMIT_REACHED",
                    f"{self.max_adapters} adapters are loaded, this server's max_loras; "
                    "unload one first",
                    metadata={"limit": str(self.max_adapters)},
                )
            config = await asyncio.to_thread(inspect_folder, path, self.max_rank, "path")
            revision = await asyncio.to_thread(model_revision, path)
            engine_adapter = LoraAdapter(name, self._next_id, str(Path(path)))
            self._next_id += 1
            try:
                await self._engine.load_adapter(engine_adapter)
            except EngineRejectedError as error:
                raise _bad(f"the engine refused the adapter: {error}", "path") from error
            targets = config.get("target_modules") or ()
            loaded = LoadedAdapter(
                engine=engine_adapter,
                rank=int(config["r"]),
                alpha=float(config.get("lora_alpha") or 0.0),
                target_modules=(targets,) if isinstance(targets, str) else tuple(map(str, targets)),
                base_model=str(config.get("base_model_name_or_path") or ""),
                revision=revision,
            )
            self._loaded[name] = loaded
            log.info("LoRA adapter loaded", extra={"adapter": name, "path": path})
            return loaded

    async def unload(self, name: str) -> LoadedAdapter:
        """Unloads an adapter no generation is using."""
        if not self.enabled:
            raise _disabled()
        async with self._lock:
            found = self.resolve(name, "name")
            assert found is not None
            running = self._running.get(name, 0)
            if running:
                raise ServiceError(
                    "ADAPTER_IN_USE",
                    f"{running} generations with the adapter {name!r} are running; "
                    "unload it once they finished",
                    metadata={"adapter": name, "running": str(running)},
                )
            del self._loaded[name]
            self._running.pop(name, None)
            await self._engine.unload_adapter(found.engine)
            log.info("LoRA adapter unloaded", extra={"adapter": name})
            return found

    async def preload(self) -> None:
        """Loads the adapters the settings list (a failure stops the start)."""
        for name, path in parse_adapter_specs(self._preload):
            try:
                await self.load(name, path)
            except ServiceError as error:
                raise RuntimeError(f"lora_adapters: {name}={path}: {error.message}") from error
