"""Codes and tokens: made, stored as digests, looked up, revoked (RFC 6749 4.1/6, RFC 7636, OIDC Core 3.1).

Functions here take what they need and return plain results; the HTTP glue is in endpoints.py.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
import time
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.errors import JoseError

from keystage.engine.applications import Application
from keystage.engine.users import User, user_columns

from .keys import keyring

if TYPE_CHECKING:
    from keystage.engine.runtime import Keystage

    from .config import OIDCConfig


USER_COLUMNS = user_columns("u")


def digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclasses.dataclass(frozen=True)
class Client:
    provider_id: int
    config: OIDCConfig
    application_slug: str | None
    application_id: int | None
    application_name: str | None
    version: str = ""  # md5 of the stored config: what "unchanged" means below
    application: Application | None = None
    mark: int | None = None  # ``keystage.changes.mark()`` taken before it was read


def _clients(keystage: Keystage) -> dict[str, Client]:
    """Clients as last read by this process, by client id. Trusted alone only while
    ``keystage.changes.fresh(client.mark)``; otherwise checked in the statement that uses them
    (``issue_opaque_if_unchanged``, ``redeem_code``)."""
    found = keystage.state.get("oidc_clients")
    if found is None:
        found = keystage.state["oidc_clients"] = {}
    return found


CLIENT_COLUMNS = """p.id AS provider_id, p.config, md5(p.config::text) AS version, a.id, a.slug, a.name,
                    a.description, a.launch_url, a.icon, a."group", a.provider_id AS app_provider_id,
                    a.policy_engine_mode"""
CLIENT_FROM = """providers p LEFT JOIN applications a ON a.provider_id = p.id"""
CLIENT_WHERE = """p.type = 'oidc' AND p.config ->> 'client_id' = $1"""


async def find_client(keystage: Keystage, client_id: str, db: Any = None) -> Client | None:
    """The OIDC provider with this client id (one query; the parsed config is reused while unchanged)."""
    mark = keystage.changes.mark()
    row = await (db or keystage.pool).fetchrow(
        f"SELECT {CLIENT_COLUMNS} FROM {CLIENT_FROM} WHERE {CLIENT_WHERE}", client_id)
    return client_from_row(keystage, client_id, row, mark)


def client_from_row(keystage: Keystage, client_id: str, row: Any, mark: int | None = None) -> Client | None:
    """The client of a row with ``CLIENT_COLUMNS`` (None: no such client); ``mark``: taken before the read."""
    from .config import OIDCConfig

    known = _clients(keystage)
    if row is None:
        known.pop(client_id, None)
        return None
    previous = known.get(client_id)
    if previous is not None and previous.provider_id == row["provider_id"] and previous.version == row["version"]:
        config = previous.config
    else:
        raw = row["config"]
        config = OIDCConfig.model_validate(json.loads(raw) if isinstance(raw, str) else raw)
    application = None
    if row["id"] is not None:
        application = Application(id=row["id"], slug=row["slug"], name=row["name"], description=row["description"],
                                  launch_url=row["launch_url"], icon=row["icon"], group=row["group"],
                                  provider_id=row["app_provider_id"], policy_engine_mode=row["policy_engine_mode"])
    client = Client(row["provider_id"], config, row["slug"], row["id"], row["name"], row["version"], application,
                    mark)
    if len(known) > 10_000:
        known.clear()
    known[client_id] = client
    return client


def remembered_client(keystage: Keystage, client_id: str) -> Client | None:
    return _clients(keystage).get(client_id)


async def issue_opaque_if_unchanged(db: Any, client: Client, *, grant_id: str, scope: str) -> Issued | None:
    """client_credentials with an opaque token in one statement, for a client this process has read
    before: the token is stored only if the provider's config is still exactly what was checked
    (same md5), so the answer depends on the database as it is now. None: changed or gone, take
    the ordinary path."""
    config = client.config
    access = new_secret()
    stored = await db.fetchval(
        """INSERT INTO oidc_tokens (token_hash, kind, grant_id, provider_id, user_id, scope, expires_at)
           SELECT $1, 'access', $2, p.id, NULL, $3, now() + make_interval(secs => $4)
           FROM providers p WHERE p.id = $5 AND md5(p.config::text) = $6
           RETURNING id""",
        digest(access), grant_id, scope, float(config.access_token_lifetime), client.provider_id, client.version)
    return Issued(access, config.access_token_lifetime, scope) if stored is not None else None


CODE_COLUMNS = ("code_hash, grant_id, provider_id, user_id, redirect_uri, scope, nonce, code_challenge, auth_time, "
                "expires_at")
# Commits without waiting for the WAL flush (synchronous_commit off for the statement's own transaction):
# a crash in the next few hundred ms loses the code, and the user's app hears invalid_grant and signs
# them in again. Nothing is granted by a lost write; waiting for the disk was a sixth of a signed-in
# user's authorization. (The redemption, which guards against replay, and everything else still wait.)
LOSSY = "(SELECT set_config('synchronous_commit', 'off', true)) AS lossy"


@dataclasses.dataclass(frozen=True)
class CodeDraft:
    """A code and the values of its row (``CODE_COLUMNS``), before it is stored."""
    code: str
    params: tuple[Any, ...]

    def same_grant(self, other: CodeDraft) -> bool:
        """Whether ``other`` stores the same thing (for another code value and grant id)."""
        return self.params[2:] == other.params[2:]


def draft_code(client: Client, *, user_id: int, redirect_uri: str, scope: str, nonce: str | None,
               code_challenge: str | None, auth_time: float) -> CodeDraft:
    code = new_secret()
    return CodeDraft(code, (digest(code), secrets.token_urlsafe(16), client.provider_id, user_id, redirect_uri, scope,
                            nonce, code_challenge, float(auth_time), float(client.config.code_lifetime)))


def code_values(first: int) -> str:
    """The SELECT list storing a ``CodeDraft`` passed as parameters ``$first`` onwards."""
    p = [f"${first + i}" for i in range(10)]
    p[8] = f"to_timestamp({p[8]})"
    p[9] = f"now() + make_interval(secs => {p[9]})"
    return ", ".join(p)


async def create_code(keystage: Keystage, client: Client, *, user_id: int, redirect_uri: str, scope: str,
                      nonce: str | None, code_challenge: str | None, auth_time: float) -> str:
    draft = draft_code(client, user_id=user_id, redirect_uri=redirect_uri, scope=scope, nonce=nonce,
                       code_challenge=code_challenge, auth_time=auth_time)
    await keystage.pool.execute(
        f"INSERT INTO oidc_codes ({CODE_COLUMNS}) SELECT {code_values(1)} FROM {LOSSY}", *draft.params)
    return draft.code


@dataclasses.dataclass
class Minted:
    """A grant's token secrets, made before they are stored (so that storing can share a statement)."""
    access: str | None  # an opaque access token
    jti: str | None  # a JWT access token's id
    refresh: str | None

    def rows(self, config: OIDCConfig, *, store_jwt: bool = True) -> list[tuple[bytes, str, float]]:
        """(digest, kind, lifetime) of what is stored: opaque tokens, the ids of user JWTs."""
        rows = []
        if self.access is not None:
            rows.append((digest(self.access), "access", float(config.access_token_lifetime)))
        elif self.jti is not None and store_jwt:
            rows.append((digest(self.jti), "access", float(config.access_token_lifetime)))
        if self.refresh is not None:
            rows.append((digest(self.refresh), "refresh", float(config.refresh_token_lifetime)))
        return rows


