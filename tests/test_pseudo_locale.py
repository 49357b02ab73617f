"""The pseudo-locale en_XA: every page of the shipped flows, walked through the HTML face in
en_XA, shows no visible text outside ``[...]`` brackets — i.e. every string on them is marked
for translation (an unmarked string would show up in plain English).

"Visible" means text nodes (``<title>`` included, ``<script>``/``<style>`` not) and the
attributes a person sees or hears: placeholder, title, aria-label, alt, and the value of
submit/reset/button inputs. Ignored by design: the product name ``keystage``, what the user
typed (their username, email), the language names in the switcher (each in its own
language), and pure punctuation or digits.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from keystage.engine import i18n, i18n_tools
from keystage.engine.blueprints import apply_defaults

LOCALES = Path(__file__).resolve().parent.parent / "locales"
PSEUDO = "en_XA"
USERNAME, EMAIL, PASSWORD = "walker", "walker@example.com", "Tr0ub4dor&3-horse-battery"
ADMIN, ADMIN_EMAIL, ADMIN_PASSWORD = "root", "root@example.com", "c0rrect-horse-battery-staple"
UNKNOWN = "nobody-by-this-name"
LOGIN = "/flows/default-authentication-flow/"
ENROLL = "/flows/default-enrollment-flow/"
SETUP = "/flows/initial-setup/"
LOGOUT = "/flows/default-invalidation-flow/"
HTML = {"Accept": "text/html"}

VISIBLE_ATTRIBUTES = frozenset({"placeholder", "title", "aria-label", "alt"})
BUTTON_INPUTS = frozenset({"submit", "reset", "button"})
VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                  "track", "wbr"})
BRACKETED = re.compile(r"\[[^\[\]]*\]")
NOTHING_TO_TRANSLATE = re.compile(r"[\W\d_]*")


class _Visible(HTMLParser):
    """Collects visible text (one string for the document, so a bracket may span elements)
    and visible attribute values (one string each)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.attributes: list[tuple[str, str]] = []
        self.stack: list[tuple[str, dict[str, str]]] = []

    def _hidden(self) -> bool:
        for tag, attrs in self.stack:
            if tag in ("script", "style", "template") or "hidden" in attrs:
                return True
            # The language switcher's options are language names, each in its own language.
            if tag == "select" and attrs.get("name") == "locale":
                return True
        return False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag not in VOID:
            self.stack.append((tag, values))
        if self._hidden() or "hidden" in values or values.get("type") == "hidden":
            return
        for name in VISIBLE_ATTRIBUTES & values.keys():
            self.attributes.append((f"<{tag} {name}>", values[name]))
        if tag == "input" and values.get("type") in BUTTON_INPUTS and values.get("value"):
            self.attributes.append((f"<input type={values['type']} value>", values["value"]))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID and self.stack and self.stack[-1][0] == tag:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index][0] == tag:
                del self.stack[index:]
                break

    def handle_data(self, data: str) -> None:
        if not self._hidden():
            self.text.append(data)


def untranslated(html: str, ignore: tuple[str, ...] = ()) -> list[str]:
    """What a person sees on ``html`` outside the pseudo-locale's brackets (empty: all translated)."""
    parser = _Visible()
    parser.feed(html)
    parser.close()
    pieces = [("text", "\n".join(parser.text)), *parser.attributes]
    leftovers = []
    for where, value in pieces:
        rest = value
        while True:  # innermost brackets first, so a bracket inside a bracket goes too
            stripped = BRACKETED.sub(" ", rest)
            if stripped == rest:
                break
            rest = stripped
        for word in ("keystage", *ignore):
            rest = rest.replace(word, " ")
        for line in rest.splitlines():
            if not NOTHING_TO_TRANSLATE.fullmatch(line.strip()):
                leftovers.append(f"{where}: {line.strip()!r}")
    return leftovers


# -- the checker itself ----------------------------------------------------------------------


def test_the_checker_finds_text_outside_the_brackets() -> None:
    page = """<!doctype html><html lang="en-XA"><head><title>[Ŝîĝñ îñ ~~~]</title>
    <style>body { color: red }</style><script>var x = "Sign in";</script></head><body>
    <h1>[Ĥéļļö, <b>alice</b> ~~~]</h1><p>keystage 2.0 — 100 %</p>
    <input type="hidden" name="csrf" value="abc"><input name="u" value="typed by the user">
    <select name="locale"><option>Deutsch</option><option>English</option></select>
    <p hidden>Not shown</p>
    <button type="submit">[Çöñţîñûé ~~~]</button></body></html>"""
    assert untranslated(page, ignore=("alice",)) == []
    assert untranslated(page.replace("[Çöñţîñûé ~~~]", "Continue")) == ["text: 'Continue'"]
    assert untranslated(page.replace("<p>keystage", "<p>Powered by keystage")) == ["text: 'Powered by   2.0 — 100 %'"]
    assert untranslated(page.replace('name="u"', 'name="u" placeholder="Your name"')) == [
        "<input placeholder>: 'Your name'"]
    assert untranslated(page.replace("<button", '<button aria-label="Send"')) == ["<button aria-label>: 'Send'"]
    assert untranslated(page.replace('type="hidden"', 'type="submit"')) == ["<input type=submit value>: 'abc'"]
    # A half-bracketed string (a placeholder's value leaking out, say) is caught too.
    assert untranslated("<p>[Ĥéļļö ~~~] world</p>") == ["text: 'world'"]


