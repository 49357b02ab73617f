"""SAML 2.0 identity provider: metadata, SP-initiated SSO by the Redirect and POST bindings,
IdP-initiated SSO from the library, single logout, and the attacks the issue lists. The SP is
python3-saml (OneLogin) in strict mode, not pysaml2. Real PostgreSQL; real xmlsec1."""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import logging
import re
import threading
import zlib
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from lxml import etree
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.utils import OneLogin_Saml2_Utils
from saml_sp import OneLoginSP, key_pair, post_form

from keystage.engine.blueprints import BlueprintError, apply_defaults
from keystage.engine.testing import apply_blueprint_to, free_port, kernel_of, sign_in, skip_or_fail, walk

BASE = "http://127.0.0.1:9000"
PASSWORD = "correct horse battery staple"
SP_KEYS = key_pair()
ACS = "https://sp.example.org/saml/acs"
INVALID = "This sign-in request is not valid. Please go back to the application and try again."


def provider_blueprint(name: str, slug: str, **config: Any) -> str:
    return json.dumps({"version": 1, "metadata": {"name": f"saml-{slug}"}, "entries": [
        {"model": "provider", "identifiers": {"name": name}, "attrs": {"type": "saml", "config": config}},
        {"model": "application", "identifiers": {"slug": slug},
         "attrs": {"name": slug.title(), "provider": name, "group": "Docs"}},
    ]})


WIKI = provider_blueprint(
    "wiki-saml", "wiki", sp_entity_id="https://sp.example.org/metadata",
    acs_urls=[ACS, "https://sp.example.org/saml/acs2"], slo_url="https://sp.example.org/saml/sls",
    sp_signing_certificate=SP_KEYS[1], want_authn_requests_signed=True, default_relay_state="/home",
    attribute_mappings={"department": "return 'research'",
                        "roles": "return ['editor', 'reader'] if is_group_member(request.user, 'staff') else None"})


@pytest.fixture
async def saml(keystage_app: Any, user_factory: Any) -> Any:
    import shutil

    if shutil.which("xmlsec1") is None:
        skip_or_fail("xmlsec1 is not installed (Debian: apt-get install xmlsec1)")
    kernel = kernel_of(keystage_app)
    await apply_defaults(kernel)
    await apply_blueprint_to(kernel, WIKI)
    user = await user_factory("alice", password=PASSWORD, email="alice@example.org", groups=["staff"],
                              display_name="Alice Liddell")
    browser = httpx.AsyncClient(transport=httpx.ASGITransport(app=keystage_app), base_url=BASE)
    metadata = (await browser.get("/saml/wiki/metadata")).text
    yield {"app": keystage_app, "kernel": kernel, "user": user, "browser": browser, "metadata": metadata,
           "sp": OneLoginSP(metadata, key_pem=SP_KEYS)}
    await browser.aclose()


async def to_sp(browser: httpx.AsyncClient, url: str, **options: Any) -> tuple[str, dict[str, str]]:
    """Walk a sign-in to the auto-submitting page; its action and fields (what the browser posts to the SP)."""
    page = await walk(browser, url, username="alice", password=PASSWORD, **options)
    assert isinstance(page, httpx.Response) and page.status_code == 200, page
    return post_form(page.text)


async def post_then_walk(browser: httpx.AsyncClient, path: str, fields: dict[str, str]) -> Any:
    response = await browser.post(path, data=fields)
    if response.status_code in (302, 303):
        return await walk(browser, response.headers["location"], username="alice", password=PASSWORD)
    return response


def refused(response: Any) -> bool:
    """Our translated "not valid" page, and nothing posted anywhere."""
    return (isinstance(response, httpx.Response) and response.status_code == 400 and INVALID in response.text
            and "SAMLResponse" not in response.text and "Traceback" not in response.text)


# -- metadata -----------------------------------------------------------------------------------


