"""``keystage keys rotate|list``: the OIDC signing keys. Registered on the main group in engine/cli.py."""

from __future__ import annotations

import click

from keystage.engine.cli import handle_errors, run_with_kernel, settings_from
from keystage.engine.runtime import Keystage


@click.group()
def keys() -> None:
    """Manage the OpenID Connect signing keys."""


@keys.command("rotate")
@click.option("--alg", type=click.Choice(["RS256", "ES256"]), default="RS256", show_default=True)
@click.option("--publish-ahead", type=click.IntRange(0, 30 * 86400), default=3600, show_default=True,
              help="Seconds the new key is published in JWKS before it signs (longer than relying parties "
                   "cache JWKS).")
@click.pass_context
@handle_errors
def rotate(ctx: click.Context, alg: str, publish_ahead: int) -> None:
    """Add a new signing key; the old one stays in JWKS until the tokens it signed have expired."""
    from .keys import rotate as rotate_keys

    settings = settings_from(ctx)

    async def work(kernel: Keystage) -> str:
        return await rotate_keys(kernel, alg, publish_ahead=publish_ahead)

    kid = run_with_kernel(settings, work)
    click.echo(f"new {alg} key {kid}: in JWKS now, signs in {publish_ahead} s")


@keys.command("list")
@click.pass_context
@handle_errors
def list_keys(ctx: click.Context) -> None:
    """The keys in JWKS, with when each signs from and leaves."""
    settings = settings_from(ctx)

    async def work(kernel: Keystage) -> list[dict[str, str]]:
        rows = await kernel.pool.fetch(
            "SELECT kid, alg, signs_from, retire_at FROM oidc_signing_keys ORDER BY alg, signs_from")
        return [{k: str(v) for k, v in dict(r).items()} for r in rows]

    for row in run_with_kernel(settings, work):
        click.echo(f"{row['kid']}  {row['alg']}  signs from {row['signs_from']}  retires {row['retire_at']}")
