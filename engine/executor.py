"""The executor: serves a plan one stage at a time. Both faces (HTML, JSON) call this.

An ``Outcome`` is what happened: a challenge to show (``component`` = the stage type, or
``access-denied``), or a ``redirect`` when the flow is over. ``advanced`` tells the HTML
face to redirect after a POST (POST-redirect-GET) instead of rendering.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pydantic

from . import events, i18n, planner, policy_engine
from .flow_context import LOGIN_HINT, PENDING_USER, REDIRECT, PlanContext
from .flows import Flow, load_flow
from .planner import Denied, Plan, PlanError
from .policy import PolicyRequest, PolicyResult
from .stage import (Cancel, Continue, Deny, FieldError, FlowInfo, Invalid, Redirect, Stage, StageContext,
                    StageResult)

if TYPE_CHECKING:
    from .request_info import RequestInfo
    from .runtime import Keystage
    from .sessions import Session, SessionManager

log = logging.getLogger("keystage.flows")
PLANS_KEY = "flow_plans"
NON_FIELD = "non_field_errors"
INJECTED_KEY = "injected_flows"
# Stages that need no input run one after another within a request; a flow that keeps
# looping (a misconfiguration) is stopped here instead of spinning.
MAX_STEPS_PER_REQUEST = 100


@dataclasses.dataclass
class Outcome:
    challenge: dict[str, Any]
    advanced: bool = False
    status: int = 200

    @property
    def component(self) -> str:
        return str(self.challenge["component"])


class Executor:
    """Runs flows for one request."""

    def __init__(self, keystage: Keystage, sessions: SessionManager, session: Session,
                 request: RequestInfo, translations: Any) -> None:
        self.keystage = keystage
        self.sessions = sessions
        self.session = session
        self.request = request
        self.translations = translations
        self._messages: list[str] = []

    def _(self, message: str) -> str:
        return str(self.translations.gettext(message))

    # -- public ---------------------------------------------------------------------

    async def get(self, slug: str, *, next_url: str | None = None, restart: bool = False,
                  login_hint: str | None = None) -> Outcome:
        flow = await load_flow(self.keystage, slug)
        if flow is None:
            return self._not_found()
        if restart:
            self._drop(slug)
        plan = self._load_plan(slug)
        if plan is None:
            hint = _clean_hint(login_hint)
            new = await self._new_plan(flow, next_url, {LOGIN_HINT.name: hint} if hint else None)
            if isinstance(new, Outcome):
                return new
            plan = new
        return await self._run(flow, plan)

    async def post(self, slug: str, response: Mapping[str, Any], *, next_url: str | None = None) -> Outcome:
        flow = await load_flow(self.keystage, slug)
        if flow is None:
            return self._not_found()
        plan = self._load_plan(slug)
        if plan is None:
            # No plan (expired, restarted elsewhere, corrupt): begin again, never a 500.
            if not self._messages:
                self._messages.append(self._("Your session expired. Please start again."))
            new = await self._new_plan(flow, next_url)
            if isinstance(new, Outcome):
                return new
            outcome = await self._run(flow, new)
            outcome.advanced = True
            return outcome
        planned = plan.current
        if planned is None:
            return await self._run(flow, plan)
        stage = self._instantiate(flow, plan, planned)
        if isinstance(stage, Outcome):
            return stage
        if response.get("component") != planned.stage_type:
            result: StageResult = Invalid({NON_FIELD: [FieldError(
                "wrong_component", self._("This answer does not belong to the current step. Please try again."))]})
        else:
            result = await stage.submit(response)
        return await self._handle(flow, plan, stage, result, interactive=True)

    # -- plans ------------------------------------------------------------------------

    def _plans(self) -> dict[str, Any]:
        plans = self.session.get(PLANS_KEY)
        return plans if isinstance(plans, dict) else {}

    def _load_plan(self, slug: str) -> Plan | None:
        raw = self._plans().get(slug)
        if raw is None:
            return None
        try:
            return Plan.from_json(raw)
        except PlanError as exc:
            log.info("dropping unusable plan for flow %s: %s", slug, exc)
            self._drop(slug)
            self._messages.append(self._("Something went wrong with your previous attempt. Please start again."))
            return None

    def _store(self, plan: Plan) -> None:
        plans = self._plans()
        plans[plan.flow_slug] = plan.as_json()
        self.session[PLANS_KEY] = plans

    def _drop(self, slug: str) -> None:
        plans = self._plans()
        if slug in plans:
            del plans[slug]
            self.session[PLANS_KEY] = plans

    async def _current_user(self) -> Any:
        if self.session.user_id is None:
            return None
        user = await self.keystage.users.get(self.session.user_id)
        return user if user is not None and user.is_active else None

    async def _new_plan(self, flow: Flow, next_url: str | None,
                        context: dict[str, Any] | None = None) -> Plan | Outcome:
        user = await self._current_user()
        result = await planner.plan(self.keystage, flow, user=user, request=self.request,
                                    redirect=next_url, context=context)
        if isinstance(result, Denied):
            if flow.denied_action == "continue":
                # The admin chose to send denied users on silently (e.g. back to the app).
                return Outcome({"component": "redirect", "to": next_url or "/"}, advanced=True)
            return self._denied(flow, result.result.messages)
        return result

    # -- running ----------------------------------------------------------------------

    def _flow_info(self, flow: Flow) -> dict[str, Any]:
        return {"slug": flow.slug, "title": self._(flow.title) if flow.title else "", "designation": flow.designation}

    def _instantiate(self, flow: Flow, plan: Plan, planned: planner.PlannedStage) -> Stage | Outcome:
        cls = self.keystage.stage_types.get(planned.stage_type)
        if cls is None:
            log.error("flow %s: stage type %r is not registered", flow.slug, planned.stage_type)
            self._drop(flow.slug)
            return self._denied(flow, (self._("This step is not available. Please contact your administrator."),))
        try:
            config = cls.validate_config(planned.config)
        except pydantic.ValidationError as exc:
            log.error("flow %s: stage %s has an invalid config: %s", flow.slug, planned.stage_type, exc)
            self._drop(flow.slug)
            return self._denied(flow, (self._("This step is not available. Please contact your administrator."),))
        ctx = StageContext(
            keystage=self.keystage, plan=PlanContext(plan.context), request=self.request, session=self.session,
            flow=FlowInfo(flow.slug, flow.title, flow.designation), translations=self.translations,
            login=self._login, logout=self._logout, binding_id=planned.binding_id,
        )
        return cls(ctx, config)

    async def _run(self, flow: Flow, plan: Plan, errors: Mapping[str, list[FieldError]] | None = None,
                   advanced: bool = False) -> Outcome:
        """Show the current stage's challenge, running stages that need no input on the way."""
        for _ in range(MAX_STEPS_PER_REQUEST):
            planned = plan.current
            if planned is None:
                return self._finish(flow, plan, advanced)
            if planned.re_evaluate_policies:
                result = await self._evaluate_again(flow, plan, planned)
                if not result.passing:
                    if not (result.inject_flow and await self._inject(plan, result.inject_flow)):
                        plan.index += 1
                    continue
            stage = self._instantiate(flow, plan, planned)
            if isinstance(stage, Outcome):
                return stage
            fields = await stage.challenge()
            if fields is None:
                result = await stage.submit({})
                outcome = await self._handle(flow, plan, stage, result, interactive=False, loop=False)
                if outcome is not None:
                    outcome.advanced = outcome.advanced or advanced
                    return outcome
                continue
            self._store(plan)
            challenge = {"component": planned.stage_type, "flow": self._flow_info(flow), **fields,
                         "response_errors": _errors_json(errors or {})}
            if self._messages:
                challenge["messages"] = list(self._messages)
            return Outcome(challenge, advanced=advanced)
        log.error("flow %s did not settle after %d steps", flow.slug, MAX_STEPS_PER_REQUEST)
        self._drop(flow.slug)
        return self._denied(flow, (self._("This step is not available. Please contact your administrator."),))

    async def _inject(self, plan: Plan, slug: str) -> bool:
        """Insert the stages of flow ``slug`` before the current one, once per plan."""
        injected = plan.context.setdefault(INJECTED_KEY, [])
        if slug in injected:
            return False
        other = await load_flow(self.keystage, slug)
        if other is None:
            log.error("policy asked to inject flow %r, which does not exist", slug)
            return False
        injected.append(slug)
        plan.stages[plan.index:plan.index] = [
            planner.PlannedStage(b.id, b.stage_id, b.stage_type, b.stage_config, False, b.invalid_response_action)
            for b in other.bindings
        ]
        return True

    async def _evaluate_again(self, flow: Flow, plan: Plan, planned: planner.PlannedStage) -> PolicyResult:
        bindings = await policy_engine.bindings_for(self.keystage, stage_binding_ids=[planned.binding_id])
        user_id = PlanContext(plan.context).get(PENDING_USER)
        user = await self.keystage.users.get(user_id) if user_id else None
        result = await policy_engine.evaluate(
            self.keystage, bindings.get(("stage_binding", planned.binding_id), []), flow.policy_engine_mode,
            PolicyRequest(self.keystage, user, self.request, plan.context,
                          flow={"slug": flow.slug, "designation": flow.designation}),
        )
        return result

    async def _handle(self, flow: Flow, plan: Plan, stage: Stage, result: StageResult, *,
                      interactive: bool, loop: bool = True) -> Outcome | None:
        planned = plan.current
        assert planned is not None
        if isinstance(result, Continue):
            plan.index += 1
            return await self._run(flow, plan, advanced=True) if loop else None
        if isinstance(result, Invalid):
            if not interactive:
                # A stage that asked nothing found a problem with what an earlier one collected
                # (e.g. a username already taken): go back to the last interactive step.
                plan.index = max(0, plan.index - 1)
                return await self._run(flow, plan, errors=result.errors)
            action = planned.invalid_response_action
            if action == "retry":
                return await self._run(flow, plan, errors=result.errors)
            if action == "restart_with_context":
                plan.index = 0
                return await self._run(flow, plan, errors=result.errors, advanced=True)
            self._drop(flow.slug)
            new = await self._new_plan(flow, PlanContext(plan.context).get(REDIRECT))
            if isinstance(new, Outcome):
                return new
            return await self._run(flow, new, errors=result.errors, advanced=True)
        if isinstance(result, Deny):
            self._drop(flow.slug)
            return self._denied(flow, (result.message,))
        if isinstance(result, Cancel):
            self._drop(flow.slug)
            self._messages.append(result.message)
            new = await self._new_plan(flow, PlanContext(plan.context).get(REDIRECT))
            if isinstance(new, Outcome):
                return new
            return await self._run(flow, new, advanced=True)
        if isinstance(result, Redirect):
            self._drop(flow.slug)
            return Outcome({"component": "redirect", "to": result.to}, advanced=True)
        log.error("stage %s returned %r, not a StageResult", planned.stage_type, result)
        self._drop(flow.slug)
        return self._denied(flow, (self._("This step is not available. Please contact your administrator."),))

    def _finish(self, flow: Flow, plan: Plan, advanced: bool) -> Outcome:
        self._drop(flow.slug)
        to = PlanContext(plan.context).get(REDIRECT) or "/"
        return Outcome({"component": "redirect", "to": to}, advanced=True)

    def _denied(self, flow: Flow, messages: tuple[str, ...]) -> Outcome:
        message = " ".join(self._(m) for m in messages if m) or self._("You are not allowed to continue.")
        return Outcome({"component": "access-denied", "flow": self._flow_info(flow), "message": message},
                       status=403)

    def _not_found(self) -> Outcome:
        return Outcome({"component": "not-found", "message": self._("There is no such page.")}, status=404)

    # -- session binding ----------------------------------------------------------------

    async def _login(self, user_id: int, *, remember: bool = False) -> None:
        await self.sessions.rotate(self.session)
        self.session.user_id = user_id
        self.session.remember = remember
        self.session.modified = True
        await self.keystage.users.mark_login(user_id)
        user = await self.keystage.users.get(user_id)
        if user is not None and user.preferred_locale:
            # Read by web_context.locale(): the user's preference, without a query per request. It
            # replaces a language picked before signing in; one picked afterwards wins over it.
            self.session.pop(i18n.LOCALE_SESSION_KEY, None)
            self.session[i18n.USER_LOCALE_SESSION_KEY] = {"user": user_id, "locale": user.preferred_locale}
        await events.record(self.keystage, events.Event(
            "login", user_id=user_id, username=user.username if user else None,
            client_ip=self.request.client_ip, user_agent=self.request.user_agent,
        ))

    async def _logout(self) -> None:
        user_id = self.session.user_id
        # The language chosen with ?locale= belongs to the browser, not the account: keep it.
        language = self.session.get(i18n.LOCALE_SESSION_KEY)
        await self.sessions.destroy(self.session)
        if language is not None:
            self.session[i18n.LOCALE_SESSION_KEY] = language
        if user_id is not None:
            await events.record(self.keystage, events.Event(
                "logout", user_id=user_id, client_ip=self.request.client_ip, user_agent=self.request.user_agent,
            ))


def _clean_hint(value: str | None) -> str | None:
    """A login hint as the client sent it, if it is a short printable identifier; else nothing."""
    if not value:
        return None
    value = value.strip()
    if not 0 < len(value) <= 254 or not value.isprintable():
        return None
    return value


def _errors_json(errors: Mapping[str, list[FieldError]]) -> dict[str, list[dict[str, str]]]:
    return {field: [e.as_json() for e in items] for field, items in errors.items()}