async def test_metadata_is_signed_and_names_our_endpoints(saml: Any) -> None:
    response = await saml["browser"].get("/saml/wiki/metadata")
    assert response.headers["content-type"].startswith("application/samlmetadata+xml")
    xml = response.text
    sp = saml["sp"]
    settings = sp.settings.get_idp_data()
    assert settings["entityId"] == f"{BASE}/saml/wiki/metadata"
    assert settings["singleSignOnService"]["url"] == f"{BASE}/saml/wiki/sso"
    assert settings["singleLogoutService"]["url"] == f"{BASE}/saml/wiki/slo"
    assert OneLogin_Saml2_Utils.validate_metadata_sign(xml, cert=OneLogin_Saml2_Utils.format_cert(sp.idp_certificate))
    assert "rsa-sha256" in xml and "xmldsig#sha1" not in xml
    # A changed byte breaks the signature: the SP notices.
    tampered = xml.replace(f"{BASE}/saml/wiki/slo", "https://evil.example.org/slo", 1)
    assert not OneLogin_Saml2_Utils.validate_metadata_sign(tampered, cert=OneLogin_Saml2_Utils.format_cert(sp.idp_certificate))
    # Each application has its own entity and certificate.
    await apply_blueprint_to(saml["kernel"], provider_blueprint("other", "other", sp_entity_id="https://o.example",
                                                                acs_urls=["https://o.example/acs"]))
    other = OneLoginSP((await saml["browser"].get("/saml/other/metadata")).text)
    assert other.idp_certificate != sp.idp_certificate
    assert (await saml["browser"].get("/saml/nothing/metadata")).status_code == 404


# -- SP-initiated SSO ----------------------------------------------------------------------------


async def test_sp_initiated_redirect_binding_passes_a_strict_onelogin_sp(saml: Any) -> None:
    sp, browser = saml["sp"], saml["browser"]
    url, request_id = sp.login_url(relay_state="https://sp.example.org/page?x=1")
    assert "Signature=" in url and urlsplit(url).path == "/saml/wiki/sso"
    action, fields = await to_sp(browser, url)
    assert action == ACS and fields["RelayState"] == "https://sp.example.org/page?x=1"
    auth = sp.accept(fields, request_id)
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert auth.is_authenticated()
    assert auth.get_nameid_format() == C.NAMEID_PERSISTENT
    assert auth.get_attributes() == {"username": ["alice"], "name": ["Alice Liddell"], "email": ["alice@example.org"],
                                     "groups": ["staff"], "department": ["research"], "roles": ["editor", "reader"]}
    assert auth.get_session_expiration() is not None
    first = auth.get_nameid()
    assert first.startswith("_") and "alice" not in first
    # Signed in already: the next request goes straight back, with the same persistent NameID;
    # the same Response posted twice is what the SP's InResponseTo check stops (a new ID each time).
    url, second_id = sp.login_url()
    _, fields = await to_sp(browser, url)
    again = sp.accept(fields, second_id)
    assert again.get_errors() == [] and again.get_nameid() == first
    assert sp.accept(fields, request_id).get_errors() != []


async def test_sp_initiated_post_binding(saml: Any) -> None:
    sp, browser = saml["sp"], saml["browser"]
    fields, request_id = sp.login_form(relay_state="post-state")
    landed = await post_then_walk(browser, "/saml/wiki/sso", fields)
    action, answer = post_form(landed.text)
    assert action == ACS and answer["RelayState"] == "post-state"
    auth = sp.accept(answer, request_id)
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert auth.get_attributes()["email"] == ["alice@example.org"]


async def test_acs_index_and_second_registered_acs(saml: Any) -> None:
    second = OneLoginSP(saml["metadata"], key_pem=SP_KEYS, acs="https://sp.example.org/saml/acs2")
    url, request_id = second.login_url()
    action, fields = await to_sp(saml["browser"], url)
    assert action == "https://sp.example.org/saml/acs2"
    assert second.accept(fields, request_id).get_errors() == []


async def test_idp_initiated_from_the_library(saml: Any) -> None:
    browser, sp = saml["browser"], saml["sp"]
    await sign_in(browser, "/", "alice", PASSWORD)
    library = await browser.get("/")
    assert 'href="/saml/wiki/sso/init"' in library.text
    action, fields = await to_sp(browser, "/saml/wiki/sso/init")
    assert action == ACS and fields["RelayState"] == "/home"
    auth = sp.accept(fields, None)  # unsolicited: no InResponseTo
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert auth.get_attributes()["username"] == ["alice"]
    # Turned off: the library shows no link and the URL refuses.
    await apply_blueprint_to(saml["kernel"], WIKI.replace('"default_relay_state"', '"idp_initiated": false, "x"')
                             .replace('"x": "/home"', '"default_relay_state": "/home"'))
    assert 'href="/saml/wiki/sso/init"' not in (await browser.get("/")).text
    assert refused(await browser.get("/saml/wiki/sso/init"))


