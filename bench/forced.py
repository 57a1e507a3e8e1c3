"""The share of output tokens a grammar forces: walk an llguidance matcher of
the grammar this service compiles over real outputs (their token ids), and at
each step ask `compute_ff_tokens` which tokens come next whatever the model
says. A forced run that matches the output counts as forced; everything
else is one sampled token. This is the ceiling of what fast-forward can skip,
measured independently of whether the server fast-forwards."""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

from common import MODEL_NAME, log, model_dir


@cache
def _tokenizer() -> Any:
    """The llguidance tokenizer built as the server builds it."""
    import llguidance.hf
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(model_dir()))
    return llguidance.hf.from_tokenizer(hf, len(hf))


def _grammar(schema: dict[str, Any]) -> str:
    """The Lark text `ConstraintCompiler` hands the engine for this schema."""
    from ananke import constraints as c
    from ananke_server.constraints import ConstraintCompiler

    tokenizer = _tokenizer()
    compiler = ConstraintCompiler(
        tokenizer,
        vocab_size=tokenizer.vocab_size,
        tokenizer_id=MODEL_NAME,
        max_constraint_bytes=1 << 20,
        cache_size=4,
        timeout_s=60,
        workers=1,
    )
    try:
        compiled, _ = asyncio.run(compiler.compile([c.json_schema(schema)], "c"))
    finally:
        compiler.close()
    assert compiled.grammar is not None
    return compiled.grammar


def walk(grammar: str, token_ids: list[int]) -> dict[str, int]:
    """Counts forced and sampled tokens of one output; stops where the output
    leaves the grammar (EOS and anything after the grammar accepts)."""
    from llguidance import LLMatcher

    matcher = LLMatcher(_tokenizer(), grammar, log_level=0)
    forced = sampled = runs = mismatches = 0
    longest = 0
    i = 0
    while i < len(token_ids) and not matcher.is_stopped():
        run = matcher.compute_ff_tokens()
        if run and token_ids[i : i + len(run)] == run:
            if not matcher.consume_tokens(run):
                break
            forced += len(run)
            runs += 1
            longest = max(longest, len(run))
            i += len(run)
            continue
        if run:
            mismatches += 1  # the output took another tokenization of the forced text
        if not matcher.consume_token(token_ids[i]):
            break
        sampled += 1
        i += 1
    return {
        "forced": forced,
        "sampled": sampled,
        "runs": runs,
        "longest": longest,
        "mismatches": mismatches,
        "unwalked": len(token_ids) - i,
    }


def measure(workload: Any, samples: list[tuple[str, Any]]) -> dict[str, Any]:
    """Forced share over every output of a workload (`samples` are (system,
    StreamSample) with token ids), in aggregate and per output; plus the share
    the server reported as forced, per system, where it reports it."""
    grammars: dict[int, str] = {}
    totals = {"forced": 0, "sampled": 0, "runs": 0, "longest": 0, "mismatches": 0, "unwalked": 0}
    shares: list[float] = []
    reported: dict[str, list[int]] = {}
    outputs = 0
    for system, sample in samples:
        if not sample.token_ids:
            continue
        which = sample.prompt % len(workload.schemas)
        if which not in grammars:
            grammars[which] = _grammar(workload.schema(sample.prompt))
        counts = walk(grammars[which], sample.token_ids)
        for key in ("forced", "sampled", "runs", "mismatches", "unwalked"):
            totals[key] += counts[key]
        totals["longest"] = max(totals["longest"], counts["longest"])
        walked = counts["forced"] + counts["sampled"]
        if walked:
            shares.append(counts["forced"] / walked)
        outputs += 1
        if sample.forced_reported is not None:
            got = reported.setdefault(system, [0, 0])
            got[0] += sample.forced_reported
            got[1] += sample.tokens
    walked = totals["forced"] + totals["sampled"]
    shares.sort()
    result = {
        "outputs": outputs,
        **totals,
        "share": totals["forced"] / walked if walked else float("nan"),
        "median_share": shares[len(shares) // 2] if shares else float("nan"),
        "mean_run": totals["forced"] / totals["runs"] if totals["runs"] else 0.0,
        # Tokens per model step if every forced token rides along with a sampled one.
        "step_ceiling": walked / max(1, totals["sampled"]) if walked else 1.0,
        "reported_share": {s: f / max(1, n) for s, (f, n) in reported.items()},
    }
    log(
        f"forced: {workload.name}: {result['share']:.1%} of {walked} tokens forced "
        f"(median {result['median_share']:.1%}, runs of {result['mean_run']:.1f})"
    )
    return result
