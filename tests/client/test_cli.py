"""The `ananke` command: output and exit codes, against the fake service."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from ananke.cli import main


def run(address: str, *argv: str, stdin: str = "", env: dict[str, str] | None = None):
    out, err = io.StringIO(), io.StringIO()
    env = {"ANANKE_ADDR": address} if env is None else env
    code = main(list(argv), env=env, stdout=out, stderr=err, stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


def test_generate_streams_text(fake_server) -> None:
    code, out, err = run(fake_server.address, "generate", "def f(")
    assert code == 0
    assert out == "Hello"
    assert "end_of_sequence" in err
    req = fake_server.fake.calls_to("GenerateStream")[0].request.request
    assert req.prompt == "def f("
    assert not req.constraints


def test_generate_with_constraints_and_sampling(fake_server, tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object"}')
    grammar = tmp_path / "g.gbnf"
    grammar.write_text('root ::= "a"')
    code, _, _ = run(
        fake_server.address,
        "generate",
        "p",
        "--json-schema",
        str(schema),
        "--regex",
        "[a-z]+",
        "--grammar",
        str(grammar),
        "--choice",
        "yes",
        "--choice",
        "no",
        "--max-tokens",
        "16",
        "--temperature",
        "0.5",
        "--seed",
        "3",
        "-q",
    )
    assert code == 0
    req = fake_server.fake.calls_to("GenerateStream")[0].request.request
    kinds = [ir.WhichOneof("kind") for ir in req.constraints]
    assert kinds == ["json_schema", "regex", "grammar", "choice"]
    assert req.constraints[0].json_schema.schema == '{"type": "object"}'
    assert req.constraints[2].grammar.syntax == 2  # GBNF, detected from ::=
    assert list(req.constraints[3].choice.options) == ["yes", "no"]
    assert (req.sampling.max_tokens, req.sampling.seed) == (16, 3)
    assert req.sampling.temperature == pytest.approx(0.5)


def test_gbnf_flag_and_lark_default(fake_server, tmp_path: Path) -> None:
    grammar = tmp_path / "g.lark"
    grammar.write_text('start: "a"')
    assert run(fake_server.address, "generate", "p", "--grammar", str(grammar), "-q")[0] == 0
    assert run(fake_server.address, "generate", "p", "--grammar", str(grammar), "--gbnf")[0] == 0
    calls = fake_server.fake.calls_to("GenerateStream")
    assert [c.request.request.constraints[0].grammar.syntax for c in calls] == [1, 2]


def test_generate_chat(fake_server) -> None:
    code, _, _ = run(fake_server.address, "generate", "Hi", "--chat", "--system", "Be brief")
    assert code == 0
    req = fake_server.fake.calls_to("GenerateStream")[0].request.request
    assert not req.prompt
    assert [m.content for m in req.messages] == ["Be brief", "Hi"]


def test_prompt_from_stdin(fake_server) -> None:
    assert run(fake_server.address, "generate", "-", "-q", stdin="from stdin")[0] == 0
    assert fake_server.fake.calls_to("GenerateStream")[0].request.request.prompt == "from stdin"


def test_generate_json_output(fake_server) -> None:
    code, out, _ = run(fake_server.address, "generate", "p", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["text"] == "Hello"
    assert data["finish_reason"] == "END_OF_SEQUENCE"
    assert data["usage"]["completion_tokens"] == 5
    assert data["provenance"]["model_id"] == "fake/model"


def test_api_key_from_env_and_flag(fake_server) -> None:
    env = {"ANANKE_ADDR": fake_server.address, "ANANKE_API_KEY": "from-env"}
    assert run("", "models", env=env)[0] == 0
    assert run("", "models", "--api-key", "from-flag", env=env)[0] == 0
    keys = [c.metadata["authorization"] for c in fake_server.fake.calls]
    assert keys == ["Bearer from-env", "Bearer from-flag"]


@pytest.mark.parametrize(
    ("code", "reason", "exit_code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "JSON_SCHEMA_INVALID", 3),
        (grpc.StatusCode.UNAVAILABLE, "NOT_READY", 4),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", 4),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "GENERATION_DEADLINE_EXCEEDED", 5),
        (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING", 6),
        (grpc.StatusCode.PERMISSION_DENIED, "", 6),
        (grpc.StatusCode.INTERNAL, "INTERNAL_ERROR", 1),
        (grpc.StatusCode.FAILED_PRECONDITION, "CONSTRAINT_UNSATISFIABLE", 1),
    ],
)
def test_exit_codes(fake_server, code: grpc.StatusCode, reason: str, exit_code: int) -> None:
    fake_server.fake.fail_next(
        "GenerateStream",
        code,
        reason,
        "nope",
        times=4,
        violations=(("request.constraints[0]", "bad"),),
    )
    status, out, err = run(fake_server.address, "generate", "p", "--no-retry")
    assert status == exit_code
    assert out == ""
    assert f"{code.name} {reason}".strip() in err
    assert "request.constraints[0]: bad" in err


def test_unreachable_server_exits_4(dead_address: str) -> None:
    status, _, err = run(dead_address, "health", "--no-retry", "--timeout", "5")
    assert status == 4
    assert "UNAVAILABLE" in err


def test_deadline_exits_5(fake_server) -> None:
    fake_server.fake.stream_hang_after = 0
    assert run(fake_server.address, "generate", "p", "--timeout", "0.3")[0] == 5


def test_usage_errors_exit_2(fake_server, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        run(fake_server.address)
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        run(fake_server.address, "generate", "p", "--max-tokens", "many")
    assert info.value.code == 2
    missing = str(tmp_path / "missing.json")
    status, _, err = run(fake_server.address, "generate", "p", "--json-schema", missing)
    assert status == 2
    assert "cannot read" in err
    assert run(fake_server.address, "generate", "p", "--gbnf")[0] == 2
    assert run(fake_server.address, "generate", "p", "--seed", "-1")[0] == 2
    assert not fake_server.fake.calls


def test_validate(fake_server, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"type": "string"}')
    bad = tmp_path / "bad.json"
    bad.write_text("nope")
    status, out, _ = run(fake_server.address, "validate", str(good))
    assert status == 0
    assert out.startswith("ok ")
    status, out, _ = run(fake_server.address, "validate", str(good), str(bad))
    assert status == 3
    assert "JSON_SCHEMA_INVALID at 1:1" in out
    status, out, _ = run(fake_server.address, "validate", str(bad), "--json")
    assert status == 3
    assert json.loads(out)["ok"] is False


def test_validate_kinds(fake_server, tmp_path: Path) -> None:
    pattern = tmp_path / "p.regex"
    pattern.write_text("[0-9]+\n")
    assert run(fake_server.address, "validate", "--kind", "regex", str(pattern))[0] == 0
    sent = fake_server.fake.calls_to("ValidateConstraints")[0].request.constraints[0]
    assert sent.regex.pattern == "[0-9]+"
    assert run(fake_server.address, "validate", "--kind", "gbnf", "-", stdin='root ::= "a"')[0] == 0
    sent = fake_server.fake.calls_to("ValidateConstraints")[1].request.constraints[0]
    assert sent.grammar.syntax == 2


def test_health(fake_server) -> None:
    assert run(fake_server.address, "health") == (0, "SERVING\n", "")
    fake_server.fake.set_health(False)
    assert run(fake_server.address, "health") == (4, "NOT_SERVING\n", "")


def test_models(fake_server) -> None:
    status, out, _ = run(fake_server.address, "models")
    assert status == 0
    assert "fake/model" in out
    assert "regex" in out
    assert "tensor parallel 2, bfloat16, quantization fp8" in out
    status, out, _ = run(fake_server.address, "models", "--json")
    assert json.loads(out)["vocab_size"] == 100
    assert json.loads(out)["engine_settings"]["tensor_parallel_size"] == 2


def test_stats(fake_server) -> None:
    status, out, _ = run(fake_server.address, "stats")
    assert status == 0
    assert json.loads(out)["active_generations"] == 1


def test_module_entry_point_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ananke.cli", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "exit codes" in proc.stdout
    assert "6  authentication failed" in proc.stdout