async def test_application_policy_denies_with_request_denied(saml: Any) -> None:
    await apply_blueprint_to(saml["kernel"], """
version: 1
metadata: {name: deny-wiki}
entries:
  - model: group
    identifiers: {name: admins}
  - model: policy_binding
    identifiers: {application: wiki, group: admins}
""")
    sp, browser = saml["sp"], saml["browser"]
    url, request_id = sp.login_url()
    _, fields = await to_sp(browser, url)
    auth = sp.accept(fields, request_id)
    assert not auth.is_authenticated() and "not Success" in auth.get_last_error_reason()
    assert 'StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:RequestDenied"' in auth.get_last_response_xml()
    # IdP-initiated: nobody to tell but the user.
    page = await walk(browser, "/saml/wiki/sso/init", username="alice", password=PASSWORD)
    assert page.status_code == 403 and "You are not allowed to use this application." in page.text


async def test_is_passive_without_a_session_answers_no_passive(saml: Any) -> None:
    sp = saml["sp"]
    url, request_id = sp.login_url(is_passive=True)
    response = await saml["browser"].get(url)
    assert response.status_code == 200
    auth = sp.accept(post_form(response.text)[1], request_id)
    assert not auth.is_authenticated() and "not Success" in auth.get_last_error_reason()
    assert 'StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:NoPassive"' in auth.get_last_response_xml()


async def test_force_authn_asks_for_the_password_again(saml: Any) -> None:
    sp, browser = saml["sp"], saml["browser"]
    await sign_in(browser, "/", "alice", PASSWORD)
    url, request_id = sp.login_url(force_authn=True)
    first = await browser.get(url)
    assert first.headers["location"].startswith("/flows/default-authentication-flow/")
    action, fields = await to_sp(browser, first.headers["location"])
    auth = sp.accept(fields, request_id)
    assert auth.is_authenticated(), auth.get_last_error_reason()


# -- NameID formats, signing choices, encryption, metadata import ----------------------------------


SAAS_SP_KEYS = key_pair("saas.example.com")


def saas_sp(idp_metadata: str) -> OneLoginSP:
    return OneLoginSP(idp_metadata, entity_id="https://saas.example.com/saml/metadata",
                      acs="https://saas.example.com/saml/acs", sls="https://saas.example.com/saml/sls",
                      name_id_format=C.NAMEID_EMAIL_ADDRESS, want_encrypted=True, want_messages_signed=True,
                      key_pem=SAAS_SP_KEYS)


async def test_email_name_id_signed_both_and_encrypted_from_imported_metadata(saml: Any) -> None:
    browser = saml["browser"]
    # The SP's metadata needs ours first (OneLogin's settings want the IdP): a throwaway object gives it.
    probe = saas_sp(saml["metadata"])
    await apply_blueprint_to(saml["kernel"], provider_blueprint(
        "saas", "saas", sp_metadata=probe.metadata(), name_id_format="email", signed="both",
        encrypt_assertions=True))
    sp = saas_sp((await browser.get("/saml/saas/metadata")).text)
    url, request_id = sp.login_url()
    action, fields = await to_sp(browser, url)
    assert action == "https://saas.example.com/saml/acs"
    xml = base64.b64decode(fields["SAMLResponse"]).decode()
    assert "EncryptedAssertion" in xml and "alice@example.org" not in xml
    assert "xmlenc11#aes256-gcm" in xml and "tripledes" not in xml
    auth = sp.accept(fields, request_id)
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert auth.get_nameid() == "alice@example.org" and auth.get_nameid_format() == C.NAMEID_EMAIL_ADDRESS
    # The persistent pseudonym of the wiki differs from what another SP would get.
    url, request_id = saml["sp"].login_url()
    _, fields = await to_sp(browser, url)
    assert saml["sp"].accept(fields, request_id).get_nameid() != "alice@example.org"


async def test_user_without_email_gets_a_polite_page_not_an_assertion(saml: Any, user_factory: Any) -> None:
    probe = saas_sp(saml["metadata"])
    await apply_blueprint_to(saml["kernel"], provider_blueprint(
        "saas", "saas", sp_metadata=probe.metadata(), name_id_format="email"))
    await user_factory("bob", password=PASSWORD)
    browser = saml["browser"]
    await sign_in(browser, "/", "bob", PASSWORD)
    page = await walk(browser, "/saml/saas/sso/init", username="bob", password=PASSWORD)
    assert page.status_code == 403 and "lacks information" in page.text and "SAMLResponse" not in page.text


