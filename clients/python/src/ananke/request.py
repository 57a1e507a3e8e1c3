"""Building `ananke.v1.GenerationRequest` from keyword arguments."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, TypedDict

from ananke.v1 import constraints_pb2, generation_pb2

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11+; the package supports 3.10

__all__ = ["GenerationArgs", "Message", "RoleName", "build_generation_request", "chat_message"]

RoleName = Literal["system", "user", "assistant"]
# A chat message: a proto, or a (role, content) pair such as ("user", "Hi").
Message = generation_pb2.ChatMessage | tuple[RoleName, str]

_ROLES: dict[str, generation_pb2.ChatRole.ValueType] = {
    "system": generation_pb2.CHAT_ROLE_SYSTEM,
    "user": generation_pb2.CHAT_ROLE_USER,
    "assistant": generation_pb2.CHAT_ROLE_ASSISTANT,
}


def chat_message(message: Message) -> generation_pb2.ChatMessage:
    """A ChatMessage proto from a proto or a (role, content) pair."""
    if isinstance(message, generation_pb2.ChatMessage):
        return message
    role, content = message
    if role not in _ROLES:
        raise ValueError(f"chat role must be one of {sorted(_ROLES)}, got {role!r}")
    return generation_pb2.ChatMessage(role=_ROLES[role], content=content)


class GenerationArgs(TypedDict, total=False):
    """The keyword arguments of every generate call (both clients) and of
    `build_generation_request`: one list, so a new option is added once."""

    messages: Sequence[Message] | None
    constraints: constraints_pb2.ConstraintIR | Iterable[constraints_pb2.ConstraintIR]
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    seed: int | None
    stop: str | Iterable[str]
    request_id: str | None
    context: generation_pb2.GenerationContext | None
    metadata: Mapping[str, str] | None
    n: int | None
    min_tokens: int | None
    stop_token_ids: Iterable[int]
    repetition_penalty: float | None
    presence_penalty: float | None
    frequency_penalty: float | None
    logit_bias: Mapping[int, float] | None
    ignore_eos: bool | None
    logprobs: int | None
    prompt_logprobs: int | None
    reasoning: bool | None
    reasoning_max_chars: int | None
    adapter: str | None


# Optional SamplingParams scalars copied as given when not None.
_OPTIONAL_SAMPLING = (
    "n",
    "min_tokens",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "ignore_eos",
    "logprobs",
    "prompt_logprobs",
)


def build_generation_request(
    prompt: str | None = None, **args: Unpack[GenerationArgs]
) -> generation_pb2.GenerationRequest:
    """One generation request: exactly one of `prompt` and `messages`.

    Sampling fields left as None take the server's defaults (see
    generation.proto SamplingParams for each range). `n` asks for several
    candidates; `logprobs` (0 to the server's max_logprobs) returns each
    output token's log probability with that many alternatives. `adapter`
    names a LoRA adapter loaded on the server (None or "": the base model).
    """
    unknown = set(args) - set(GenerationArgs.__annotations__)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
    messages = args.get("messages")
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of prompt and messages")
    constraints = args.get("constraints", ())
    if isinstance(constraints, constraints_pb2.ConstraintIR):
        constraints = [constraints]
    stop = args.get("stop", ())
    if isinstance(stop, str):
        stop = [stop]
    request = generation_pb2.GenerationRequest(request_id=args.get("request_id") or "")
    if prompt is not None:
        request.prompt = prompt
    else:
        assert messages is not None
        request.messages.extend(chat_message(m) for m in messages)
    request.constraints.extend(constraints)
    sampling = request.sampling
    if (max_tokens := args.get("max_tokens")) is not None:
        sampling.max_tokens = max_tokens
    if (temperature := args.get("temperature")) is not None:
        sampling.temperature = temperature
    if (top_p := args.get("top_p")) is not None:
        sampling.top_p = top_p
    if (top_k := args.get("top_k")) is not None:
        sampling.top_k = top_k
    if (seed := args.get("seed")) is not None:
        sampling.seed = seed
    sampling.stop.extend(stop)
    for name in _OPTIONAL_SAMPLING:
        if (value := args.get(name)) is not None:
            setattr(sampling, name, value)
    sampling.stop_token_ids.extend(args.get("stop_token_ids", ()))
    if logit_bias := args.get("logit_bias"):
        sampling.logit_bias.update(logit_bias)
    if not sampling.ListFields():
        request.ClearField("sampling")
    if (context := args.get("context")) is not None:
        request.context.CopyFrom(context)
    if metadata := args.get("metadata"):
        request.metadata.update(metadata)
    if (reasoning := args.get("reasoning")) is not None:
        request.reasoning = reasoning
    if (reasoning_max_chars := args.get("reasoning_max_chars")) is not None:
        request.reasoning_max_chars = reasoning_max_chars
    if adapter := args.get("adapter"):
        request.adapter = adapter
    return request
