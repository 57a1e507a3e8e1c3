"""Settings: flags beat environment variables, which beat the YAML file, which
beats the defaults; values are coerced to the field types and validated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from ananke_server.settings import Settings, build_parser, load_settings, validate_settings


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ananke.yaml"
    path.write_text(text)
    return path


def test_defaults_without_anything() -> None:
    assert load_settings([], {}) == Settings()


def test_precedence_flag_env_yaml_default(tmp_path: Path) -> None:
    config = write_yaml(
        tmp_path,
        "port: 1111\nmax_tokens_cap: 1000\ncompile_workers: 3\nlog_level: WARNING\n",
    )
    env = {"ANANKE_PORT": "2222", "ANANKE_MAX_TOKENS_CAP": "900"}
    settings = load_settings(["--config", str(config), "--port", "3333"], env)
    assert settings.port == 3333  # flag
    assert settings.max_tokens_cap == 900  # env over YAML
    assert settings.compile_workers == 3  # YAML over default
    assert settings.log_level == "WARNING"
    assert settings.max_concurrent_requests == Settings().max_concurrent_requests  # default


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = write_yaml(tmp_path, "max_queued_requests: 5\n")
    assert load_settings([], {"ANANKE_CONFIG": str(config)}).max_queued_requests == 5
    other = tmp_path / "other.yaml"
    other.write_text("max_queued_requests: 6\n")
    # --config beats ANANKE_CONFIG.
    settings = load_settings(["--config", str(other)], {"ANANKE_CONFIG": str(config)})
    assert settings.max_queued_requests == 6


def test_unknown_yaml_key_rejected(tmp_path: Path) -> None:
    config = write_yaml(tmp_path, "port: 1\nmax_tokenz: 5\n")
    with pytest.raises(ValueError, match="max_tokenz"):
        load_settings(["--config", str(config)], {})


def test_yaml_must_be_a_mapping(tmp_path: Path) -> None:
    config = write_yaml(tmp_path, "- port\n- 1\n")
    with pytest.raises(ValueError, match="mapping"):
        load_settings(["--config", str(config)], {})


def test_empty_yaml_is_defaults(tmp_path: Path) -> None:
    assert load_settings(["--config", str(write_yaml(tmp_path, ""))], {}) == Settings()


def test_unknown_flag_rejected() -> None:
    with pytest.raises(SystemExit):
        load_settings(["--no-such-flag", "1"], {})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("", False),
    ],
)
def test_bool_coercion_from_env(raw: str, expected: bool) -> None:
    assert load_settings([], {"ANANKE_LOG_PROMPTS": raw}).log_prompts is expected


def test_bool_from_yaml_and_flag(tmp_path: Path) -> None:
    config = write_yaml(tmp_path, "enforce_eager: false\nlog_prompts: true\n")
    settings = load_settings(["--config", str(config)], {})
    assert settings.enforce_eager is False
    assert settings.log_prompts is True
    assert load_settings(["--enforce-eager", "no"], {}).enforce_eager is False


def test_bad_bool_rejected() -> None:
    with pytest.raises(ValueError, match="log_prompts"):
        load_settings([], {"ANANKE_LOG_PROMPTS": "maybe"})


def test_tuple_coercion(tmp_path: Path) -> None:
    assert load_settings(["--api-keys", "a, b,,c "], {}).api_keys == ("a", "b", "c")
    assert load_settings([], {"ANANKE_API_KEYS": ""}).api_keys == ()
    config = write_yaml(tmp_path, "api_keys: [k1, ' k2 ', '']\n")
    assert load_settings(["--config", str(config)], {}).api_keys == ("k1", "k2")


def test_numeric_coercion(tmp_path: Path) -> None:
    settings = load_settings(["--compile-timeout-s", "2.5", "--max-model-len", "64"], {})
    assert settings.compile_timeout_s == 2.5
    assert isinstance(settings.max_model_len, int)
    config = write_yaml(tmp_path, "compile_timeout_s: 3\nshutdown_grace_s: 0\n")
    from_yaml = load_settings(["--config", str(config)], {})
    assert from_yaml.compile_timeout_s == 3.0
    assert isinstance(from_yaml.compile_timeout_s, float)
    with pytest.raises(ValueError, match="eighty"):
        load_settings(["--port", "eighty"], {})


def test_api_keys_not_in_repr_or_help() -> None:
    settings = Settings(api_keys=("secret-key",))
    assert "secret-key" not in repr(settings)
    assert "ANANKE_API_KEYS" in build_parser().format_help()


def test_help_names_every_env_var() -> None:
    text = " ".join(build_parser().format_help().split())
    for field in dataclasses.fields(Settings):
        assert "ANANKE_" + field.name.upper() in text
        assert "--" + field.name.replace("_", "-") in text


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]
    assert Settings(host="0.0.0.0", port=7).address == "0.0.0.0:7"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"port": -1}, "port"),
        ({"port": 65536}, "port"),
        ({"max_concurrent_requests": 0}, "max_concurrent_requests"),
        ({"max_queued_requests": -1}, "max_queued_requests"),
        ({"max_tokens_cap": 0}, "max_tokens_cap"),
        ({"default_max_tokens": 0}, "default_max_tokens"),
        ({"max_model_len": 15}, "max_model_len"),
        ({"compile_cache_size": -1}, "compile_cache_size"),
        ({"compile_timeout_s": 0.0}, "compile_timeout_s"),
        ({"compile_workers": 0}, "compile_workers"),
        ({"shutdown_grace_s": -0.5}, "shutdown_grace_s"),
        ({"log_level": "VERBOSE"}, "log_level"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_validate_settings_rejects(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_settings(dataclasses.replace(Settings(), **change))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        {"port": 0},
        {"port": 65535},
        {"max_queued_requests": 0},
        {"max_model_len": 16},
        {"compile_cache_size": 0},
        {"shutdown_grace_s": 0.0},
        {"log_level": "debug"},
    ],
    ids=str,
)
def test_validate_settings_accepts_boundaries(change: dict[str, object]) -> None:
    validate_settings(dataclasses.replace(Settings(), **change))  # type: ignore[arg-type]


def test_load_settings_validates() -> None:
    with pytest.raises(ValueError, match="max_concurrent_requests"):
        load_settings(["--max-concurrent-requests", "0"], {})


def test_load_settings_does_not_read_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANANKE_PORT", "4444")
    assert load_settings([], {}).port == Settings().port
    assert load_settings([]).port == 4444  # None means os.environ


def test_fast_forward_flag_env_and_yaml(tmp_path: Path) -> None:
    """--fast-forward/--no-fast-forward, ANANKE_FAST_FORWARD and the YAML key, flag first."""
    assert load_settings([], environ={}).fast_forward is True
    assert load_settings(["--no-fast-forward"], environ={}).fast_forward is False
    assert load_settings(["--fast-forward"], environ={"ANANKE_FAST_FORWARD": "0"}).fast_forward
    assert not load_settings([], environ={"ANANKE_FAST_FORWARD": "off"}).fast_forward
    config = tmp_path / "c.yaml"
    config.write_text("fast_forward: false\nfast_forward_tokens: 4\n")
    loaded = load_settings(["--config", str(config)], environ={})
    assert (loaded.fast_forward, loaded.fast_forward_tokens) == (False, 4)
    flagged = load_settings(["--config", str(config), "--fast-forward", "yes"], environ={})
    assert flagged.fast_forward
    with pytest.raises(ValueError, match="fast_forward_tokens"):
        load_settings(["--fast-forward-tokens", "0"], environ={})