def mint(config: OIDCConfig, *, with_refresh: bool) -> Minted:
    jwt_format = config.access_token_format == "jwt"
    return Minted(None if jwt_format else new_secret(), new_secret() if jwt_format else None,
                  new_secret() if with_refresh else None)


async def redeem_code(keystage: Keystage, code: str, client: Client, minted: Minted, *, redirect_uri: str | None,
                      challenge: str | None, jkt: str | None, if_unchanged: bool = False) -> tuple[Any, User] | None:
    """Mark a code used, and store ``minted``'s tokens in the same statement when the code is good for
    ``client`` as the database says it is now (its provider, unused, unexpired, an active user, the
    same redirect URI, ``challenge`` = S256 of the verifier or None, a refresh token only for
    ``offline_access``). Returns the code's row (``previously_used``, ``expired``, ``stored``: how
    many tokens were stored) and its user; None if the code is unknown. The caller checks the row
    again (and revokes the grant if it disagrees). ``if_unchanged``: touch nothing unless the
    provider's config is still ``client.version``."""
    rows = minted.rows(client.config)
    row = await keystage.pool.fetchrow(
        f"""WITH old AS (SELECT used_at FROM oidc_codes WHERE code_hash = $1 FOR UPDATE),
            redeemed AS (
                UPDATE oidc_codes c SET used_at = now() FROM old, users u
                WHERE c.code_hash = $1 AND u.id = c.user_id
                      AND ($2::text IS NULL OR EXISTS (SELECT 1 FROM providers p
                                                       WHERE p.id = $3 AND md5(p.config::text) = $2))
                RETURNING c.grant_id, c.provider_id, c.user_id, c.redirect_uri, c.scope, c.nonce, c.code_challenge,
                          c.auth_time AS auth_at, extract(epoch FROM c.auth_time) AS auth_time,
                          c.expires_at < now() AS expired, old.used_at IS NOT NULL AS previously_used,
                          {USER_COLUMNS}),
            stored AS (
                INSERT INTO oidc_tokens (token_hash, kind, grant_id, provider_id, user_id, scope, auth_time,
                                         expires_at, dpop_jkt)
                SELECT t.h, t.k, r.grant_id, r.provider_id, r.user_id, r.scope, r.auth_at,
                       now() + make_interval(secs => t.l), $9
                FROM redeemed r, unnest($4::bytea[], $5::text[], $6::float8[]) AS t(h, k, l)
                WHERE r.provider_id = $3 AND NOT r.previously_used AND NOT r.expired AND r.is_active
                      AND r.redirect_uri = $7 AND r.code_challenge IS NOT DISTINCT FROM $8
                      AND (t.k <> 'refresh' OR 'offline_access' = ANY(string_to_array(r.scope, ' ')))
                RETURNING 1)
            SELECT r.*, (SELECT count(*) FROM stored) AS stored FROM redeemed r""",
        digest(code), client.version if if_unchanged else None, client.provider_id,
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], redirect_uri, challenge, jkt)
    return (row, User.from_record(row)) if row is not None else None


