"""The ``keystage`` command line.

Every command resolves settings the same way and works whether or not ``keystage
serve`` runs on the same data directory: the embedded PostgreSQL is shared between
processes and stops when the last one lets go of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from .config import EMBEDDED_URL_ENV, Settings, load_settings
from .embedded import EmbeddedPostgres
from .errors import ConfigError, KeystageError
from .logs import configure
from .runtime import Keystage

T = TypeVar("T")


def fail(message: str, code: int = 1) -> None:
    click.echo(f"keystage: {message}", err=True)
    sys.exit(code)


def settings_from(ctx: click.Context, **overrides: Any) -> Settings:
    try:
        return load_settings(config_file=ctx.obj.get("config"), overrides=overrides)
    except ConfigError as exc:
        fail(str(exc), 2)
        raise  # unreachable


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[None]:
    """Make the database reachable for this command: the embedded server when none is configured."""
    if not settings.embedded_database:
        yield
        return
    if os.environ.get(EMBEDDED_URL_ENV):
        yield
        return
    server = EmbeddedPostgres(settings.data_dir)
    os.environ[EMBEDDED_URL_ENV] = server.start()
    try:
        yield
    finally:
        os.environ.pop(EMBEDDED_URL_ENV, None)
        server.stop()


def run_with_kernel(settings: Settings, work: Callable[[Keystage], Awaitable[T]], *, migrate: bool = True) -> T:
    # Plugins load before any database starts: a broken plugin fails at once, with one line.
    keystage = Keystage(settings)

    async def main() -> T:
        await keystage.open(migrate=migrate)
        try:
            return await work(keystage)
        finally:
            await keystage.close()

    with database(settings):
        return asyncio.run(main())


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc), 2)
        except KeystageError as exc:
            fail(str(exc), 1)

    return wrapper


@click.group()
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file with settings (environment variables KEYSTAGE_* win over it).")
@click.version_option(package_name="keystage")
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """keystage: an identity provider."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


@main.command()
@click.option("--listen", help="HOST:PORT to listen on (default 127.0.0.1:9000).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes.")
@click.pass_context
@handle_errors
def serve(ctx: click.Context, listen: str | None, workers: int) -> None:
    """Serve keystage over HTTP."""
    from .serve import serve as run_server

    settings = settings_from(ctx, listen=listen)
    configure(settings.log_level)
    if listen:
        os.environ["KEYSTAGE_LISTEN"] = listen
    if ctx.obj.get("config"):
        os.environ["KEYSTAGE_CONFIG"] = str(Path(ctx.obj["config"]).resolve())
    sys.exit(run_server(settings, workers=workers))


@main.command()
@click.pass_context
@handle_errors
def migrate(ctx: click.Context) -> None:
    """Apply pending database migrations (the kernel's and every enabled plugin's)."""
    settings = settings_from(ctx)
    configure("WARNING")

    async def work(keystage: Keystage) -> list[Any]:
        return await keystage.migrate()

    applied = run_with_kernel(settings, work, migrate=False)
    for migration in applied:
        click.echo(f"applied {migration.owner} {migration.number:04d}_{migration.name}")
    if not applied:
        click.echo("no pending migrations")


@main.group()
def plugins() -> None:
    """Inspect plugins."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handle_errors
def plugins_list(ctx: click.Context, as_json: bool) -> None:
    """List bundled and installed plugins, whether enabled, and the hooks they implement."""
    settings = settings_from(ctx)
    configure("WARNING")
    infos = Keystage(settings).plugins.list()
    if as_json:
        click.echo(json.dumps([info.__dict__ for info in infos], indent=2))
        return
    width = max([len(i.name) for i in infos] + [4])
    click.echo(f"{'NAME':<{width}}  {'VERSION':<10}  {'ORIGIN':<11}  {'ENABLED':<7}  HOOKS")
    for info in infos:
        enabled = "yes" if info.enabled else "no"
        hooks = ", ".join(info.hooks) or "-"
        click.echo(f"{info.name:<{width}}  {info.version:<10}  {info.origin:<11}  {enabled:<7}  {hooks}")


@main.group()
def user() -> None:
    """Manage users."""


@user.command("create")
@click.argument("username")
@click.option("--email", help="Email address.")
@click.option("--superuser", is_flag=True, help="Give the user every permission.")
@click.option("--password-stdin", is_flag=True, required=True,
              help="Read the password from standard input (first line).")
@click.pass_context
@handle_errors
def user_create(ctx: click.Context, username: str, email: str | None, superuser: bool, password_stdin: bool) -> None:
    """Create a user. The password is read from standard input so that it stays out of shell history."""
    from .users import UserError

    settings = settings_from(ctx)
    configure("WARNING")
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        fail("no password on standard input", 2)

    async def work(keystage: Keystage) -> Any:
        return await keystage.users.create(username, email=email, password=password, is_superuser=superuser)

    try:
        created = run_with_kernel(settings, work)
    except UserError as exc:
        fail(str(exc), 2)
    click.echo(f"created user {created.username} (id {created.id}){' as superuser' if superuser else ''}")


@main.group()
def config() -> None:
    """Inspect configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print the effective settings, secrets masked."""
    values = settings_from(ctx).masked()
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    for name, value in values.items():
        click.echo(f"{name} = {json.dumps(value)}")


from .cli_blueprint import blueprint  # noqa: E402  (imports the helpers above)

main.add_command(blueprint)

from .cli_policy import policy  # noqa: E402  (imports the helpers above)

main.add_command(policy)

from .cli_i18n import i18n  # noqa: E402

main.add_command(i18n)

from .cli_plugin import plugin  # noqa: E402

main.add_command(plugin)

from .cli_security import security  # noqa: E402

main.add_command(security)

from keystage.plugins.providers.oidc.cli import keys  # noqa: E402

main.add_command(keys)