async def test_metadata_url_is_fetched_when_the_blueprint_is_applied(saml: Any) -> None:
    probe = saas_sp(saml["metadata"])
    body = probe.metadata().encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/samlmetadata+xml")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        await apply_blueprint_to(saml["kernel"], provider_blueprint(
            "saas", "saas", sp_metadata_url=f"http://127.0.0.1:{port}/metadata", name_id_format="email"))
    finally:
        server.shutdown()
    config = json.loads(await saml["kernel"].pool.fetchval("SELECT config FROM providers WHERE name = 'saas'"))
    assert config["sp_entity_id"] == "https://saas.example.com/saml/metadata"
    assert config["acs_urls"] == ["https://saas.example.com/saml/acs"]
    with pytest.raises(BlueprintError, match=r"entries\[0\] \(provider\): config: .*sp_metadata_url: cannot be read"):
        await apply_blueprint_to(saml["kernel"], provider_blueprint(
            "saas2", "saas2", sp_metadata_url=f"http://127.0.0.1:{free_port()}/metadata"))


@pytest.mark.parametrize(("config", "message"), [
    ({"signature_algorithm": "rsa-sha1"}, r"SHA-1 is refused unless allow_sha1"),
    ({"digest_algorithm": "sha1"}, r"SHA-1 is refused unless allow_sha1"),
    ({"acs_urls": []}, r"acs_urls: at least one"),
    ({"acs_urls": ["javascript:alert(1)"]}, r"acs_urls\.0: must be an absolute http\(s\) URL"),
    ({"sp_metadata": "<md:EntityDescriptor"}, r"sp_metadata: not readable SAML metadata"),
    ({"sp_signing_certificate": "not a certificate"}, r"sp_signing_certificate: not an X\.509 certificate"),
    ({"encrypt_assertions": True}, r"encrypt_assertions needs sp_encryption_certificate"),
    ({"want_authn_requests_signed": True}, r"want_authn_requests_signed needs sp_signing_certificate"),
    ({"attribute_mappings": {"x": "import os"}}, r"attribute_mappings\.x: "),
    ({"name_id_format": "kerberos"}, r"name_id_format"),
])
async def test_blueprint_errors_name_the_field(saml: Any, config: dict[str, Any], message: str) -> None:
    base = {"sp_entity_id": "https://bad.example", "acs_urls": ["https://bad.example/acs"]}
    with pytest.raises(BlueprintError, match=message):
        await apply_blueprint_to(saml["kernel"], provider_blueprint("bad", "bad", **{**base, **config}))


async def test_sha1_only_when_turned_on(saml: Any) -> None:
    sp = OneLoginSP(saml["metadata"], key_pem=SP_KEYS, signature_algorithm=C.RSA_SHA1)
    url, _ = sp.login_url()
    assert "rsa-sha1" in url
    assert refused(await saml["browser"].get(url))
    await apply_blueprint_to(saml["kernel"], WIKI.replace('"want_authn_requests_signed": true',
                                                          '"want_authn_requests_signed": true, "allow_sha1": true'))
    url, request_id = sp.login_url()
    _, fields = await to_sp(saml["browser"], url)
    assert sp.accept(fields, request_id).is_authenticated()


# -- single logout ------------------------------------------------------------------------------


async def signed_in_name_id(env: dict[str, Any]) -> str:
    url, request_id = env["sp"].login_url()
    _, fields = await to_sp(env["browser"], url)
    return str(env["sp"].accept(fields, request_id).get_nameid())


async def test_single_logout_redirect_binding(saml: Any) -> None:
    sp, browser = saml["sp"], saml["browser"]
    name_id = await signed_in_name_id(saml)
    url, request_id = sp.logout_url(name_id, C.NAMEID_PERSISTENT, relay_state="bye")
    landed = await walk(browser, url, username="alice", password=PASSWORD)
    assert isinstance(landed, httpx.URL) and str(landed).startswith("https://sp.example.org/saml/sls?")
    assert parse_qs(landed.query.decode())["RelayState"] == ["bye"]
    assert sp.accept_logout_redirect(str(landed), request_id) == []
    # The keystage session is over: the library asks for a sign-in again.
    assert (await browser.get("/")).status_code in (302, 303)
    # The same LogoutRequest again is a replay.
    assert refused(await browser.get(url))


