"""What an expression may touch, inside a sandbox worker: the guards RestrictedPython calls.

This module and its siblings views.py and scope.py run in the worker processes and
import nothing but the standard library, so that a worker starts in ~40 ms with ~16 MiB
of address space (the kernel's own imports would cost 140 ms and 35 MiB of the 256 MiB
cap). The host imports them too, for the names they define.

Every object an expression can reach is one of the types in ``ATTRIBUTES`` (its
attributes are looked up in an allow-list, by exact type), a function the sandbox hands
in (no attribute is allowed on functions), or an exception (no attribute either). The
compile step already refuses every name and attribute starting with ``_``; the
allow-list is the second wall, and the reason ``str.format`` and friends are unreachable.
Operators and builtins that can build huge values (``*``, ``**``, ``<<``, ``%``, ``+``,
padding, joins, f-string widths, ``range``, ``round``) check the size first.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import sys
from types import MappingProxyType
from typing import Any

from .views import ApplicationView, FlowView, FrozenList, RequestView, UserView

# Limits are overwritten by the host's values when the worker starts (pool.py sends them).
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


# -- size checks ----------------------------------------------------------------------

SEQUENCES = (str, bytes, list, tuple, FrozenList)


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
    if ta in SEQUENCES and type(b) in SEQUENCES:
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
    FrozenList: frozenset({"index", "count"}),
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


SUBSCRIPTABLE = frozenset({str, bytes, list, tuple, FrozenList, dict, MappingProxyType, range})
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
