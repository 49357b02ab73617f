"""OpenID Connect provider: discovery, JWKS, authorization code (+PKCE), refresh, client credentials,
device authorization, PAR, DPoP, userinfo, introspection, revocation, RP-initiated logout.

Modules: ``config`` (the provider type and its settings), ``keys`` (signing keys), ``authorize``
(checking authorization requests), ``grants`` (the token endpoint, client authentication),
``tokens`` (codes and tokens), ``claims`` (claims per scope, property mappings), ``rfc7523``
(private_key_jwt), ``rfc8628`` (devices), ``rfc9449`` (DPoP), ``par``, ``logout``, ``cleanup``,
``decision`` (what an authorization request comes to), ``endpoints`` (HTTP glue), ``fastpath`` (the
token endpoint and signed-in authorization requests straight from ASGI), ``cli`` (``keystage keys``).
See docs/admin/oidc.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keystage.engine.hookspecs import hookimpl

from .config import OIDCProvider


@hookimpl
def register_provider_types() -> list[type]:
    return [OIDCProvider]


@hookimpl
def register_routes() -> list[Any]:
    from .endpoints import oidc_routes

    return [oidc_routes]


@hookimpl
def register_migrations() -> Path:
    return Path(__file__).parent / "sql"


@hookimpl
def before_serving(app: Any) -> None:
    from . import cleanup
    from .fastpath import AuthorizeFastPath, TokenFastPath

    if not isinstance(app.asgi_app, TokenFastPath):
        app.asgi_app = TokenFastPath(AuthorizeFastPath(app.asgi_app, app), app)
    cleanup.start(app.extensions["keystage"])


@hookimpl
async def after_serving(app: Any) -> None:
    from . import cleanup

    await cleanup.stop(app.extensions["keystage"])
