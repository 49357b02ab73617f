"""keystage's kernel. This module's ``__all__`` is the only stable import surface for plugins."""

from __future__ import annotations

from .config import Settings
from .errors import ConfigError, KeystageError, PluginError, StartupError
from .events import Event
from .hookspecs import hookimpl
from .passwords import PasswordHasher
from .plugins import API_VERSION

__all__ = [
    "API_VERSION",
    "ConfigError",
    "Event",
    "KeystageError",
    "PasswordHasher",
    "PluginError",
    "Settings",
    "StartupError",
    "hookimpl",
]
