"""Share of constrained outputs that end INCOMPLETE (cut by max_tokens), with
and without budget-aware completion, on the bench's JSON workloads (the 16
chat prompts and 4 schemas of workload.py), at a few max_tokens budgets.

Two servers (steering on, and --steer-budget false), the
same requests (sampled, fixed seeds) to both. Prints a markdown table and
writes JSON. Run under the engine lock:

    flock /tmp/ananke-engine.lock .venv/bin/python bench/steering.py \\
        --max-tokens 48,96 --rounds 2 --json /tmp/steering.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from ananke.v1 import constraints_pb2 as c
from ananke.v1 import (
    generation_pb2,
    inference_service_pb2,
    inference_service_pb2_grpc,
    provenance_pb2,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log
from servers import launch_grpc, stop, wait_grpc_serving
from workload import TASKS, messages_for, schema_for

INCOMPLETE = "CHECK_VERDICT_INCOMPLETE"


def _request(index: int, max_tokens: int, seed: int) -> inference_service_pb2.GenerateRequest:
    schema = json.dumps(schema_for(index))
    request = generation_pb2.GenerationRequest(
        constraints=[c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema=schema))],
        sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=seed),
    )
    for role, content in messages_for(index, constrained=True):
        request.messages.append(
            generation_pb2.ChatMessage(
                role=generation_pb2.ChatRole.Value("CHAT_ROLE_" + role.upper()), content=content
            )
        )
    return inference_service_pb2.GenerateRequest(request=request)


def _run(address: str, max_tokens: int, rounds: int, streams: int) -> dict[str, Any]:
    """Outcome counts of len(TASKS) * rounds requests at one budget."""
    counts: dict[str, int] = {}
    tokens = 0
    with grpc.insecure_channel(address) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)

        def one(job: tuple[int, int]) -> str:
            nonlocal tokens
            index, seed = job
            try:
                response = stub.Generate(_request(index, max_tokens, seed), timeout=600)
            except grpc.RpcError as error:
                return f"error {error.code().name}"  # type: ignore[attr-defined]
            tokens += len(response.token_ids)
            return provenance_pb2.CheckVerdict.Name(response.provenance.check.verdict)

        jobs = [(i, r) for r in range(rounds) for i in range(len(TASKS))]
        started = time.perf_counter()
        with ThreadPoolExecutor(streams) as pool:
            for outcome in pool.map(one, jobs):
                counts[outcome] = counts.get(outcome, 0) + 1
        seconds = time.perf_counter() - started
    total = sum(counts.values())
    return {
        "max_tokens": max_tokens,
        "requests": total,
        "counts": counts,
        "incomplete_share": counts.get(INCOMPLETE, 0) / total if total else 0.0,
        "tokens": tokens,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", default="48,96", help="comma-separated budgets")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the 16 prompts")
    parser.add_argument("--streams", type=int, default=8, help="concurrent requests")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.max_tokens.split(",") if b]
    sides = {
        "steering": [],
        "off": ["--steer-budget", "false"],
    }
    results: dict[str, list[dict[str, Any]]] = {}
    for side, extra in sides.items():
        log(f"starting the {side} server")
        handle = wait_grpc_serving(
            launch_grpc(Path(tempfile.mkdtemp(prefix=f"ananke-steer-{side}-")), extra)
        )
        try:
            results[side] = [
                _run(handle.address, budget, args.rounds, args.streams) for budget in budgets
            ]
        finally:
            stop(handle)
    print("\n| max_tokens | requests | INCOMPLETE, steering on | INCOMPLETE, off |")
    print("|---|---|---|---|")
    for on, off in zip(results["steering"], results["off"], strict=True):
        print(
            f"| {on['max_tokens']} | {on['requests']} | {on['incomplete_share']:.1%} "
            f"| {off['incomplete_share']:.1%} |"
        )
    for side, rows in results.items():
        for row in rows:
            print(f"{side} max_tokens={row['max_tokens']}: {row['counts']}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
