"""What an expression may touch, inside a sandbox worker: guards, read-only views, helpers.

This module runs in the worker processes only and imports nothing but the standard
library, so that a worker starts in ~40 ms with ~16 MiB of address space (the kernel's
own imports would cost 140 ms and 35 MiB of the 256 MiB cap).

Every object an expression can reach is one of the types in ``ATTRIBUTES`` (its
attributes are looked up in an allow-list, by exact type), a function the sandbox hands
in (no attribute is allowed on functions), or an exception (no attribute either). The
compile step already refuses every name and attribute starting with ``_``; the
allow-list is the second wall, and the reason ``str.format`` and friends are unreachable.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import sys
from types import FunctionType, MappingProxyType
from typing import Any

# Limits are overwritten by the host's values when the worker starts (see limits.py).
LIMITS: dict[str, int] = {
    "max_int_bits": 65_536,
    "max_str": 1_000_000,
    "max_items": 1_000_000,
    "max_format_width": 10_000,
    "max_regex_pattern": 1_000,
    "max_regex_subject": 100_000,
    "max_log_lines": 200,
    "max_line": 2_000,
    "max_messages": 20,
    "max_output": 65_536,
    "max_user_lookups": 20,
}


class ResourceLimitExceeded(BaseException):
    """A cap was hit. Not an ``Exception``: ``except Exception`` in an expression cannot swallow it."""


class NeedUsers(BaseException):
    """``user_by`` asked for a user the host has not sent yet (the host fetches it and runs again)."""


class State:
    """What one evaluation collects. The guards find the running one in ``CURRENT``."""

    __slots__ = ("log_lines", "messages", "output", "resource", "resource_line", "need", "users", "printed")

    def __init__(self, users: dict[str, Any]) -> None:
        self.log_lines: list[str] = []
        self.messages: list[str] = []
        self.output = 0
        self.resource: str | None = None
        self.resource_line: int | None = None
        self.need: list[tuple[str, str]] = []
        self.users = users


CURRENT: list[State] = []  # a one-element stack: the evaluation that runs now


def expression_line() -> int | None:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename == "<expression>":
            return frame.f_lineno
        frame = frame.f_back
    return None


def limit(message: str) -> ResourceLimitExceeded:
    """Record a hit cap on the running evaluation (sticky: ``finally: return`` cannot hide it)."""
    if CURRENT and CURRENT[0].resource is None:
        CURRENT[0].resource = message
        CURRENT[0].resource_line = expression_line()
    return ResourceLimitExceeded(message)


# -- read-only views ------------------------------------------------------------------


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
        put(self, "groups", tuple(sorted(str(g) for g in groups)) if groups is not None else None)
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
    """Plain data → immutable plain data (dicts become mapping proxies, lists tuples)."""
    kind = type(value)
    if kind in PLAIN or kind in VIEW_TYPES or kind is MappingProxyType or kind is frozenset:
        return value
    if depth > 32:
        raise ValueError("data nested too deeply")
    if kind is dict:
        return MappingProxyType({k: freeze(v, depth + 1) for k, v in value.items()})
    if kind is list or kind is tuple:
        return tuple(freeze(v, depth + 1) for v in value)
    if kind is set:
        return frozenset(value)
    raise TypeError(f"{kind.__name__} values cannot be handed to expressions")


VIEW_TYPES = frozenset({UserView, FlowView, ApplicationView, RequestView})


# -- size checks ----------------------------------------------------------------------

SEQUENCES = (str, bytes, list, tuple)


def _check_len(n: int, kind: type) -> None:
    if kind is str or kind is bytes:
        if n > LIMITS["max_str"]:
            raise limit(f"a string of {n} characters is more than the {LIMITS['max_str']} allowed")
    elif n > LIMITS["max_items"]:
        raise limit(f"a {kind.__name__} of {n} items is more than the {LIMITS['max_items']} allowed")


def _check_bits(bits: int) -> None:
    if bits > LIMITS["max_int_bits"]:
        raise limit(f"an integer of about {bits} bits is more than the {LIMITS['max_int_bits']} allowed")


def g_add(a: Any, b: Any) -> Any:
    ta = type(a)
    if ta in SEQUENCES and type(b) is ta:
        _check_len(len(a) + len(b), ta)
    return a + b


def _repeat_check(seq: Any, n: Any) -> None:
    if type(n) in (int, bool) and n > 0:
        _check_len(len(seq) * n, type(seq))


def g_mul(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if ta is int and tb is int:
        _check_bits(a.bit_length() + b.bit_length())
    elif ta in SEQUENCES:
        _repeat_check(a, b)
    elif tb in SEQUENCES:
        _repeat_check(b, a)
    return a * b


def g_pow(a: Any, b: Any, mod: Any = None) -> Any:
    if type(a) in (int, bool) and type(b) in (int, bool) and b > 0:
        if mod is None:
            if a not in (0, 1, -1):
                _check_bits(a.bit_length() * b)
        else:
            _check_bits(b.bit_length())
            if type(mod) is int:
                _check_bits(mod.bit_length())
    if mod is None:
        return a**b
    return pow(a, b, mod)


def g_lshift(a: Any, b: Any) -> Any:
    if type(a) in (int, bool) and type(b) in (int, bool) and a and b > 0:
        _check_bits(a.bit_length() + b)
    return a << b


_PERCENT = re.compile(rb"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.S)


def _check_width(text: str | None, what: str) -> None:
    if text is None:
        return
    if text in ("*", b"*"):
        raise limit(f"'*' {what} is not allowed in expressions")
    if len(text) > 6 or int(text) > LIMITS["max_format_width"]:
        raise limit(f"a {what} above {LIMITS['max_format_width']} is not allowed")


def g_mod(a: Any, b: Any) -> Any:
    ta = type(a)
    if ta is str or ta is bytes:
        data = a.encode("utf-8", "surrogatepass") if ta is str else a
        for match in _PERCENT.finditer(data):
            _check_width(match.group(1) and match.group(1).decode(), "width")
            _check_width(match.group(2) and match.group(2).decode(), "precision")
        result = a % b
        _check_len(len(result), ta)
        return result
    return a % b


_SPEC = re.compile(r"(?:.?[<>=^])?[+\- ]?z?#?0?(\d*)[,_]?(?:\.(\d+))?[bcdeEfFgGnosxX%]?", re.S)
_DATES = (dt.datetime, dt.date, dt.time)


def g_format(value: Any, conversion: int, spec: str) -> str:
    """One ``{value!conversion:spec}`` of an f-string, with the width and precision capped."""
    if conversion == 115:
        value = str(value)
    elif conversion == 114:
        value = repr(value)
    elif conversion == 97:
        value = ascii(value)
    if not spec:
        return value if type(value) is str else format(value, "")
    if type(value) in _DATES:
        if len(spec) > 200:
            raise limit("a date format longer than 200 characters is not allowed")
        return format(value, spec)
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise ValueError(f"format spec {spec[:40]!r} is not supported in expressions")
    _check_width(match.group(1) or None, "width")
    _check_width(match.group(2), "precision")
    return format(value, spec)


def g_round(number: Any, ndigits: Any = None) -> Any:
    if ndigits is not None and type(ndigits) is int and abs(ndigits) > 400:
        raise limit("round() with more than 400 digits is not allowed")
    return round(number) if ndigits is None else round(number, ndigits)


def g_range(*args: Any) -> range:
    result = range(*args)
    if len(result) > LIMITS["max_items"]:
        raise limit(f"a range of {len(result)} items is more than the {LIMITS['max_items']} allowed")
    return result


INPLACE = {
    "+=": g_add, "-=": lambda a, b: a - b, "*=": g_mul, "/=": lambda a, b: a / b,
    "//=": lambda a, b: a // b, "%=": g_mod, "**=": g_pow, "<<=": g_lshift,
    ">>=": lambda a, b: a >> b, "&=": lambda a, b: a & b, "|=": lambda a, b: a | b,
    "^=": lambda a, b: a ^ b, "@=": lambda a, b: a @ b,
}


def g_inplacevar(op: str, target: Any, value: Any) -> Any:
    # Mutable sandbox-made containers keep Python's in-place meaning (x += y extends x).
    kind = type(target)
    if kind is list and op == "+=":
        if type(value) in SEQUENCES:
            _check_len(len(target) + len(value), list)
        target += value
        return target
    if kind in (dict, set) and op in ("|=", "&=", "-=", "^="):
        if op == "|=":
            target |= value
        elif op == "&=":
            target &= value
        elif op == "-=":
            target -= value
        else:
            target ^= value
        return target
    return INPLACE[op](target, value)


# -- str methods that build big strings ----------------------------------------------

ENCODINGS = frozenset({"utf-8", "utf8", "ascii", "latin-1", "latin1", "iso-8859-1", "utf-16", "utf-32"})


def _width_method(s: str, method: Any) -> Any:
    def padded(width: Any, *rest: Any) -> Any:
        if type(width) is int:
            _check_len(width, type(s))
        return method(width, *rest)
    return padded


def _expandtabs(s: str, method: Any) -> Any:
    def expandtabs(tabsize: Any = 8) -> Any:
        if type(tabsize) is int and tabsize > 0:
            _check_len(len(s) + s.count("\t") * tabsize, type(s))
        return method(tabsize)
    return expandtabs


def _replace(s: Any, method: Any) -> Any:
    def replace(old: Any, new: Any, count: Any = -1) -> Any:
        if type(old) is type(s) and type(new) is type(s) and len(new) > len(old):
            found = s.count(old) if old else len(s) + 1
            if type(count) is int and count >= 0:
                found = min(found, count)
            _check_len(len(s) + found * (len(new) - len(old)), type(s))
        return method(old, new, count)
    return replace


def _join(s: Any, method: Any) -> Any:
    def join(iterable: Any) -> Any:
        parts = list(iterable)
        _check_len(len(parts), list)
        total = len(s) * max(len(parts) - 1, 0)
        for part in parts:
            if type(part) is type(s):
                total += len(part)
        _check_len(total, type(s))
        return method(parts)
    return join


def _encode(s: str, method: Any) -> Any:
    def encode(encoding: str = "utf-8", errors: str = "strict") -> bytes:
        if str(encoding).lower() not in ENCODINGS:
            raise ValueError(f"encoding {encoding!r} is not available in expressions")
        return method(encoding, errors)
    return encode


def _strftime(d: Any, method: Any) -> Any:
    def strftime(fmt: str) -> str:
        if len(fmt) > 200:
            raise limit("a date format longer than 200 characters is not allowed")
        return method(fmt)
    return strftime


STR_READ = frozenset({
    "capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha", "isascii",
    "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric", "isprintable", "isspace", "istitle",
    "isupper", "lower", "lstrip", "partition", "removeprefix", "removesuffix", "rfind", "rindex",
    "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title", "upper",
})
BYTES_READ = frozenset({
    "count", "endswith", "find", "hex", "index", "isalnum", "isalpha", "isascii", "isdigit", "islower",
    "isspace", "isupper", "lower", "lstrip", "rstrip", "split", "startswith", "strip", "upper",
})
INT_ATTRS = frozenset({"bit_length", "bit_count", "real", "imag", "numerator", "denominator", "conjugate",
                       "as_integer_ratio"})
IP_ADDRESS = frozenset({"version", "is_private", "is_global", "is_loopback", "is_multicast", "is_reserved",
                        "is_link_local", "is_unspecified", "compressed", "exploded", "max_prefixlen", "packed",
                        "reverse_pointer"})
IP_NETWORK = frozenset({"network_address", "broadcast_address", "hostmask", "netmask", "prefixlen",
                        "num_addresses", "version", "with_prefixlen", "with_netmask", "with_hostmask",
                        "compressed", "exploded", "is_private", "is_global", "is_loopback", "is_multicast",
                        "is_reserved", "is_link_local", "is_unspecified", "max_prefixlen", "overlaps",
                        "subnet_of", "supernet_of"})
DATE = frozenset({"year", "month", "day", "weekday", "isoweekday", "isoformat", "isocalendar", "toordinal",
                  "ctime", "replace", "strftime"})
TIME = frozenset({"hour", "minute", "second", "microsecond", "tzinfo", "fold", "isoformat", "replace",
                  "strftime", "utcoffset", "tzname"})

# The allow-list, by exact type. Anything else (functions, types, modules, exceptions,
# generators, iterators, dict views) has no attribute an expression may read.
ATTRIBUTES: dict[type, frozenset[str]] = {
    str: STR_READ | {"ljust", "rjust", "center", "zfill", "expandtabs", "replace", "join", "encode"},
    bytes: BYTES_READ | {"decode", "replace", "join"},
    int: INT_ATTRS,
    bool: INT_ATTRS,
    float: frozenset({"is_integer", "real", "imag", "conjugate", "as_integer_ratio", "hex"}),
    complex: frozenset({"real", "imag", "conjugate"}),
    list: frozenset({"append", "extend", "insert", "pop", "remove", "index", "count", "copy", "reverse",
                     "sort", "clear"}),
    tuple: frozenset({"index", "count"}),
    dict: frozenset({"get", "keys", "values", "items", "pop", "popitem", "setdefault", "update", "copy", "clear"}),
    MappingProxyType: frozenset({"get", "keys", "values", "items", "copy"}),
    set: frozenset({"add", "discard", "remove", "pop", "clear", "copy", "union", "intersection", "difference",
                    "symmetric_difference", "issubset", "issuperset", "isdisjoint", "update",
                    "intersection_update", "difference_update", "symmetric_difference_update"}),
    frozenset: frozenset({"copy", "union", "intersection", "difference", "symmetric_difference", "issubset",
                          "issuperset", "isdisjoint"}),
    range: frozenset({"start", "stop", "step", "index", "count"}),
    slice: frozenset({"start", "stop", "step"}),
    dt.datetime: DATE | TIME | {"date", "time", "timetz", "timestamp", "astimezone"},
    dt.date: DATE,
    dt.time: TIME,
    dt.timedelta: frozenset({"days", "seconds", "microseconds", "total_seconds"}),
    dt.timezone: frozenset({"utcoffset", "tzname"}),
    ipaddress.IPv4Address: IP_ADDRESS,
    ipaddress.IPv6Address: IP_ADDRESS | {"ipv4_mapped", "scope_id", "sixtofour", "teredo", "is_site_local"},
    ipaddress.IPv4Network: IP_NETWORK,
    ipaddress.IPv6Network: IP_NETWORK | {"is_site_local"},
    UserView: frozenset({"username", "email", "name", "is_active", "is_superuser", "attributes", "groups"}),
    FlowView: frozenset({"slug", "designation"}),
    ApplicationView: frozenset({"slug", "name", "attributes"}),
    RequestView: frozenset({"user", "ip", "user_agent", "headers", "flow", "context", "application"}),
}

WRAPPERS: dict[tuple[type, str], Any] = {
    **{(str, m): _width_method for m in ("ljust", "rjust", "center", "zfill")},
    (str, "expandtabs"): _expandtabs,
    (str, "replace"): _replace,
    (bytes, "replace"): _replace,
    (str, "join"): _join,
    (bytes, "join"): _join,
    (str, "encode"): _encode,
    (bytes, "decode"): _encode,
    (dt.datetime, "strftime"): _strftime,
    (dt.date, "strftime"): _strftime,
    (dt.time, "strftime"): _strftime,
}


def g_getattr(obj: Any, name: str) -> Any:
    kind = type(obj)
    allowed = ATTRIBUTES.get(kind)
    if allowed is None or name not in allowed:
        raise AttributeError(f"{kind.__name__!s} has no attribute {name!r} available in expressions")
    if kind is UserView and name == "groups" and obj.groups is None:
        raise RuntimeError("the user's groups were not loaded for this expression")
    value = getattr(obj, name)
    wrap = WRAPPERS.get((kind, name))
    return wrap(obj, value) if wrap is not None else value


SUBSCRIPTABLE = frozenset({str, bytes, list, tuple, dict, MappingProxyType, range})
WRITABLE = frozenset({list, dict, set})


def g_getitem(obj: Any, key: Any) -> Any:
    if type(obj) in SUBSCRIPTABLE:
        return obj[key]
    raise TypeError(f"{type(obj).__name__} is not subscriptable in expressions")


def g_write(obj: Any) -> Any:
    if type(obj) in WRITABLE:
        return obj
    raise TypeError(f"{type(obj).__name__} is read-only in expressions")


def g_getiter(obj: Any) -> Any:
    return iter(obj)


def g_apply(func: Any, *args: Any, **kwargs: Any) -> Any:
    return func(*args, **kwargs)


def _unpack(it: Any, spec: dict[str, Any], getiter: Any) -> list[Any]:
    result = list(getiter(it))
    if len(result) < spec["min_len"]:
        return result  # the real unpacking raises the ValueError
    for index, child in spec["childs"]:
        result[index] = _unpack(result[index], child, getiter)
    return result


def g_unpack_sequence(it: Any, spec: dict[str, Any], getiter: Any) -> list[Any]:
    return _unpack(it, spec, getiter)


def g_iter_unpack_sequence(it: Any, spec: dict[str, Any], getiter: Any) -> Any:
    for item in getiter(it):
        yield _unpack(item, spec, getiter)


# -- helpers ---------------------------------------------------------------------------

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
    return dt.datetime.now(dt.timezone.utc)


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
            raise TypeError(f"helper {self.name} returned {type(result).__name__}, which expressions cannot use") from None

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


def function_type() -> type:
    return FunctionType
