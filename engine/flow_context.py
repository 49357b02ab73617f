"""The plan context: JSON data stages share during one flow, through typed keys.

Keys are declared once (here for the kernel, in a plugin's module for its own) so that
stages never scatter bare strings. Values must be JSON-serialisable: the context is
stored with the plan in the session store.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ContextKey(Generic[T]):
    """A typed key of the plan context."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"ContextKey({self.name!r})"


class PlanContext:
    """A view on a plan's context dict with typed access."""

    def __init__(self, data: MutableMapping[str, Any]) -> None:
        self.data = data

    def get(self, key: ContextKey[T], default: T | None = None) -> T | None:
        return self.data.get(key.name, default)

    def set(self, key: ContextKey[T], value: T) -> None:
        self.data[key.name] = value

    def pop(self, key: ContextKey[T]) -> T | None:
        return self.data.pop(key.name, None)

    def __contains__(self, key: ContextKey[Any]) -> bool:
        return key.name in self.data


# The user the flow is about (chosen by identification, or the logged-in user), by id.
PENDING_USER: ContextKey[int] = ContextKey("pending_user")
# What the user typed to identify themselves (kept even when no such user exists, so
# later stages behave the same either way: no user enumeration).
PENDING_IDENTIFIER: ContextKey[str] = ContextKey("pending_identifier")
# A hint of who is signing in (OIDC ``login_hint``): prefills identification, proves nothing.
LOGIN_HINT: ContextKey[str] = ContextKey("login_hint")
# Whether the pending user has proven who they are (e.g. by password) in this flow.
AUTHENTICATED_BY: ContextKey[list[str]] = ContextKey("authenticated_by")
# Values collected by prompt stages, by field key.
PROMPT_DATA: ContextKey[dict[str, Any]] = ContextKey("prompt_data")
# Where to send the user when the flow ends (a validated same-origin path).
REDIRECT: ContextKey[str] = ContextKey("redirect")
# Failed attempts per stage binding, by binding id.
FAILED_ATTEMPTS: ContextKey[dict[str, int]] = ContextKey("failed_attempts")
# The application the flow is for, when an application started it.
APPLICATION: ContextKey[str] = ContextKey("application")
# Whether the user asked to be remembered.
REMEMBER_ME: ContextKey[bool] = ContextKey("remember_me")
