"""GPU check: runs this service's own logits-facing code on a device's tensors and
compares every result bit for bit with the same code on CPU tensors and with
llguidance's numpy reference kernel.

What it covers (the code of ours that touches logits): applying a token bitmask
to a logits row (`masks.apply_token_bitmask`), forcing the end-of-sequence token
at a dead end (`masks.force_token`), the AND of matchers' masks with allowed and
forbidden token sets, and the engine's per-request product grammar
(`RequestGrammar`, whose masks vLLM applies) over a batch with real llguidance
matchers, decoding greedily for several steps. Needs torch, numpy and
llguidance only: no vLLM, no network, no model weights (a tokenizer.json if
given, else the default model's, else a synthetic byte-level vocabulary).

    python -m ananke_server.gpu_check --device cuda [--tokenizer tokenizer.json] [--json out]

Exit status 0 when every comparison matches, 1 otherwise. `--device cpu` runs the
same comparisons CPU against CPU and the reference (what `make test` runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .masks import apply_token_bitmask, force_token, mask_words
from .request_grammar import RequestGrammar, RequestSpec

DTYPES = ("float32", "bfloat16", "float16")
# (logits width, mask vocabulary): equal, not a multiple of 32, logits wider than the
# mask (vLLM pads the LM head), mask wider than the logits, a 128k vocabulary.
SHAPES = ((4096, 4096), (1000, 1000), (49280, 49152), (1000, 1024), (128256, 128256))
DENSITIES = (0.0, 0.001, 0.5, 1.0)  # 0.0: exactly one allowed token


@dataclass
class CheckResult:
    """One comparison."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    """All comparisons of one run."""

    device: str
    torch: str
    results: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every comparison matched."""
        return bool(self.results) and all(r.ok for r in self.results)


def _bits(tensor: Any) -> Any:
    """The tensor's raw bits, so that -inf, NaN and signed zeros compare exactly."""
    import torch

    views = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return tensor.contiguous().view(views[tensor.element_size()])


def _same_bits(a: Any, b: Any) -> tuple[bool, str]:
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False, f"shape/dtype {tuple(a.shape)} {a.dtype} != {tuple(b.shape)} {b.dtype}"
    differ = _bits(a.cpu()) != _bits(b.cpu())
    count = int(torch.count_nonzero(differ))
    if count:
        first = int(torch.nonzero(differ.flatten())[0])
        return False, f"{count} elements differ (first at flat index {first})"
    return True, ""


def random_mask(rng: np.random.Generator, vocab: int, density: float) -> npt.NDArray[np.int32]:
    """An llguidance-layout bitmask over `vocab` ids (at least one allowed)."""
    words = (vocab + 31) // 32
    allowed = rng.random(vocab) < density
    allowed[int(rng.integers(vocab))] = True
    padded = np.zeros(words * 32, dtype=np.uint8)
    padded[:vocab] = allowed
    return np.packbits(padded, bitorder="little").view(np.int32)


def reference_masked(logits: Any, mask: npt.NDArray[np.int32]) -> Any:
    """llguidance's numpy kernel on a float32 copy, back in the row's dtype."""
    import torch
    from llguidance.numpy import apply_token_bitmask_inplace

    values = logits.detach().cpu().float().numpy().copy()
    apply_token_bitmask_inplace(values, mask.copy())
    return torch.from_numpy(values).to(logits.dtype)