async def revoke_grant(keystage: Keystage, grant_id: str) -> None:
    await keystage.pool.execute(
        "UPDATE oidc_tokens SET revoked_at = now() WHERE grant_id = $1 AND revoked_at IS NULL", grant_id)


async def redeem_refresh(keystage: Keystage, token: str, *, rotate: bool, jkt: str | None = None) -> Any:
    """Mark a refresh token used (with rotation) and return it; a DPoP-bound one only with a proof by its
    key (RFC 9449 5), so that a request without it changes nothing."""
    used = "CASE WHEN t.dpop_jkt IS NULL OR t.dpop_jkt = $2 THEN now() ELSE t.used_at END" if rotate else "t.used_at"
    return await keystage.pool.fetchrow(
        f"""WITH old AS (SELECT used_at FROM oidc_tokens WHERE token_hash = $1 AND kind = 'refresh' FOR UPDATE)
            UPDATE oidc_tokens t SET used_at = {used} FROM old, users u
            WHERE t.token_hash = $1 AND t.kind = 'refresh' AND u.id = t.user_id
            RETURNING t.grant_id, t.provider_id, t.user_id, t.scope, extract(epoch FROM t.auth_time) AS auth_time,
                      t.dpop_jkt,
                      t.expires_at < now() AS expired, t.revoked_at IS NOT NULL AS revoked,
                      old.used_at IS NOT NULL AS previously_used, u.is_active""", digest(token), jkt)


@dataclasses.dataclass
class Issued:
    access_token: str
    expires_in: int
    scope: str
    refresh_token: str | None = None
    id_token: str | None = None
    token_type: str = "Bearer"

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"access_token": self.access_token, "token_type": self.token_type,
                                "expires_in": self.expires_in, "scope": self.scope}
        if self.refresh_token:
            body["refresh_token"] = self.refresh_token
        if self.id_token:
            body["id_token"] = self.id_token
        return body


async def sign(keystage: Keystage, alg: str, claims: dict[str, Any], typ: str | None = None, db: Any = None) -> str:
    key = await keyring(keystage).signing_key(alg, db)
    header = {"alg": alg, "kid": key.kid}
    if typ:
        header["typ"] = typ
    return jwt.encode(header, claims, key.key, algorithms=[alg])


def at_hash(access_token: str) -> str:
    half = hashlib.sha256(access_token.encode()).digest()[:16]
    return base64.urlsafe_b64encode(half).rstrip(b"=").decode()


async def issue(keystage: Keystage, client: Client, *, issuer: str, grant_id: str, subject: str,
                user_id: int | None, scope: str, auth_time: float | None, with_refresh: bool,
                id_claims: dict[str, Any] | None, db: Any = None, jkt: str | None = None,
                minted: Minted | None = None, stored: bool = False) -> Issued:
    """Make the access token (JWT or opaque), a refresh token and an ID token as asked, and store them
    in one statement (client_credentials JWTs are not stored: they have no user to deactivate).
    ``minted``: the secrets, made before (``stored``: and already stored, by ``redeem_code``)."""
    config = client.config
    now = int(time.time())
    if minted is None:
        minted = mint(config, with_refresh=with_refresh)
    rows = [] if stored else minted.rows(config, store_jwt=user_id is not None)
    if minted.jti is not None:
        jti = minted.jti
        access_claims: dict[str, Any] = {
            "iss": issuer, "sub": subject, "aud": config.client_id, "client_id": config.client_id,
            "iat": now, "exp": now + config.access_token_lifetime, "jti": jti, "scope": scope,
        }
        if jkt:
            access_claims["cnf"] = {"jkt": jkt}  # RFC 9449 6.1
        access = await sign(keystage, config.signing_alg, access_claims, typ="at+jwt", db=db)
    else:
        assert minted.access is not None
        access = minted.access
    issued = Issued(access, config.access_token_lifetime, scope, token_type="DPoP" if jkt else "Bearer")
    issued.refresh_token = minted.refresh
    if id_claims is not None:
        claims = {**id_claims, "iss": issuer, "sub": subject, "aud": config.client_id, "azp": config.client_id,
                  "iat": now, "exp": now + config.id_token_lifetime, "at_hash": at_hash(access)}
        if auth_time is not None:
            claims["auth_time"] = int(auth_time)
        issued.id_token = await sign(keystage, config.signing_alg, claims, db=db)
    if rows:
        await (db or keystage.pool).execute(
            """INSERT INTO oidc_tokens (token_hash, kind, grant_id, provider_id, user_id, scope, auth_time, expires_at,
                                        dpop_jkt)
               SELECT h, k, $3, $4, $5, $6, to_timestamp($7), now() + make_interval(secs => l), $9
               FROM unnest($1::bytea[], $2::text[], $8::float8[]) AS t(h, k, l)""",
            [r[0] for r in rows], [r[1] for r in rows], grant_id, client.provider_id, user_id, scope,
            auth_time, [float(r[2]) for r in rows], jkt)
    return issued


