"""``keystage blueprint apply|export``: the configuration as YAML files (engine/blueprints.py).

Registered on the main group at the end of engine/cli.py.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from .blueprints import ApplyReport, BlueprintError, apply, export, load
from .cli import fail, handle_errors, run_with_kernel, settings_from
from .logs import configure
from .runtime import Keystage


@click.group()
def blueprint() -> None:
    """Apply and export blueprints (YAML files describing flows, stages, policies, users, groups)."""


@blueprint.command("apply")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
@handle_errors
def apply_command(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Apply FILE... in one transaction: all of them, or nothing when one entry is wrong (exit 2)."""
    settings = settings_from(ctx)
    configure("WARNING")
    try:
        blueprints = [load(path) for path in files]
    except BlueprintError as exc:
        fail(str(exc), 2)

    async def work(keystage: Keystage) -> ApplyReport:
        return await apply(keystage, blueprints)

    try:
        report = run_with_kernel(settings, work)
    except BlueprintError as exc:
        fail(str(exc), 2)
    for change in report.changed:
        click.echo(str(change))
    click.echo(report.summary())


@blueprint.command("export")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of standard output.")
@click.option("--include-password-hashes", is_flag=True,
              help="Include users' password hashes (treat the file as a secret).")
@click.pass_context
@handle_errors
def export_command(ctx: click.Context, output: Path | None, include_password_hashes: bool) -> None:
    """Write flows, stages, bindings, policies, groups and users as one blueprint."""
    settings = settings_from(ctx)
    configure("WARNING")

    async def work(keystage: Keystage) -> str:
        return await export(keystage, include_password_hashes=include_password_hashes)

    text = run_with_kernel(settings, work)
    if output is None:
        click.echo(text, nl=False)
        return
    # Written next to the target and renamed, so a failed export never leaves half a file;
    # private (0600) because it may hold hashes and users' data.
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.resolve().parent)
    except OSError as exc:
        fail(f"{output}: cannot write: {exc.strerror or exc}", 1)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    click.echo(f"exported to {output}", err=True)
