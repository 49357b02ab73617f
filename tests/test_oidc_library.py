"""The application library at /: only what the user may use (policies checked in one batch), grouped, searchable."""

from __future__ import annotations

from typing import Any

from keystage.engine.blueprints import apply_defaults
from keystage.engine.testing import kernel_of

PASSWORD = "correct horse battery staple"

BLUEPRINT = """
version: 1
metadata: {name: library}
entries:
  - model: group
    identifiers: {name: staff}
  - model: application
    identifiers: {slug: grafana}
    attrs: {name: Grafana, group: Monitoring, launch_url: "https://grafana.example.org/", description: Dashboards}
  - model: application
    identifiers: {slug: wiki}
    attrs: {name: Wiki, group: Docs, launch_url: "https://wiki.example.org/"}
  - model: application
    identifiers: {slug: payroll}
    attrs: {name: Payroll, group: Finance, launch_url: "https://payroll.example.org/"}
  - model: application
    identifiers: {slug: broken}
    attrs: {name: Broken, group: Finance}
  - model: application
    identifiers: {slug: staffonly}
    attrs: {name: Staff portal, group: Docs}
  - model: policy
    identifiers: {name: finance-only}
    attrs: {type: expression, config: {expression: "return is_group_member(request.user, 'finance')"}}
  - model: policy
    identifiers: {name: explodes}
    attrs: {type: expression, config: {expression: "return 1 / 0"}}
  - model: policy
    identifiers: {name: has-email}
    attrs: {type: expression, config: {expression: "return request.user.email is not None"}}
  - model: policy_binding
    identifiers: {application: payroll, policy: finance-only}
  - model: policy_binding
    identifiers: {application: broken, policy: explodes}
  - model: policy_binding
    identifiers: {application: staffonly, group: staff}
  - model: policy_binding
    identifiers: {application: wiki, policy: has-email}
"""


async def test_library_lists_what_the_user_may_use(keystage_app: Any, keystage_client: Any, flow: Any,
                                                  user_factory: Any, apply_blueprint: Any) -> None:
    await apply_defaults(kernel_of(keystage_app))
    await apply_blueprint(BLUEPRINT)
    await user_factory("bob", password=PASSWORD, email="bob@example.org", groups=["staff"])
    await flow.start("default-authentication-flow")
    await flow.submit(uid_field="bob")
    await flow.submit(password=PASSWORD)
    if flow.component == "user_login":
        await flow.submit(remember_me=False)
    page = await (await keystage_client.get("/")).get_data(as_text=True)
    assert "https://grafana.example.org/" in page and "Dashboards" in page
    assert "https://wiki.example.org/" in page and "Staff portal" in page
    assert "payroll" not in page.lower() and "Broken" not in page  # denied, and failed closed
    assert page.index("Docs") < page.index("Monitoring")  # grouped, groups in order
    found = await (await keystage_client.get("/?q=dash")).get_data(as_text=True)
    assert "Grafana" in found and "Wiki" not in found
    none = await (await keystage_client.get("/?q=zzz")).get_data(as_text=True)
    assert "No application matches your search." in none

    # Cached policy results follow membership changes at once (the user's version is in the key).
    finance = await kernel_of(keystage_app).users.create_group("finance")
    bob = await kernel_of(keystage_app).users.find("bob")
    await kernel_of(keystage_app).users.add_member(finance.id, bob.id)
    page = await (await keystage_client.get("/")).get_data(as_text=True)
    assert "https://payroll.example.org/" in page
