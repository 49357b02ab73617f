"""SAML 2.0 identity provider: signed metadata, SSO over the HTTP-Redirect and HTTP-POST bindings
(SP- and IdP-initiated), single logout. pysaml2 speaks the protocol and signs through ``xmlsec1``.

Modules: ``config`` (the provider type and its settings), ``metadata`` (SP metadata in, the SP's
description for pysaml2), ``keys`` (per-provider key and certificate, persistent-NameID key),
``server`` (pysaml2's Server per provider), ``service_providers`` (finding one by application),
``messages`` (what every request from an SP must pass), ``sso``, ``slo``, ``attributes``,
``endpoints`` (HTTP glue). See docs/admin/saml.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from keystage.engine.hookspecs import hookimpl

from .config import SAMLProvider

log = logging.getLogger("keystage.saml")


@hookimpl
def register_provider_types() -> list[type]:
    return [SAMLProvider]


@hookimpl
def register_routes() -> list[Any]:
    from .endpoints import saml_routes

    return [saml_routes]


@hookimpl
def register_migrations() -> Path:
    return Path(__file__).parent / "sql"


@hookimpl
async def before_serving(app: Any) -> None:
    from .server import SigningUnavailable, xmlsec_binary

    keystage = app.extensions["keystage"]
    try:
        xmlsec_binary()
    except SigningUnavailable as exc:
        count = await keystage.pool.fetchval("SELECT count(*) FROM providers WHERE type = 'saml'")
        if count:
            log.error("SAML: %d provider(s) configured, but signing cannot work: %s", count, exc)


@hookimpl
async def after_serving(app: Any) -> None:
    from . import keys

    keys.close(app.extensions["keystage"])
