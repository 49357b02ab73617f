"""Settings: every bad value stops with one line naming the setting."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from keystage.engine.config import load_settings, mask_url
from keystage.engine.errors import ConfigError


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"KEYSTAGE_DATA_DIR": str(tmp_path), **{f"KEYSTAGE_{k.upper()}": v for k, v in values.items()}}


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(env(tmp_path))
    assert settings.listen == "127.0.0.1:9000"
    assert settings.external_url == "http://127.0.0.1:9000"
    assert settings.database_url is None and settings.embedded_database
    assert settings.plugins == ()


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("listen", "nonsense", "KEYSTAGE_LISTEN: expected HOST:PORT"),
    ("listen", "127.0.0.1:http", "KEYSTAGE_LISTEN: port must be a number"),
    ("listen", "127.0.0.1:70000", "KEYSTAGE_LISTEN: port must be between"),
    ("database_url", "mysql://x/y", "KEYSTAGE_DATABASE_URL: expected a URL starting with postgres://"),
    ("redis_url", "http://x", "KEYSTAGE_REDIS_URL: expected a URL"),
    ("external_url", "ftp://x", "KEYSTAGE_EXTERNAL_URL: expected a URL"),
    ("external_url", "https://id.example.com/?x=1", "KEYSTAGE_EXTERNAL_URL: the external URL may not have a query"),
    ("secret_key", "short", "KEYSTAGE_SECRET_KEY: must be at least 32 characters"),
    ("log_level", "LOUD", "KEYSTAGE_LOG_LEVEL: expected one of"),
    ("trusted_proxies", "10.0.0.0/8,not-an-ip", "KEYSTAGE_TRUSTED_PROXIES: not an IP address"),
    ("database_pool_size", "0", "KEYSTAGE_DATABASE_POOL_SIZE: must be between"),
    ("session_lifetime", "ten", "KEYSTAGE_SESSION_LIFETIME: expected a whole number"),
    ("default_locale", "xx_QQ", "KEYSTAGE_DEFAULT_LOCALE: unknown locale"),
    ("apply_default_blueprints", "maybe", "KEYSTAGE_APPLY_DEFAULT_BLUEPRINTS: expected true or false"),
])
def test_bad_values_name_the_setting(tmp_path: Path, name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env(tmp_path, **{name: value}))
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_database_url_password_is_masked_in_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env(tmp_path, database_url="mysql://user:hunter2@db/x"))
    assert "hunter2" not in str(info.value)
    assert mask_url("postgresql://u:pw@h:5432/d") == "postgresql://u:***@h:5432/d"


def test_toml_file_and_precedence(tmp_path: Path) -> None:
    config = tmp_path / "keystage.toml"
    config.write_text('listen = "127.0.0.1:9100"\nlog_level = "debug"\n[plugin.hello]\ngreeting = "hi"\n')
    settings = load_settings(env(tmp_path, log_level="WARNING"), config_file=config)
    assert settings.listen == "127.0.0.1:9100"
    assert settings.log_level == "WARNING"  # the environment wins over the file
    assert settings.plugin_config == {"hello": {"greeting": "hi"}}
    assert settings.external_url == "http://127.0.0.1:9100"


@pytest.mark.parametrize(("text", "expected"), [
    ("listen = 12", "listen: expected HOST:PORT"),
    ("bogus = 1", "bogus: unknown setting"),
    ("listen = ", "not valid TOML"),
    ("plugin = 3", "plugin: expected tables"),
])
def test_bad_toml_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env(tmp_path), config_file=config)
    assert expected in str(info.value) and str(config) in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(env(tmp_path), config_file=tmp_path / "absent.toml")


def test_secret_key_is_generated_once_and_private(tmp_path: Path) -> None:
    first = load_settings(env(tmp_path)).secret_key
    second = load_settings(env(tmp_path)).secret_key
    assert first == second and len(first) >= 32
    mode = stat.S_IMODE(os.stat(tmp_path / "secret_key").st_mode)
    assert mode == 0o600


def test_masked_hides_secrets(tmp_path: Path) -> None:
    settings = load_settings(env(tmp_path, database_url="postgresql://u:topsecret@db/x",
                                 secret_key="k" * 40))
    shown = settings.masked()
    assert shown["secret_key"] == "********"
    assert "topsecret" not in str(shown)
