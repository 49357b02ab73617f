"""The read-only views an expression sees (``request``, users, flows, applications) and ``freeze``.

Worker-side, standard library only (see guards.py). A view is a snapshot of plain data:
``__slots__``, no setter, nothing that leads back to the database or the runtime.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from types import MappingProxyType
from typing import Any


class FrozenList(tuple):  # type: ignore[type-arg]
    """A list from the context, read-only: a tuple that equals the list with the same items.

    Admins compare ``request.user.attributes["roles"] == ["a", "b"]`` as they would in JSON;
    ``+`` with a list gives a (new) list.
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if type(other) is list:
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__

    def __add__(self, other: Any) -> Any:
        if type(other) is list:
            return list(self) + other
        return FrozenList(tuple.__add__(self, other))

    def __radd__(self, other: Any) -> Any:
        if type(other) is list:
            return other + list(self)
        return NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))


class View:
    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("read-only")


class UserView(View):
    """A user as expressions see it: plain data, no id, no password hash, no way back to the database."""

    __slots__ = ("username", "email", "name", "is_active", "is_superuser", "attributes", "groups", "_folded")

    def __init__(self, data: dict[str, Any]) -> None:
        put = object.__setattr__
        put(self, "username", str(data.get("username") or ""))
        put(self, "email", data.get("email"))
        put(self, "name", str(data.get("name") or ""))
        put(self, "is_active", bool(data.get("is_active", True)))
        put(self, "is_superuser", bool(data.get("is_superuser", False)))
        put(self, "attributes", freeze(data.get("attributes") or {}))
        groups = data.get("groups")
        put(self, "groups", FrozenList(sorted(str(g) for g in groups)) if groups is not None else None)
        put(self, "_folded", frozenset(g.lower() for g in self.groups) if self.groups is not None else None)

    def __repr__(self) -> str:
        return f"<user {self.username}>"

    def __eq__(self, other: object) -> bool:
        return type(other) is UserView and other.username.lower() == self.username.lower()

    def __hash__(self) -> int:
        return hash(("user", self.username.lower()))


class FlowView(View):
    __slots__ = ("slug", "designation")

    def __init__(self, data: dict[str, Any]) -> None:
        object.__setattr__(self, "slug", str(data.get("slug") or ""))
        object.__setattr__(self, "designation", str(data.get("designation") or ""))

    def __repr__(self) -> str:
        return f"<flow {self.slug}>"


class ApplicationView(View):
    __slots__ = ("slug", "name", "attributes")

    def __init__(self, data: dict[str, Any]) -> None:
        object.__setattr__(self, "slug", str(data.get("slug") or ""))
        object.__setattr__(self, "name", str(data.get("name") or ""))
        object.__setattr__(self, "attributes", freeze(data.get("attributes") or {}))

    def __repr__(self) -> str:
        return f"<application {self.slug}>"


class RequestView(View):
    __slots__ = ("user", "ip", "user_agent", "headers", "flow", "context", "application")

    def __init__(self, data: dict[str, Any]) -> None:
        put = object.__setattr__
        user = data.get("user")
        put(self, "user", UserView(user) if user is not None else None)
        ip = data.get("ip")
        put(self, "ip", ipaddress.ip_address(ip) if ip else None)
        put(self, "user_agent", str(data.get("user_agent") or ""))
        put(self, "headers", freeze({str(k).lower(): str(v) for k, v in (data.get("headers") or {}).items()}))
        flow = data.get("flow")
        put(self, "flow", FlowView(flow) if flow is not None else None)
        put(self, "context", freeze(data.get("context") or {}))
        application = data.get("application")
        put(self, "application", ApplicationView(application) if application is not None else None)

    def __repr__(self) -> str:
        return "<request>"


PLAIN = (str, int, float, bool, type(None), bytes, dt.datetime, dt.date, dt.time, dt.timedelta,
         ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network)


def freeze(value: Any, depth: int = 0) -> Any:
    """Plain data → immutable plain data (dicts become mapping proxies, lists frozen lists)."""
    kind = type(value)
    if kind in PLAIN or kind in VIEW_TYPES or kind is MappingProxyType or kind is frozenset or kind is FrozenList:
        return value
    if depth > 32:
        raise ValueError("data nested too deeply")
    if kind is dict:
        return MappingProxyType({k: freeze(v, depth + 1) for k, v in value.items()})
    if kind is list or kind is tuple:
        return FrozenList(freeze(v, depth + 1) for v in value)
    if kind is set:
        return frozenset(value)
    raise TypeError(f"{kind.__name__} values cannot be handed to expressions")


VIEW_TYPES = frozenset({UserView, FlowView, ApplicationView, RequestView})
