"""Constraint compile cost: the project's ConstraintCompiler (cache miss and
cache hit) against llguidance called directly, per MaskBench schema, with the
default model's tokenizer; and the disk cache: a compile that also writes its
entry, and a load of that entry by a compiler with nothing in memory (what a
new process after a restart or a scale to zero does instead of compiling)."""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import Spread, log, percentile
from llguidance import LLMatcher, LLTokenizer, grammar_from
from masking import JSON_DEFAULTS, Case, Tokenizer, load_cases, load_tokenizers

HIT_REPEATS = 20


def _direct(tok: LLTokenizer, schema: Any) -> tuple[float, float] | None:
    """llguidance alone: grammar, validation and a first matcher; (wall ms, CPU ms) or None."""
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS)
        is_error, _ = LLMatcher.validate_grammar_with_warnings(grammar, tok)
        failed = is_error or LLMatcher(tok, grammar, log_level=0).is_error()
    except (ValueError, TypeError, RuntimeError):
        failed = True
    wall1, cpu1 = time.perf_counter(), time.thread_time()
    return None if failed else (1000 * (wall1 - wall0), 1000 * (cpu1 - cpu0))


async def _pass(tokenizer: Tokenizer, cases: list[Case]) -> dict[str, Any]:
    """One pass with a fresh compiler: per-schema miss, hit and direct times."""
    from ananke import constraints as c
    from ananke_server.constraints import ConstraintCompiler
    from ananke_server.errors import ServiceError

    tok = tokenizer.llg
    folder = Path(tempfile.mkdtemp(prefix="ananke-bench-disk-"))

    def make(cache_size: int, disk: bool) -> ConstraintCompiler:
        return ConstraintCompiler(
            tok,
            vocab_size=tok.vocab_size,
            tokenizer_id=tokenizer.name,
            max_constraint_bytes=1 << 22,
            cache_size=cache_size,
            timeout_s=60,
            workers=1,
            disk_cache_dir=folder if disk else None,
            disk_cache_bytes=1 << 30 if disk else 0,
        )

    compiler = make(len(cases) + 1, disk=False)
    writer = make(0, disk=True)  # compiles and writes; keeps nothing in memory
    reader = make(0, disk=True)  # a fresh process's view: memory empty, disk full
    series: dict[str, list[float]] = {
        "miss_ms": [],
        "miss_cpu_ms": [],
        "hit_us": [],
        "matcher_build_ms": [],
        "direct_ms": [],
        "direct_cpu_ms": [],
        "disk_write_ms": [],
        "disk_load_ms": [],
        "disk_load_cpu_ms": [],
    }
    refused = {"project": 0, "direct": 0}
    try:
        for case in cases:
            ir = [c.json_schema(case.schema)]
            wall0, cpu0 = time.perf_counter(), time.process_time()
            try:
                compiled, hit = await compiler.compile(ir, "c")
            except ServiceError:
                compiled, hit = None, False
            wall1, cpu1 = time.perf_counter(), time.process_time()
            miss = (1000 * (wall1 - wall0), 1000 * (cpu1 - cpu0))
            direct = _direct(tok, case.schema)
            refused["project"] += compiled is None
            refused["direct"] += direct is None
            if compiled is None or direct is None or compiled.grammar is None:
                continue  # only schemas both sides accept are timed
            if hit:
                continue
            series["miss_ms"].append(miss[0])
            series["miss_cpu_ms"].append(miss[1])
            series["direct_ms"].append(direct[0])
            series["direct_cpu_ms"].append(direct[1])
            hits = []
            for _ in range(HIT_REPEATS):
                start = time.perf_counter()
                await compiler.compile(ir, "c")
                hits.append(time.perf_counter() - start)
            series["hit_us"].append(1e6 * statistics.median(hits))
            start = time.perf_counter()
            await writer.compile(ir, "c")
            series["disk_write_ms"].append(1000 * (time.perf_counter() - start))
            wall0, cpu0 = time.perf_counter(), time.process_time()
            loaded, _ = await reader.compile(ir, "c")
            wall1, cpu1 = time.perf_counter(), time.process_time()
            if not loaded.from_disk or loaded != compiled:
                raise RuntimeError("the disk entry differs from the compile")
            series["disk_load_ms"].append(1000 * (wall1 - wall0))
            series["disk_load_cpu_ms"].append(1000 * (cpu1 - cpu0))
            # What the engine does per request even on a cache hit: build a matcher.
            start = time.perf_counter()
            LLMatcher(tok, grammar_from("grammar", compiled.grammar), log_level=0)
            series["matcher_build_ms"].append(1000 * (time.perf_counter() - start))
    finally:
        for each in (compiler, writer, reader):
            each.close()
    disk = writer.disk_stats()
    result: dict[str, Any] = {
        "refused": refused,
        "schemas": len(cases),
        # A cold start over every timed schema: compile them all vs load them all.
        "cold_compile_s": sum(series["miss_ms"]) / 1000,
        "cold_disk_load_s": sum(series["disk_load_ms"]) / 1000,
        "disk_bytes": disk.bytes if disk else 0,
    }
    for name, values in series.items():
        result[name] = {
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
            "max": max(values) if values else float("nan"),
            "n": len(values),
        }
    return result


def run_compile(*, stride: int, runs: int) -> dict[str, Any]:
    """Several passes over the schemas; median [min, max] of each pass's p50/p99."""
    cases = []
    seen: set[str] = set()
    for case in load_cases(stride, 0, need_documents=False):
        key = json.dumps(case.schema, sort_keys=True)
        if key not in seen:  # a few MaskBench files share a schema: that would be a cache hit
            seen.add(key)
            cases.append(case)
    (tokenizer,) = load_tokenizers(("smollm2-49k",))
    passes = []
    for index in range(runs):
        started = time.perf_counter()
        passes.append(asyncio.run(_pass(tokenizer, cases)))
        log(f"compile: pass {index + 1}/{runs} ({time.perf_counter() - started:.1f} s)")
    summary: dict[str, Any] = {
        "settings": {"stride": stride, "runs": runs, "schemas": len(cases)},
        "tokenizer": tokenizer.name,
        "refused": passes[0]["refused"],
    }
    for name in (
        "miss_ms",
        "miss_cpu_ms",
        "hit_us",
        "matcher_build_ms",
        "direct_ms",
        "direct_cpu_ms",
        "disk_write_ms",
        "disk_load_ms",
        "disk_load_cpu_ms",
    ):
        summary[name] = {
            stat: Spread.of([p[name][stat] for p in passes]).as_dict()
            for stat in ("p50", "p99", "max")
        }
    for name in ("cold_compile_s", "cold_disk_load_s", "disk_bytes"):
        summary[name] = Spread.of([p[name] for p in passes]).as_dict()
    summary["passes"] = passes
    return summary
