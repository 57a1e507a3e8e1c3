"""Fast checks of the hardening pieces without an engine: API-key checks and
key loading, JSON/text log formats with the request id and without prompt
text, metrics recording, TLS settings validation."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from ananke_server.auth import ApiKeys, load_api_keys
from ananke_server.interceptors import metadata_value
from ananke_server.logging_setup import (
    bind_request_id,
    configure_logging,
    prompt_fields,
    request_id_var,
)
from ananke_server.metrics import Metrics
from ananke_server.settings import AUTH_EXEMPT_DEFAULT, Settings, load_settings
from prometheus_client import generate_latest


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        (None, "API_KEY_MISSING"),
        ((), "API_KEY_MISSING"),
        ((("authorization", "  "),), "API_KEY_MISSING"),
        ((("authorization", "Bearer nope"),), "API_KEY_INVALID"),
        ((("authorization", "Token k1"),), "API_KEY_INVALID"),
        ((("authorization", "Bearer k1x"),), "API_KEY_INVALID"),
        ((("authorization", "Bearer k"),), "API_KEY_INVALID"),
        ((("authorization", "Bearer k1"),), None),
        ((("authorization", "bearer k2"),), None),
        ((("authorization", b"Bearer k2"),), None),
    ],
)
def test_api_key_check(metadata: object, reason: str | None) -> None:
    keys = ApiKeys(["k1", "k2"])
    error = keys.check(metadata_value(metadata, "authorization"))  # type: ignore[arg-type]
    assert (error.reason if error else None) == reason
    if error is not None:
        assert "k1" not in error.message
        assert "k2" not in error.message


def test_keys_from_flag_and_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\n\nfile-key\nflag-key\n")
    settings = load_settings(
        ["--api-keys", "flag-key,other", "--api-keys-file", str(keys_file)], {}
    )
    assert load_api_keys(settings) == ("flag-key", "other", "file-key")
    assert "flag-key" not in repr(settings)
    assert load_api_keys(Settings()) == ()


def test_exempt_services_configurable() -> None:
    assert load_settings([], {}).auth_exempt_services == AUTH_EXEMPT_DEFAULT
    env = {"ANANKE_AUTH_EXEMPT_SERVICES": "grpc.health.v1.Health"}
    assert load_settings([], env).auth_exempt_services == ("grpc.health.v1.Health",)
    assert load_settings(["--auth-exempt-services", ""], {}).auth_exempt_services == ()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert-file", "a.pem"], "together"),
        (["--tls-key-file", "a.key"], "together"),
        (["--tls-client-ca-file", "ca.pem"], "tls_client_ca_file"),
        (["--log-format", "xml"], "log_format"),
        (["--keepalive-time-s", "0"], "keepalive_time_s"),
    ],
)
def test_bad_hardening_settings(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings(args, {})


def _log_line(settings: Settings, **extra: object) -> str:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(settings, stream)
        logging.getLogger("ananke.test").info("hello %s", "world", extra=extra)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    return stream.getvalue().strip()


def test_json_log_carries_the_request_id() -> None:
    token = request_id_var.set("")
    try:
        bind_request_id("req-42")
        record = json.loads(_log_line(Settings(), completion_tokens=3))
    finally:
        request_id_var.reset(token)
    assert record["msg"] == "hello world"
    assert record["request_id"] == "req-42"
    assert record["completion_tokens"] == 3
    assert record["level"] == "INFO"
    assert record["logger"] == "ananke.test"


def test_text_log_format() -> None:
    token = request_id_var.set("req-7")
    try:
        line = _log_line(Settings(log_format="text"))
    finally:
        request_id_var.reset(token)
    assert line.endswith("INFO ananke.test: hello world [request_id=req-7]")


def test_prompt_text_only_when_asked() -> None:
    messages = (("user", "secret words"),)
    assert prompt_fields(Settings(), None, messages) == {"prompt_chars": 12}
    assert prompt_fields(Settings(), "abc", ()) == {"prompt_chars": 3}
    shown = prompt_fields(Settings(log_prompts=True), None, messages)
    assert shown["prompt"] == [["user", "secret words"]]


def test_metrics_recording() -> None:
    metrics = Metrics()
    metrics.track_admission(lambda: 3, lambda: 1)
    metrics.track_compile_cache(lambda: (1, 2, 3))
    metrics.record_compile(0.01)
    metrics.record_tokens(5)
    metrics.record_tokens(0)
    metrics.record_latency(0.2, 0.4, 5)
    metrics.record_latency(None, 0.0, 0)
    metrics.record_engine_error("dead")
    text = generate_latest(metrics.registry).decode()
    for line in [
        "ananke_running_generations 3.0",
        "ananke_queued_generations 1.0",
        'ananke_constraint_cache_lookups_total{result="hit"} 1.0',
        'ananke_constraint_cache_lookups_total{result="miss"} 2.0',
        'ananke_constraint_cache_lookups_total{result="disk"} 3.0',
        "ananke_constraint_compile_seconds_count 1.0",
        "ananke_generated_tokens_total 5.0",
        "ananke_time_to_first_token_seconds_count 1.0",
        "ananke_time_per_output_token_seconds_sum 0.1",
        'ananke_engine_errors_total{kind="dead"} 1.0',
    ]:
        assert line in text, line
    # Each server has its own registry: two need not clash.
    Metrics()