def test_pseudo_translation_keeps_placeholders_and_markup() -> None:
    assert i18n_tools.pseudo_translate("Sign in") == "[Šîĝñ îñ ~~~]"
    text = i18n_tools.pseudo_translate("Hello, %(name)s! <b>100 %%</b> &amp; {count}")
    assert "%(name)s" in text and "<b>" in text and "</b>" in text and "%%" in text and "&amp;" in text
    assert "{count}" in text and text.startswith("[") and text.endswith("]")
    # ~30 % longer than the original.
    for original in ("Sign in", "Please enter your username or email address."):
        assert len(i18n_tools.pseudo_translate(original)) >= len(original) * 1.3


def test_the_shipped_pseudo_locale_is_generated_from_the_current_template() -> None:
    shipped = (LOCALES / PSEUDO / "LC_MESSAGES" / "keystage.po").read_text("utf-8")
    template = i18n_tools._read(LOCALES / "keystage.pot")  # noqa: SLF001
    buffer = __import__("io").BytesIO()
    from babel.messages.pofile import write_po

    write_po(buffer, i18n_tools.pseudo_catalog(template, PSEUDO), width=76, ignore_obsolete=True)
    expected = buffer.getvalue().decode().replace('"Language: en\\n"', f'"Language: {PSEUDO}\\n"', 1)
    assert shipped == expected, "locales/en_XA is stale: run `keystage i18n pseudo`"


def test_en_xa_is_a_known_locale() -> None:
    assert i18n.parse_locale("en-XA") == i18n.parse_locale("en_xa") == PSEUDO
    catalogs = i18n.Catalogs([])
    assert PSEUDO in catalogs.locales
    assert catalogs.best(["en-XA"]) == PSEUDO
    assert catalogs.best(["en-US"]) == "en"  # never picked by accident
    assert catalogs.translations(PSEUDO).gettext("Sign in") == "[Šîĝñ îñ ~~~]"
    assert i18n.text_direction(PSEUDO) == "ltr"


# -- the walk ------------------------------------------------------------------------------


