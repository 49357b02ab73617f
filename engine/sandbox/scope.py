"""The names an expression sees: safe builtins, keystage's helpers, plugin helpers, the guards.

Worker-side, standard library only (see guards.py).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from typing import Any

from .guards import (
    CURRENT, LIMITS, NeedUsers, State, g_add, g_apply, g_format, g_getattr, g_getitem, g_getiter, g_inplacevar,
    g_iter_unpack_sequence, g_lshift, g_mod, g_mul, g_pow, g_range, g_round, g_unpack_sequence, g_write, limit,
)
from .views import UserView, freeze

_NETWORKS: dict[str, Any] = {}


def _short_text(value: Any, what: str, cap: int = 100) -> str:
    if type(value) is not str:
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    if len(value) > cap:
        raise ValueError(f"{what} is longer than {cap} characters")
    return value


def ip_network(cidr: Any) -> Any:
    """``ip_network("10.0.0.0/8")``: an IPv4Network or IPv6Network (host bits allowed)."""
    if type(cidr) in (ipaddress.IPv4Network, ipaddress.IPv6Network):
        return cidr
    text = _short_text(cidr, "ip_network(cidr)")
    network = _NETWORKS.get(text)
    if network is None:
        network = ipaddress.ip_network(text, strict=False)
        if len(_NETWORKS) > 1024:
            _NETWORKS.clear()
        _NETWORKS[text] = network
    return network


def ip_address(value: Any) -> Any:
    """``ip_address("192.0.2.1")``: an IPv4Address or IPv6Address."""
    if type(value) in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        return value
    if type(value) is int:
        return ipaddress.ip_address(value)
    return ipaddress.ip_address(_short_text(value, "ip_address(value)"))


def regex_match(value: Any, pattern: Any, *, ignore_case: bool = False) -> bool:
    """Whether ``pattern`` matches anywhere in ``value`` (``re.search``).

    Catastrophic patterns are stopped by the evaluation's wall-clock timeout, which
    kills the worker process: ``re`` cannot be interrupted otherwise.
    """
    if value is None:
        return False
    if type(value) is not str:
        value = str(value)
    if type(pattern) is not str:
        raise TypeError("regex_match(value, pattern): pattern must be a string")
    if len(pattern) > LIMITS["max_regex_pattern"]:
        raise limit(f"a pattern longer than {LIMITS['max_regex_pattern']} characters is not allowed")
    if len(value) > LIMITS["max_regex_subject"]:
        raise limit(f"regex_match on more than {LIMITS['max_regex_subject']} characters is not allowed")
    return re.search(pattern, value, re.IGNORECASE if ignore_case else 0) is not None


def is_group_member(user: Any, name: Any) -> bool:
    """Whether ``user`` belongs to the group ``name`` (case-insensitive), directly or through a parent group."""
    if user is None:
        return False
    if type(user) is not UserView:
        raise TypeError("is_group_member(user, name): user must be request.user or a user from user_by()")
    if user._folded is None:
        raise RuntimeError("the user's groups were not loaded for this expression")
    return str(name).lower() in user._folded


def now() -> dt.datetime:
    """The current time, timezone-aware (UTC)."""
    return dt.datetime.now(dt.UTC)


def _clip(text: str) -> str:
    cap = LIMITS["max_line"]
    return text if len(text) <= cap else text[:cap] + "…"


def _take_output(state: State, text: str) -> bool:
    state.output += len(text)
    return state.output <= LIMITS["max_output"]


def log(*values: Any) -> None:
    """Add a line to the evaluation's log (shown to admins by ``keystage policy test`` and in events)."""
    state = CURRENT[0]
    if len(state.log_lines) >= LIMITS["max_log_lines"]:
        if state.log_lines[-1] != "… (log truncated)":
            state.log_lines.append("… (log truncated)")
        return
    line = _clip(" ".join(str(v) for v in values))
    if _take_output(state, line):
        state.log_lines.append(line)


def message(text: Any) -> None:
    """A message shown to the user when the policy denies."""
    state = CURRENT[0]
    line = _clip(str(text))
    if len(state.messages) < LIMITS["max_messages"] and _take_output(state, line):
        state.messages.append(line)


