"""``keystage security show|clear``: the brute-force counters (engine/throttle.py).

Registered on the main group at the end of engine/cli.py.
"""

from __future__ import annotations

import json
from typing import Any

import click

from .cli import fail, handle_errors, run_with_kernel, settings_from
from .logs import configure
from .runtime import Keystage
from .throttle import throttle_of


@click.group()
def security() -> None:
    """See and clear brute-force counters."""


@security.command("show")
@click.option("--user", "username", help="Only counters of this identifier (as typed at login, any case).")
@click.option("--ip", help="Only counters of this client IP address.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handle_errors
def show(ctx: click.Context, username: str | None, ip: str | None, as_json: bool) -> None:
    """List live counters, most recent failure first, with how long the next attempt must wait."""
    settings = settings_from(ctx)
    configure("WARNING")

    async def work(keystage: Keystage) -> list[dict[str, Any]]:
        throttle = throttle_of(keystage)
        return [{**c.as_json(), "retry_after": round(throttle.retry_after(c), 1)}
                for c in await throttle.list(username=username, ip=ip)]

    rows = run_with_kernel(settings, work)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no counters")
        return
    click.echo(f"{'scope':<8} {'identifier':<30} {'ip':<40} {'failures':>8} {'wait s':>8}  last failure")
    for row in rows:
        click.echo(f"{row['scope']:<8} {row['username'] or '-':<30} {row['ip'] or '-':<40} {row['failures']:>8} "
                   f"{row['retry_after']:>8}  {row['last_failure']}")


@security.command("clear")
@click.option("--user", "username", help="Clear the counters of this identifier.")
@click.option("--ip", help="Clear the counters of this client IP address.")
@click.option("--all", "everything", is_flag=True, help="Clear every counter.")
@click.pass_context
@handle_errors
def clear(ctx: click.Context, username: str | None, ip: str | None, everything: bool) -> None:
    """Clear counters (each block this ends is recorded as a brute_force_unblocked event)."""
    if username is None and ip is None and not everything:
        fail("say which counters to clear: --user, --ip (both to narrow down) or --all", 2)
    settings = settings_from(ctx)
    configure("WARNING")

    async def work(keystage: Keystage) -> int:
        return len(await throttle_of(keystage).clear(username=username, ip=ip, everything=everything))

    click.echo(f"cleared {run_with_kernel(settings, work)} counter(s)")
