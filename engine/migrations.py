"""Numbered plain-SQL migrations, the kernel's and each plugin's, under an advisory lock.

A migration source is a directory of files named ``NNNN_description.sql``. The kernel's
source is applied first, then plugins' in the order the plugin manager lists them
(bundled tuple order, then third-party by name), so the order is stable. Each applied
file is recorded in ``keystage_migrations`` under its owner's name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

import asyncpg

from .errors import StartupError

KERNEL = "keystage"
KERNEL_SQL = Path(__file__).parent / "sql"
# Any constant works; it only has to be the same for every keystage process.
ADVISORY_LOCK_ID = 0x6B657973  # "keys"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclasses.dataclass(frozen=True)
class Migration:
    owner: str
    number: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def read_directory(owner: str, directory: Path) -> list[Migration]:
    """Read the migrations of one owner; a badly named file is an error, not skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        raise StartupError(f"plugin {owner}: migrations directory {directory} does not exist")
    migrations = []
    seen: dict[int, str] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _NAME.match(path.name)
        if not match:
            raise StartupError(f"{owner}: migration file {path.name} is not named NNNN_description.sql")
        number = int(match.group(1))
        if number in seen:
            raise StartupError(f"{owner}: migrations {seen[number]} and {path.name} share number {number}")
        seen[number] = path.name
        migrations.append(Migration(owner, number, match.group(2), path.read_text(encoding="utf-8")))
    return migrations


async def apply(conn: asyncpg.Connection, sources: Iterable[tuple[str, Path]]) -> list[Migration]:
    """Apply what is pending of ``sources`` (owner, directory), kernel first. Returns what was applied.

    Holds a session advisory lock for the whole run, so concurrent starters queue up and
    the later ones find nothing left to do. Each file runs in its own transaction.
    """
    all_sources = [(KERNEL, KERNEL_SQL), *[(o, d) for o, d in sources if o != KERNEL]]
    pending_by_owner = [read_directory(owner, directory) for owner, directory in all_sources]
    applied: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS keystage_migrations (
                   owner text NOT NULL, number integer NOT NULL, name text NOT NULL,
                   checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (owner, number))"""
        )
        rows = await conn.fetch("SELECT owner, number, checksum FROM keystage_migrations")
        done = {(r["owner"], r["number"]): r["checksum"] for r in rows}
        for migrations in pending_by_owner:
            for migration in migrations:
                if (migration.owner, migration.number) in done:
                    continue
                try:
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await conn.execute(
                            "INSERT INTO keystage_migrations (owner, number, name, checksum) VALUES ($1, $2, $3, $4)",
                            migration.owner, migration.number, migration.name, migration.checksum,
                        )
                except asyncpg.PostgresError as exc:
                    raise StartupError(
                        f"migration {migration.owner} {migration.number:04d}_{migration.name} failed: {exc}"
                    ) from None
                applied.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)
    return applied


async def status(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    exists = await conn.fetchval("SELECT to_regclass('keystage_migrations') IS NOT NULL")
    if not exists:
        return []
    return await conn.fetch("SELECT owner, number, name, applied_at FROM keystage_migrations ORDER BY applied_at, owner, number")
