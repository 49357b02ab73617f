"""What an authorization request comes to, once checked (``authorize.check_request``): framework-free.

``settle`` looks at the signed-in user, the application's policy bindings and the consent the
provider's authorization flow would give, and says what happens next. Two front-ends act on it: the
Quart routes in ``endpoints.py`` (every outcome: flows, pages, session bookkeeping) and
``fastpath.py`` (only ``Code``, the signed-in user's usual case; anything else goes on to Quart).
Nothing is written before the outcome is ``Code`` or ``DeviceApproved``, so a front-end may drop any
other outcome and let the other one decide again.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, Callable

from keystage.engine import applications
from keystage.engine.flows import load_flow, slug_for_designation
from keystage.engine.users import User, user_columns

from . import authorize as authz
from . import rfc8628, tokens

if TYPE_CHECKING:
    from keystage.engine.request_info import RequestInfo
    from keystage.engine.runtime import Keystage


@dataclasses.dataclass(frozen=True)
class SignIn:
    """The user must sign in (again) through flow ``slug`` (None: no authentication flow is designated)."""
    slug: str | None


@dataclasses.dataclass(frozen=True)
class Redirect:
    """Back to the client with an error (``login_required``, ``access_denied``, ``consent_required``)."""
    url: str


@dataclasses.dataclass(frozen=True)
class Invalid:
    """The client or its application is gone: an error page."""


@dataclasses.dataclass(frozen=True)
class Denied:
    """The application's policies refuse the user: the access-denied page."""


@dataclasses.dataclass(frozen=True)
class Consent:
    """The provider's authorization flow must run (``slug``; None: it does not exist)."""
    slug: str | None


@dataclasses.dataclass(frozen=True)
class DeviceApproved:
    pass


@dataclasses.dataclass(frozen=True)
class Code:
    """A code was issued: redirect to ``url``."""
    url: str


Outcome = SignIn | Redirect | Invalid | Denied | Consent | DeviceApproved | Code

# The shape of flow {slug}: how many stages, the type and config of the (first) one, whether any
# policy is bound to it or its stage bindings.
FLOW_SHAPE = """SELECT count(*) AS stages, min(s.type) AS type, min(s.config::text) AS config,
                       (SELECT count(*) FROM policy_bindings pb
                        WHERE pb.flow_id = f.id OR pb.stage_binding_id IN
                              (SELECT id FROM flow_stage_bindings WHERE flow_id = f.id)) AS bound
                FROM flows f JOIN flow_stage_bindings b ON b.flow_id = f.id JOIN stages s ON s.id = b.stage_id
                WHERE f.slug = {slug} GROUP BY f.id"""


@dataclasses.dataclass(frozen=True)
class Context:
    """What ``settle`` reads, read in one query (``load_context``)."""
    client: tokens.Client
    user: User | None
    application_unbound: bool  # no policy is bound to the client's application
    consent: Any  # ConsentConfig: the authorization flow is that one consent stage, nothing bound; else None
    stored: tokens.CodeDraft | None = None  # a code stored with the context (see ``load_context``)
    session: bytes | None = None  # the stored session, when read with the context (``session``)


async def load_context(keystage: Keystage, client_id: str, user_id: int, *,
                       draft: tokens.CodeDraft | None = None, version: str = "",
                       session: tuple[Callable[[str], str | None], str] | None = None) -> Context | None:
    """The client (with its application), the user, whether the application has policy bindings and the
    shape of the provider's authorization flow: one round trip where ``settle`` would make four. None
    when there is no such client.

    ``draft``: a code for this request, made from the client's config as of ``version``; it is stored
    in the same statement when the database says what ``settle`` would conclude from it (the same
    config, an active user, nothing bound, an implicit-consent flow), and ``Context.stored`` is it.
    ``settle`` still decides: a code it does not give out is never sent anywhere, and expires.

    ``session``: (a ``SessionManager.select_sql`` that has SQL, the store key) reads the session in the
    same statement (``Context.session``); the code is then stored only if the session exists."""
    from keystage.stages.consent import ConsentConfig

    from .config import OIDCConfig

    default_flow = OIDCConfig.model_fields["authorization_flow"].default
    session_param = f"${4 if draft is None else 6 + len(draft.params)}"  # after every other parameter
    session_sql = session[0](session_param) if session is not None else None
    session_column = f"{session_sql or 'NULL::bytea'} AS session_value"
    select = f"""SELECT {tokens.CLIENT_COLUMNS}, {user_columns("u", "u_")}, {session_column},
                   NOT EXISTS (SELECT 1 FROM policy_bindings pb WHERE pb.application_id = a.id) AS unbound,
                   shape.stages AS shape_stages, shape.type AS shape_type, shape.config AS shape_config,
                   shape.bound AS shape_bound
            FROM {tokens.CLIENT_FROM}
                 LEFT JOIN users u ON u.id = $2
                 LEFT JOIN LATERAL ({FLOW_SHAPE.format(slug="coalesce(p.config ->> 'authorization_flow', $3)")})
                           shape ON true
            WHERE {tokens.CLIENT_WHERE}"""
    extra = (session[1],) if session is not None and session_sql else ()
    mark = keystage.changes.mark()
    if draft is None:
        row = await keystage.pool.fetchrow(select, client_id, user_id, default_flow, *extra)
    else:
        row = await keystage.pool.fetchrow(
            f"""WITH ctx AS ({select}),
                stored AS (
                    INSERT INTO oidc_codes ({tokens.CODE_COLUMNS})
                    SELECT {tokens.code_values(6)} FROM ctx, {tokens.LOSSY}
                    WHERE ctx.version = $4 AND ctx.provider_id = $8 AND ctx.u_id = $9 AND ctx.u_is_active
                          AND ctx.id IS NOT NULL AND ctx.unbound AND ctx.shape_stages = 1
                          AND ctx.shape_type = 'consent' AND ctx.shape_bound = 0
                          AND coalesce(ctx.shape_config::jsonb ->> 'mode', $5) = 'implicit'
                          AND ({not extra} OR ctx.session_value IS NOT NULL)
                    RETURNING 1)
                SELECT ctx.*, EXISTS (SELECT 1 FROM stored) AS stored FROM ctx""",
            client_id, user_id, default_flow, version, ConsentConfig.model_fields["mode"].default, *draft.params,
            *extra)
    client = tokens.client_from_row(keystage, client_id, row, mark)
    if client is None:
        return None
    user = User.from_record(row, "u_") if row["u_id"] is not None else None
    consent = _consent_stage(row["shape_stages"], row["shape_type"], row["shape_config"], row["shape_bound"])
    stored = draft if draft is not None and row["stored"] else None
    return Context(client, user, bool(row["unbound"]) and client.application is not None, consent, stored,
                   row["session_value"])


