"""User write stage: create or update the user from what prompt stages collected (enrollment, setup).

Reads ``username``, ``email``, ``name``/``display_name`` and ``password`` from the prompt
data. A problem (username taken, ...) sends the user back to the previous step with the
error on the field concerned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from keystage.engine import events
from keystage.engine.flow_context import AUTHENTICATED_BY, PENDING_USER, PROMPT_DATA
from keystage.engine.hookspecs import hookimpl
from keystage.engine.stage import Continue, Deny, FieldError, Invalid, Stage, StageConfig, StageResult
from keystage.engine.users import UserError

# Serialises "is there a superuser yet?" with creating one (initial setup raced by two browsers).
SUPERUSER_LOCK = 0x6B730001


class UserWriteConfig(StageConfig):
    user_creation_mode: Literal["always_create", "create_when_required", "never_create"] = "create_when_required"
    superuser: bool = False
    create_users_as_inactive: bool = False
    group: str | None = None


class UserWriteStage(Stage):
    type_name = "user_write"
    Config = UserWriteConfig

    config: UserWriteConfig

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        data = self.ctx.plan.get(PROMPT_DATA) or {}
        existing = self.ctx.plan.get(PENDING_USER)
        try:
            if existing is not None and self.config.user_creation_mode != "always_create":
                await self._update(existing, data)
                user_id = existing
                action = "user_updated"
            elif self.config.user_creation_mode == "never_create":
                return Deny(self.ctx.gettext("No account can be created here."))
            else:
                user_id = await self._create(data)
                if user_id is None:
                    return Deny(self.ctx.gettext("keystage is already set up."))
                action = "user_created"
        except UserError as exc:
            return Invalid({exc.field: [FieldError("invalid", self._message(exc))]})
        self.ctx.plan.set(PENDING_USER, user_id)
        if action == "user_created" and not self.config.create_users_as_inactive:
            self.ctx.plan.set(AUTHENTICATED_BY, [*(self.ctx.plan.get(AUTHENTICATED_BY) or []), "enrollment"])
        await events.record(self.ctx.keystage, events.Event(
            action, user_id=user_id, username=data.get("username"), client_ip=self.ctx.request.client_ip,
            user_agent=self.ctx.request.user_agent, context={"flow": self.ctx.flow.slug,
                                                             "superuser": self.config.superuser},
        ))
        return Continue()

    def _message(self, exc: UserError) -> str:
        if "already taken" in str(exc):
            if exc.field == "email":
                return self.ctx.gettext("This email address is already in use.")
            return self.ctx.gettext("This username is already taken.")
        return self.ctx.gettext("This value is not valid.")

    async def _create(self, data: Mapping[str, Any]) -> int | None:
        users = self.ctx.keystage.users
        username = data.get("username") or data.get("email")
        if not isinstance(username, str) or not username:
            raise UserError("username", "may not be empty")
        async with self.ctx.keystage.pool.acquire() as conn, conn.transaction():
            if self.config.superuser:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SUPERUSER_LOCK)
                if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE is_superuser AND is_active)"):
                    return None
            user = await users.create(
                username, email=data.get("email"), password=data.get("password"),
                display_name=str(data.get("name") or data.get("display_name") or ""),
                is_superuser=self.config.superuser, conn=conn,
            )
            if self.config.create_users_as_inactive:
                await conn.execute("UPDATE users SET is_active = false WHERE id = $1", user.id)
            if self.config.group:
                await conn.execute(
                    """INSERT INTO group_memberships (group_id, user_id)
                       SELECT id, $2 FROM groups WHERE lower(name) = lower($1) ON CONFLICT DO NOTHING""",
                    self.config.group, user.id,
                )
            return user.id

    async def _update(self, user_id: int, data: Mapping[str, Any]) -> None:
        import asyncpg

        from keystage.engine.users import validate_email

        sets, args = [], [user_id]
        if data.get("email"):
            args.append(validate_email(str(data["email"])))
            sets.append(f"email = ${len(args)}")
        name = data.get("name") or data.get("display_name")
        if name:
            args.append(str(name))
            sets.append(f"display_name = ${len(args)}")
        if sets:
            try:
                await self.ctx.keystage.pool.execute(f"UPDATE users SET {', '.join(sets)} WHERE id = $1", *args)
            except asyncpg.UniqueViolationError:
                raise UserError("email", "already taken") from None
        if data.get("password"):
            await self.ctx.keystage.users.set_password(user_id, str(data["password"]))


@hookimpl
def register_stage_types() -> list[type[Stage]]:
    return [UserWriteStage]
