"""Prepare the database the OIDC bench runs keystage against (bench/oidc.json): migrations, defaults,
the bench clients (same ids and secret as the peer's bench-cc), a user for authflow.py.

    KEYSTAGE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/keystage_bench python bench/oidc_prepare.py
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import asyncpg

from keystage.engine.blueprints import apply_defaults
from keystage.engine.runtime import Keystage
from keystage.engine.testing import apply_blueprint_to, base_settings

SECRET_HASH = hashlib.sha256(b"bench-secret").hexdigest()  # the peer's secret is short: give its digest
BLUEPRINT = f"""
version: 1
metadata: {{name: oidc-bench}}
entries:
  - model: provider
    identifiers: {{name: bench-cc}}
    attrs:
      type: oidc
      config: {{client_id: bench-cc, client_secret_hash: {SECRET_HASH}, grant_types: [client_credentials],
               scopes: ["api:read"], access_token_format: jwt, signing_alg: RS256}}
  - model: application
    identifiers: {{slug: bench-cc}}
    attrs: {{name: bench cc, provider: bench-cc}}
  - model: provider
    identifiers: {{name: bench-cc-opaque}}
    attrs:
      type: oidc
      config: {{client_id: bench-cc-opaque, client_secret_hash: {SECRET_HASH}, grant_types: [client_credentials],
               scopes: ["api:read"], access_token_format: opaque}}
  - model: application
    identifiers: {{slug: bench-cc-opaque}}
    attrs: {{name: bench cc opaque, provider: bench-cc-opaque}}
  - model: provider
    identifiers: {{name: bench-spa}}
    attrs:
      type: oidc
      # Opaque access tokens, as the peer's in this flow (it signs JWT access tokens only for a resource).
      config: {{client_id: bench-spa, client_type: public, redirect_uris: ["http://127.0.0.1:19099/cb"],
               access_token_format: opaque,
               authorization_flow: default-provider-authorization-implicit-consent}}
  - model: application
    identifiers: {{slug: bench-spa}}
    attrs: {{name: bench spa, provider: bench-spa}}
"""


async def main() -> None:
    url = os.environ["KEYSTAGE_DATABASE_URL"]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    kernel = Keystage(base_settings(url, Path("/tmp/keystage-bench/ks-prepare")))
    await kernel.open(migrate=True)
    try:
        await apply_defaults(kernel)
        await apply_blueprint_to(kernel, BLUEPRINT)
        await kernel.users.create("alice", password="bench-password-alice")
    finally:
        await kernel.close()


if __name__ == "__main__":
    asyncio.run(main())
