"""The SP behind an application: its provider's configuration, keys and pysaml2 server, found by
the application's slug (what SAML URLs carry) with one query."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from keystage.engine.applications import COLUMNS, Application

from .config import SAMLConfig
from .keys import ProviderKeys, key_store
from .server import server_for, urls

if TYPE_CHECKING:
    from saml2.server import Server

    from keystage.engine.runtime import Keystage


@dataclasses.dataclass(frozen=True)
class ServiceProvider:
    provider_id: int
    provider_name: str
    config: SAMLConfig
    application: Application
    keys: ProviderKeys
    server: Server
    urls: dict[str, str]


def _configs(keystage: Keystage) -> dict[int, tuple[str, SAMLConfig]]:
    return keystage.state.setdefault("saml_configs", {})


async def find(keystage: Keystage, slug: str) -> ServiceProvider | None:
    """The SAML provider of application ``slug``; None when there is none (or it is not SAML)."""
    columns = ", ".join(f"a.{c.strip()}" for c in COLUMNS.split(","))
    row = await keystage.pool.fetchrow(
        f"""SELECT {columns}, p.name AS provider_name, p.config, md5(p.config::text) AS version
            FROM applications a JOIN providers p ON p.id = a.provider_id
            WHERE a.slug = $1 AND p.type = 'saml'""", slug)
    if row is None:
        return None
    cached = _configs(keystage).get(row["provider_id"])
    if cached is not None and cached[0] == row["version"]:
        config = cached[1]
    else:
        raw: Any = row["config"]
        config = SAMLConfig.model_validate(json.loads(raw) if isinstance(raw, str) else raw)
        _configs(keystage)[row["provider_id"]] = (row["version"], config)
    app = Application.from_row(row)
    keys = await key_store(keystage).get(row["provider_id"], app.name)
    base = str(keystage.settings.external_url).rstrip("/")
    server = server_for(keystage.state, row["provider_id"], config, keys, base, app.slug, app.name)
    return ServiceProvider(row["provider_id"], row["provider_name"], config, app, keys, server, urls(base, app.slug))
