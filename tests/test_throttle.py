"""Brute-force protection (engine/throttle.py), on PostgreSQL alone and with Redis.

Time is the throttle's clock, moved by the tests: no test sleeps through a delay.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from keystage.engine.app import create_app
from keystage.engine.runtime import Keystage
from keystage.engine.testing import FlowDriver, make_flow
from keystage.engine.throttle import DEFAULT_RULES, Throttle, throttle_of

THROTTLED = "Too many failed attempts. Please try again later."


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


class FromIP:
    """A test client whose requests come from ``ip`` (the ASGI scope's client address)."""

    def __init__(self, app: Any, ip: str) -> None:
        self.client = app.test_client()
        self.ip = ip

    async def get(self, path: str, **kwargs: Any) -> Any:
        return await self.client.get(path, scope_base={"client": (self.ip, 40000)}, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Any:
        return await self.client.post(path, scope_base={"client": (self.ip, 40000)}, **kwargs)


def unique_ip() -> str:
    return f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"


@pytest.fixture(params=["postgres", "redis"])
def settings(request: pytest.FixtureRequest, keystage_settings: Any) -> Any:
    if request.param == "redis":
        return dataclasses.replace(keystage_settings, redis_url=request.getfixturevalue("redis_url"))
    return keystage_settings


@pytest.fixture
async def app(settings: Any) -> AsyncIterator[Any]:
    app = create_app(settings, keystage=Keystage(settings))
    async with app.test_app():
        ks = app.extensions["keystage"]
        ks.state["throttle"] = Throttle(ks, clock=Clock())
        await make_flow(ks, "login", [("identification", {}), ("password", {"failed_attempts_before_cancel": 1000}),
                                      ("user_login", {})])
        yield app


def clock_of(app: Any) -> Clock:
    return throttle_of(app.extensions["keystage"]).clock  # type: ignore[return-value]


async def password_attempt(app: Any, ip: str, username: str, password: str) -> dict[str, Any]:
    driver = FlowDriver(FromIP(app, ip))
    await driver.start("login")
    await driver.submit("identification", uid_field=username)
    return await driver.submit("password", password=password)


def refused(answer: dict[str, Any]) -> bool:
    return any(e["code"] == "throttled" and e["message"] == THROTTLED
               for e in answer.get("response_errors", {}).get("password", []))


async def test_wrong_passwords_from_one_ip_grow_the_delay(app: Any) -> None:
    ks = app.extensions["keystage"]
    name = f"u{secrets.token_hex(4)}"
    await ks.users.create(name, password="right password")
    ip, clock, rule = unique_ip(), clock_of(app), DEFAULT_RULES["user_ip"]
    for _ in range(rule.delay_after):
        assert not refused(await password_attempt(app, ip, name, "wrong"))
    waits = []
    for _ in range(4):
        # Refused during the delay, right password or not; the refusal itself is not counted.
        answer = await password_attempt(app, ip, name, "right password")
        assert refused(answer) and answer["component"] == "password"
        throttle = throttle_of(ks)
        counter = (await throttle.load([("user_ip", name, ip)]))[("user_ip", name, ip)]
        assert counter is not None
        waits.append(throttle.retry_after(counter))
        clock.now += waits[-1] - 0.5
        assert refused(await password_attempt(app, ip, name, "wrong"))
        clock.now += 0.5
        assert not refused(await password_attempt(app, ip, name, "wrong"))
    assert waits == [1.0, 2.0, 4.0, 8.0]
    rows = await ks.pool.fetch("SELECT action, context FROM events WHERE action LIKE 'brute_force_%' ORDER BY id")
    actions = [r["action"] for r in rows]
    assert actions.count("brute_force_blocked") == 5  # user_ip, for each failure from the 5th on; ip not yet
    assert actions.count("brute_force_unblocked") == 4  # each wait that passed
    # After the last wait, the right password goes through and clears this client's counter.
    clock.now += 60
    assert (await password_attempt(app, ip, name, "right password"))["component"] == "redirect"
    assert await throttle_of(ks).score("user_ip", name, ip) == 0
    assert (await ks.pool.fetchval("SELECT context->>'reason' FROM events WHERE action = 'brute_force_unblocked' "
                                   "ORDER BY id DESC LIMIT 1")) in ("elapsed", "success")


async def test_same_account_from_another_ip_still_logs_in(app: Any) -> None:
    ks = app.extensions["keystage"]
    name = f"u{secrets.token_hex(4)}"
    await ks.users.create(name, password="right password")
    attacker, victim = unique_ip(), unique_ip()
    for _ in range(12):
        await password_attempt(app, attacker, name, "guess")
    assert refused(await password_attempt(app, attacker, name, "right password"))
    # No lockout denial of service: the owner, from a client that has not failed, gets in.
    assert (await password_attempt(app, victim, name, "right password"))["component"] == "redirect"
    # ... and the owner's success does not free the attacker.
    assert refused(await password_attempt(app, attacker, name, "right password"))


async def test_unknown_and_known_accounts_get_the_same_answers(app: Any) -> None:
    ks = app.extensions["keystage"]
    known = f"u{secrets.token_hex(4)}"
    await ks.users.create(known, password="right password")
    answers = {}
    for name in (known, f"nobody{secrets.token_hex(4)}"):
        ip = unique_ip()
        answers[name] = [await password_attempt(app, ip, name, "wrong") for _ in range(7)]
    known_answers, unknown_answers = answers.values()
    for a, b in zip(known_answers, unknown_answers):
        assert a["response_errors"] == b["response_errors"] and a["component"] == b["component"]


async def test_spraying_across_usernames_throttles_the_ip(app: Any) -> None:
    ks = app.extensions["keystage"]
    ip, rule = unique_ip(), DEFAULT_RULES["ip"]
    owner = f"u{secrets.token_hex(4)}"
    await ks.users.create(owner, password="right password")
    for index in range(rule.delay_after):
        assert not refused(await password_attempt(app, ip, f"spray{index}-{secrets.token_hex(2)}", "Winter2026!"))
    # Every username is fresh, yet the address waits now, even with a right password.
    assert refused(await password_attempt(app, ip, f"fresh-{secrets.token_hex(2)}", "Winter2026!"))
    assert refused(await password_attempt(app, ip, owner, "right password"))
    assert await ks.pool.fetchval(
        "SELECT count(*) FROM events WHERE action = 'brute_force_blocked' AND context->>'scope' = 'ip'") == 1
    # Other addresses are not affected.
    assert (await password_attempt(app, unique_ip(), owner, "right password"))["component"] == "redirect"


async def test_identification_page_password_is_throttled_too(app: Any) -> None:
    ks = app.extensions["keystage"]
    await make_flow(ks, "one-page", [("identification", {"show_password": True}), ("user_login", {})])
    name, ip = f"u{secrets.token_hex(4)}", unique_ip()
    await ks.users.create(name, password="right password")
    driver = FlowDriver(FromIP(app, ip))
    await driver.start("one-page")
    for _ in range(DEFAULT_RULES["user_ip"].delay_after):
        assert not refused(await driver.submit("identification", uid_field=name, password="wrong"))
    assert refused(await driver.submit("identification", uid_field=name, password="right password"))
    clock_of(app).now += 1.5
    assert (await driver.submit("identification", uid_field=name, password="right password"))["component"] == "redirect"


async def test_counters_survive_a_restart_with_the_store_emptied(settings: Any) -> None:
    name, ip = f"u{secrets.token_hex(4)}", unique_ip()
    clock = Clock()
    first = Keystage(settings)
    await first.open()
    try:
        throttle = first.state["throttle"] = Throttle(first, clock=clock)
        for _ in range(7):
            attempt = await throttle.check(username=name, ip=ip)
            await throttle.failed(attempt)
        assert (await throttle.check(username=name, ip=ip)).blocked
        if first.redis is not None:
            # This database's counters and marker only: other test runs may share the Redis.
            keys = [k async for k in first.redis.scan_iter(match=f"keystage:throttle:*{ip}*")]
            await first.redis.delete(*keys, f"keystage:{throttle.marker}")
        else:
            await first.pool.execute("DELETE FROM kv")
    finally:
        await first.close()
    second = Keystage(settings)
    await second.open()
    try:
        throttle = second.state["throttle"] = Throttle(second, clock=clock)
        attempt = await throttle.check(username=name.upper(), ip=ip)
        assert attempt.blocked and attempt.counters[("user_ip", name, ip)].failures == 7  # type: ignore[union-attr]
        if second.redis is not None:
            await throttle._warming  # type: ignore[misc]  # the copy back to Redis
            assert await second.kv.get(throttle.marker) == b"1"
            assert (await throttle.check(username=name, ip=ip)).blocked  # now read from Redis
        await throttle.close()
    finally:
        await second.close()


async def test_code_attempts_are_limited_per_user(keystage: Keystage) -> None:
    throttle = keystage.state["throttle"] = Throttle(keystage, clock=Clock())
    for index in range(DEFAULT_RULES["code"].delay_after):
        attempt = await throttle.check(username="alice", ip=unique_ip(), kind="code")
        assert not attempt.blocked
        await throttle.failed(attempt)
    # Another address changes nothing: the second factor is counted per user.
    assert (await throttle.check(username="alice", ip=unique_ip(), kind="code")).blocked
    assert not (await throttle.check(username="bob", ip=unique_ip(), kind="code")).blocked


async def test_no_permanent_lockout(keystage: Keystage) -> None:
    clock = Clock()
    throttle = Throttle(keystage, clock=clock)
    for _ in range(60):
        attempt = await throttle.check(username="x", ip="10.9.9.9")
        await throttle.failed(attempt)
    attempt = await throttle.check(username="x", ip="10.9.9.9")
    assert attempt.retry_after == DEFAULT_RULES["ip"].max_delay  # capped, not forever
    clock.now += DEFAULT_RULES["ip"].forget_after + 1
    attempt = await throttle.check(username="x", ip="10.9.9.9")
    assert not attempt.blocked and all(c is None for c in attempt.counters.values())


async def test_admin_clear_is_an_unblock_event(keystage: Keystage) -> None:
    throttle = Throttle(keystage, clock=Clock())
    for _ in range(6):
        await throttle.failed(await throttle.check(username="carol", ip="10.1.1.1"))
    assert (await throttle.check(username="carol", ip="10.1.1.1")).blocked
    listed = await throttle.list(username="Carol")
    assert {c.scope for c in listed} == {"user_ip", "user"}
    cleared = await throttle.clear(ip="10.1.1.1")
    assert {c.scope for c in cleared} == {"user_ip", "ip"}
    assert not (await throttle.check(username="carol", ip="10.1.1.1")).blocked
    assert await keystage.pool.fetchval(
        "SELECT count(*) FROM events WHERE action = 'brute_force_unblocked' AND context->>'reason' = 'admin'") == 1
    with pytest.raises(ValueError):
        await throttle.clear()


def test_security_show_and_clear_commands(tmp_path: Any, keystage_database_url: str) -> None:
    import asyncio
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from keystage.engine.testing import base_settings

    async def seed() -> None:
        kernel = Keystage(base_settings(keystage_database_url, tmp_path / "seed"))
        await kernel.open()
        try:
            throttle = Throttle(kernel)
            for _ in range(6):
                await throttle.failed(await throttle.check(username="Ivy", ip="192.0.2.44"))
        finally:
            await kernel.close()

    asyncio.run(seed())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYSTAGE_", "_KEYSTAGE_"))}
    env.update(KEYSTAGE_DATABASE_URL=keystage_database_url, KEYSTAGE_DATA_DIR=str(tmp_path / "data"))
    command = [str(Path(sys.executable).parent / "keystage"), "security"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)

    shown = run("show", "--ip", "192.0.2.44", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert {r["scope"] for r in rows} == {"user_ip", "ip"} and all(r["failures"] == 6 for r in rows)
    assert next(r for r in rows if r["scope"] == "user_ip")["retry_after"] > 0
    table = run("show", "--user", "ivy")
    assert "user_ip" in table.stdout and "ivy" in table.stdout and "192.0.2.44" in table.stdout
    refused = run("clear")
    assert refused.returncode == 2 and "--all" in refused.stderr
    cleared = run("clear", "--user", "IVY")
    assert cleared.returncode == 0 and "cleared 2 counter(s)" in cleared.stdout
    remaining = json.loads(run("show", "--json").stdout)
    assert [r["scope"] for r in remaining] == ["ip"]


async def test_attempts_sent_at_once_are_checked_one_at_a_time(settings: Any, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    import asyncio

    from keystage.engine.throttle import IN_FLIGHT

    monkeypatch.setattr("keystage.engine.throttle.IN_FLIGHT_WAIT", 0.4)  # how long the burst waits, then is refused
    kernel = Keystage(settings)
    await kernel.open()
    try:
        throttle = Throttle(kernel, clock=Clock())
        name, ip = f"burst{secrets.token_hex(3)}", unique_ip()
        attempts = await asyncio.gather(*[throttle.check(username=name, ip=ip) for _ in range(20)])
        allowed = [a for a in attempts if not a.blocked]
        assert len(allowed) == 1  # a burst of guesses for one account gets one guess at a time
        await throttle.failed(allowed[0])
        following = await throttle.check(username=name, ip=ip)
        assert not following.blocked
        await throttle.succeeded(following)

        # Attempts that overlap are taken one after the other, each seeing what the one before counted
        # (a double-clicked "Sign in" waits instead of failing).
        async def guess(wrong: bool) -> bool:
            attempt = await throttle.check(username=name, ip=ip)
            if attempt.blocked:
                return False
            await asyncio.sleep(0.05)  # the password check
            await (throttle.failed(attempt) if wrong else throttle.succeeded(attempt))
            return True

        monkeypatch.setattr("keystage.engine.throttle.IN_FLIGHT_WAIT", 30.0)  # slow machines: never time out here
        assert await asyncio.gather(guess(False), guess(False)) == [True, True]
        results = await asyncio.gather(*[guess(True) for _ in range(8)])
        # One after another: the 5th failure starts a delay, so the 6th and later are refused.
        assert results.count(True) == DEFAULT_RULES["user_ip"].delay_after
        # Spraying at once across identifiers: a few at a time per address.
        monkeypatch.setattr("keystage.engine.throttle.IN_FLIGHT_WAIT", 0.4)
        ip = unique_ip()
        attempts = await asyncio.gather(*[throttle.check(username=f"s{i}", ip=ip) for i in range(20)])
        assert sum(not a.blocked for a in attempts) == IN_FLIGHT["ip"]
        for attempt in attempts:
            await throttle.release(attempt)
        assert not (await throttle.check(username="s0", ip=ip)).blocked
    finally:
        await kernel.close()
