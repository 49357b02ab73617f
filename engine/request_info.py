"""The one place where what a stage or policy may know about the HTTP request is derived.

The client IP honours ``X-Forwarded-For`` only when the direct peer is one of the
configured trusted proxies (``KEYSTAGE_TRUSTED_PROXIES``), walking the header from the
right and stopping at the first address that is not a trusted proxy.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from typing import Any

from .config import Settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True)
class RequestInfo:
    client_ip: str
    user_agent: str
    locale: str
    path: str
    headers: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {"client_ip": self.client_ip, "user_agent": self.user_agent, "locale": self.locale}


def trusted_networks(settings: Settings) -> list[IPNetwork]:
    return [ipaddress.ip_network(item, strict=False) for item in settings.trusted_proxies]


def _is_trusted(address: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip(peer: str | None, forwarded_for: str | None, networks: Sequence[IPNetwork]) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy."""
    address = (peer or "0.0.0.0").strip()
    if not networks or not forwarded_for or not _is_trusted(address, networks):
        return _valid_or_unknown(address)
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, networks):
            return _valid_or_unknown(hop)
        address = hop
    return _valid_or_unknown(address)


def _valid_or_unknown(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return "0.0.0.0"


def from_request(request: Any, settings_networks: Sequence[IPNetwork], locale: str) -> RequestInfo:
    """Build ``RequestInfo`` from a Quart request."""
    return _build(request.remote_addr, list(request.headers.items()), request.path, settings_networks, locale)


def from_scope(scope: Any, settings_networks: Sequence[IPNetwork], locale: str) -> RequestInfo:
    """Build ``RequestInfo`` from an ASGI HTTP scope (for answers served before Quart)."""
    client = scope.get("client")
    items = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    return _build(client[0] if client else None, items, scope["path"], settings_networks, locale)


def _build(peer: str | None, items: list[tuple[str, str]], path: str, networks: Sequence[IPNetwork],
           locale: str) -> RequestInfo:
    first: dict[str, str] = {}
    for name, value in items:
        first.setdefault(name.lower(), value)
    ip = client_ip(peer, first.get("x-forwarded-for"), networks)
    agent = first.get("user-agent", "")[:512]
    headers = {k.lower(): v[:1024] for k, v in items[:64] if k.lower() != "cookie"}
    return RequestInfo(client_ip=ip, user_agent=agent, locale=locale, path=path, headers=headers)
