"""keystage's kernel. This module's ``__all__`` is the only stable import surface for plugins.

Everything else under ``keystage.engine`` may change in any release; what is listed here
changes only as ``API_VERSION`` says (see docs/plugins/README.md). The test kit is
``keystage.engine.testing`` (a pytest plugin) and follows the same rule.
"""

from __future__ import annotations

from .applications import ProviderConfig, ProviderType
from .config import Settings
from .errors import ConfigError, KeystageError, PluginError, StartupError
from .events import Event
from .events import record as record_event
from .flow_context import (APPLICATION, AUTHENTICATED_BY, PENDING_IDENTIFIER, PENDING_USER, PROMPT_DATA, REDIRECT,
                           REMEMBER_ME, ContextKey, PlanContext)
from .hookspecs import hookimpl
from .i18n import N_
from .passwords import PasswordHasher
from .plugins import API_VERSION, KeystageDeprecationWarning
from .runtime import Keystage
from .policy import PolicyConfig, PolicyRequest, PolicyResult, PolicyType
from .stage import (Cancel, Continue, Deny, FieldError, FlowInfo, Invalid, Redirect, Stage, StageConfig,
                    StageContext, StageResult, config_errors)
from .templates import render_page
from .users import Group, User, UserError

__all__ = [
    "API_VERSION",
    "APPLICATION",
    "AUTHENTICATED_BY",
    "Cancel",
    "ConfigError",
    "ContextKey",
    "Continue",
    "Deny",
    "Event",
    "FieldError",
    "FlowInfo",
    "Group",
    "Invalid",
    "KeystageDeprecationWarning",
    "Keystage",
    "KeystageError",
    "N_",
    "PENDING_IDENTIFIER",
    "PENDING_USER",
    "PROMPT_DATA",
    "PasswordHasher",
    "PlanContext",
    "PluginError",
    "PolicyConfig",
    "PolicyRequest",
    "PolicyResult",
    "PolicyType",
    "ProviderConfig",
    "ProviderType",
    "REDIRECT",
    "REMEMBER_ME",
    "Redirect",
    "Settings",
    "Stage",
    "StageConfig",
    "StageContext",
    "StageResult",
    "StartupError",
    "User",
    "UserError",
    "config_errors",
    "hookimpl",
    "record_event",
    "render_page",
]