def _logits(rng: np.random.Generator, shape: Sequence[int], dtype: str) -> Any:
    import torch

    values = rng.standard_normal(tuple(shape)).astype(np.float32) * 4
    values.flat[:: max(1, values.size // 7)] = -np.inf  # rows may arrive already masked
    return torch.from_numpy(values).to(getattr(torch, dtype))


def check_mask_application(device: str, seed: int = 0) -> Iterator[CheckResult]:
    """apply_token_bitmask: device == CPU == llguidance reference, every dtype and shape."""
    rng = np.random.default_rng(seed)
    for dtype in DTYPES:
        for width, vocab in SHAPES:
            for density in DENSITIES:
                name = f"apply_token_bitmask {dtype} width={width} vocab={vocab} p={density}"
                row = _logits(rng, (width,), dtype)
                mask = random_mask(rng, vocab, density)
                on_cpu = row.clone()
                apply_token_bitmask(on_cpu, mask)
                on_device = row.to(device)
                apply_token_bitmask(on_device, mask)
                ok, detail = _same_bits(on_device, on_cpu)
                if ok:
                    ok, detail = _same_bits(on_cpu, reference_masked(row, mask))
                    detail = detail and "CPU vs reference: " + detail
                else:
                    detail = "device vs CPU: " + detail
                yield CheckResult(name, ok, detail)


def check_forced_token(device: str, seed: int = 1) -> Iterator[CheckResult]:
    """force_token (the dead-end EOS): only that token is finite, with logit 0."""
    import torch

    rng = np.random.default_rng(seed)
    for dtype in DTYPES:
        for width, _ in SHAPES:
            token = int(rng.integers(width))
            row = _logits(rng, (width,), dtype)
            on_cpu = row.clone()
            force_token(on_cpu, token)
            on_device = row.to(device)
            force_token(on_device, token)
            expected = torch.full((width,), float("-inf"), dtype=row.dtype)
            expected[token] = 0.0
            ok, detail = _same_bits(on_device, on_cpu)
            if ok:
                ok, detail = _same_bits(on_cpu, expected)
            yield CheckResult(f"force_token {dtype} width={width}", ok, detail)


class _ByteTokenizer:
    """A synthetic vocabulary: the 256 bytes, frequent ASCII pairs, one EOS."""

    def __init__(self, size: int = 2048) -> None:
        pairs = [bytes([a, b]) for a in range(97, 123) for b in range(32, 127)]
        self.tokens: list[bytes] = [bytes([i]) for i in range(256)] + pairs[: size - 257]
        self.eos_token_id = len(self.tokens)
        self.tokens.append(b"</s>")
        self.bos_token_id: int | None = None
        self.special_token_ids = [self.eos_token_id]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)  # byte tokens only: valid, if not shortest


def load_tokenizer(path: str | None) -> tuple[Any, str]:
    """An llguidance LLTokenizer: `path`, else the default model's, else synthetic."""
    from llguidance import LLTokenizer, TokenizerWrapper

    home = Path(os.environ.get("ANANKE_HOME") or Path.home() / ".cache" / "ananke")
    default = home / "models" / "SmolLM2-135M-Instruct" / "tokenizer.json"
    chosen = Path(path) if path else (default if default.is_file() else None)
    if chosen is not None:
        return LLTokenizer(str(chosen)), str(chosen)
    return LLTokenizer(TokenizerWrapper(_ByteTokenizer())), "synthetic byte-level"


# Per row: (grammars, allowed ids or None, forbidden ids); None: not an intersection.
def _rows(tokenizer: Any) -> list[dict[str, Any] | None]:
    letters = "%llguidance {}\nstart: /[a-z ]{1,40}/"
    short = "%llguidance {}\nstart: /[a-m ]{0,12}x?/"
    digits = "%llguidance {}\nstart: /[0-9]+(\\.[0-9]+)?/"
    anything = "%llguidance {}\nstart: /.{0,30}/"
    allowed = tokenizer.tokenize_bytes(b"0123456789.")
    return [
        {"grammars": [letters, short], "allowed": None, "forbidden": tokenizer.tokenize_bytes(b"e")},  # noqa: E501
        {"grammars": [digits, anything], "allowed": sorted(set(allowed)), "forbidden": []},
        None,  # a request without the processor: its row must stay as it is
        {"grammars": ['%llguidance {}\nstart: "abc"', '%llguidance {}\nstart: "xyz"'],
         "allowed": None, "forbidden": []},  # empty intersection: a dead end
    ]  # fmt: skip


def _grammar(tokenizer: Any, spec: dict[str, Any]) -> RequestGrammar:
    allowed = spec["allowed"]
    request = RequestSpec(
        grammars=tuple(spec["grammars"]),
        allowed=None if allowed is None else frozenset(allowed),
        forbidden=frozenset(spec["forbidden"]),
    )
    return RequestGrammar.from_spec(request, tokenizer, max_tokens=None)


def check_intersection_batch(
    device: str, tokenizer: Any, *, steps: int = 12, seed: int = 2
) -> Iterator[CheckResult]:
    """RequestGrammar masks applied to a batch of logits, greedy decoding: masked
    logits, chosen tokens and dead ends match CPU's at every step."""
    import torch

    rng = np.random.default_rng(seed)
    width = ((tokenizer.vocab_size + 63) // 64) * 64  # padded like an LM head
    words = mask_words(tokenizer.vocab_size)
    sides = {"cpu": "cpu", "device": device}
    specs = _rows(tokenizer)
    dead = dict.fromkeys(sides, 0)
    for dtype in ("float32", "bfloat16"):
        grammars = {
            side: [None if s is None else _grammar(tokenizer, s) for s in specs] for side in sides
        }
        for step in range(steps):
            logits = _logits(rng, (len(specs), width), dtype)
            results = {}
            for side, device_name in sides.items():
                batch = logits.clone().to(device_name)
                bitmask = np.zeros((len(specs), words), dtype=np.int32)
                for row, grammar in enumerate(grammars[side]):
                    if grammar is not None:
                        grammar.fill_bitmask(bitmask, row)
                        apply_token_bitmask(batch[row], bitmask[row])
                results[side] = batch.cpu()
            ok, detail = _same_bits(results["device"], results["cpu"])
            if ok and not _same_bits(results["cpu"][2], logits[2])[0]:
                ok, detail = False, "the row without a grammar was changed"
            yield CheckResult(f"intersection {dtype} step {step}", ok, detail)
            chosen = torch.argmax(results["cpu"].float(), dim=1).tolist()
            for side in sides:
                for grammar, token in zip(grammars[side], chosen, strict=True):
                    if grammar is not None and not grammar.is_terminated():
                        grammar.accept_tokens([int(token)])
        for side in sides:
            dead[side] += sum(1 for g in grammars[side] if g is not None and g.dead_end)
    yield CheckResult(
        "intersection dead ends",
        dead["cpu"] == dead["device"] >= 2,  # row 3 at least, once per pass
        f"dead ends {dead}",
    )


def check_masks_are_sound(tokenizer: Any, seed: int = 3) -> Iterator[CheckResult]:
    """The AND of masks (CPU, numpy) against fresh matchers and the token sets: a
    token passes the mask exactly when every matcher and the sets allow it."""
    from llguidance import LLMatcher

    spec = _rows(tokenizer)[0]
    assert spec is not None
    mask = np.zeros((1, mask_words(tokenizer.vocab_size)), dtype=np.int32)
    _grammar(tokenizer, spec).fill_bitmask(mask, 0)
    matchers = [LLMatcher(tokenizer, g, log_level=0) for g in spec["grammars"]]
    forbidden = set(spec["forbidden"])
    rng = np.random.default_rng(seed)
    ids = rng.choice(tokenizer.vocab_size, size=min(400, tokenizer.vocab_size), replace=False)
    wrong = []
    for token in map(int, ids):
        allowed_by_all = token not in forbidden and all(
            m.validate_tokens([token]) == 1 for m in matchers
        )
        in_mask = bool((int(mask[0][token // 32]) >> (token % 32)) & 1)
        if allowed_by_all != in_mask:
            wrong.append(token)
    yield CheckResult("AND of masks vs fresh matchers", not wrong, f"disagree on {wrong[:10]}")


def run_checks(device: str, tokenizer_path: str | None = None) -> Report:
    """Every comparison on `device` (cpu: CPU against CPU and the reference)."""
    import torch

    started = time.monotonic()
    report = Report(device=device, torch=str(torch.__version__))
    tokenizer, source = load_tokenizer(tokenizer_path)
    report.results.append(CheckResult("tokenizer", True, f"{source}, {tokenizer.vocab_size} ids"))
    checks: list[Callable[[], Iterator[CheckResult]]] = [
        lambda: check_mask_application(device),
        lambda: check_forced_token(device),
        lambda: check_masks_are_sound(tokenizer),
        lambda: check_intersection_batch(device, tokenizer),
    ]
    for check in checks:
        report.results.extend(check())
    report.seconds = time.monotonic() - started
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the checks and prints one line per failure and a summary."""
    parser = argparse.ArgumentParser(prog="python -m ananke_server.gpu_check")
    parser.add_argument("--device", default="cuda", help="torch device to compare with CPU")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer.json")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu_check: needs torch (with CUDA for --device cuda)", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available to torch", file=sys.stderr)
        return 2
    quiet = logging.getLogger("ananke")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # forced-EOS warnings are expected
    try:
        report = run_checks(args.device, args.tokenizer)
    finally:
        quiet.setLevel(level)  # main() also runs in-process (tests): leave logging as it was
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report) | {"ok": report.ok}, indent=1))
    for result in report.results:
        if not result.ok:
            print(f"MISMATCH {result.name}: {result.detail}")
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    passed = sum(r.ok for r in report.results)
    print(
        f"gpu_check on {name} (torch {report.torch}): {passed}/{len(report.results)} "
        f"comparisons bit-identical in {report.seconds:.1f} s"
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
