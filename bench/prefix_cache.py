"""Prefix caching: a repeated long prompt (Maze sending the same file
context again) against the real server, first call vs repeats, and n
candidates in one call vs n separate calls. Prints a markdown table of
time to first token, prefill work saved (cached prompt tokens) and total
time; medians of --rounds.

    flock /tmp/ananke-engine.lock .venv/bin/python bench/prefix_cache.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from ananke.v1 import generation_pb2, inference_service_pb2, inference_service_pb2_grpc
from common import fmt, log, median
from servers import launch_grpc, stop, wait_grpc_serving


def _context(lines: int) -> str:
    """A file context of `lines` small functions, unique per call site."""
    body = "".join(
        f"def helper_{i}(x):\n    return x * {i} + {i * 7 % 13}\n\n" for i in range(lines)
    )
    return f"# {uuid.uuid4()}\n{body}def main():\n"


def _stream(
    stub: inference_service_pb2_grpc.InferenceServiceStub, prompt: str, n: int, max_tokens: int
) -> tuple[float, float, int, int]:
    """(time to first token, total seconds, prompt tokens, cached prompt tokens)."""
    request = generation_pb2.GenerationRequest(
        prompt=prompt, sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, n=n)
    )
    started = time.perf_counter()
    first = 0.0
    prompt_tokens = cached = 0
    for event in stub.GenerateStream(
        inference_service_pb2.GenerateStreamRequest(request=request), timeout=600
    ):
        kind = event.WhichOneof("event")
        if kind == "chunk" and not first:
            first = time.perf_counter() - started
        elif kind == "finished" and event.finished.candidate_index == 0:
            prompt_tokens = event.finished.usage.prompt_tokens
            cached = event.finished.usage.cached_prompt_tokens
    return first, time.perf_counter() - started, prompt_tokens, cached


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lines", type=int, default=60, help="functions in the context")
    parser.add_argument("--n", type=int, default=4, help="candidates for the n comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ananke-prefix-") as tmp:
        handle = wait_grpc_serving(launch_grpc(Path(tmp)))
        try:
            with grpc.insecure_channel(handle.address) as channel:
                stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
                rows: dict[str, list[tuple[float, float, int, int]]] = {
                    "first call": [],
                    "repeat": [],
                    f"n={args.n} in one call": [],
                    f"{args.n} separate calls": [],
                }
                for round_ in range(args.rounds):
                    log(f"round {round_ + 1}/{args.rounds}")
                    prompt = _context(args.lines)
                    rows["first call"].append(_stream(stub, prompt, 1, 8))
                    rows["repeat"].append(_stream(stub, prompt, 1, 8))
                    fresh = _context(args.lines)
                    rows[f"n={args.n} in one call"].append(_stream(stub, fresh, args.n, 8))
                    other = _context(args.lines)
                    calls = [_stream(stub, other, 1, 8) for _ in range(args.n)]
                    rows[f"{args.n} separate calls"].append(
                        (
                            calls[0][0],
                            sum(c[1] for c in calls),
                            calls[0][2],
                            sum(c[3] for c in calls),
                        )
                    )
        finally:
            stop(handle)
    print(f"\nPrefix caching, {args.rounds} rounds (medians), SmolLM2-135M on this machine\n")
    print("| case | prompt tokens | cached prompt tokens | TTFT ms | total ms |")
    print("|---|---|---|---|---|")
    for name, samples in rows.items():
        print(
            f"| {name} | {int(median(s[2] for s in samples))} "
            f"| {int(median(s[3] for s in samples))} "
            f"| {fmt(median(s[0] for s in samples) * 1000)} "
            f"| {fmt(median(s[1] for s in samples) * 1000)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
