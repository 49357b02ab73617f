"""Users and groups: the core identity data every stage, policy and provider reads."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from typing import TYPE_CHECKING, Any

import asyncpg

from .errors import KeystageError

if TYPE_CHECKING:
    from .runtime import Keystage

USERNAME_MAX = 150
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class UserError(KeystageError):
    """Invalid user data; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclasses.dataclass(frozen=True)
class User:
    id: int
    username: str
    email: str | None
    display_name: str
    password_hash: str | None = dataclasses.field(repr=False)
    is_active: bool
    is_superuser: bool
    attributes: dict[str, Any]
    preferred_locale: str | None
    created_at: dt.datetime
    last_login_at: dt.datetime | None
    password_changed_at: dt.datetime | None = None
    # Moves whenever the user or their group memberships change (engine/sql/0005_versions.sql).
    version: int = 0

    @classmethod
    def from_record(cls, row: asyncpg.Record, prefix: str = "") -> User:
        data = {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)} if prefix else dict(row)
        data["attributes"] = json.loads(data["attributes"]) if isinstance(data["attributes"], str) else data["attributes"]
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class Group:
    id: int
    name: str
    parent_id: int | None
    is_superuser: bool
    attributes: dict[str, Any]


_USER_COLUMNS = (
    "id, username, email, display_name, password_hash, is_active, is_superuser, attributes, "
    "preferred_locale, created_at, last_login_at, password_changed_at, version"
)


def user_columns(alias: str, prefix: str = "") -> str:
    """The columns ``User.from_record`` reads, of table alias ``alias`` (named ``prefix`` + column): for a
    query that returns a user along with its own row (saves the round trip of ``Users.get``)."""
    return ", ".join(f"{alias}.{c.strip()} AS {prefix}{c.strip()}" for c in _USER_COLUMNS.split(","))


def validate_username(username: str) -> str:
    username = username.strip()
    if not username:
        raise UserError("username", "may not be empty")
    if len(username) > USERNAME_MAX:
        raise UserError("username", f"may be at most {USERNAME_MAX} characters long")
    if any(ch.isspace() or not ch.isprintable() for ch in username):
        raise UserError("username", "may not contain spaces or control characters")
    return username


def validate_email(email: str | None) -> str | None:
    if email is None or email.strip() == "":
        return None
    email = email.strip()
    if not _EMAIL.match(email) or len(email) > 254:
        raise UserError("email", f"not an email address: {email!r}")
    return email


class Users:
    """Reads and writes users and groups through the pool."""

    def __init__(self, keystage: Keystage) -> None:
        self.keystage = keystage

    @property
    def pool(self) -> asyncpg.Pool:
        return self.keystage.pool

    async def create(
        self,
        username: str,
        *,
        email: str | None = None,
        password: str | None = None,
        display_name: str = "",
        is_superuser: bool = False,
        attributes: dict[str, Any] | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> User:
        username = validate_username(username)
        email = validate_email(email)
        password_hash = await self.keystage.passwords.hash(password) if password is not None else None
        try:
            row = await (conn or self.pool).fetchrow(
                f"""INSERT INTO users (username, email, display_name, password_hash, password_changed_at,
                                       is_superuser, attributes)
                    VALUES ($1, $2, $3, $4, CASE WHEN $4::text IS NULL THEN NULL ELSE now() END, $5, $6::jsonb)
                    RETURNING {_USER_COLUMNS}""",
                username, email, display_name, password_hash, is_superuser, json.dumps(attributes or {}),
            )
        except asyncpg.UniqueViolationError as exc:
            field = "email" if "email" in (exc.constraint_name or "") else "username"
            raise UserError(field, "already taken") from None
        return User.from_record(row)

    async def get(self, user_id: int) -> User | None:
        row = await self.pool.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1", user_id)
        return User.from_record(row) if row else None

    async def find(self, identifier: str, *, fields: tuple[str, ...] = ("username", "email")) -> User | None:
        """Find a user by username or email, case-insensitively."""
        conditions = " OR ".join(f"lower({f}) = lower($1)" for f in fields if f in ("username", "email"))
        if not conditions:
            return None
        row = await self.pool.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM users WHERE {conditions} ORDER BY lower(username) = lower($1) DESC LIMIT 1",
            identifier.strip(),
        )
        return User.from_record(row) if row else None

    async def set_password(self, user_id: int, password: str) -> None:
        encoded = await self.keystage.passwords.hash(password)
        await self.pool.execute(
            "UPDATE users SET password_hash = $2, password_changed_at = now() WHERE id = $1", user_id, encoded
        )

    async def check_password(self, user: User | None, password: str) -> bool:
        """Verify a password, upgrading the stored hash when its parameters are outdated.

        Costs the same with an unknown user (``None``), an inactive one, or one without
        a password, so that timing does not reveal which accounts exist.
        """
        encoded = user.password_hash if user is not None and user.is_active else None
        result = await self.keystage.passwords.verify(encoded, password)
        if result.valid and result.new_hash and user is not None:
            await self.pool.execute(
                "UPDATE users SET password_hash = $2 WHERE id = $1 AND password_hash = $3",
                user.id, result.new_hash, user.password_hash,
            )
        return result.valid

    async def mark_login(self, user_id: int) -> None:
        await self.pool.execute("UPDATE users SET last_login_at = now() WHERE id = $1", user_id)

    async def create_group(self, name: str, *, parent_id: int | None = None,
                           attributes: dict[str, Any] | None = None) -> Group:
        if not name.strip():
            raise UserError("name", "may not be empty")
        try:
            row = await self.pool.fetchrow(
                "INSERT INTO groups (name, parent_id, attributes) VALUES ($1, $2, $3::jsonb) "
                "RETURNING id, name, parent_id, is_superuser, attributes",
                name.strip(), parent_id, json.dumps(attributes or {}),
            )
        except asyncpg.UniqueViolationError:
            raise UserError("name", "already taken") from None
        except asyncpg.ForeignKeyViolationError:
            raise UserError("parent", f"no group with id {parent_id}") from None
        return Group(row["id"], row["name"], row["parent_id"], row["is_superuser"], json.loads(row["attributes"]))

    async def add_member(self, group_id: int, user_id: int) -> None:
        await self.pool.execute(
            "INSERT INTO group_memberships (group_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            group_id, user_id,
        )

    async def remove_member(self, group_id: int, user_id: int) -> None:
        await self.pool.execute("DELETE FROM group_memberships WHERE group_id = $1 AND user_id = $2", group_id, user_id)

    async def group_ids(self, user_id: int) -> set[int]:
        """The groups a user belongs to, directly or through a parent chain (nested groups)."""
        rows = await self.pool.fetch(
            """WITH RECURSIVE g(id) AS (
                   SELECT group_id FROM group_memberships WHERE user_id = $1
                   UNION
                   SELECT groups.parent_id FROM groups JOIN g ON groups.id = g.id WHERE groups.parent_id IS NOT NULL
               ) SELECT id FROM g""",
            user_id,
        )
        return {r["id"] for r in rows}