async def settle(keystage: Keystage, record: dict[str, Any], *, user_id: int | None, auth_time: float,
                 request: RequestInfo | None, client: tokens.Client | None = None,
                 context: Context | None = None) -> Outcome:
    """``record``: the pending request (``Pending.as_record``); ``record["login_after"]`` and
    ``record["granted"]`` may be updated in it. ``user_id``/``auth_time``: the session's sign-in.
    ``context``: read for ``user_id`` and this request's client just before (``load_context``)."""
    user = None
    if context is not None:
        client, user = context.client, context.user
    elif user_id is not None:
        user = await keystage.users.get(user_id)
    if user is not None and not user.is_active:
        user = None
    fresh_enough = (user is not None and auth_time >= record["login_after"]
                    and (record["max_age"] is None or time.time() - auth_time <= record["max_age"]))
    if not fresh_enough:
        if "none" in record["prompt"]:
            return Redirect(_error_url(record, "login_required"))
        if user is not None:  # signed in, but too long ago (max_age) or prompt=login: sign in again
            record["login_after"] = max(record["login_after"], time.time() - 1)
        return SignIn(await slug_for_designation(keystage, "authentication"))
    assert user is not None
    if client is None:
        client = await tokens.find_client(keystage, record["client_id"])
    if client is None or client.application is None:
        return Invalid()
    app = client.application
    access = await applications.check_access(keystage, app, user, request,
                                             unbound=context is not None and context.application_unbound)
    if not access.passing:
        return Redirect(record["deny_url"]) if "none" in record["prompt"] else Denied()
    if not record.get("granted"):
        shortcut = context.consent if context is not None else \
            await consent_only_flow(keystage, client.config.authorization_flow)
        if shortcut is not None:
            # The flow is nothing but one consent stage with no policy bound: decide here what it would,
            # and only send the user to it when it has to ask.
            from keystage.stages.consent import decide

            decision = await decide(keystage, shortcut, user.id, app.id, record)
            if decision == "consent_required":
                return Redirect(record["consent_required_url"])
            record["granted"] = decision == "grant"
        if not record.get("granted"):
            flow = await load_flow(keystage, client.config.authorization_flow)
            return Consent(flow.slug if flow is not None else None)
    if record.get("device"):
        await rfc8628.decide(keystage, bytes.fromhex(record["device"]), user_id=user.id, auth_time=auth_time,
                             approved=True)
        return DeviceApproved()
    draft = tokens.draft_code(
        client, user_id=user.id, redirect_uri=record["redirect_uri"], scope=" ".join(record["scopes"]),
        nonce=record["nonce"], code_challenge=record["code_challenge"], auth_time=auth_time)
    stored = context.stored if context is not None else None
    if stored is not None and stored.same_grant(draft):
        code = stored.code
    else:
        code = await tokens.create_code(
            keystage, client, user_id=user.id, redirect_uri=record["redirect_uri"],
            scope=" ".join(record["scopes"]), nonce=record["nonce"], code_challenge=record["code_challenge"],
            auth_time=auth_time)
    return Code(authz.response_url(record["redirect_uri"], {"code": code, "state": record["state"],
                                                            "iss": record["issuer"]}))


def _error_url(record: dict[str, Any], error: str) -> str:
    return authz.response_url(record["redirect_uri"], {"error": error, "state": record["state"],
                                                       "iss": record["issuer"]})


async def consent_only_flow(keystage: Keystage, slug: str) -> Any:
    """The consent stage's config when flow ``slug`` is exactly one consent stage and nothing is bound
    to the flow or its stage binding (one query); None otherwise."""
    row = await keystage.pool.fetchrow(FLOW_SHAPE.format(slug="$1"), slug)
    return _consent_stage(row["stages"], row["type"], row["config"], row["bound"]) if row is not None else None


def _consent_stage(stages: int | None, stage_type: str | None, config: str | None, bound: int | None) -> Any:
    from keystage.stages.consent import ConsentConfig

    if stages != 1 or stage_type != "consent" or bound or config is None:
        return None
    try:
        return ConsentConfig.model_validate_json(config)
    except ValueError:
        return None  # the flow itself will say what is wrong
