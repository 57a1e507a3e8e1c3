"""The LoRA settings' checks and the startup adapter list (`name=/path`), apart
from settings.py so that it stays small; no vllm import."""

from __future__ import annotations

import re
from typing import Protocol


class LoraSettings(Protocol):
    """The settings read here (settings.Settings; no import: settings imports this)."""

    @property
    def enable_lora(self) -> bool: ...
    @property
    def max_loras(self) -> int: ...
    @property
    def max_lora_rank(self) -> int: ...
    @property
    def lora_adapters(self) -> tuple[str, ...]: ...


# vLLM 0.32's allowed max_lora_rank values (vllm/config/lora.py MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def parse_adapter_specs(specs: tuple[str, ...]) -> list[tuple[str, str]]:
    """(name, path) of each `name=/path` entry; ValueError naming a bad one."""
    parsed: list[tuple[str, str]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not ADAPTER_NAME.fullmatch(name) or not path:
            raise ValueError(f"lora_adapters: {spec!r} is not name=/path/to/adapter")
        if name in {n for n, _ in parsed}:
            raise ValueError(f"lora_adapters: the name {name!r} appears twice")
        parsed.append((name, path))
    return parsed


def lora_checks(settings: LoraSettings) -> list[tuple[bool, str]]:
    """(ok, message) for each LoRA setting."""
    checks = [
        (1 <= settings.max_loras <= 256, "max_loras must be 1..256"),
        (
            settings.max_lora_rank in LORA_RANKS,
            f"max_lora_rank must be one of {', '.join(map(str, LORA_RANKS))} "
            f"(got {settings.max_lora_rank})",
        ),
        (
            settings.enable_lora or not settings.lora_adapters,
            "lora_adapters needs enable_lora",
        ),
    ]
    try:
        specs = parse_adapter_specs(settings.lora_adapters)
        checks.append(
            (
                len(specs) <= settings.max_loras,
                f"lora_adapters lists {len(specs)} adapters, above max_loras "
                f"({settings.max_loras})",
            )
        )
    except ValueError as error:
        checks.append((False, str(error)))
    return checks
