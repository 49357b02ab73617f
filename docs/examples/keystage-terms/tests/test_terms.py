"""The terms stage in real flows, through the kit: ``flow`` (JSON face), ``keystage_client`` (HTML face)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from keystage.engine.testing import make_flow
from keystage_terms import TermsStage

PASSWORD = "correct horse battery staple"
TERMS = {"version": "2024-06", "url": "https://example.com/terms"}


async def login_flow(app: Any, slug: str = "login", **terms: str) -> None:
    await make_flow(app, slug, [("identification", {}), ("password", {}), ("terms", {**TERMS, **terms}),
                                ("user_login", {})])


async def sign_in(flow: Any, username: str, slug: str = "login", **query: str) -> dict[str, Any]:
    await flow.start(slug, **query)
    await flow.submit(uid_field=username)
    return await flow.submit(password=PASSWORD)


async def acceptances(app: Any) -> list[tuple[str, str]]:
    rows = await app.extensions["keystage"].pool.fetch(
        "SELECT u.username, t.version FROM terms_acceptances t JOIN users u ON u.id = t.user_id ORDER BY 1, 2")
    return [(r["username"], r["version"]) for r in rows]


def test_config_is_validated() -> None:
    assert TermsStage.validate_config(TERMS).version == "2024-06"
    for bad in ({"url": "https://example.com/terms"}, {**TERMS, "url": "not a url"}, {**TERMS, "colour": "red"}):
        with pytest.raises(pydantic.ValidationError):
            TermsStage.validate_config(bad)


async def test_terms_must_be_accepted_then_are_remembered(keystage_app: Any, flow: Any, user_factory: Any) -> None:
    await user_factory("alice", password=PASSWORD)
    await login_flow(keystage_app)
    challenge = await sign_in(flow, "alice")
    assert challenge["component"] == "terms"
    assert challenge["terms_version"] == "2024-06" and challenge["terms_url"] == "https://example.com/terms"

    await flow.submit()  # not ticked
    assert flow.component == "terms"
    assert flow.errors["accept"][0]["code"] == "required"
    assert await acceptances(keystage_app) == []

    assert (await flow.submit(accept="on"))["component"] == "redirect"
    assert await acceptances(keystage_app) == [("alice", "2024-06")]

    # Signed in again: the same version is not asked twice.
    assert (await sign_in(flow, "alice"))["component"] == "redirect"


async def test_a_new_version_is_asked_again(keystage_app: Any, flow: Any, user_factory: Any) -> None:
    await user_factory("bob", password=PASSWORD)
    await login_flow(keystage_app)
    await sign_in(flow, "bob")
    await flow.submit(accept="on")
    await login_flow(keystage_app, "login-v2", version="2025-01")
    assert (await sign_in(flow, "bob", "login-v2"))["component"] == "terms"
    await flow.submit(accept=True)
    assert await acceptances(keystage_app) == [("bob", "2024-06"), ("bob", "2025-01")]


@pytest.mark.parametrize(("locale", "text", "error"), [
    ("de", "Ich akzeptiere die Nutzungsbedingungen", "Bitte akzeptieren Sie die Nutzungsbedingungen"),
    ("fr", "J’accepte les conditions d’utilisation", "Veuillez accepter les conditions d’utilisation"),
])
async def test_translated(keystage_app: Any, keystage_client: Any, flow: Any, user_factory: Any,
                          locale: str, text: str, error: str) -> None:
    await user_factory("carla", password=PASSWORD)
    await login_flow(keystage_app)
    await sign_in(flow, "carla", locale=locale)
    await flow.submit()
    assert flow.errors["accept"][0]["message"].startswith(error)
    page = await (await keystage_client.get("/flows/login/", headers={"Accept": "text/html"})).get_data(as_text=True)
    assert text in page and 'type="checkbox"' in page and "version 2024-06" in page.lower().replace("(", " ")


async def test_without_an_authenticated_user_the_stage_denies(keystage_app: Any, flow: Any) -> None:
    await make_flow(keystage_app, "terms-only", [("terms", TERMS)])
    await flow.start("terms-only")
    assert (await flow.submit(accept="on"))["component"] == "access-denied"
    assert await acceptances(keystage_app) == []
