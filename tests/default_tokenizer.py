"""The default model's real llguidance tokenizer, and grammars compiled on it
with this project's compiler, for tests that run matchers without an engine."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from ananke.v1 import constraints_pb2 as c
from ananke_server.constraints import ConstraintCompiler
from ananke_server.model_prep import prepare_default_model
from llguidance import LLTokenizer


@functools.cache
def default_llg_tokenizer() -> LLTokenizer:
    """Built once per process, as vLLM's guidance backend builds it."""
    from llguidance.hf import from_tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(prepare_default_model()))
    return from_tokenizer(hf, max(hf.vocab_size, len(hf)))


async def compiled_grammars(
    tok: LLTokenizer, constraints: Sequence[c.ConstraintIR]
) -> tuple[str, ...]:
    """The grammars the engine gets for `constraints`: an intersection's, or the one."""
    compiler = ConstraintCompiler(
        tok,
        vocab_size=tok.vocab_size,
        tokenizer_id="smol",
        max_constraint_bytes=1 << 16,
        cache_size=4,
        timeout_s=10.0,
        workers=1,
    )
    try:
        compiled, _ = await compiler.compile(list(constraints), "request.constraints")
    finally:
        compiler.close()
    return compiled.intersection or ((compiled.grammar,) if compiled.grammar else ())
