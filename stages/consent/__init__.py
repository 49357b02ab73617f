"""Consent stage: the user lets an application have what it asks for (scopes), remembered for a while.

Bound in a provider's authorization flow. It works on the authorization request the provider
keeps in the session (``keystage.engine.applications``): without one it denies. ``mode:
implicit`` grants without asking; ``explicit`` asks unless a remembered consent covers every
requested scope (and the request did not say ``prompt=consent``), and asks again when scopes grow.
With ``prompt=none`` it never asks: the client gets ``consent_required``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic

from keystage.engine import applications
from keystage.engine.flow_context import PENDING_USER, REDIRECT
from keystage.engine.hookspecs import hookimpl
from keystage.engine.stage import Continue, Deny, Redirect, Stage, StageConfig, StageResult

TRUE_VALUES = (True, "granted", "on", "true", "1", "yes")


class ConsentConfig(StageConfig):
    mode: Literal["explicit", "implicit"] = "explicit"
    # How long a given consent is remembered, in seconds; 0 asks every time.
    consent_lifetime: int = pydantic.Field(default=30 * 86400, ge=0, le=10 * 365 * 86400)


async def remembered(keystage: Any, user_id: int, app_id: int, scopes: list[str]) -> bool:
    """Whether a live remembered consent of ``user_id`` for the application covers every scope."""
    return bool(await keystage.pool.fetchval(
        """SELECT scopes @> $3::text[] FROM consents
           WHERE user_id = $1 AND application_id = $2 AND (expires_at IS NULL OR expires_at > now())""",
        user_id, app_id, scopes))


async def decide(keystage: Any, config: ConsentConfig, user_id: int, app_id: int,
                 record: Mapping[str, Any]) -> Literal["grant", "ask", "consent_required"]:
    """What the stage does without input: grant, ask the user, or (``prompt=none``) refuse."""
    if config.mode == "implicit":
        return "grant"
    if "consent" not in record["prompt"] and config.consent_lifetime > 0 and \
            await remembered(keystage, user_id, app_id, record["scopes"]):
        return "grant"
    return "consent_required" if "none" in record["prompt"] else "ask"


class ConsentStage(Stage):
    type_name = "consent"
    Config = ConsentConfig
    template = "consent.html"
    template_folder = Path(__file__).parent / "templates"

    config: ConsentConfig

    def _request(self) -> tuple[str, dict[str, Any]] | None:
        return applications.pending_authorization_for(self.ctx.session, self.ctx.plan.get(REDIRECT))

    async def challenge(self) -> dict[str, Any] | None:
        found = self._request()
        user_id = self.ctx.plan.get(PENDING_USER)
        if found is None or user_id is None:
            return None  # submit() denies
        _, record = found
        if self.config.mode == "implicit":
            return None
        app = await applications.get_application(self.ctx.keystage, slug=record["application"])
        if app is None or await decide(self.ctx.keystage, self.config, user_id, app.id, record) != "ask":
            return None  # submit() grants, denies or sends consent_required to the client
        return {"application_name": record["application_name"],
                "descriptions": [self.ctx.gettext(d) for d in record["descriptions"]]}

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        found = self._request()
        user_id = self.ctx.plan.get(PENDING_USER)
        if found is None or user_id is None:
            return Deny(self.ctx.gettext("You are not allowed to continue."))
        request_id, record = found
        if self.config.mode == "implicit":
            applications.grant_pending_authorization(self.ctx.session, request_id)
            return Continue()
        app = await applications.get_application(self.ctx.keystage, slug=record["application"])
        if app is None:
            return Deny(self.ctx.gettext("You are not allowed to continue."))
        decision = await decide(self.ctx.keystage, self.config, user_id, app.id, record)
        if decision != "grant":
            if decision == "consent_required":
                return Redirect(record["consent_required_url"])
            if response.get("consent") not in TRUE_VALUES:
                return Redirect(record["deny_url"])
            if self.config.consent_lifetime > 0:
                await self.ctx.keystage.pool.execute(
                    """INSERT INTO consents (user_id, application_id, scopes, expires_at)
                       VALUES ($1, $2, $3::text[], now() + make_interval(secs => $4))
                       ON CONFLICT (user_id, application_id) DO UPDATE
                       SET scopes = ARRAY(SELECT DISTINCT unnest(consents.scopes || EXCLUDED.scopes)),
                           expires_at = EXCLUDED.expires_at""",
                    user_id, app.id, record["scopes"], float(self.config.consent_lifetime))
        applications.grant_pending_authorization(self.ctx.session, request_id)
        return Continue()


@hookimpl
def register_stage_types() -> list[type[Stage]]:
    return [ConsentStage]


@hookimpl
def register_migrations() -> Path:
    return Path(__file__).parent / "sql"