class Walker:
    """A browser-like client: keeps the session cookie, follows redirects, checks every page."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pages: list[str] = []
        self.problems: list[str] = []

    async def _check(self, response: Any, label: str) -> str:
        body = await response.get_data(as_text=True)
        assert response.headers.get("Content-Type", "").startswith("text/html"), (label, response.status_code)
        assert '<html lang="en-XA" dir="ltr"' in body, f"{label}: not rendered in {PSEUDO}:\n{body[:400]}"
        assert BRACKETED.search(body), f"{label}: no pseudo-translated text at all"
        self.pages.append(label)
        self.problems.extend(f"{label} ({response.status_code}) {p}"
                             for p in untranslated(body, ignore=(USERNAME, EMAIL, ADMIN, ADMIN_EMAIL, UNKNOWN, "someone-else", "other@example.com")))
        return body

    async def get(self, path: str, label: str, status: int = 200) -> str:
        response = await self.client.get(path, headers=HTML)
        while response.status_code in (301, 302, 303, 307):
            response = await self.client.get(response.headers["Location"], headers=HTML)
        assert response.status_code == status, (label, response.status_code)
        return await self._check(response, label)

    async def post(self, path: str, body: str, fields: dict[str, str], label: str,
                   status: int = 200, csrf: bool = True) -> str:
        form = dict(fields)
        if csrf:
            match = re.search(r'name="csrf_token" value="([^"]+)"', body)
            assert match, f"{label}: the page has no CSRF token"
            form["csrf_token"] = match.group(1)
            component = re.search(r'name="component" value="([^"]+)"', body)
            if component:
                form.setdefault("component", component.group(1))
        response = await self.client.post(path, form=form, headers=HTML)
        while response.status_code in (301, 302, 303, 307):
            response = await self.client.get(response.headers["Location"], headers=HTML)
        assert response.status_code == status, (label, response.status_code)
        return await self._check(response, label)


def component(body: str) -> str:
    match = re.search(r'name="component" value="([^"]+)"', body)
    return match.group(1) if match else ""


@pytest.fixture
async def walker(keystage_app: Any) -> Walker:
    await apply_defaults(keystage_app.extensions["keystage"])
    walker = Walker(keystage_app.test_client())
    # Chosen once, remembered in the session for every page after.
    await walker.get(f"{LOGIN}?locale={PSEUDO}", "identification (choosing en_XA)")
    return walker


async def test_every_page_of_the_shipped_flows_is_translatable(walker: Walker, keystage_app: Any) -> None:
    w, kernel = walker, keystage_app.extensions["keystage"]
    # initial-setup: the prompt, its field errors, then the first administrator.
    page = await w.get(SETUP, "initial-setup: prompt")
    assert component(page) == "prompt"
    page = await w.post(SETUP, page, {}, "initial-setup: empty form (required fields)")
    assert "field-error" in page
    page = await w.post(SETUP, page, {"username": ADMIN, "email": "not an email", "password": "short",
                                      "password_repeat": "different"}, "initial-setup: invalid email, passwords")
    assert page.count("field-error") >= 2
    page = await w.post(SETUP, page, {"username": ADMIN, "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD,
                                      "password_repeat": ADMIN_PASSWORD}, "initial-setup: done")
    if component(page) == "user_login":
        page = await w.post(SETUP, page, {}, "initial-setup: user_login")
    assert "[Ĥéļļö" in page, "initial-setup should end on the home page, signed in"
    # The logged-in home page, then logout.
    await w.get("/", "home (signed in)")
    await w.get(LOGOUT, "logout")
    # initial-setup again: a superuser exists now, so access is denied.
    page = await w.get(SETUP, "initial-setup: access denied", status=403)
    assert "error-summary" in page

    # default-authentication-flow: identification, its errors, password, its errors, login.
    page = await w.get(LOGIN, "identification")
    assert component(page) == "identification"
    page = await w.post(LOGIN, page, {"uid_field": ""}, "identification: empty")
    assert "field-error" in page
    page = await w.post(LOGIN, page, {"uid_field": ADMIN}, "identification: done")
    assert component(page) == "password"
    page = await w.post(LOGIN, page, {"password": ""}, "password: empty")
    assert "field-error" in page
    page = await w.post(LOGIN, page, {"password": "wrong"}, "password: wrong")
    assert "field-error" in page
    page = await w.post(LOGIN, page, {"password": ADMIN_PASSWORD}, "password: right")
    if component(page) == "user_login":
        assert 'name="remember_me"' in page
        page = await w.post(LOGIN, page, {"remember_me": "on"}, "user_login: remember me")
    assert "[Ĥéļļö" in page
    await w.get("/", "home (signed in again)")
    await w.get(LOGOUT, "logout again")

    # Too many wrong passwords: the flow starts over with an error.
    page = await w.get(LOGIN, "identification (for failures)")
    page = await w.post(LOGIN, page, {"uid_field": UNKNOWN}, "identification: unknown user")
    for attempt in range(8):
        if component(page) != "password":
            break
        page = await w.post(LOGIN, page, {"password": f"wrong-{attempt}"}, f"password: failure {attempt + 1}")
    assert component(page) != "password", "the password stage never gave up"

    # default-enrollment-flow: closed on a fresh install (a denial with the policy's message) ...
    page = await w.get(ENROLL, "enrollment: closed", status=403)
    assert "error-summary" in page
    # ... then opened as an admin would, and walked: the prompt, each kind of field error, a new account.
    await kernel.pool.execute("DELETE FROM policy_bindings WHERE policy_id = "
                              "(SELECT id FROM policies WHERE name = 'default-enrollment-closed')")
    page = await w.get(ENROLL, "enrollment: prompt")
    assert component(page) == "prompt"
    page = await w.post(ENROLL, page, {}, "enrollment: empty form")
    assert page.count("field-error") >= 4
    page = await w.post(ENROLL, page, {"username": "x" * 300, "email": "nope", "password": "a",
                                       "password_repeat": "b"}, "enrollment: too long, bad email, mismatch")
    assert page.count("field-error") >= 3
    page = await w.post(ENROLL, page, {"username": ADMIN, "email": "other@example.com", "password": PASSWORD,
                                       "password_repeat": PASSWORD}, "enrollment: username taken")
    assert "field-error" in page
    page = await w.post(ENROLL, page, {"username": "someone-else", "email": ADMIN_EMAIL, "password": PASSWORD,
                                       "password_repeat": PASSWORD}, "enrollment: email taken")
    assert "field-error" in page
    page = await w.post(ENROLL, page, {"username": USERNAME, "email": EMAIL, "password": PASSWORD,
                                       "password_repeat": PASSWORD}, "enrollment: done")
    if component(page) == "user_login":
        page = await w.post(ENROLL, page, {}, "enrollment: user_login")
    assert "[Ĥéļļö" in page
    await w.get(LOGOUT, "logout after enrollment")

    # Pages outside the flows: not found (flow and plain path), and a form without its CSRF token.
    await w.get("/flows/no-such-flow/", "not found (flow)", status=404)
    await w.get("/no/such/page", "not found (path)", status=404)
    page = await w.get(LOGIN, "identification (before the CSRF failure)")
    await w.post(LOGIN, page, {"uid_field": ADMIN}, "CSRF failure", status=403, csrf=False)

    assert len(w.pages) >= 30, w.pages
    assert not w.problems, "text outside the pseudo-locale's brackets (not marked for translation?):\n" + \
        "\n".join(w.problems)
