"""Settings: ``CHARGEGRID_*`` environment variables over a TOML file over defaults."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from chargegrid.config import (
    DEFAULT_DATABASE_URL,
    RegistrationStatus,
    Settings,
    UnknownChargePointPolicy,
    load_settings,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CHARGEGRID_* from the outside; CHARGEGRID_CONFIG (set by load_settings) restored."""
    for name in list(os.environ):
        if name.startswith("CHARGEGRID_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CHARGEGRID_CONFIG", "")  # so that monkeypatch restores it afterwards
    monkeypatch.delenv("CHARGEGRID_CONFIG")
    yield


def toml(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "chargegrid.toml"
    path.write_text(content, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8180
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.is_sqlite
    assert settings.sqlite_synchronous == "FULL"
    assert settings.commit_interval_ms == 4.0
    assert settings.commit_max_items == 1000
    assert settings.unknown_charge_points is UnknownChargePointPolicy.REJECT
    assert settings.ws_per_message_deflate is False
    assert settings.heartbeat_interval == 300
    assert settings.log_level == "info"
    assert load_settings() == settings


def test_toml_overrides_defaults(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'database_url = "postgresql+asyncpg://u@db/cg"\n'
        "port = 9000\n"
        "heartbeat_interval = 60\n"
        'unknown_charge_points = "pending"\n'
        "ws_per_message_deflate = true\n",
    )
    settings = load_settings(path)
    assert settings.database_url == "postgresql+asyncpg://u@db/cg"
    assert not settings.is_sqlite
    assert settings.port == 9000
    assert settings.heartbeat_interval == 60
    assert settings.unknown_charge_points is UnknownChargePointPolicy.PENDING
    assert settings.ws_per_message_deflate is True
    assert settings.host == "127.0.0.1"  # not in the file: the default


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = toml(tmp_path, "port = 9000\nheartbeat_interval = 60\ncommit_max_items = 10\n")
    monkeypatch.setenv("CHARGEGRID_PORT", "9100")
    monkeypatch.setenv("CHARGEGRID_HEARTBEAT_INTERVAL", "120")
    settings = load_settings(path)
    assert settings.port == 9100
    assert settings.heartbeat_interval == 120
    assert settings.commit_max_items == 10  # only in the file


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARGEGRID_DATABASE_URL", "postgresql+asyncpg://x@y/z")
    monkeypatch.setenv("CHARGEGRID_WS_PER_MESSAGE_DEFLATE", "true")
    monkeypatch.setenv("CHARGEGRID_UNKNOWN_CHARGE_POINTS", "accept")
    monkeypatch.setenv("CHARGEGRID_SQLITE_SYNCHRONOUS", "NORMAL")
    settings = Settings()
    assert settings.database_url == "postgresql+asyncpg://x@y/z"
    assert settings.ws_per_message_deflate is True
    assert settings.unknown_charge_points is UnknownChargePointPolicy.ACCEPT
    assert settings.sqlite_synchronous == "NORMAL"


def test_explicit_overrides_win_and_none_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = toml(tmp_path, "port = 9000\nhost = '0.0.0.0'\n")
    monkeypatch.setenv("CHARGEGRID_PORT", "9100")
    settings = load_settings(path, port=9200, host=None, database_url=None)
    assert settings.port == 9200
    assert settings.host == "0.0.0.0"
    assert settings.database_url == DEFAULT_DATABASE_URL


def test_config_file_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARGEGRID_CONFIG", str(toml(tmp_path, "heartbeat_interval = 42\n")))
    assert Settings().heartbeat_interval == 42
    assert load_settings().heartbeat_interval == 42


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.toml"):
        load_settings(tmp_path / "missing.toml")


def test_unknown_key_in_toml(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="heartbeat_intervall") as error:
        load_settings(toml(tmp_path, "heartbeat_intervall = 60\n"))
    assert "Extra inputs are not permitted" in str(error.value)


def test_unknown_keyword_override() -> None:
    with pytest.raises(ValidationError, match="no_such_setting"):
        load_settings(no_such_setting=1)


def test_invalid_toml_syntax(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_settings(toml(tmp_path, "port = = 1\n"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("port", 70000, "port"),
        ("port", -1, "port"),
        ("database_url", "mysql://x", "database_url must start with"),
        ("database_url", "sqlite:///plain.db", "database_url must start with"),
        ("sqlite_synchronous", "SOMETIMES", "sqlite_synchronous"),
        ("commit_interval_ms", 0, "commit_interval_ms"),
        ("commit_interval_ms", 5000, "commit_interval_ms"),
        ("commit_max_items", 0, "commit_max_items"),
        ("commit_queue_limit", 0, "commit_queue_limit"),
        ("unknown_charge_points", "maybe", "unknown_charge_points"),
        ("heartbeat_interval", 0, "heartbeat_interval"),
        ("ws_max_size", 100, "ws_max_size"),
        ("handshake_timeout", 0, "handshake_timeout"),
        ("call_timeout", -1, "call_timeout"),
        ("liveness_flush_seconds", 0, "liveness_flush_seconds"),
        ("auth_key_hash_iterations", 10, "auth_key_hash_iterations"),
    ],
)
def test_invalid_values_are_rejected_with_a_message(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(ValidationError) as error:
        Settings(**{field: value})
    assert message in str(error.value)
    assert field in str(error.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CHARGEGRID_PORT", "eighty"),
        ("CHARGEGRID_COMMIT_MAX_ITEMS", "-3"),
        ("CHARGEGRID_DATABASE_URL", "oracle://db"),
        ("CHARGEGRID_WS_PER_MESSAGE_DEFLATE", "perhaps"),
    ],
)
def test_invalid_environment_values_are_rejected(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    field = variable.removeprefix("CHARGEGRID_").lower()
    with pytest.raises(ValidationError, match=field):
        Settings()


def test_invalid_toml_values_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="commit_max_items"):
        load_settings(toml(tmp_path, "commit_max_items = 0\n"))


@pytest.mark.parametrize("level", ["critical", "error", "warning", "info", "debug", "WARNING"])
def test_log_levels_accepted(level: str) -> None:
    assert Settings(log_level=level).log_level.lower() == level.lower()


def test_an_unknown_log_level_is_rejected() -> None:
    """``chargegrid serve`` hands log_level to logging and uvicorn, which die on an unknown one."""
    with pytest.raises(ValidationError, match="log_level"):
        Settings(log_level="verbose")


def test_registration_status_values() -> None:
    assert [s.value for s in RegistrationStatus] == ["Accepted", "Pending", "Rejected"]
    assert [p.value for p in UnknownChargePointPolicy] == ["reject", "pending", "accept"]
