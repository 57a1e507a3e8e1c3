"""Fast-forward on vs off: decode tokens/s of the service's own engine on a JSON
workload with many forced tokens (long fixed keys, enums), two engines side by
side (one started with fast_forward, one without), rounds alternating A B B A,
greedy decoding; prints the forced fraction and whether the outputs agree.

    flock /tmp/ananke-engine.lock .venv/bin/python bench/fast_forward.py \
        [--rounds 4] [--streams 1,4] [--max-tokens 256] [--json results.json]

Decode tokens/s counts the tokens after each stream's first token over the
time from its first to its last token (time to first token excluded); at N
streams the figure is the sum over streams divided by the round's decode wall
time."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import MODEL_NAME, log, median, model_dir, parses_as_json

TASKS = (
    "List the public functions of a Python module that parses CSV files.",
    "List the methods of a Java class implementing a bounded LRU cache.",
    "List the functions of a Rust crate that computes Fibonacci numbers.",
    "List the exported functions of a Go package that reverses slices.",
)
_KIND = {"enum": ["function", "method", "class", "constant", "type_alias"]}
_VISIBILITY = {"enum": ["public_symbol", "private_symbol", "protected_symbol"]}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "module_name": {"type": "string", "maxLength": 30},
        "symbols": {
            "type": "array",
            "minItems": 3,
            "maxItems": 6,
            "items": {
                "type": "object",
                "properties": {
                    "symbol_name": {"type": "string", "maxLength": 24},
                    "symbol_kind": _KIND,
                    "symbol_visibility": _VISIBILITY,
                    "is_documented": {"type": "boolean"},
                    "number_of_parameters": {"type": "integer", "minimum": 0, "maximum": 9},
                },
                "required": [
                    "symbol_name",
                    "symbol_kind",
                    "symbol_visibility",
                    "is_documented",
                    "number_of_parameters",
                ],
                "additionalProperties": False,
            },
        },
    },
    "required": ["module_name", "symbols"],
    "additionalProperties": False,
    "x-guidance": {"whitespace_flexible": False},
}


@dataclass
class Sample:
    tokens: int
    forced: int
    first_s: float  # perf_counter of the first token
    last_s: float
    text: str
    finish: str | None


def _engine(fast_forward: bool, tokens: int, dtype: str) -> Any:
    from ananke_server.engine_config import EngineConfig
    from ananke_server.vllm_engine import VllmEngine

    return VllmEngine(
        EngineConfig(
            str(model_dir()),
            MODEL_NAME,
            max_model_len=2048,
            max_num_seqs=16,
            kv_cache_bytes=256 << 20,
            enforce_eager=True,
            dtype=dtype,
            fast_forward=fast_forward,
            fast_forward_tokens=tokens,
        )
    )


async def _one(engine: Any, prompt: Any, grammar: str, max_tokens: int) -> Sample:
    from ananke_server.engine_api import EngineParams

    params = EngineParams(
        max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0, grammar=grammar
    )
    first = 0.0
    count = 0
    forced = 0
    texts: list[str] = []
    finish = None
    async for delta in engine.generate(uuid.uuid4().hex, prompt, params):
        if delta.token_ids and not first:
            first = time.perf_counter()
        count += len(delta.token_ids)
        texts.append(delta.text)
        if delta.finished:
            forced = delta.forced_tokens
            finish = delta.finish_reason
    return Sample(count, forced, first, time.perf_counter(), "".join(texts), finish)


async def _round(
    engine: Any, prompts: list[Any], grammar: str, streams: int, max_tokens: int
) -> list[Sample]:
    jobs = [prompts[i % len(prompts)] for i in range(max(streams, len(prompts)))]
    samples: list[Sample] = []
    for start in range(0, len(jobs), streams):
        batch = jobs[start : start + streams]
        samples += await asyncio.gather(*(_one(engine, p, grammar, max_tokens) for p in batch))
    return samples


def _decode_rate(samples: list[Sample], streams: int) -> float:
    """Tokens after the first over decode wall time, per batch of `streams`."""
    tokens = 0
    seconds = 0.0
    for start in range(0, len(samples), streams):
        batch = samples[start : start + streams]
        tokens += sum(s.tokens - 1 for s in batch)
        seconds += max(s.last_s for s in batch) - min(s.first_s for s in batch)
    return tokens / seconds if seconds > 0 else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--streams", default="1,4")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=8, help="fast_forward_tokens of engine A")
    parser.add_argument("--dtype", default="auto", help="float32: greedy outputs comparable")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    from llguidance import LLMatcher

    grammar = LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA))
    engines = {
        "ff": _engine(True, args.tokens, args.dtype),
        "noff": _engine(False, args.tokens, args.dtype),
    }
    for name, engine in engines.items():
        log(f"starting engine {name}")
        await engine.start()
    prompts = {
        name: [
            e.encode_chat([("user", f"{t} Reply only with JSON: {json.dumps(SCHEMA)}")])
            for t in TASKS
        ]
        for name, e in engines.items()
    }
    results: dict[str, Any] = {}
    for streams in (int(s) for s in args.streams.split(",")):
        rates: dict[str, list[float]] = {"ff": [], "noff": []}
        kept: dict[str, list[Sample]] = {"ff": [], "noff": []}
        for r in range(args.rounds):
            order = ("ff", "noff") if r % 2 == 0 else ("noff", "ff")
            for name in order:
                samples = await _round(
                    engines[name], prompts[name], grammar, streams, args.max_tokens
                )
                rates[name].append(_decode_rate(samples, streams))
                kept[name] += samples
                log(f"streams={streams} round={r} {name}: {rates[name][-1]:.1f} tok/s")
        tokens = sum(s.tokens for s in kept["ff"])
        forced = sum(s.forced for s in kept["ff"])
        same = sum(a.text == b.text for a, b in zip(kept["ff"], kept["noff"], strict=True))
        valid = sum(parses_as_json(s.text) for s in kept["ff"])
        results[str(streams)] = {
            "decode_tok_s_ff": median(rates["ff"]),
            "decode_tok_s_noff": median(rates["noff"]),
            "speedup": median(rates["ff"]) / median(rates["noff"]),
            "forced_fraction": forced / tokens if tokens else 0.0,
            "identical_outputs": f"{same}/{len(kept['ff'])}",
            "valid_json_ff": f"{valid}/{len(kept['ff'])}",
            "mean_tokens": tokens / max(len(kept["ff"]), 1),
        }
    for engine in engines.values():
        engine.shutdown()
    print(
        "| streams | decode tok/s ff | decode tok/s no-ff | ratio | forced fraction "
        "| identical (greedy) | valid JSON | mean tokens |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for streams, row in results.items():
        print(
            f"| {streams} | {row['decode_tok_s_ff']:.1f} | {row['decode_tok_s_noff']:.1f} "
            f"| {row['speedup']:.2f}x | {row['forced_fraction']:.1%} "
            f"| {row['identical_outputs']} | {row['valid_json_ff']} | {row['mean_tokens']:.0f} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
