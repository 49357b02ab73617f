"""``keystage policy test``: run a policy for a chosen user and request, before or after saving it.

Registered on the main group at the end of engine/cli.py.
"""

from __future__ import annotations

import json
import time
import types
from typing import Any, TextIO

import click

from .cli import fail, handle_errors, run_with_kernel, settings_from
from .logs import configure
from .policy import PolicyRequest, PolicyResult
from .request_info import RequestInfo
from .runtime import Keystage
from .sandbox import ExpressionError, get_sandbox

EXIT_PASS, EXIT_DENY, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3


@click.group()
def policy() -> None:
    """Test policies."""


@policy.command("test")
@click.argument("name")
@click.option("--user", "username", required=True, help="Username (or email) of the user to test for.")
@click.option("--ip", help="Client IP address of the request (default: no request).")
@click.option("--context", "context_json", help="The plan context, as a JSON object.")
@click.option("--flow", "flow_slug", help="Slug of the flow the request is in (request.flow).")
@click.option("--expression", "expression_file", type=click.File("r"),
              help="Test this expression instead of the saved one ('-' reads standard input): "
                   "NAME then need not exist yet.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handle_errors
def test_command(ctx: click.Context, name: str, username: str, ip: str | None, context_json: str | None,
                 flow_slug: str | None, expression_file: TextIO | None, as_json: bool) -> None:
    """Run policy NAME for --user and print the result, messages, log lines, duration and any error.

    Exit status: 0 the policy passes, 1 it denies, 2 a usage error (no such policy, user
    or flow), 3 the policy failed (an expression error: its line is printed).
    """
    settings = settings_from(ctx)
    configure("WARNING")
    plan_context: dict[str, Any] = {}
    if context_json:
        try:
            plan_context = json.loads(context_json)
        except ValueError as exc:
            fail(f"--context: not JSON: {exc}", EXIT_USAGE)
        if not isinstance(plan_context, dict):
            fail("--context: must be a JSON object", EXIT_USAGE)
    source = expression_file.read() if expression_file is not None else None

    async def work(keystage: Keystage) -> dict[str, Any]:
        try:
            return await _test(keystage, name, username, ip, plan_context, flow_slug, source)
        finally:
            pool = keystage.state.get("sandbox")
            if pool is not None:
                await pool.close()

    report = run_with_kernel(settings, work)
    if "usage" in report:
        fail(report["usage"], EXIT_USAGE)
    _print(report, as_json)
    ctx.exit(EXIT_ERROR if report.get("error") else EXIT_PASS if report["result"] == "pass" else EXIT_DENY)


async def _test(keystage: Keystage, name: str, username: str, ip: str | None, plan_context: dict[str, Any],
                flow_slug: str | None, source: str | None) -> dict[str, Any]:
    row = await keystage.pool.fetchrow("SELECT type, config FROM policies WHERE name = $1", name)
    if source is not None:
        type_name, raw = "expression", {"expression": source}
        if row is not None and row["type"] == "expression":
            saved = json.loads(row["config"]) if isinstance(row["config"], str) else dict(row["config"])
            raw = {**{k: v for k, v in saved.items() if k != "expression"}, **raw}
    elif row is None:
        return {"usage": f"no policy named {name!r} (use --expression FILE to test one before saving it)"}
    else:
        type_name = row["type"]
        raw = json.loads(row["config"]) if isinstance(row["config"], str) else dict(row["config"])
    report: dict[str, Any] = {"policy": name, "type": type_name, "user": username}
    cls = keystage.policy_types.get(type_name)
    if cls is None:
        return {"usage": f"policy {name!r} has the unknown type {type_name!r}"}
    user = await keystage.users.find(username)
    if user is None:
        return {"usage": f"no user {username!r}"}
    request_info = None
    if ip is not None:
        request_info = RequestInfo(client_ip=ip, user_agent="keystage policy test", locale="en", path="/",
                                   headers={})
    request = PolicyRequest(keystage=keystage, user=user, request=request_info, context=plan_context)
    if flow_slug is not None:
        flow = await keystage.pool.fetchrow("SELECT slug, designation FROM flows WHERE slug = $1", flow_slug)
        if flow is None:
            return {"usage": f"no flow {flow_slug!r}"}
        request.flow = types.SimpleNamespace(slug=flow["slug"], designation=flow["designation"])  # type: ignore[attr-defined]
    try:
        config = cls.validate_config(raw)
    except Exception as exc:  # pydantic's message for the admin, e.g. the compile error with line and column
        errors = getattr(exc, "errors", None)
        message = errors()[0]["msg"].removeprefix("Value error, ") if callable(errors) else str(exc)
        return {**report, "result": "error", "error": message, "line": None, "messages": [], "log": []}
    instance = cls(name, config)
    started = time.perf_counter()
    try:
        if type_name == "expression":
            get_sandbox(keystage)
            outcome = await instance.evaluate(request)  # type: ignore[attr-defined]
            result = PolicyResult(bool(outcome.value), outcome.messages)
            log_lines, duration = list(outcome.log_lines), outcome.duration
        else:
            result = await instance.passes(request)
            log_lines, duration = [], time.perf_counter() - started
    except ExpressionError as exc:
        return {**report, "result": "error", "error": exc.describe(), "kind": exc.kind, "line": exc.line,
                "messages": list(exc.messages), "log": list(exc.log_lines),
                "duration_ms": round((time.perf_counter() - started) * 1000, 3)}
    return {**report, "result": "pass" if result.passing else "deny", "messages": list(result.messages),
            "log": log_lines, "duration_ms": round(duration * 1000, 3)}


def _print(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"policy    {report['policy']} ({report['type']})")
    click.echo(f"user      {report['user']}")
    click.echo(f"result    {report['result']}")
    if report.get("error"):
        click.echo(f"error     {report['error']}")
    for label, lines in (("messages", report.get("messages") or []), ("log", report.get("log") or [])):
        for index, line in enumerate(lines):
            click.echo(f"{label if index == 0 else '':<9} {line}")
    if "duration_ms" in report:
        click.echo(f"duration  {report['duration_ms']:.3f} ms")
