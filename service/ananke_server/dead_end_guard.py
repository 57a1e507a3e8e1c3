"""Dead-end search inside the engine, at sampling time: for a request whose
constraints can dead-end (an intersection, or a grammar with token masks), the
token drawn is one after which a common completion still exists.

Masks alone cannot avoid such dead ends: both grammars allow the token, and only
later do their futures part (`alpha` | `beta_one` AND `alpha_two` | `beta`).
Tokens sampled are never taken back (a client may hold them already), so the
check happens before the draw: the row's candidates, in the order sampling
would draw them (Gumbel top-k: sampling without replacement; logit order under
greedy), are checked one by one with the completion search (steering.Guide
with verification); the first that keeps a completion within max_tokens is
the only token left in the row. That is rejection sampling from the model's
distribution restricted to the tokens that can still finish. When `retries`
candidates fail, the search's completion supplies the token.

The sampler runs in vLLM's worker process, apart from the scheduler's matchers,
so each guarded request keeps a replica of its product here, fed with the
request's committed output tokens. The guard only ever narrows a row to one of
its finite entries (a token the scheduler's mask allows), so a replica that is
out of step cannot break a request: it is detected (its mask must count as
many tokens as the row) and the row is left as it is.

Pure logic (torch, numpy, llguidance; no vLLM): `vllm_plugin` wraps it as a
logits processor."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .request_grammar import RequestGrammar, RequestSpec
from .steering import SteerConfig

log = logging.getLogger("ananke.dead_end_guard")

_GREEDY = 1e-5  # vLLM's threshold: a temperature below it samples greedily


def needs_guard(spec: RequestSpec) -> bool:
    """Whether a request's constraints can dead-end where masking alone does not
    see it (more than one part: grammars AND grammars or token masks)."""
    if not spec.grammars or spec.steer is None or int(spec.steer.get("retries", 0)) <= 0:
        return False
    return len(spec.grammars) > 1 or spec.allowed is not None or bool(spec.forbidden)


@dataclass(frozen=True)
class Sampling:
    """The request's sampling settings the candidate order follows."""

    temperature: float
    top_k: int  # 0 or less: all
    top_p: float
    seed: int | None


class DeadEndGuard:
    """One request's replica product and its token choice."""

    def __init__(
        self,
        spec: RequestSpec,
        tokenizer: Any,
        *,
        max_tokens: int | None,
        output: list[int],
        drafts: int,
        sampling: Sampling,
    ) -> None:
        assert spec.steer is not None
        self.config = SteerConfig(**spec.steer)
        self.grammar = RequestGrammar.from_spec(
            dataclasses.replace(spec, steer=None), tokenizer, max_tokens=max_tokens
        )
        self.output = output  # the worker's live list of committed output tokens
        self.drafts = drafts  # most drafts a step may carry (0: no fast-forward)
        self.sampling = sampling
        self.broken = bool(self.grammar.error())
        self.synced = 0
        self.chosen = 0  # rows narrowed to a checked token
        self.skipped = 0  # rows left alone (replica out of step)
        self._generator = torch.Generator()
        if sampling.seed is not None:
            self._generator.manual_seed(int(sampling.seed))
        else:
            self._generator.seed()
        if not self.broken:
            self.grammar.steer(self.config, tokenizer, spec.grammars, verify=True)

    def _sync(self) -> bool:
        """Takes the output tokens committed since the last call."""
        while not self.broken and self.synced < len(self.output):
            if self.grammar.is_terminated() or not self.grammar.accept_tokens(
                [int(self.output[self.synced])]
            ):
                self.broken = True
            self.synced += 1
        return not self.broken and self.grammar.guide is not None

    def narrow(self, row: torch.Tensor) -> None:
        """Leaves only the chosen token finite in `row` (one request's logits,
        already masked by the scheduler); leaves the row when it has one
        candidate or less, or when the replica is out of step."""
        if not self._sync() or self.grammar.is_terminated():
            return
        finite = torch.isfinite(row)
        count = int(finite.sum())
        if count <= 1:
            return
        # A step with drafts samples this row after the forced run (the state
        # whose mask has more than one token); without drafts, here.
        forced = self.grammar.forced_tokens(self.drafts) if self.drafts else []
        for run in [forced, []] if forced else [[]]:
            if run and not self.grammar.accept_tokens(run):
                self.grammar.rollback(self.grammar.num_generated - self.synced)
                continue
            try:
                if self._allowed_count() == count:
                    assert self.grammar.guide is not None
                    token = self.grammar.guide.choose(self.candidates(row, count))
                    if token is not None and bool(finite[token]):
                        kept = row[token].clone()
                        row.fill_(float("-inf"))
                        row[token] = kept
                        self.chosen += 1
                        return
                    break
            finally:
                self._rollback(run)
        self.skipped += 1

    def _rollback(self, run: list[int]) -> None:
        """Undoes a forced run taken for the check, keeping the completion found
        after it (prefixed with the run, it is a completion from here too)."""
        if not run:
            return
        guide = self.grammar.guide
        plan = None if guide is None or guide.plan is None else list(guide.plan)
        self.grammar.rollback(len(run))
        if guide is not None and plan is not None:
            guide.plan = [*run, *plan]

    def _allowed_count(self) -> int:
        guide = self.grammar.guide
        assert guide is not None
        mask = guide.mask()
        if mask is None:
            return 0
        return int(np.unpackbits(mask.view(np.uint8)).sum())

    def candidates(self, row: torch.Tensor, count: int) -> list[int]:
        """The row's tokens (`count` of them finite) in the order sampling would
        draw them (at most `retries`, and never one outside top-k / top-p)."""
        limit = max(1, self.config.retries)
        logits = row.to(torch.float32)
        sampling = self.sampling
        if sampling.temperature < _GREEDY:
            order = torch.topk(logits, min(limit, count)).indices
            return [int(t) for t in order]
        scaled = logits / sampling.temperature
        scaled = _top_k_top_p(scaled, sampling.top_k, sampling.top_p)
        kept = int(torch.isfinite(scaled).sum())
        gumbel = -torch.log(-torch.log(torch.rand(scaled.shape, generator=self._generator)))
        order = torch.topk(scaled + gumbel, min(limit, kept)).indices
        return [int(t) for t in order]


def _top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """-inf outside the top-k tokens and outside the nucleus of mass top_p."""
    out = logits.clone()
    vocab = out.shape[-1]
    if 0 < top_k < vocab:
        threshold = torch.topk(out, top_k).values[-1]
        out[out < threshold] = float("-inf")
    if 0.0 < top_p < 1.0:
        ordered, indices = torch.sort(out, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the token crossing top_p
        out[indices[drop]] = float("-inf")
    return out


def guarded_rows(guards: dict[int, DeadEndGuard], logits: torch.Tensor) -> torch.Tensor:
    """Applies every guard to its row of a batch of logits (in place)."""
    for index, guard in guards.items():
        if index < logits.shape[0]:
            row = logits[index]
            on_cpu = row.device.type == "cpu"
            work = row if on_cpu else row.to("cpu")
            guard.narrow(work)
            if not on_cpu:
                row.copy_(work)
    return logits


def spec_of(extra_args: dict[str, Any] | None, grammar_arg: str) -> RequestSpec | None:
    """The request's spec when it needs a guard, else None."""
    args = (extra_args or {}).get(grammar_arg)
    if args is None:
        return None
    try:
        spec = RequestSpec.from_args(args)
    except ValueError:
        return None
    return spec if needs_guard(spec) else None


__all__: Sequence[str] = ("DeadEndGuard", "Sampling", "guarded_rows", "needs_guard", "spec_of")
