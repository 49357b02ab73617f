"""Settings: environment variables ``KEYSTAGE_*`` over an optional TOML file over defaults.

Every value is validated here, once, so that a bad value stops startup with one line
naming the setting (``ConfigError``) instead of failing later somewhere deep.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError

ENV_PREFIX = "KEYSTAGE_"
# Set by `keystage serve` for its worker processes: the URL of the embedded PostgreSQL
# the parent process started. Not a user setting.
EMBEDDED_URL_ENV = "_KEYSTAGE_EMBEDDED_DATABASE_URL"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SERVERS = ("uvicorn", "hypercorn")  # the HTTP servers ``keystage serve`` can run (http_server.py)
SECRET_FIELDS = frozenset({"secret_key"})


@dataclasses.dataclass(frozen=True)
class Settings:
    """The effective configuration of one keystage process."""

    data_dir: Path = Path("./keystage-data")
    database_url: str | None = None
    redis_url: str | None = None
    secret_key: str = ""
    listen: str = "127.0.0.1:9000"
    server: str = "uvicorn"
    external_url: str = "http://127.0.0.1:9000"
    plugins: tuple[str, ...] = ()
    log_level: str = "INFO"
    database_connect_timeout: float = 30.0
    database_pool_size: int = 10
    trusted_proxies: tuple[str, ...] = ()
    default_locale: str = "en"
    session_lifetime: int = 8 * 3600
    remember_me_lifetime: int = 30 * 24 * 3600
    apply_default_blueprints: bool = True
    argon2_time_cost: int = 2
    argon2_memory_cost: int = 19456
    argon2_parallelism: int = 1
    plugin_config: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    config_file: Path | None = None

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return _parse_listen("KEYSTAGE_LISTEN", self.listen)

    @property
    def secure_cookies(self) -> bool:
        return self.external_url.startswith("https://")

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    def plugin_enabled(self, name: str) -> bool:
        return "*" in self.plugins or name in self.plugins

    def masked(self) -> dict[str, Any]:
        """The settings as plain data with secrets and passwords in URLs masked."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in SECRET_FIELDS:
                value = "********" if value else ""
            elif field.name.endswith("_url") and isinstance(value, str):
                value = mask_url(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = {k: dict(v) for k, v in value.items()}
            out[field.name] = value
        return out


def mask_url(url: str) -> str:
    """Replace the password of a URL by ``***`` (for logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def _parse_listen(name: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(name, f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]")
    try:
        port_number = int(port)
    except ValueError:
        raise ConfigError(name, f"port must be a number, got {port!r}") from None
    if not 0 <= port_number <= 65535:
        raise ConfigError(name, f"port must be between 0 and 65535, got {port_number}")
    return host, port_number


def _parse_url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ConfigError(name, f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}, got {mask_url(value)!r}")
    if not parts.netloc and not (parts.scheme.startswith("postgres") and "host=" in parts.query):
        raise ConfigError(name, f"the URL has no host: {mask_url(value)!r}")
    return value


def _parse_int(name: str, value: Any, minimum: int, maximum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(name, f"expected a whole number, got {value!r}") from None
    if isinstance(value, bool) or not minimum <= number <= maximum:
        raise ConfigError(name, f"must be between {minimum} and {maximum}, got {value!r}")
    return number


def _parse_float(name: str, value: Any, minimum: float, maximum: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(name, f"expected a number, got {value!r}") from None
    if not minimum <= number <= maximum:
        raise ConfigError(name, f"must be between {minimum} and {maximum}, got {value!r}")
    return number


def _parse_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, (list, tuple)):
        return tuple(str(item).strip() for item in value if str(item).strip())
    raise TypeError


def _env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("--config", f"no such file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}", f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None


def load_settings(
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build validated settings. Precedence: ``overrides`` (CLI flags) > environment > TOML file > defaults.

    Raises ``ConfigError`` naming the first bad setting.
    """
    env = dict(os.environ if environ is None else environ)
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = env[ENV_PREFIX + "CONFIG"]
    file_values: dict[str, Any] = {}
    if config_file is not None:
        config_file = Path(config_file)
        file_values = _read_toml(config_file)

    known = {f.name for f in dataclasses.fields(Settings)} - {"plugin_config", "config_file"}
    for key in file_values:
        if key not in known and key != "plugin":
            raise ConfigError(f"{config_file}: {key}", "unknown setting")

    raw: dict[str, tuple[str, Any]] = {}
    for name in known:
        if overrides and overrides.get(name) is not None:
            raw[name] = (f"--{name.replace('_', '-')}", overrides[name])
        elif _env_name(name) in env and env[_env_name(name)] != "":
            raw[name] = (_env_name(name), env[_env_name(name)])
        elif name in file_values:
            raw[name] = (f"{config_file}: {name}", file_values[name])

    values: dict[str, Any] = {}
    for name, (label, value) in raw.items():
        values[name] = _validate(name, label, value)

    if "database_url" not in values and env.get(EMBEDDED_URL_ENV):
        values["database_url"] = None  # still "embedded"; the URL is read by database.py
    plugin_config = file_values.get("plugin", {})
    if not isinstance(plugin_config, dict) or not all(isinstance(v, dict) for v in plugin_config.values()):
        raise ConfigError(f"{config_file}: plugin", "expected tables [plugin.NAME]")
    values["plugin_config"] = plugin_config
    values["config_file"] = config_file
    data_dir = values.get("data_dir", Settings.data_dir)
    if "external_url" not in values:
        host, port = _parse_listen("KEYSTAGE_LISTEN", values.get("listen", Settings.listen))
        shown = f"[{host}]" if ":" in host else host
        values["external_url"] = f"http://{shown}:{port}"
    if not values.get("secret_key"):
        values["secret_key"] = ensure_secret_key(data_dir)
    return Settings(**values)


def _validate(name: str, label: str, value: Any) -> Any:
    if name == "data_dir":
        return Path(str(value)).expanduser()
    if name == "database_url":
        return _parse_url(label, str(value), ("postgres", "postgresql"))
    if name == "redis_url":
        return _parse_url(label, str(value), ("redis", "rediss", "unix"))
    if name == "external_url":
        url = _parse_url(label, str(value), ("http", "https"))
        parts = urlsplit(url)
        if parts.query or parts.fragment:
            raise ConfigError(label, "the external URL may not have a query or fragment")
        return url
    if name == "listen":
        _parse_listen(label, str(value))
        return str(value)
    if name == "secret_key":
        if len(str(value)) < 32:
            raise ConfigError(label, "must be at least 32 characters long")
        return str(value)
    if name == "server":
        server = str(value).strip().lower()
        if server not in SERVERS:
            raise ConfigError(label, f"expected one of {', '.join(SERVERS)}, got {value!r}")
        return server
    if name == "log_level":
        level = str(value).upper()
        if level not in LOG_LEVELS:
            raise ConfigError(label, f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return level
    if name in ("plugins", "trusted_proxies"):
        try:
            items = _parse_list(value)
        except TypeError:
            raise ConfigError(label, "expected a comma-separated list") from None
        if name == "trusted_proxies":
            for item in items:
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ConfigError(label, f"not an IP address or network: {item!r}") from None
        return items
    if name == "apply_default_blueprints":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(label, f"expected true or false, got {value!r}")
    if name == "database_connect_timeout":
        return _parse_float(label, value, 0.0, 3600.0)
    if name == "database_pool_size":
        return _parse_int(label, value, 1, 1000)
    if name in ("session_lifetime", "remember_me_lifetime"):
        return _parse_int(label, value, 60, 366 * 24 * 3600)
    if name == "argon2_time_cost":
        return _parse_int(label, value, 1, 100)
    if name == "argon2_memory_cost":
        return _parse_int(label, value, 8, 4 * 1024 * 1024)
    if name == "argon2_parallelism":
        return _parse_int(label, value, 1, 64)
    if name == "default_locale":
        from babel import Locale, UnknownLocaleError

        try:
            Locale.parse(str(value).replace("-", "_"))
        except (ValueError, UnknownLocaleError):
            raise ConfigError(label, f"unknown locale {value!r}") from None
        return str(value)
    return value


def ensure_secret_key(data_dir: Path) -> str:
    """Return the secret key kept in ``data_dir/secret_key``, creating it (mode 0600) on first use."""
    path = Path(data_dir) / "secret_key"
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("KEYSTAGE_DATA_DIR", f"cannot create {path.parent}: {exc.strerror}") from None
    key = secrets.token_urlsafe(48)
    try:
        # O_EXCL: two processes starting together keep the first one's key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    except OSError as exc:
        raise ConfigError("KEYSTAGE_DATA_DIR", f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def _read_secret(path: Path) -> str:
    value = path.read_text().strip()
    if len(value) < 32:
        raise ConfigError("KEYSTAGE_SECRET_KEY", f"the key kept in {path} is too short; delete it to have a new one made")
    return value
