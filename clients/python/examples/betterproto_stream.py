"""Stream a generation with the betterproto2 dataclass stubs.

    pip install './clients/python[betterproto]'
    python examples/betterproto_stream.py --regex '[A-Z][a-z]+' 'A name: '
    python examples/betterproto_stream.py --async 'def add(a, b):'

betterproto2 0.10 generates `ananke_betterproto.ananke.v1.InferenceServiceStub`
for a blocking grpcio channel (its methods take only the message: no deadline
or metadata). asyncio callers use `ananke.betterproto_aio.AsyncInferenceServiceStub`
over a `grpc.aio` channel, which takes the same dataclasses plus a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import betterproto2
import grpc
from ananke.betterproto_aio import AsyncInferenceServiceStub
from ananke_betterproto.ananke import v1


def build_request(prompt: str, pattern: str | None, max_tokens: int) -> v1.GenerateStreamRequest:
    """A GenerateStreamRequest, optionally constrained by a regex."""
    constraints = [v1.ConstraintIr(name="regex", regex=v1.RegexConstraint(pattern=pattern))]
    return v1.GenerateStreamRequest(
        request=v1.GenerationRequest(
            prompt=prompt,
            constraints=constraints if pattern else [],
            sampling=v1.SamplingParams(max_tokens=max_tokens, temperature=0.0),
        )
    )


def show(event: v1.GenerateStreamResponse) -> None:
    """Print one stream event: tokens to stdout, the rest to stderr."""
    kind, value = betterproto2.which_one_of(event, "event")
    if kind == "started":
        print(f"[started {value.request_id} on {value.model_id}]", file=sys.stderr)
    elif kind == "chunk":
        print(value.text, end="", flush=True)
    elif kind == "finished":
        print()
        reason = value.finish_reason.name
        verdict = value.provenance.check.verdict.name
        print(f"[{reason}, {value.usage.completion_tokens} tokens, {verdict}]", file=sys.stderr)


def stream_blocking(address: str, request: v1.GenerateStreamRequest) -> None:
    """The generated stub over a blocking grpcio channel."""
    with grpc.insecure_channel(address) as channel:
        stub = v1.InferenceServiceStub(channel)
        for event in stub.generate_stream(request):
            show(event)


async def stream_async(address: str, request: v1.GenerateStreamRequest, deadline: float) -> None:
    """The asyncio stub over a grpc.aio channel, with a deadline."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = AsyncInferenceServiceStub(channel)
        async for event in stub.generate_stream(request, timeout=deadline):
            show(event)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prompt")
    parser.add_argument("--address", default="localhost:50051")
    parser.add_argument("--regex", help="constrain the output to this regex")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline (--async)")
    parser.add_argument("--async", dest="use_async", action="store_true", help="use grpc.aio")
    args = parser.parse_args(argv)
    request = build_request(args.prompt, args.regex, args.max_tokens)
    try:
        if args.use_async:
            asyncio.run(stream_async(args.address, request, args.timeout))
        else:
            stream_blocking(args.address, request)
    except grpc.RpcError as exc:
        from ananke.errors import from_rpc_error

        print(f"error: {from_rpc_error(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
