"""vLLM general plugin (entry point `vllm.general_plugins: ananke`): puts each
Ananke request's constraints into vLLM's structured-output path as one
`RequestGrammar` and fast-forwards the grammar's forced tokens as speculative
drafts. vLLM loads it in every process it starts (front end, EngineCore,
workers); only the EngineCore's scheduler uses what it patches.

Extension point: speculative decoding. `ForcedTokenProposer` (method
"custom_class") proposes k placeholder drafts per request; the scheduler filters
drafts through `StructuredOutputManager.validate_tokens`, which this plugin
answers for Ananke requests with the grammar's forced run (at most k tokens,
computed after the step's sampled token was accepted). vLLM then masks every
draft position with the grammar, verifies the drafts in one forward pass and
rolls back what it rejects; a forced token is the only one the mask allows, so
it is always accepted. Requests without an Ananke grammar get no drafts.

Patched (vLLM 0.32.0 only; any other version is left alone, logged, and the
engine falls back to one step per token and its logits-processor path):
`StructuredOutputManager._create_grammar` (a request whose
`SamplingParams.extra_args` carries GRAMMAR_ARG gets a RequestGrammar; vLLM's
own grammar compiler handles every other request) and
`StructuredOutputManager.validate_tokens`; on the CPU platform also
`rejection_sampler.expand_batch_to_tokens` (see `expand_batch_to_tokens`).

logit_bias with fast-forward: vLLM refuses logit_bias (and min_p) whenever
speculative decoding is on, because its rejection sampler does not apply them
at draft positions. With our proposer every draft is a forced token, the only
one its position's mask allows, so a bias cannot change what is sampled there
(and a drafted token's logprob is reported as 0.0 anyway): the bias matters
only for the one token each request samples per step, which vLLM's ordinary
sampler draws with its logits processors. So with our proposer the plugin
lets logit_bias through `SamplingParams._validate_spec_decode` (min_p stays
refused) and builds the model runner's logits processors with the logit-bias
processor beside min-tokens (`build_logitsprocs` in the GPU/CPU model runner).

Dead-end search: the same `build_logitsprocs` adds, last, a processor that runs
each guarded request's `dead_end_guard.DeadEndGuard` (intersections and
grammars with token masks: the token drawn keeps a common completion)."""

from __future__ import annotations

import logging
from typing import Any

from .request_grammar import GRAMMAR_ARG, RequestGrammar, RequestSpec

log = logging.getLogger("ananke.vllm_plugin")

PINNED_VLLM = "0.32.0"
PROPOSER_FQCN = "ananke_server.vllm_plugin.ForcedTokenProposer"
# Key of the finished request's kv_transfer_params that carries where budget
# steering began (see `_patch_finished_report`).
STEERING_REPORT = "ananke_steered_from"
_PATCHED = "_ananke_patched"


def vllm_version() -> str:
    """The installed vLLM version (without a local suffix such as +cpu)."""
    import vllm

    return str(getattr(vllm, "__version__", "unknown")).split("+", 1)[0]


def supported() -> bool:
    """Whether this plugin patches the installed vLLM."""
    try:
        return vllm_version() == PINNED_VLLM
    except ImportError:
        return False


def register() -> None:
    """vLLM's plugin hook; idempotent (vLLM may call it more than once per process)."""
    if not supported():
        log.warning(
            "ananke vLLM plugin: vLLM %s is not the pinned %s; not patching "
            "(no fast-forward, constraints use the logits-processor path)",
            vllm_version(),
            PINNED_VLLM,
        )
        return
    from vllm.v1.structured_output import StructuredOutputManager

    if getattr(StructuredOutputManager, _PATCHED, False):
        return
    original_create = StructuredOutputManager._create_grammar
    original_validate = StructuredOutputManager.validate_tokens

    def _create_grammar(self: Any, request: Any) -> Any:
        params = request.sampling_params
        args = (params.extra_args or {}).get(GRAMMAR_ARG) if params is not None else None
        if args is None:
            return original_create(self, request)
        spec = RequestSpec.from_args(args)
        grammar = RequestGrammar.from_spec(
            spec, self.backend.ll_tokenizer, max_tokens=params.max_tokens, limits=_limits()
        )
        error = grammar.error()
        if error:
            raise ValueError(f"constraint failed to build in the engine: {error}")
        return _adapter_class()(grammar)

    def validate_tokens(self: Any, request: Any, spec_tokens: list[int]) -> list[int]:
        structured = request.structured_output_request if request.use_structured_output else None
        grammar = structured.grammar if structured is not None else None
        inner = getattr(grammar, "ananke", None)
        if isinstance(inner, RequestGrammar):
            return inner.forced_tokens(sum(1 for t in spec_tokens if t >= 0))
        if _ours(self.vllm_config):
            return []  # our proposer's placeholders are never real drafts
        return list(original_validate(self, request, spec_tokens))

    StructuredOutputManager._create_grammar = _create_grammar
    StructuredOutputManager.validate_tokens = validate_tokens
    setattr(StructuredOutputManager, _PATCHED, True)
    _patch_cpu_expand()
    _patch_logits_processors()
    _patch_finished_report()
    log.debug("ananke vLLM plugin: structured-output manager patched")