async def verify_jwt(keystage: Keystage, token: str, issuer: str, *, allow_expired: bool = False
                     ) -> dict[str, Any] | None:
    """The claims of a JWT this issuer signed (with a key still in JWKS) and that has not expired
    (``allow_expired``: an ``id_token_hint`` may have), else None."""
    try:
        decoded = jwt.decode(token, _Resolver(keystage), algorithms=["RS256", "ES256"])
    except (JoseError, ValueError, KeyError):
        return None
    claims = decoded.claims
    if claims.get("iss") != issuer or not isinstance(claims.get("exp"), int):
        return None
    if claims["exp"] < time.time() and not allow_expired:
        return None
    return claims


TOKEN_COLUMNS = """t.id, t.kind, t.grant_id, t.user_id, t.scope, t.provider_id, p.config ->> 'client_id' AS client_id,
                   t.dpop_jkt,
                   u.username, extract(epoch FROM t.expires_at)::bigint AS exp,
                   extract(epoch FROM t.created_at)::bigint AS iat"""


async def find_token(keystage: Keystage, token: str, issuer: str, *, kinds: tuple[str, ...] = ("access",)) -> Any:
    """A live stored token (JWT access tokens: verified, then found by their jti) with its client and user;
    None when it is not ours, expired, revoked, or its user is inactive. A client_credentials JWT (not
    stored) comes back as its claims (a dict) when valid."""
    key_hash = digest(token)
    claims = None
    if token.count(".") == 2:
        claims = await verify_jwt(keystage, token, issuer)
        if claims is None:
            return None
        key_hash = digest(str(claims.get("jti", "")))
    row = await keystage.pool.fetchrow(
        f"""SELECT {TOKEN_COLUMNS}
            FROM oidc_tokens t JOIN providers p ON p.id = t.provider_id LEFT JOIN users u ON u.id = t.user_id
            WHERE t.token_hash = $1 AND t.kind = ANY($2::text[]) AND t.revoked_at IS NULL AND t.expires_at > now()
                  AND (t.user_id IS NULL OR u.is_active)""", key_hash, list(kinds))
    if row is None and claims is not None and claims.get("sub") == claims.get("client_id"):
        return claims  # client_credentials: no user, not stored (client ids are never all digits)
    return row


async def find_access_token(keystage: Keystage, token: str, issuer: str) -> Any:
    """A live access token of a user (for userinfo), or None."""
    row = await find_token(keystage, token, issuer)
    return row if row is not None and not isinstance(row, dict) and row["user_id"] is not None else None


async def revoke(keystage: Keystage, token: str, issuer: str, provider_id: int) -> None:
    """RFC 7009: revoke ``token`` if it is this client's; a refresh token takes its whole grant with it."""
    row = await find_token(keystage, token, issuer, kinds=("access", "refresh"))
    if row is None or isinstance(row, dict) or row["provider_id"] != provider_id:
        return
    if row["kind"] == "refresh":
        await revoke_grant(keystage, row["grant_id"])
    else:
        await keystage.pool.execute("UPDATE oidc_tokens SET revoked_at = now() WHERE id = $1", row["id"])


class _Resolver:
    """joserfc key resolver: the process's keyring by ``kid`` (refreshed by the caller's endpoint)."""

    def __init__(self, keystage: Keystage) -> None:
        self.ring = keyring(keystage)

    def __call__(self, token: Any) -> Any:
        key = self.ring.verification_key(token.headers().get("kid", ""))
        if key is None:
            raise ValueError("unknown kid")
        return key.key