async def test_single_logout_post_binding(saml: Any) -> None:
    await apply_blueprint_to(saml["kernel"], WIKI.replace('"slo_url"', '"slo_binding": "post", "slo_url"'))
    sp, browser = saml["sp"], saml["browser"]
    name_id = await signed_in_name_id(saml)
    url, request_id = sp.logout_url(name_id, C.NAMEID_PERSISTENT)
    # Send the same LogoutRequest by the POST binding: the XML with an enveloped signature.
    xml = zlib.decompress(base64.b64decode(parse_qs(urlsplit(url).query)["SAMLRequest"][0]), -15).decode()
    fields = {"SAMLRequest": base64.b64encode(sp.sign(xml).encode()).decode()}
    page = await post_then_walk(browser, "/saml/wiki/slo", fields)
    action, answer = post_form(page.text)
    assert action == "https://sp.example.org/saml/sls"
    assert sp.accept_logout_post(answer, request_id) == []
    assert (await browser.get("/")).status_code in (302, 303)


# -- attacks --------------------------------------------------------------------------------------


def b64(xml: str) -> str:
    return base64.b64encode(xml.encode()).decode()


async def test_xml_bomb_is_refused(saml: Any) -> None:
    bomb = ('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
            + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
            + ']><samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="_b" Version="2.0" '
            'IssueInstant="2026-01-01T00:00:00Z">&i;</samlp:AuthnRequest>')
    assert refused(await saml["browser"].post("/saml/wiki/sso", data={"SAMLRequest": b64(bomb)}))


async def test_external_entity_is_refused(saml: Any) -> None:
    xxe = ('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           '<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="_x" Version="2.0" '
           'IssueInstant="2026-01-01T00:00:00Z"><saml:Issuer xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion">'
           '&x;</saml:Issuer></samlp:AuthnRequest>')
    response = await saml["browser"].post("/saml/wiki/sso", data={"SAMLRequest": b64(xxe)})
    assert refused(response) and "root:" not in response.text


async def test_deflate_bomb_and_oversized_messages_are_refused(saml: Any) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(b"<a>" + b" " * (20 * 1024 * 1024)) + compressor.flush()
    assert len(bomb) < 48 * 1024
    query = urlencode({"SAMLRequest": base64.b64encode(bomb).decode()})
    assert refused(await saml["browser"].get(f"/saml/wiki/sso?{query}"))
    assert refused(await saml["browser"].post("/saml/wiki/sso", data={"SAMLRequest": "A" * (70 * 1024)}))
    assert refused(await saml["browser"].get("/saml/wiki/sso?SAMLRequest=%%%not-base64"))
    assert refused(await saml["browser"].get("/saml/wiki/sso"))


def _signed_request(sp: OneLoginSP, **changes: str) -> str:
    xml, _ = sp.request_xml()
    for old, new in changes.items():
        xml = re.sub(rf'{old}="[^"]*"', f'{old}="{new}"', xml, count=1)
    return sp.sign(xml)