def expand_batch_to_tokens(
    x: Any, cu_num_tokens: Any, num_tokens: int, replace_from: int = 0, replace_to: int = 0
) -> Any:
    """vLLM's per-request -> per-draft-token expansion (temperature, top-k, top-p
    of each draft position), in plain torch.

    vLLM 0.32's CPU kernel for it writes into an int64 copy of its output, so on
    CPU a float tensor (temperature, top-p) comes back as uninitialised memory:
    a draft position of a sampled request then gets a garbage temperature, and
    when it is 0 or negative every logit turns -inf/NaN, the forced draft is
    rejected and the "recovered" token is 0 (the scheduler then reports
    "grammar rejected tokens [0]" and the request ends in error)."""
    import torch

    counts = torch.diff(cu_num_tokens, prepend=cu_num_tokens.new_zeros(1)).to(torch.long)
    values = torch.where(x == replace_from, torch.full_like(x, replace_to), x)
    return values.repeat_interleave(counts, output_size=num_tokens)


def _patch_cpu_expand() -> None:
    from vllm.platforms import current_platform
    from vllm.v1.sample import rejection_sampler

    if current_platform.is_cpu():
        rejection_sampler.expand_batch_to_tokens = expand_batch_to_tokens


def _patch_logits_processors() -> None:
    from vllm import sampling_params
    from vllm.v1.sample.logits_processor import LogitsProcessors, builtin
    from vllm.v1.worker import gpu_model_runner

    original_validate = sampling_params.SamplingParams._validate_spec_decode
    original_build = gpu_model_runner.build_logitsprocs

    def _validate_spec_decode(self: Any, speculative_config: Any) -> None:
        if _proposer_is_ours(speculative_config) and self.logit_bias and self.min_p <= 1e-6:
            return
        original_validate(self, speculative_config)

    def build_logitsprocs(
        vllm_config: Any,
        device: Any,
        is_pin_memory: bool,
        is_pooling_model: bool,
        custom_logitsprocs: Any = (),
    ) -> Any:
        built = original_build(
            vllm_config, device, is_pin_memory, is_pooling_model, custom_logitsprocs
        )
        if is_pooling_model or custom_logitsprocs:
            return built
        kept = [*built.argmax_invariant, *built.non_argmax_invariant]
        if _ours(vllm_config) and not any(
            isinstance(p, builtin.LogitBiasLogitsProcessor) for p in kept
        ):
            kept.append(builtin.LogitBiasLogitsProcessor(vllm_config, device, is_pin_memory))
        # Last: it picks among the logits every other processor has shaped.
        kept.append(_guard_class()(vllm_config, device, is_pin_memory))
        return LogitsProcessors(kept)

    sampling_params.SamplingParams._validate_spec_decode = _validate_spec_decode
    gpu_model_runner.build_logitsprocs = build_logitsprocs


def steering_report(request: Any) -> dict[str, Any] | None:
    """{STEERING_REPORT: the output index where the engine's budget steering
    began, or None when it never did} for a finished Ananke request whose
    grammar steers; None for any other request."""
    structured = getattr(request, "structured_output_request", None)
    grammar = structured.grammar if structured is not None else None
    inner = getattr(grammar, "ananke", None)
    if (
        not isinstance(inner, RequestGrammar)
        or inner.guide is None
        or not inner.guide.config.budget
    ):
        return None
    return {STEERING_REPORT: inner.guide.steered_from}


