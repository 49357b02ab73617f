"""Right-to-left: Chromium renders the login page in Arabic and in English and the layout is
mirrored, as measured by the browser (computed direction, where labels, inputs, headings,
buttons and the language switcher sit). Screenshots go to test-artifacts/ (git-ignored).
Also: he and fa pages are ``dir="rtl"`` (in-process)."""

from __future__ import annotations

from typing import Any

import pytest

from browser import DEFAULT_AUTH_FLOW, LiveServer, artifact, browser, live_server  # noqa: F401  (fixtures)
from keystage.engine.blueprints import apply_defaults

TIMEOUT_MS = 15_000
WIDTH = 1024
# Sub-pixel rounding and the label's bold glyph overhang: edges "align" within this.
SLACK = 2.0

# Where things are, in CSS pixels, measured in the page: the label's *text* (a Range, since the
# label box itself stretches to the field's width), the input box, the heading's text, the
# primary button, the language switcher's controls, and the computed direction of html/body.
MEASURE = """() => {
  const box = (el) => { const r = el.getBoundingClientRect(); return {left: r.left, right: r.right}; };
  const text = (el) => { const range = document.createRange(); range.selectNodeContents(el);
                         const r = range.getBoundingClientRect(); return {left: r.left, right: r.right}; };
  const label = document.querySelector('label[for="id_uid_field"]');
  const input = document.getElementById('id_uid_field');
  const switcher = document.querySelector('.language-switcher');
  const card = document.querySelector('main.card');
  return {
    htmlDir: document.documentElement.getAttribute('dir'),
    htmlLang: document.documentElement.getAttribute('lang'),
    htmlDirection: getComputedStyle(document.documentElement).direction,
    bodyDirection: getComputedStyle(document.body).direction,
    inputDirection: getComputedStyle(input).direction,
    labelText: text(label), input: box(input), heading: text(document.querySelector('h1')),
    card: box(card), button: box(document.querySelector('main button[type=submit]')),
    switcherLabel: text(switcher.querySelector('label')), switcherSelect: box(switcher.querySelector('select')),
    switcherButton: box(switcher.querySelector('button')), footer: box(document.querySelector('footer')),
    label: label.textContent.trim(),
  };
}"""


async def render(browser: Any, server: LiveServer, locale: str) -> dict[str, Any]:  # noqa: F811
    context = await browser.new_context(viewport={"width": WIDTH, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = await context.new_page()
        response = await page.goto(f"{server.url}/flows/{DEFAULT_AUTH_FLOW}/?locale={locale}", wait_until="load")
        assert response is not None and response.status == 200
        await page.wait_for_selector("#id_uid_field")
        layout = await page.evaluate(MEASURE)
        path = artifact(f"rtl-login-{locale}.png")
        path.unlink(missing_ok=True)
        await page.screenshot(path=str(path), full_page=True)
        layout["screenshot"] = path
        return layout
    finally:
        await context.close()


def near(a: float, b: float) -> bool:
    return abs(a - b) <= SLACK


async def test_login_page_is_mirrored_in_arabic(browser: Any, live_server: LiveServer) -> None:  # noqa: F811
    ar = await render(browser, live_server, "ar")
    en = await render(browser, live_server, "en")
    for layout in (ar, en):
        data = layout["screenshot"].read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, layout["screenshot"]

    # What the page says and what the browser computed.
    assert (ar["htmlLang"], ar["htmlDir"], ar["htmlDirection"], ar["bodyDirection"]) == ("ar", "rtl", "rtl", "rtl")
    assert (en["htmlLang"], en["htmlDir"], en["htmlDirection"], en["bodyDirection"]) == ("en", "ltr", "ltr", "ltr")
    assert ar["inputDirection"] == "rtl" and en["inputDirection"] == "ltr"
    assert ar["label"] == "اسم المستخدم أو عنوان البريد الإلكتروني"

    # The label's text starts where the input starts: at the right in Arabic, at the left in English.
    assert near(ar["labelText"]["right"], ar["input"]["right"]), (ar["labelText"], ar["input"])
    assert ar["labelText"]["left"] > ar["input"]["left"] + 20, (ar["labelText"], ar["input"])
    assert near(en["labelText"]["left"], en["input"]["left"]), (en["labelText"], en["input"])
    assert en["labelText"]["right"] < en["input"]["right"] - 20, (en["labelText"], en["input"])
    # So does the heading.
    assert ar["heading"]["right"] > ar["input"]["right"] - 2 * SLACK
    assert en["heading"]["left"] < en["input"]["left"] + 2 * SLACK

    # The card is centred in both (mirroring must not shift it), the button spans the field.
    for layout in (ar, en):
        assert near(layout["card"]["left"], WIDTH - layout["card"]["right"]), layout["card"]
        assert near(layout["button"]["left"], layout["input"]["left"])
        assert near(layout["button"]["right"], layout["input"]["right"])

    # The language switcher sits at the end of the line: at the left in Arabic, the right in English,
    # with its controls in reading order (label, menu, button: right to left in Arabic).
    ar_controls = [ar["switcherLabel"], ar["switcherSelect"], ar["switcherButton"]]
    en_controls = [en["switcherLabel"], en["switcherSelect"], en["switcherButton"]]
    assert near(ar["switcherButton"]["left"], ar["footer"]["left"]), (ar["switcherButton"], ar["footer"])
    assert near(en["switcherButton"]["right"], en["footer"]["right"]), (en["switcherButton"], en["footer"])
    assert all(a["left"] > b["right"] for a, b in zip(ar_controls, ar_controls[1:])), ar_controls
    assert all(a["right"] < b["left"] for a, b in zip(en_controls, en_controls[1:])), en_controls
    # Mirror images: the same distances from the opposite edges.
    assert near(ar["switcherButton"]["left"], WIDTH - en["switcherButton"]["right"])
    assert near(ar["input"]["left"], WIDTH - en["input"]["right"])


@pytest.mark.parametrize(("locale", "direction"), [("he", "rtl"), ("fa", "rtl"), ("ar", "rtl"),
                                                    ("de", "ltr"), ("en_XA", "ltr")])
async def test_right_to_left_locales_get_dir_rtl(keystage_app: Any, locale: str, direction: str) -> None:
    await apply_defaults(keystage_app.extensions["keystage"])
    client = keystage_app.test_client()
    response = await client.get(f"/flows/{DEFAULT_AUTH_FLOW}/?locale={locale}", headers={"Accept": "text/html"})
    body = await response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.headers["Content-Language"] == locale.replace("_", "-")
    assert f'<html lang="{locale.replace("_", "-")}" dir="{direction}">' in body