def user_by(*, username: Any = None, email: Any = None) -> Any:
    """A read-only view of another user, by username or email (case-insensitive); None when there is none."""
    if (username is None) == (email is None):
        raise TypeError("user_by() takes exactly one of username=... or email=...")
    field, value = ("username", username) if username is not None else ("email", email)
    key = f"{field}:{_short_text(value, field, 254).lower()}"
    state = CURRENT[0]
    if key in state.users:
        found = state.users[key]
        return UserView(found) if found is not None else None
    if len(state.users) + len(state.need) >= LIMITS["max_user_lookups"]:
        raise limit(f"more than {LIMITS['max_user_lookups']} user_by() lookups in one evaluation")
    state.need.append((field, value.lower()))
    raise NeedUsers(key)


class Printer:
    """``print(...)`` in an expression writes to the log; ``printed`` reads it back."""

    __slots__ = ()

    def _call_print(self, *values: Any, sep: Any = " ", end: Any = "\n", file: Any = None, flush: bool = False) -> None:
        if file is not None:
            raise TypeError("print(file=...) is not available in expressions")
        log(str(sep).join(str(v) for v in values))

    def __call__(self) -> str:
        return "\n".join(CURRENT[0].log_lines)


PRINTER = Printer()


def print_factory(_getattr: Any = None) -> Printer:
    return PRINTER


class PluginHelper:
    """A plugin's helper: called with the expression's arguments, its answer frozen to plain data."""

    __slots__ = ("name", "func")

    def __init__(self, name: str, func: Any) -> None:
        self.name = name
        self.func = func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.func(*args, **kwargs)
        try:
            return freeze(result)
        except TypeError:
            kind = type(result).__name__
            raise TypeError(f"helper {self.name} returned {kind}, which expressions cannot use") from None

    def __repr__(self) -> str:
        return f"<helper {self.name}>"


SAFE_BUILTINS: dict[str, Any] = {
    "None": None, "True": True, "False": False,
    "abs": abs, "all": all, "any": any, "ascii": ascii, "bin": bin, "bool": bool, "callable": callable,
    "chr": chr, "dict": dict, "divmod": divmod, "enumerate": enumerate, "filter": filter, "float": float,
    "frozenset": frozenset, "hex": hex, "int": int, "isinstance": isinstance, "len": len, "list": list,
    "map": map, "max": max, "min": min, "oct": oct, "ord": ord, "pow": g_pow, "range": g_range, "repr": repr,
    "reversed": reversed, "round": g_round, "set": set, "slice": slice, "sorted": sorted, "str": str,
    "sum": sum, "tuple": tuple, "zip": zip,
    "ArithmeticError": ArithmeticError, "AssertionError": AssertionError, "AttributeError": AttributeError,
    "Exception": Exception, "IndexError": IndexError, "KeyError": KeyError, "LookupError": LookupError,
    "NameError": NameError, "OverflowError": OverflowError, "RuntimeError": RuntimeError,
    "TypeError": TypeError, "ValueError": ValueError, "ZeroDivisionError": ZeroDivisionError,
}

CORE_HELPERS: dict[str, Any] = {
    "ip_network": ip_network, "ip_address": ip_address, "regex_match": regex_match,
    "is_group_member": is_group_member, "now": now, "log": log, "message": message, "user_by": user_by,
    "timedelta": dt.timedelta,
}


def base_globals(extra_helpers: dict[str, Any]) -> dict[str, Any]:
    """The globals every evaluation starts from (copied per evaluation)."""
    return {
        "__builtins__": SAFE_BUILTINS,
        "__name__": "expression",
        "_getattr_": g_getattr, "_getitem_": g_getitem, "_getiter_": g_getiter, "_write_": g_write,
        "_apply_": g_apply, "_inplacevar_": g_inplacevar, "_print_": print_factory,
        "_unpack_sequence_": g_unpack_sequence, "_iter_unpack_sequence_": g_iter_unpack_sequence,
        "_sb_add_": g_add, "_sb_mul_": g_mul, "_sb_pow_": g_pow, "_sb_lshift_": g_lshift, "_sb_mod_": g_mod,
        "_sb_format_": g_format,
        **CORE_HELPERS,
        **extra_helpers,
    }