def _patch_finished_report() -> None:
    """The scheduler frees a finished request and hands its final output the
    KV connector's transfer parameters, which vLLM passes, untouched, to the
    front end's RequestOutput. Without a connector they are None; there the
    plugin puts its steering report, so that the front end need not replay the
    budget decisions over the whole output for provenance (with a connector the
    front end still replays)."""
    from vllm.v1.core.sched.scheduler import Scheduler

    original = Scheduler._free_request
    if getattr(original, _PATCHED, False):
        return

    def _free_request(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        kv_params, ec_params = original(self, request, *args, **kwargs)
        if kv_params is None:
            try:
                kv_params = steering_report(request)
            except Exception:  # a report must never fail the scheduler
                log.exception("ananke vLLM plugin: steering report failed")
        return kv_params, ec_params

    setattr(_free_request, _PATCHED, True)
    Scheduler._free_request = _free_request


def _proposer_is_ours(speculative_config: Any) -> bool:
    return getattr(speculative_config, "model", None) == PROPOSER_FQCN


def _ours(vllm_config: Any) -> bool:
    spec = getattr(vllm_config, "speculative_config", None)
    return spec is not None and _proposer_is_ours(spec)


_LIMITS: list[Any] = []


def _limits() -> Any:
    if not _LIMITS:
        from llguidance import LLParserLimits

        _LIMITS.append(LLParserLimits(verbose_errors=False))
    return _LIMITS[0]


_ADAPTER: list[type] = []


def _adapter_class() -> type:
    """vLLM's StructuredOutputGrammar over a RequestGrammar (defined on first use,
    so importing this module does not import vLLM)."""
    if _ADAPTER:
        return _ADAPTER[0]
    from vllm.v1.structured_output.backend_types import StructuredOutputGrammar

    class AnankeGrammar(StructuredOutputGrammar):  # type: ignore[misc]
        """Delegates to `self.ananke`; bitmasks are CPU int32 tensors, filled
        through a numpy view of the same memory."""

        def __init__(self, grammar: RequestGrammar) -> None:
            self.ananke = grammar

        def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
            return self.ananke.accept_tokens(tokens)

        def validate_tokens(self, tokens: list[int]) -> list[int]:
            return self.ananke.validate_tokens(tokens)

        def rollback(self, num_tokens: int) -> None:
            self.ananke.rollback(num_tokens)

        def fill_bitmask(self, bitmask: Any, idx: int) -> None:
            self.ananke.fill_bitmask(bitmask.numpy(), idx)

        def is_terminated(self) -> bool:
            return self.ananke.is_terminated()

        def reset(self) -> None:
            self.ananke.rollback(self.ananke.num_generated)

    AnankeGrammar.__module__ = __name__
    _ADAPTER.append(AnankeGrammar)
    return AnankeGrammar


_GUARD: list[type] = []


def _guard_class() -> type:
    """vLLM's logits processor over the requests' DeadEndGuards (defined on first use)."""
    if _GUARD:
        return _GUARD[0]
    from vllm.v1.sample.logits_processor import LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates

    from .dead_end_guard import DeadEndGuard, Sampling, guarded_rows, spec_of

    class DeadEndGuardProcessor(LogitsProcessor):  # type: ignore[misc]
        """Runs in the worker: one DeadEndGuard per request that needs one.
        Never raises into the engine: a guard that fails is dropped, and its
        request goes on with the scheduler's mask alone."""

        def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
            self.vllm_config = vllm_config
            spec: Any = getattr(vllm_config, "speculative_config", None)
            self.drafts = int(spec.num_speculative_tokens) if _ours(vllm_config) else 0
            self.guards: dict[int, DeadEndGuard] = {}
            self._tokenizer: Any = None

        def is_argmax_invariant(self) -> bool:
            return False

        def _ll_tokenizer(self) -> Any:
            if self._tokenizer is None:
                from vllm.tokenizers import cached_tokenizer_from_config
                from vllm.v1.structured_output.backend_guidance import GuidanceBackend

                model_config = self.vllm_config.model_config
                self._tokenizer = GuidanceBackend._build_ll_tokenizer(
                    cached_tokenizer_from_config(model_config=model_config),
                    model_config.get_vocab_size(),
                )
            return self._tokenizer

        def _new(self, params: Any, _prompt: Any, output: list[int]) -> DeadEndGuard | None:
            spec = spec_of(params.extra_args, GRAMMAR_ARG)
            if spec is None:
                return None
            try:
                return DeadEndGuard(
                    spec,
                    self._ll_tokenizer(),
                    max_tokens=params.max_tokens,
                    output=output,
                    drafts=self.drafts,
                    sampling=Sampling(
                        temperature=float(params.temperature),
                        top_k=int(params.top_k or 0),
                        top_p=float(params.top_p),
                        seed=params.seed,
                    ),
                )
            except Exception:  # a guard is an optimisation of the outcome, never a failure
                log.exception("ananke dead-end guard: could not build a request's replica")
                return None

        def update_state(self, batch_update: Any) -> None:
            process_dict_updates(self.guards, batch_update, self._new)

        def apply(self, logits: Any) -> Any:
            if not self.guards:
                return logits
            try:
                return guarded_rows(self.guards, logits)
            except Exception:
                log.exception("ananke dead-end guard failed; guards dropped")
                self.guards.clear()
                return logits

    DeadEndGuardProcessor.__module__ = __name__
    _GUARD.append(DeadEndGuardProcessor)
    return DeadEndGuardProcessor


class ForcedTokenProposer:
    """The speculative-decoding proposer (method "custom_class"): k placeholder
    drafts per decoding request; the scheduler's validate_tokens (patched above)
    turns them into the grammar's forced tokens or drops them."""

    def __init__(self, vllm_config: Any) -> None:
        self.k = int(vllm_config.speculative_config.num_speculative_tokens)

    def load_model(self, model: Any) -> None:
        """No draft model."""

    def propose(self, sampled_token_ids: list[Any], *args: Any, **kwargs: Any) -> list[list[int]]:
        """One placeholder run per request that sampled a token this step."""
        return [[0] * self.k if len(ids) else [] for ids in sampled_token_ids]
