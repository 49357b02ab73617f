"""The signed-in user's authenticators page: list, remove with a fresh password, links to enrol."""

from __future__ import annotations

import re
from typing import Any

from keystage.engine.testing import FlowDriver, make_flow
from keystage.stages.authenticator_static import new_code, replace_codes

HTML = {"Accept": "text/html"}


async def page(client: Any, **kwargs: Any) -> tuple[int, str]:
    response = await client.get("/settings/authenticators/", headers=HTML, **kwargs)
    return response.status_code, await response.get_data(as_text=True)


def csrf(body: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', body)
    assert match, body
    return match.group(1)


async def test_list_remove_with_fresh_password_and_enrol_links(keystage_app: Any) -> None:
    ks = keystage_app.extensions["keystage"]
    user = await ks.users.create("fay", password="right password")
    await make_flow(ks, "plain-login", [("identification", {}), ("password", {}), ("user_login", {})])
    await make_flow(ks, "add-app", [("authenticator_totp", {})], designation="stage_configuration",
                    title="Add an authenticator app")
    client = keystage_app.test_client()
    # Signed out: sent to sign in first, and back here afterwards.
    response = await client.get("/settings/authenticators/", headers=HTML)
    assert response.status_code == 302 and "next=%2Fsettings%2Fauthenticators%2F" in response.headers["Location"]
    driver = FlowDriver(client)
    await driver.start("plain-login")
    await driver.submit("identification", uid_field="fay")
    await driver.submit("password", password="right password")

    status, body = await page(client)
    assert status == 200 and "You have no authenticators yet." in body
    assert 'href="/flows/add-app/?next=%2Fsettings%2Fauthenticators%2F"' in body and "Add an authenticator app" in body

    await replace_codes(ks, user.id, [new_code() for _ in range(10)])
    status, body = await page(client)
    assert "Recovery codes" in body
    device = re.search(r'name="device" value="(static:\d+)"', body).group(1)  # type: ignore[union-attr]

    wrong = await client.post("/settings/authenticators/", form={
        "csrf_token": csrf(body), "device": device, "password": "nope"}, headers=HTML)
    assert wrong.status_code == 400 and "The password is not correct." in await wrong.get_data(as_text=True)
    assert await ks.pool.fetchval("SELECT count(*) FROM authenticator_static_codes") == 10

    forged = await client.post("/settings/authenticators/", form={
        "csrf_token": "forged", "device": device, "password": "right password"}, headers=HTML)
    assert forged.status_code == 403

    done = await client.post("/settings/authenticators/", form={
        "csrf_token": csrf(body), "device": device, "password": "right password"}, headers=HTML)
    assert done.status_code == 303 and done.headers["Location"] == "/settings/authenticators/?removed=1"
    assert await ks.pool.fetchval("SELECT count(*) FROM authenticator_static_codes") == 0
    status, body = await page(client, query_string={"removed": "1"})
    assert "The authenticator was removed." in body and "You have no authenticators yet." in body
    assert await ks.pool.fetchval("SELECT count(*) FROM events WHERE action = 'authenticator_removed'") == 1


async def test_someone_elses_device_cannot_be_removed(keystage_app: Any) -> None:
    ks = keystage_app.extensions["keystage"]
    other = await ks.users.create("hal", password="other password")
    await replace_codes(ks, other.id, [new_code() for _ in range(10)])
    other_device = await ks.pool.fetchval("SELECT min(id) FROM authenticator_static_codes")
    gil = await ks.users.create("gil", password="right password")
    await replace_codes(ks, gil.id, [new_code() for _ in range(10)])
    await make_flow(ks, "plain-login", [("identification", {}), ("password", {}), ("user_login", {})])
    client = keystage_app.test_client()
    driver = FlowDriver(client)
    await driver.start("plain-login")
    await driver.submit("identification", uid_field="gil")
    await driver.submit("password", password="right password")
    _, body = await page(client)
    answer = await client.post("/settings/authenticators/", form={
        "csrf_token": csrf(body), "device": f"static:{other_device}", "password": "right password"}, headers=HTML)
    assert answer.status_code == 404
    assert await ks.pool.fetchval("SELECT count(*) FROM authenticator_static_codes WHERE user_id = $1", other.id) == 10


async def test_an_account_without_password_confirms_with_a_code(keystage_app: Any) -> None:
    ks = keystage_app.extensions["keystage"]
    user = await ks.users.create("ida")  # no password: signs in another way
    codes = [new_code() for _ in range(10)]
    await replace_codes(ks, user.id, codes)
    client = keystage_app.test_client()
    # Signed in with a recovery code as the only factor (a flow made for the test).
    await make_flow(ks, "code-login", [("identification", {}), ("authenticator_validate", {}), ("user_login", {})])
    driver = FlowDriver(client)
    await driver.start("code-login")
    await driver.submit("identification", uid_field="ida")
    assert (await driver.submit(code=codes[0]))["component"] == "redirect"
    _, body = await page(client)
    assert 'name="code"' in body and 'name="password"' not in body
    device = re.search(r'name="device" value="(static:\d+)"', body).group(1)  # type: ignore[union-attr]
    wrong = await client.post("/settings/authenticators/", form={
        "csrf_token": csrf(body), "device": device, "code": "aaaaa-aaaaa"}, headers=HTML)
    assert wrong.status_code == 400 and "The code is not correct." in await wrong.get_data(as_text=True)
    done = await client.post("/settings/authenticators/", form={
        "csrf_token": csrf(body), "device": device, "code": codes[1]}, headers=HTML)
    assert done.status_code == 303
    assert await ks.pool.fetchval("SELECT count(*) FROM authenticator_static_codes") == 0
