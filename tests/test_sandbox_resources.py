"""Resource attacks against the expression sandbox: each costs its own evaluation, nothing more.

Every attack must end in an ``ExpressionError`` of the stated kind within a bounded
time, and afterwards the pool must still answer a benign policy quickly. Timeouts use
0.5 s to keep the file short; the kill-and-replace path is the same at any timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from keystage.engine.sandbox import ExpressionError, Sandbox, guards

CONTEXT: dict[str, Any] = {
    "user": {"username": "alice", "email": "alice@example.com", "groups": ["staff"], "attributes": {}},
    "ip": "10.1.2.3",
}
BENIGN = "return is_group_member(request.user, 'staff') and request.ip in ip_network('10.0.0.0/8')"
TIMEOUT = 0.5


async def no_such_users(wanted: list[tuple[str, str]]) -> dict[str, Any]:
    return {f"{field}:{value}": None for field, value in wanted}

ATTACKS: list[tuple[str, str, str]] = [
    # (id, source, expected kind)
    ("while-true", "while True:\n    pass", "timeout"),
    ("nested-loops", "for i in range(10**6):\n    for j in range(10**6):\n        pass\nreturn True", "timeout"),
    ("finally-swallows-loop", "try:\n    while True:\n        pass\nfinally:\n    return True", "timeout"),
    ("power-tower", "return 10**10**10 > 0", "resource"),
    ("big-power", "return 10**10**8 > 0", "resource"),
    ("builtin-pow", "return pow(10, 10**8) > 0", "resource"),
    ("squaring-loop", "x = 2\nfor i in range(100):\n    x = x * x\nreturn x > 0", "resource"),
    ("inplace-power", "x = 3\nx **= 10**9\nreturn x > 0", "resource"),
    ("left-shift", "return (1 << 10**9) > 0", "resource"),
    ("round-huge-digits", "return round(5, -10**7) > 0", "resource"),
    ("str-repeat", "return len('x' * 10**9) > 0", "resource"),
    ("list-repeat", "return len([0] * 10**9) > 0", "resource"),
    ("tuple-repeat-reversed", "return len(10**9 * (1,)) > 0", "resource"),
    ("ljust", "return len('x'.ljust(10**10)) > 0", "resource"),
    ("zfill", "return len('1'.zfill(10**9)) > 0", "resource"),
    ("center", "return len('x'.center(10**8, '*')) > 0", "resource"),
    ("percent-star-width", "return len('%*d' % (10**9, 1)) > 0", "resource"),
    ("percent-precision", "return len('%.999999999f' % 1.5) > 0", "resource"),
    ("fstring-width", "return len(f'{1:>{10**9}}') > 0", "resource"),
    ("fstring-precision", "return len(f'{1.5:.1000000f}') > 0", "resource"),
    ("join", "return len(','.join(['x' * 1000] * 10**4)) > 0", "resource"),
    ("replace-growth", "s = 'a' * 10**6\nreturn len(s.replace('a', 'aaaa')) > 0", "resource"),
    ("expandtabs", "return len(('\\t' * 1000).expandtabs(10**6)) > 0", "resource"),
    ("doubling-concat", "s = 'ab'\nwhile True:\n    s = s + s", "resource"),
    ("doubling-inplace", "s = ['a']\nwhile True:\n    s += s", "resource"),
    ("extend-self", "s = [0] * 1000\nwhile True:\n    s.extend(s)", "resource"),
    ("big-range", "return len(range(10**9)) > 0", "resource"),
    ("sorted-range", "return len(sorted(range(10**9))) > 0", "resource"),
    ("list-range", "return len(list(range(10**7))) > 0", "resource"),
    ("comprehension-bomb", "return len([[0] * 10**6 for i in range(10**3)]) > 0", "resource"),
    ("dict-bomb", "d = {}\nfor i in range(10**6):\n    d[i] = 'x' * 1000\nreturn True", "resource"),
    ("deep-recursion", "def f(n):\n    return f(n + 1)\nreturn f(0)", "resource"),
    ("lambda-recursion", "f = lambda n: f(n + 1)\nreturn f(0) > 0", "resource"),
    ("mutual-recursion", "def a(n):\n    return b(n)\ndef b(n):\n    return a(n)\nreturn a(1)", "resource"),
    ("catastrophic-regex", "return regex_match('a' * 40 + 'b', '(a+)+$')", "timeout"),
    ("catastrophic-regex-2", "return regex_match('x' * 5000, '(x|x|x)*y')", "timeout"),
    ("regex-huge-subject", "return regex_match('x' * 10**6, 'x')", "resource"),
    ("regex-huge-pattern", "return regex_match('x', 'x' * 10**4)", "resource"),
    ("sticky-limit", "try:\n    x = 'a' * 10**9\nfinally:\n    return True", "resource"),
    ("caught-limit", "try:\n    x = 'a' * 10**9\nexcept Exception:\n    pass\nreturn True", "resource"),
    ("int-to-str", "return len(str(10**5000)) > 0", "runtime"),
    ("deep-nesting-repr", "x = []\nfor i in range(10**5):\n    x = [x]\nreturn x", "result_type"),
    ("many-user-lookups", "for i in range(100):\n    user_by(username=str(i))\nreturn True", "resource"),
]


@pytest_asyncio.fixture(scope="module")
async def pool() -> AsyncIterator[Sandbox]:
    sandbox = Sandbox(workers=2)
    await sandbox.start()
    yield sandbox
    await sandbox.close()


async def assert_healthy(pool: Sandbox) -> None:
    started = time.perf_counter()
    result = await asyncio.wait_for(pool.evaluate(BENIGN, context=CONTEXT), 5)
    assert result.value is True
    assert time.perf_counter() - started < 2.0


def test_there_are_enough_attacks() -> None:
    assert len(ATTACKS) >= 20
    assert len({a[0] for a in ATTACKS}) == len(ATTACKS)


@pytest.mark.parametrize(("source", "kind"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
async def test_attack_is_contained(pool: Sandbox, source: str, kind: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ExpressionError) as info:
        await pool.evaluate(source, context=CONTEXT, timeout=TIMEOUT, user_loader=no_such_users)
    elapsed = time.perf_counter() - started
    assert info.value.kind == kind, info.value
    assert elapsed < TIMEOUT + 1.5, f"took {elapsed:.2f} s"
    if kind == "timeout":
        assert elapsed >= TIMEOUT * 0.9
    await assert_healthy(pool)


async def test_a_timeout_costs_only_its_own_evaluation(pool: Sandbox) -> None:
    runaway = asyncio.ensure_future(pool.evaluate("while True:\n    pass", context=CONTEXT, timeout=TIMEOUT))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    for _ in range(20):  # the other worker keeps serving while one spins
        assert (await pool.evaluate(BENIGN, context=CONTEXT)).value is True
    assert time.perf_counter() - started < TIMEOUT
    with pytest.raises(ExpressionError) as info:
        await runaway
    assert info.value.kind == "timeout"
    await assert_healthy(pool)


async def test_the_worker_is_killed_and_replaced(pool: Sandbox) -> None:
    before = {w.proc.pid for w in pool._workers}
    killed = pool.stats["killed"]
    with pytest.raises(ExpressionError):
        await pool.evaluate("while True:\n    pass", context=CONTEXT, timeout=0.2)
    assert pool.stats["killed"] == killed + 1
    await assert_healthy(pool)
    await asyncio.sleep(0.3)
    after = {w.proc.pid for w in pool._workers}
    assert len(after) == pool.size and after != before


async def test_nothing_an_expression_makes_runs_later(pool: Sandbox) -> None:
    # No class, so no __del__; a suspended generator has no finally; lambdas die with the run.
    source = ("pending = (log('late') for x in [1])\nkeep = [lambda: log('later')]\n"
              "sorted([2, 1], key=lambda x: x)\nreturn True")
    for _ in range(4):
        assert (await pool.evaluate(source, context=CONTEXT)).log_lines == ()
        assert (await pool.evaluate("return printed == ''", context=CONTEXT)).value is True
    with pytest.raises(ExpressionError) as info:
        await pool.evaluate("return lambda: log('later')", context=CONTEXT)
    assert info.value.kind == "result_type"


async def test_memory_cap_is_set_on_workers(pool: Sandbox) -> None:
    await assert_healthy(pool)
    for worker in pool._workers:
        limits = open(f"/proc/{worker.proc.pid}/limits").read()
        line = next(line for line in limits.splitlines() if line.startswith("Max address space"))
        assert int(line.split()[3]) <= 256 * 1024 * 1024


async def test_output_is_capped(pool: Sandbox) -> None:
    result = await pool.evaluate("for i in range(10**4):\n    log('x' * 5000)\n    message('y' * 5000)\nreturn True",
                                 context=CONTEXT)
    assert result.value is True
    assert len(result.log_lines) <= guards.LIMITS["max_log_lines"] + 1
    assert len(result.messages) <= guards.LIMITS["max_messages"]
    assert sum(map(len, result.log_lines + result.messages)) <= guards.LIMITS["max_output"] + 4000


async def test_mapping_results_are_capped(pool: Sandbox) -> None:
    with pytest.raises(ExpressionError) as info:
        await pool.evaluate("return {'x': 'y' * 10**5}", context=CONTEXT, kind="mapping")
    assert info.value.kind == "result_type" and "bytes of JSON" in info.value.message
    with pytest.raises(ExpressionError) as info:
        await pool.evaluate("x = []\nfor i in range(100):\n    x = [x]\nreturn {'a': x}", context=CONTEXT,
                            kind="mapping")
    assert info.value.kind == "result_type"


async def test_a_batch_with_bombs_fails_only_the_bombs(pool: Sandbox) -> None:
    items = [(BENIGN, CONTEXT)] * 50 + [("while True:\n    pass", CONTEXT)] + [(BENIGN, CONTEXT)] * 50 \
        + [("return 'x' * 10**9", CONTEXT)]
    started = time.perf_counter()
    results = await pool.evaluate_many(items, timeout=TIMEOUT)
    assert time.perf_counter() - started < 3 * TIMEOUT + 2
    kinds = [r.kind if isinstance(r, ExpressionError) else r.value for r in results]
    assert kinds == [True] * 50 + ["timeout"] + [True] * 50 + ["resource"]
    await assert_healthy(pool)


async def test_timeout_is_admin_configurable_up_to_a_maximum(pool: Sandbox) -> None:
    with pytest.raises(ValueError):
        await pool.evaluate(BENIGN, context=CONTEXT, timeout=pool.max_timeout + 1)
    started = time.perf_counter()
    with pytest.raises(ExpressionError) as info:
        await pool.evaluate("while True:\n    pass", context=CONTEXT, timeout=1.2)
    assert info.value.kind == "timeout" and 1.1 < time.perf_counter() - started < 2.5
