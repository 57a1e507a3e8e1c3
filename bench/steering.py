"""Share of constrained outputs that end INCOMPLETE (cut by max_tokens), with
and without budget-aware completion, on the bench's JSON workloads (workload.py:
`json` and `json_long`, their 16 chat prompts and schemas), at a few max_tokens
budgets.

Two servers (steering on, and --steer-budget false), the
same requests (sampled, fixed seeds) to both. Prints a markdown table and
writes JSON. Run under the engine lock:

    flock /tmp/ananke-engine.lock .venv/bin/python bench/steering.py \\
        --cells json:48,json:96,json_long:160 --rounds 1 --json /tmp/steering.json
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
from workload import BY_NAME, TASKS, Workload

INCOMPLETE = "CHECK_VERDICT_INCOMPLETE"


def _request(
    workload: Workload, index: int, max_tokens: int, seed: int
) -> inference_service_pb2.GenerateRequest:
    schema = json.dumps(workload.schema(index))
    request = generation_pb2.GenerationRequest(
        constraints=[c.ConstraintIR(json_schema=c.JsonSchemaConstraint(schema=schema))],
        sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=seed),
    )
    for role, content in workload.messages(index):
        request.messages.append(
            generation_pb2.ChatMessage(
                role=generation_pb2.ChatRole.Value("CHAT_ROLE_" + role.upper()), content=content
            )
        )
    return inference_service_pb2.GenerateRequest(request=request)


def _run(
    address: str, workload: Workload, max_tokens: int, rounds: int, streams: int
) -> dict[str, Any]:
    """Outcome counts of len(TASKS) * rounds requests at one budget."""
    counts: dict[str, int] = {}
    tokens = 0
    with grpc.insecure_channel(address) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)

        def one(job: tuple[int, int]) -> str:
            nonlocal tokens
            index, seed = job
            try:
                response = stub.Generate(_request(workload, index, max_tokens, seed), timeout=600)
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
        "workload": workload.name,
        "max_tokens": max_tokens,
        "requests": total,
        "counts": counts,
        "incomplete_share": counts.get(INCOMPLETE, 0) / total if total else 0.0,
        "tokens": tokens,
        "seconds": seconds,
    }


def run_steering(cells: tuple[tuple[str, int], ...], rounds: int, streams: int) -> dict[str, Any]:
    """Both servers, one after the other, the same requests in every (workload, max_tokens)."""
    sides = {
        "steering": [],
        "off": ["--steer-budget", "false"],
    }
    results: dict[str, Any] = {
        "settings": {"cells": [list(c) for c in cells], "rounds": rounds, "streams": streams}
    }
    for side, extra in sides.items():
        log(f"steering: starting the {side} server")
        handle = wait_grpc_serving(
            launch_grpc(Path(tempfile.mkdtemp(prefix=f"ananke-steer-{side}-")), extra)
        )
        try:
            results[side] = [
                _run(handle.address, BY_NAME[name], budget, rounds, streams)
                for name, budget in cells
            ]
        finally:
            stop(handle)
    return results


def steering_table(results: dict[str, Any]) -> list[str]:
    """Markdown rows: the INCOMPLETE share at each budget, steering on and off."""
    lines = [
        "| workload | max_tokens | requests | INCOMPLETE, steering on | INCOMPLETE, off "
        "| outcomes on | outcomes off |",
        "|---|---|---|---|---|---|---|",
    ]
    for on, off in zip(results["steering"], results["off"], strict=True):
        lines.append(
            f"| {on['workload']} | {on['max_tokens']} | {on['requests']} "
            f"| {on['incomplete_share']:.1%} "
            f"| {off['incomplete_share']:.1%} | {_counts(on)} | {_counts(off)} |"
        )
    return lines


def _counts(row: dict[str, Any]) -> str:
    names = {k.removeprefix("CHECK_VERDICT_"): v for k, v in sorted(row["counts"].items())}
    return ", ".join(f"{k} {v}" for k, v in names.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cells", default="json:48,json:96,json_long:160", help="workload:max_tokens, ..."
    )
    parser.add_argument("--rounds", type=int, default=1, help="passes over the 16 prompts")
    parser.add_argument("--streams", type=int, default=8, help="concurrent requests")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args(argv)
    cells = tuple(
        (name, int(budget)) for name, budget in (c.split(":") for c in args.cells.split(",") if c)
    )
    results = run_steering(cells, args.rounds, args.streams)
    print()
    print("\n".join(steering_table(results)))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