def _iso(delta: datetime.timedelta) -> str:
    return (datetime.datetime.now(datetime.timezone.utc) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_signature_wrapping_is_refused(saml: Any) -> None:
    sp, browser = saml["sp"], saml["browser"]
    signed = _signed_request(sp)
    root = etree.fromstring(signed.encode())
    protocol = "urn:oasis:names:tc:SAML:2.0:protocol"
    # XSW: a new request (evil ACS, new ID) wraps the genuinely signed one, which the signature
    # still verifies.
    evil = etree.Element(f"{{{protocol}}}AuthnRequest", nsmap={"samlp": protocol})
    for name, value in root.attrib.items():
        evil.set(name, value)
    evil.set("ID", "_evil")
    evil.set("AssertionConsumerServiceURL", "https://evil.example.org/acs")
    issuer = root.find("{urn:oasis:names:tc:SAML:2.0:assertion}Issuer")
    evil.append(etree.fromstring(etree.tostring(issuer)))
    extensions = etree.SubElement(evil, f"{{{protocol}}}Extensions")
    extensions.append(root)
    wrapped = etree.tostring(evil).decode()
    assert refused(await browser.post("/saml/wiki/sso", data={"SAMLRequest": b64(wrapped)}))
    # The signature moved under a new root that carries the signed ID twice.
    root = etree.fromstring(signed.encode())
    twin = etree.fromstring(signed.encode())
    twin.set("AssertionConsumerServiceURL", "https://evil.example.org/acs")
    signature = twin.find("{http://www.w3.org/2000/09/xmldsig#}Signature")
    twin.remove(signature)
    twin.append(root)
    assert refused(await browser.post("/saml/wiki/sso", data={"SAMLRequest": b64(etree.tostring(twin).decode())}))
    # A signed request whose signature points at no element of it.
    pointed = signed.replace(f'URI="#{root.get("ID")}"', 'URI="#_other"')
    assert refused(await browser.post("/saml/wiki/sso", data={"SAMLRequest": b64(pointed)}))
    # The genuine one passes.
    assert (await browser.post("/saml/wiki/sso", data={"SAMLRequest": b64(signed)})).status_code == 302


async def test_tampered_signed_requests_are_refused(saml: Any) -> None:
    sp, browser = saml["sp"], saml["browser"]
    # POST: a registered ACS swapped in after signing.
    signed = _signed_request(sp)
    tampered = signed.replace(f'AssertionConsumerServiceURL="{ACS}"',
                              'AssertionConsumerServiceURL="https://sp.example.org/saml/acs2"')
    assert tampered != signed
    assert refused(await browser.post("/saml/wiki/sso", data={"SAMLRequest": b64(tampered)}))
    # Redirect: the RelayState changed after signing.
    url, _ = sp.login_url(relay_state="good")
    assert refused(await browser.get(url.replace("RelayState=good", "RelayState=evil")))
    # Signed by a key that is not the SP's.
    stranger = OneLoginSP(saml["metadata"])
    assert refused(await browser.get(stranger.login_url()[0]))


async def test_unsigned_requests_are_refused_when_signatures_are_required(saml: Any) -> None:
    unsigned = OneLoginSP(saml["metadata"], key_pem=SP_KEYS, sign_requests=False)
    url, _ = unsigned.login_url()
    assert "Signature=" not in url
    assert refused(await saml["browser"].get(url))
    fields, _ = unsigned.login_form(sign=False)
    assert refused(await saml["browser"].post("/saml/wiki/sso", data=fields))
    # A Redirect request whose XML carries a signature instead of the query: refused too.
    fields, _ = saml["sp"].login_form()
    raw = base64.b64decode(fields["SAMLRequest"])
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = base64.b64encode(compressor.compress(raw) + compressor.flush()).decode()
    assert refused(await saml["browser"].get("/saml/wiki/sso?" + urlencode({"SAMLRequest": deflated})))


async def test_unregistered_acs_url_is_refused(saml: Any) -> None:
    for acs in ("https://evil.example.org/acs", "https://sp.example.org/saml/acs/", "https://SP.example.org/saml/acs",
                "https://sp.example.org/saml/acs?x=1", "https://sp.example.org/saml/acs2/../acs"):
        sp = OneLoginSP(saml["metadata"], key_pem=SP_KEYS, acs=acs)
        response = await saml["browser"].get(sp.login_url()[0])
        assert refused(response), acs
    # An index the SP does not have.
    xml, _ = saml["sp"].request_xml()
    xml = xml.replace(f'AssertionConsumerServiceURL="{ACS}"', 'AssertionConsumerServiceIndex="7"')
    assert refused(await saml["browser"].post("/saml/wiki/sso", data={"SAMLRequest": b64(saml["sp"].sign(xml))}))


async def test_replayed_requests_are_refused(saml: Any) -> None:
    sp, browser = saml["sp"], saml["browser"]
    url, _ = sp.login_url()
    assert (await browser.get(url)).status_code == 302
    assert refused(await browser.get(url))
    fields, _ = sp.login_form()
    assert (await browser.post("/saml/wiki/sso", data=fields)).status_code == 302
    assert refused(await browser.post("/saml/wiki/sso", data=fields))


@pytest.mark.parametrize("changes", [
    {"Destination": "https://other-idp.example.org/sso"},
    {"IssueInstant": "STALE"},
    {"IssueInstant": "FUTURE"},
    {"Version": "1.1"},
])
async def test_destination_and_validity_window_are_checked(saml: Any, changes: dict[str, str]) -> None:
    values = {k: {"STALE": _iso(datetime.timedelta(hours=-1)), "FUTURE": _iso(datetime.timedelta(minutes=10))}
              .get(v, v) for k, v in changes.items()}
    signed = _signed_request(saml["sp"], **values)
    assert refused(await saml["browser"].post("/saml/wiki/sso", data={"SAMLRequest": b64(signed)}))


async def test_issuer_must_be_the_providers_sp(saml: Any) -> None:
    xml, _ = saml["sp"].request_xml()
    xml = xml.replace(">https://sp.example.org/metadata<", ">https://other-sp.example.org/metadata<")
    assert refused(await saml["browser"].post("/saml/wiki/sso", data={"SAMLRequest": b64(saml["sp"].sign(xml))}))


async def test_clock_skew_bound_is_configurable(saml: Any) -> None:
    ahead = _signed_request(saml["sp"], IssueInstant=_iso(datetime.timedelta(seconds=200)))
    assert refused(await saml["browser"].post("/saml/wiki/sso", data={"SAMLRequest": b64(ahead)}))
    await apply_blueprint_to(saml["kernel"], WIKI.replace('"want_authn_requests_signed": true',
                                                          '"want_authn_requests_signed": true, "clock_skew": 300'))
    ahead = _signed_request(saml["sp"], IssueInstant=_iso(datetime.timedelta(seconds=200)))
    assert (await saml["browser"].post("/saml/wiki/sso", data={"SAMLRequest": b64(ahead)})).status_code == 302


async def test_tampered_assertion_is_rejected_by_the_sp(saml: Any) -> None:
    sp = saml["sp"]
    url, request_id = sp.login_url()
    _, fields = await to_sp(saml["browser"], url)
    xml = base64.b64decode(fields["SAMLResponse"]).decode()
    for old, new in (("research", "finance"), ("alice@example.org", "admin@example.org")):
        tampered = {**fields, "SAMLResponse": b64(xml.replace(old, new))}
        auth = sp.accept(tampered, request_id)
        assert not auth.is_authenticated() and auth.get_errors(), old
    # The untouched one still passes (the checks above failed for the change, not for something else).
    assert sp.accept(fields, request_id).is_authenticated()


async def test_a_pending_sign_in_belongs_to_its_application(saml: Any) -> None:
    browser = saml["browser"]
    await apply_blueprint_to(saml["kernel"], provider_blueprint("other", "other", sp_entity_id="https://o.example",
                                                                acs_urls=["https://o.example/acs"]))
    await sign_in(browser, "/", "alice", PASSWORD)
    url, _ = saml["sp"].login_url()
    response = await browser.get(url)
    next_url = parse_qs(urlsplit(response.headers["location"]).query)["next"][0]
    request_id = parse_qs(urlsplit(next_url).query)["r"][0]
    assert refused(await browser.get(f"/saml/other/sso/continue?r={request_id}"))
    assert refused(await browser.get("/saml/wiki/sso/continue?r=unknown"))


# -- operations -----------------------------------------------------------------------------------


async def test_startup_says_in_one_line_when_signing_cannot_work(saml: Any, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture,
                                                                 tmp_path: Any) -> None:
    from keystage.plugins.providers import saml as plugin

    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level(logging.ERROR, logger="keystage.saml"):
        await plugin.before_serving(saml["app"])
    lines = [r.getMessage() for r in caplog.records if r.name == "keystage.saml"]
    assert len(lines) == 1 and "xmlsec1 is not installed" in lines[0] and "\n" not in lines[0]
    # A provider that has not built its signer yet answers with a polite page, not a traceback.
    await apply_blueprint_to(saml["kernel"], provider_blueprint("late", "late", sp_entity_id="https://l.example",
                                                                acs_urls=["https://l.example/acs"]))
    response = await saml["browser"].get("/saml/late/metadata")
    assert response.status_code == 503 and "not possible at the moment" in response.text
    assert "Traceback" not in response.text


async def test_keys_are_sealed_at_rest(saml: Any) -> None:
    rows = await saml["kernel"].pool.fetch("SELECT * FROM saml_keys")
    assert rows
    for row in rows:
        blob = b"".join(bytes(v) for v in row.values() if isinstance(v, (bytes, bytearray, memoryview)))
        assert b"PRIVATE KEY" not in blob and b"\x30\x82" not in blob[:4]


async def test_documented_saas_example(saml: Any) -> None:
    """docs/admin/saml.md's SaaS blueprint applies, and the SP it describes gets an email NameID,
    a signed assertion and the attributes the doc names."""
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "admin" / "saml.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Example: a SaaS app"):]
    start = section.index("```yaml") + len("```yaml")
    await apply_blueprint_to(saml["kernel"], section[start:section.index("```", start)])
    browser = saml["browser"]
    sp = OneLoginSP((await browser.get("/saml/acme-docs/metadata")).text, sign_requests=False,
                    entity_id="https://acme-docs.example.com/saml/metadata",
                    acs="https://acme-docs.example.com/saml/acs", name_id_format=C.NAMEID_EMAIL_ADDRESS)
    url, request_id = sp.login_url()
    action, fields = await to_sp(browser, url)
    auth = sp.accept(fields, request_id)
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert auth.get_nameid() == "alice@example.org"
    assert auth.get_attributes() == {"email": ["alice@example.org"], "firstName": ["Alice"], "role": ["member"]}
    await sign_in(browser, "/", "alice", PASSWORD)
    _, fields = await to_sp(browser, "/saml/acme-docs/sso/init")
    assert fields["RelayState"] == "https://acme-docs.example.com/"
    assert sp.accept(fields, None).is_authenticated()


