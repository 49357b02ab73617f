"""The one error hierarchy of keystage.

Messages of ``ConfigError`` and ``StartupError`` are meant for admins: one line
naming the setting, plugin or host concerned. End-user messages are translated
where they are shown, never here.
"""

from __future__ import annotations


class KeystageError(Exception):
    """Base of every error keystage raises on purpose."""


class ConfigError(KeystageError):
    """A setting is missing or has a wrong value. ``str()`` is the one line to print."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class StartupError(KeystageError):
    """keystage cannot start (database unreachable, plugin broken, ...)."""


class PluginError(StartupError):
    """A plugin could not be loaded or validated; the message names it and its version."""
