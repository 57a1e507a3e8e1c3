"""End to end: the client and CLI against a server running the real model.

Needs the session fixture `live_server` (tests/conftest.py) with `.address`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
from ananke import AnankeClient, AnankeError, AsyncAnankeClient, TokenChunk
from ananke import constraints as c

pytestmark = pytest.mark.engine

TIMEOUT = 300.0
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def _api_key(live_server: Any) -> str | None:
    key = getattr(live_server, "api_key", None)
    return str(key) if key else None


@pytest.fixture(scope="module")
def client(live_server: Any) -> Any:
    with AnankeClient(live_server.address, api_key=_api_key(live_server), timeout=TIMEOUT) as c:
        yield c


def _cli(live_server: Any, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANANKE_ADDR=live_server.address)
    if key := _api_key(live_server):
        env["ANANKE_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "ananke.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=TIMEOUT + 60,
    )


def test_health_and_model_info(client: AnankeClient) -> None:
    assert client.health() == "SERVING"
    info = client.model_info()
    assert info.model_id
    assert info.vocab_size > 0
    assert info.context_length > 0


def test_json_schema_generation_validates(client: AnankeClient) -> None:
    result = client.generate(
        "Describe a person as JSON with a name and an age.\n",
        constraints=[c.json_schema(PERSON, name="person")],
        max_tokens=96,
        seed=1,
    )
    assert result.finish_reason_name != "MAX_TOKENS", result.text
    jsonschema.validate(result.json(), PERSON)
    assert result.check_verdict == "SATISFIED"
    assert result.provenance.constraints.digest
    assert result.usage.completion_tokens >= len(result.token_ids) > 0


def test_regex_generation_full_matches(client: AnankeClient) -> None:
    pattern = r"[0-9]{3}-[0-9]{4}"
    result = client.generate("Call me at ", constraints=c.regex(pattern), max_tokens=24, seed=2)
    assert re.fullmatch(pattern, result.text), result.text


def test_stream_matches_schema(client: AnankeClient) -> None:
    stream = client.generate_stream(
        "A person as JSON: ", constraints=c.json_schema(PERSON), max_tokens=96, seed=3
    )
    texts = [e.text for e in stream if isinstance(e, TokenChunk)]
    result = stream.result
    assert "".join(texts) == result.text
    jsonschema.validate(json.loads(result.text), PERSON)


def test_bad_schema_is_json_schema_invalid(client: AnankeClient) -> None:
    with pytest.raises(AnankeError) as info:
        client.generate("x", constraints=c.json_schema('{"type": "object", "properties": '))
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.reason == "JSON_SCHEMA_INVALID"


def test_validate_constraints_verdicts(client: AnankeClient) -> None:
    response = client.validate_constraints([c.json_schema(PERSON), c.regex("(unclosed")])
    assert not response.ok
    assert [v.ok for v in response.verdicts] == [True, False]
    assert response.verdicts[1].error.reason == "REGEX_INVALID"


def test_cancelled_stream_then_follow_up_call(client: AnankeClient) -> None:
    stream = client.generate_stream("Once upon a time", max_tokens=256, seed=4)
    first = next(e for e in stream if isinstance(e, TokenChunk))
    assert first.token_ids
    stream.close()
    result = client.generate("Hello", max_tokens=4, seed=5)
    assert result.usage.completion_tokens >= 1


async def test_async_stream_cancel_and_generate(live_server: Any) -> None:
    async with AsyncAnankeClient(
        live_server.address, api_key=_api_key(live_server), timeout=TIMEOUT
    ) as client:
        async with client.generate_stream("Once upon a time", max_tokens=256) as stream:
            async for event in stream:
                if isinstance(event, TokenChunk):
                    break
        result = await client.generate("2 + 2 =", constraints=c.choice(["4", "5"]))
        assert result.text in {"4", "5"}


def test_cli_generate_json_schema(live_server: Any, tmp_path: Path) -> None:
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    common = ["--json-schema", str(schema), "--max-tokens", "96", "--seed", "1"]
    proc = _cli(live_server, "generate", "A person as JSON: ", *common, "--timeout", str(TIMEOUT))
    assert proc.returncode == 0, proc.stderr
    jsonschema.validate(json.loads(proc.stdout), PERSON)
    proc = _cli(live_server, "generate", "A person as JSON: ", *common, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    jsonschema.validate(json.loads(data["text"]), PERSON)
    assert data["finish_reason"] in {"END_OF_SEQUENCE", "CONSTRAINT_COMPLETE"}
    assert data["usage"]["completion_tokens"] > 0
    assert data["provenance"]["model_id"]


def test_cli_validate_broken_schema_exits_3(live_server: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "object", "properties": ')
    proc = _cli(live_server, "validate", str(broken))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "JSON_SCHEMA_INVALID" in proc.stdout
    good = tmp_path / "good.json"
    good.write_text(json.dumps(PERSON))
    assert _cli(live_server, "validate", str(good)).returncode == 0


def test_betterproto_example_streams(live_server: Any) -> None:
    pytest.importorskip("betterproto2")
    example = Path(__file__).parents[2] / "clients/python/examples/betterproto_stream.py"
    command = [sys.executable, str(example), "--address", live_server.address]
    for mode in ([], ["--async"]):
        proc = subprocess.run(
            [*command, "--regex", "[0-9]{4}", *mode, "The year was "],
            capture_output=True,
            text=True,
            check=False,
            timeout=TIMEOUT,
        )
        assert proc.returncode == 0, proc.stderr
        assert re.fullmatch("[0-9]{4}", proc.stdout.strip()), proc.stdout


def test_candidates_logprobs_and_tokenize(client: AnankeClient) -> None:
    """n candidates with logprobs through the sync client, stream and unary,
    and Tokenize counting what generate sends."""
    prompt = "A person as JSON: "
    args: dict[str, Any] = {
        "constraints": [c.json_schema(PERSON, name="person")],
        "max_tokens": 48,
        "n": 2,
        "temperature": 0.8,
        "seed": 3,
        "logprobs": 2,
    }
    result = client.generate(prompt, **args)
    assert [x.index for x in result.candidates] == [0, 1]
    for candidate in result.candidates:
        assert len(candidate.logprobs) == len(candidate.token_ids)
        assert candidate.logprob_sum <= 0.0
        assert candidate.check_verdict in ("SATISFIED", "INCOMPLETE")
    assert result.text == result.candidates[0].text
    assert all(v.check_verdict == "SATISFIED" for v in result.valid_candidates())
    with client.generate_stream(prompt, **args) as stream:
        streamed = stream.collect()
    # Texts are not compared: with fast-forward on (the default) multi-token
    # steps draw randomness differently, so a seed does not replay exactly.
    assert [x.index for x in streamed.candidates] == [0, 1]
    for candidate in streamed.candidates:
        assert len(candidate.logprobs) == len(candidate.token_ids)
        assert candidate.logprob_sum <= 0.0
    assert len(stream.finals) == 2

    tokens = client.tokenize(prompt, return_tokens=True)
    assert result.usage.prompt_tokens == tokens.count
    assert client.detokenize(tokens.token_ids) == prompt
    chat = client.tokenize(messages=[("user", "hi")])
    assert "hi" in chat.rendered_text


async def test_async_tokenize_and_sampling_controls(live_server: Any) -> None:
    async with AsyncAnankeClient(
        live_server.address, api_key=_api_key(live_server), timeout=TIMEOUT
    ) as aclient:
        tokens = await aclient.tokenize("def main():")
        assert tokens.count == len(tokens.token_ids) > 0
        assert await aclient.detokenize(tokens.token_ids) == "def main():"
        assert (await aclient.model_info()).max_candidates >= 2
        result = await aclient.generate(
            "def main():",
            max_tokens=6,
            ignore_eos=True,
            prompt_logprobs=1,
        )
        assert result.usage.completion_tokens == 6
        assert result.finish_reason_name == "MAX_TOKENS"
        assert [p.token.token_id for p in result.prompt_logprobs] == list(tokens.token_ids[1:])
        stream = aclient.generate_stream("def main():", max_tokens=4, n=2, temperature=1.0)
        streamed = await stream.collect()
        assert len(streamed.candidates) == 2


def test_cli_tokenize_and_candidates(live_server: Any) -> None:
    ids = _cli(live_server, "tokenize", "def main():")
    assert ids.returncode == 0, ids.stderr
    numbers = [int(t) for t in ids.stdout.split()]
    assert numbers
    back = _cli(live_server, "detokenize", *map(str, numbers))
    assert back.returncode == 0, back.stderr
    assert back.stdout == "def main():\n"
    shown = _cli(live_server, "tokenize", "--tokens", "def main():")
    assert shown.stdout.strip().endswith(f"{len(numbers)} tokens")
    run = _cli(
        live_server,
        "generate",
        "--n",
        "2",
        "--temperature",
        "1",
        "--max-tokens",
        "8",
        "--logprobs",
        "1",
        "--json",
        "def main():",
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert [c["index"] for c in data["candidates"]] == [0, 1]
    assert len(data["logprobs"]) == len(data["token_ids"])
    text = _cli(
        live_server,
        "generate",
        "--n",
        "2",
        "--temperature",
        "1",
        "--max-tokens",
        "4",
        "def main():",
    )
    assert text.stdout.count("--- candidate") == 2, text.stdout