async def test_signing_in_process_and_the_xmlsec1_fallback(saml: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from saml2.sigver import CryptoBackendXmlSec1

    from keystage.plugins.providers.saml import server, service_providers

    sp = await service_providers.find(saml["kernel"], "wiki")
    assert sp is not None and isinstance(sp.server.sec.crypto, server.InProcessSigning)
    # Without python-xmlsec, pysaml2 signs with the xmlsec1 program: the SP accepts either.
    monkeypatch.setattr(server, "in_process_signing_available", lambda: False)
    saml["kernel"].state.pop("saml_servers", None)
    url, request_id = saml["sp"].login_url()
    _, fields = await to_sp(saml["browser"], url)
    auth = saml["sp"].accept(fields, request_id)
    assert auth.get_errors() == [] and auth.is_authenticated()
    sp = await service_providers.find(saml["kernel"], "wiki")
    assert sp is not None and type(sp.server.sec.crypto) is CryptoBackendXmlSec1


async def test_response_signed_instead_of_the_assertion(saml: Any) -> None:
    await apply_blueprint_to(saml["kernel"], WIKI.replace('"want_authn_requests_signed"',
                                                          '"signed": "response", "want_authn_requests_signed"'))
    sp = OneLoginSP(saml["metadata"], key_pem=SP_KEYS, want_messages_signed=True)
    sp.settings.get_security_data()["wantAssertionsSigned"] = False
    url, request_id = sp.login_url()
    _, fields = await to_sp(saml["browser"], url)
    xml = base64.b64decode(fields["SAMLResponse"]).decode()
    root = etree.fromstring(xml.encode())
    ds = "{http://www.w3.org/2000/09/xmldsig#}Signature"
    assertion = root.find("{urn:oasis:names:tc:SAML:2.0:assertion}Assertion")
    assert root.find(ds) is not None and assertion is not None and assertion.find(ds) is None
    auth = sp.accept(fields, request_id)
    assert auth.get_errors() == [], auth.get_last_error_reason()


async def test_explicit_consent_asks_and_a_refusal_is_request_denied(saml: Any) -> None:
    await apply_blueprint_to(saml["kernel"], WIKI.replace(
        '"want_authn_requests_signed"',
        '"authorization_flow": "default-provider-authorization-explicit-consent", "want_authn_requests_signed"'))
    sp, browser = saml["sp"], saml["browser"]
    url, request_id = sp.login_url()
    page = await walk(browser, url, username="alice", password=PASSWORD, consent=False)
    auth = sp.accept(post_form(page.text)[1], request_id)
    assert not auth.is_authenticated()
    assert 'StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:RequestDenied"' in auth.get_last_response_xml()
    # Granted once, it is remembered: the next sign-in goes straight back to the SP.
    url, request_id = sp.login_url()
    _, fields = await to_sp(browser, url)
    assert sp.accept(fields, request_id).is_authenticated()
    url, request_id = sp.login_url()
    response = await browser.get(url)
    landed = await walk(browser, response.headers["location"], username="alice", password=PASSWORD,
                        consent=False)
    assert sp.accept(post_form(landed.text)[1], request_id).is_authenticated()


async def test_repeated_parameters_and_oversized_relay_state_are_refused(saml: Any) -> None:
    sp, browser = saml["sp"], saml["browser"]
    url, _ = sp.login_url()
    assert refused(await browser.get(url + "&SAMLRequest=x"))
    url, _ = sp.login_url(relay_state="r" * 3000)
    assert refused(await browser.get(url))
    assert refused(await browser.get("/saml/wiki/sso/init?" + urlencode({"RelayState": "r" * 3000})))
    assert refused(await browser.get("/saml/wiki/slo?" + urlencode({"SAMLRequest": "x", "RelayState": "r" * 3000})))
